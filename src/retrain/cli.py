"""The `retrain` command line.

The same entry point runs on a laptop, in the local launcher's subprocess, and as the trainer
container's command (``retrain train --run-uri s3://…/runs/<id>``). Heavy imports happen inside
each command, so ``retrain --help`` is instant in either environment.

Exit status: 0 done; 65 (``EX_DATAERR``, `retrain.errors.INPUT_ERROR_EXIT`) for an input error
(`retrain.errors.InputError`: a bad request, conf or dataset, which a retry cannot mend); 1 for any
other error; 130 when interrupted. The launchers fail the task without retrying on 65.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from retrain.errors import INPUT_ERROR_EXIT, InputError


def _print(model: Any) -> None:
    print(model.model_dump_json(indent=2))


def _cmd_train(args: argparse.Namespace) -> int:
    from retrain.train import run_training_from_uri

    _print(run_training_from_uri(args.run_uri, workdir=args.workdir))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from retrain.evaluate import run_evaluation_from_uri

    report = run_evaluation_from_uri(args.run_uri, workdir=args.workdir)
    for side in (report.candidate, report.champion):
        print(f"{side.name}: micro F1 {side.micro.f1}, parse failures {side.n_parse_failures}/{report.n}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from retrain.export import run_export_from_uri

    _print(run_export_from_uri(args.run_uri, workdir=args.workdir))
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from retrain import promote, runs
    from retrain.config import load_settings
    from retrain.registry import Registry
    from retrain.storage import ObjectStore, client_from_env

    settings = load_settings()
    run = runs.RunFolder.from_uri(args.run_uri)
    store = ObjectStore(client_from_env(), run.bucket)
    request = runs.read(store, run.key(runs.TRAIN_REQUEST), runs.TrainRequest)
    registry = Registry.from_settings(settings, request.base_model)
    provenance = promote.Provenance(
        dag_id="cli", git_commit=promote.git_commit(), launcher="cli", trainer_image="unknown"
    )
    summary = promote.promote_run(
        store,
        settings,
        run,
        registry,
        run_id=request.run_id,
        actor=args.actor,
        provenance=provenance,
        dry_run=args.dry_run,
    )
    _print(summary.decision)
    return 0


def _cmd_gate(args: argparse.Namespace) -> int:
    from retrain.config import load_settings
    from retrain.evaluate import load_golden, read_predictions, score_model
    from retrain.gate import decide
    from retrain.runs import exam_version

    settings = load_settings(args.conf)
    with open(args.golden, "rb") as fh:
        golden = load_golden(fh.read(), where=args.golden)
    labels = settings.prompt.labels
    candidate = score_model(golden, read_predictions(args.candidate, golden.n), labels, "candidate")
    champion = score_model(golden, read_predictions(args.champion, golden.n), labels, args.champion_name)
    decision = decide(
        candidate,
        champion,
        settings.gate,
        champion_name=args.champion_name,
        exam=exam_version(golden.sha256[:16], golden.n),
    )
    _print(decision)
    return 0


def _cmd_registry(args: argparse.Namespace) -> int:
    from retrain import registry
    from retrain.config import load_settings

    settings = load_settings()
    reg = registry.Registry.from_settings(settings, base_model=args.base_model or settings.train.base_model)
    if args.registry_cmd == "history":
        for event in reg.history():
            print(json.dumps(event, ensure_ascii=False))
        return 0
    if args.registry_cmd == "rollback":
        from retrain.promote import rollback
        from retrain.storage import ObjectStore, client_from_env

        store = ObjectStore(client_from_env(), settings.s3.bucket)
        event = rollback(store, reg, args.target, reason=args.reason, actor=args.actor)
        print(json.dumps(event, ensure_ascii=False))
        return 0
    if args.registry_cmd == "show":
        print(json.dumps(reg.describe(), ensure_ascii=False, indent=2))
        return 0
    return 2


def _cmd_check(args: argparse.Namespace) -> int:
    from retrain import check
    from retrain.config import load_settings

    try:
        paths = check.expand_paths(args.paths)
    except FileNotFoundError as exc:
        print(f"retrain check: error: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print("retrain check: error: no .json/.jsonl/.ndjson files under the paths given", file=sys.stderr)
        return 2
    if not args.verbose:  # GX logs its own set-up at INFO; the report is what an annotator reads
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    settings = load_settings(args.conf)
    progress = None if args.quiet else check.Progress()
    docs = Path(args.data_docs) if args.data_docs else None
    results = check.check_paths(paths, settings, fmt=args.format, docs_dir=docs, progress=progress)
    code = check.exit_code(results, strict=args.strict)
    if args.json:
        out = {"ok": code == 0, "files": [r.to_json() for r in results]}
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(check.render_text(results, details=args.details), end="")
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retrain", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    tr = sub.add_parser("train", help="LoRA SFT with LLaMA-Factory for one run (reads its train request)")
    tr.add_argument("--run-uri", required=True, help="s3://bucket/runs/<run id>")
    tr.add_argument("--workdir", default=None)
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="score candidate and champion adapters on the golden set")
    ev.add_argument("--run-uri", required=True, help="s3://bucket/runs/<run id>")
    ev.add_argument("--workdir", default=None)
    ev.set_defaults(func=_cmd_evaluate)

    ex = sub.add_parser(
        "export", help="merge the run's adapter into its base model (llamafactory-cli export)"
    )
    ex.add_argument("--run-uri", required=True, help="s3://bucket/runs/<run id>")
    ex.add_argument("--workdir", default=None)
    ex.set_defaults(func=_cmd_export)

    pr = sub.add_parser(
        "promote",
        help="decide with the gate, register, move `champion` (what ner_retrain's promote task does)",
    )
    pr.add_argument("--run-uri", required=True, help="s3://bucket/runs/<run id> (evaluated)")
    pr.add_argument("--dry-run", action="store_true", help="decide only: register nothing, move no alias")
    pr.add_argument("--actor", default="cli")
    pr.set_defaults(func=_cmd_promote)

    _add_check_parser(sub)
    _add_gate_parser(sub)

    rg = sub.add_parser("registry", help="model registry: history, rollback, show")
    rg.add_argument("--base-model", default=None)
    rg_sub = rg.add_subparsers(dest="registry_cmd", required=True)
    rg_sub.add_parser("history", help="every alias change, oldest first")
    rg_sub.add_parser("show", help="versions and aliases")
    rb = rg_sub.add_parser("rollback", help="move `champion` to a version (or 'previous')")
    rb.add_argument("target", help="a version number or 'previous'")
    rb.add_argument("--reason", required=True)
    rb.add_argument("--actor", default="cli")
    rg.set_defaults(func=_cmd_registry)
    return p


def _add_check_parser(sub: Any) -> None:
    """`retrain check`: the annotators' pre-flight (src/retrain/check.py)."""
    ck = sub.add_parser(
        "check",
        help="pre-flight: judge local annotation files as intake would (no S3, Airflow or MLflow)",
        description="Parse and validate local files with the pipeline's parsers, label map, text-hygiene "
        "policy and Great Expectations suite; one batch per file. Exit 0: everything would be accepted; "
        "1: something would be quarantined (or, with --strict, warned about or dropped as a duplicate); "
        "2: a path does not exist.",
    )
    ck.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders (their .json/.jsonl/.ndjson)")
    ck.add_argument(
        "--format",
        choices=["cluener", "label_studio", "doccano"],
        default=None,
        help="the files' format (default: detected from the content, as intake does)",
    )
    ck.add_argument(
        "--data-docs",
        metavar="DIR",
        default=None,
        help="write the Great Expectations Data Docs of each file under DIR/<file>/",
    )
    ck.add_argument("--json", action="store_true", help="print a JSON report (every rejection and warning)")
    ck.add_argument("--strict", action="store_true", help="exit 1 on warnings and dropped duplicates too")
    ck.add_argument("--details", type=int, default=20, help="quarantined records and warnings shown per file")
    _add_conf_arg(ck)
    ck.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr for large files")
    ck.set_defaults(func=_cmd_check)


def _add_conf_arg(parser: Any) -> None:
    """``--conf``, for the subcommands that read conf/ themselves (the stages read it from the request)."""
    parser.add_argument(
        "--conf", default=None, help="the conf/ folder (default: $RETRAIN_CONF_DIR, else the repo's)"
    )


def _add_gate_parser(sub: Any) -> None:
    """`retrain gate`: the promotion gate replayed offline."""
    gt = sub.add_parser(
        "gate",
        help="replay the promotion gate offline on a golden file and two prediction files",
        description="Score both prediction files on the golden set exactly as the evaluate stage does and "
        "print the decision JSON of the gate ner_retrain's promote task applies (conf gate). A prediction "
        "file has one JSON line per golden example, in order: the raw model output as a JSON string, or "
        'an object with a "raw" string (eval/predictions_<role>.jsonl of a run is such a file).',
    )
    gt.add_argument(
        "--golden", required=True, help="the golden set: alpaca JSON list (a dataset's golden.json)"
    )
    gt.add_argument("--champion", required=True, help="predictions of the champion (or base model)")
    gt.add_argument("--candidate", required=True, help="predictions of the candidate")
    gt.add_argument("--champion-name", default="champion", help="how the reason names the champion")
    _add_conf_arg(gt)
    gt.set_defaults(func=_cmd_gate)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except InputError as exc:  # retrying will not help: a status of its own tells launchers so
        if args.verbose:
            raise
        print(f"retrain {args.cmd}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return INPUT_ERROR_EXIT
    except Exception as exc:  # a clear one-line error for users; traceback with -v
        if args.verbose:
            raise
        print(f"retrain {args.cmd}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
