"""Development helpers that are not part of the product: ``python -m tests.support <command>``.

Run from the repository root with the trainer environment's python for ``tiny-model`` (it needs
transformers and tokenizers) or either environment for ``synth``:

    .venv-tr/bin/python -m tests.support tiny-model --out .work/models/tiny-qwen2
    .venv-af/bin/python -m tests.support synth --out .work/batches --batches 2 --records 200 --bad 5

The demo is ``python -m tests.support.demo`` (``make demo``).
"""

from __future__ import annotations

import argparse
import logging
import sys


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from tests.support.tiny_model import build_tiny_model

    print(build_tiny_model(args.out, seed=args.seed, size=args.size))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from tests.support.synth import write_batches

    for path in write_batches(
        args.out, batches=args.batches, records=args.records, seed=args.seed, bad_per_batch=args.bad
    ):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.support", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    tm = sub.add_parser("tiny-model", help="build the tiny random Qwen2 model + tokenizer")
    tm.add_argument("--out", required=True)
    tm.add_argument("--seed", type=int, default=0)
    tm.add_argument("--size", default="tiny", help="tiny (tests) or demo (same shape, zeroed layers: ZEROED)")
    tm.set_defaults(func=_cmd_tiny_model)
    sy = sub.add_parser("synth", help="write synthetic CLUENER-format labeled batches")
    sy.add_argument("--out", required=True)
    sy.add_argument("--batches", type=int, default=1)
    sy.add_argument("--records", type=int, default=200)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--bad", type=int, default=0, help="deliberately bad records per batch")
    sy.set_defaults(func=_cmd_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
