"""``train.trainer_python`` for the DAG-level fault test: the real `retrain` CLI of the trainer
stages with only its two torch-bound edges replaced (see harness.py): ``llamafactory-cli`` is
fake_trainer.py and generation is `ScriptedModel`, whose answers are the golden set's gold for a
"good" adapter. Everything else (S3 I/O, run_training's checks and commit, run_evaluation's
scoring, report and cache) is the real code. The local launcher runs it exactly as it runs the
trainer env's python: ``stand_in.py -m retrain.cli <stage> --run-uri s3://…``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    if argv[:2] != ["-m", "retrain.cli"]:
        raise SystemExit(f"stand_in.py: expected '-m retrain.cli …', got {argv}")
    sys.path.insert(0, str(HERE.parents[1]))  # the repository, for tests.faults
    import retrain.evaluate
    import retrain.evaluate.generate
    import retrain.train
    from retrain.prompt import user_message
    from tests.faults.harness import ScriptedModel

    shim = Path(tempfile.mkdtemp(prefix="stand-in-")) / "llamafactory-cli"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE / "fake_trainer.py"} "$@"\n')
    shim.chmod(0o755)
    retrain.train.llamafactory_cli = lambda: shim
    retrain.train.verify_adapter_loads = lambda *a, **k: None

    model = ScriptedModel()
    real_load_golden = retrain.evaluate.load_golden

    def load_golden(data: bytes, where: str = "golden.json"):
        examples = json.loads(data.decode("utf-8"))
        model.answers = {user_message(e["instruction"], e.get("input") or ""): e["output"] for e in examples}
        return real_load_golden(data, where)

    retrain.evaluate.load_golden = load_golden
    retrain.evaluate.generate.make_backend = model.factory
    print(f"[stand-in trainer env] pid {os.getpid()}: retrain {' '.join(argv[2:])}", flush=True)
    from retrain.cli import main as cli

    return cli(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
