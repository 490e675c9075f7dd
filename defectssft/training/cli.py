"""``defectssft train PROJECT``: semi-supervised fine-tuning from the command line.

    defectssft train PROJECT [--config FILE] [--set key=value ...] [--preset quick|overnight]
                             [--resume [RUN]] [--max-time 8h] [--json-progress]
                             [--promote-if-better [--overkill-tolerance 0.005]]

``--json-progress`` prints one JSON object per line on stdout (events: step, eval, checkpoint,
done, model) for the GUI, which runs training as a separate process. Multi-GPU:
``torchrun --nproc_per_node N -m defectssft train PROJECT ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model on the project's labeled + unlabeled images",
        description="Semi-supervised fine-tuning; each finished run becomes a model version.",
    )
    p.add_argument("project", help="project folder")
    p.add_argument(
        "--config", metavar="FILE", help="YAML config (sections model/input/ssl/augment/train)"
    )
    p.add_argument(
        "--set",
        dest="sets",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one setting, e.g. --set train.steps=500 (repeatable)",
    )
    p.add_argument("--preset", help="start from a preset: quick (minutes on a CPU) or overnight")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN",
        help="continue the newest unfinished run, or RUN (a folder name in PROJECT/runs)",
    )
    p.add_argument("--max-time", metavar="DURATION", help="time budget, e.g. 8h, 90m; ends cleanly")
    p.add_argument(
        "--json-progress",
        action="store_true",
        help="print one JSON object per line on stdout instead of a progress bar",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--promote-if-better",
        action="store_true",
        help="after training, make the new version production (and export it to "
        "PROJECT/exports/production.onnx) only if it is not worse on the frozen "
        "test split (see `defectssft promote`)",
    )
    p.add_argument(
        "--overkill-tolerance",
        type=float,
        default=0.005,
        metavar="RATE",
        help="with --promote-if-better: allowed rise of the overkill rate "
        "(default 0.005 = 0.5 points)",
    )
    p.set_defaults(func=cmd_train)


def _json_line(row: dict[str, Any]) -> None:
    print(json.dumps(row, default=str), flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from defectssft.training import train_project
    from defectssft.training.config import dump_yaml, merge, resolve_config, validate
    from defectssft.training.summary import describe

    if args.print_config:
        cfg = resolve_config(args.preset, args.config, None, args.sets)
        if args.max_time is not None:
            cfg = validate(merge(cfg, {"train": {"max_time": args.max_time}}))
        print(dump_yaml(cfg), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    version = train_project(
        args.project,
        progress_callback=_json_line if args.json_progress else None,
        preset=args.preset,
        config_file=args.config,
        sets=args.sets,
        resume=args.resume,
        max_time=args.max_time,
        progress_bar=not args.json_progress and sys.stderr.isatty(),
    )
    if version is None:
        if args.json_progress:
            _json_line({"event": "stopped"})
        print("training stopped; checkpoint saved (resume with --resume)", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":  # the anomaly head (defectssft.anomaly); never fails
        from defectssft.anomaly_cli import fit_and_report

        fit_and_report(args.project, version, _json_line if args.json_progress else None)
    decisions = _decisions(args.project, version)
    if args.json_progress:
        if decisions:
            _json_line({"event": "decisions", "version": version, **decisions})
        _json_line({"event": "model", "version": version})
    else:
        print(f"model {version}", flush=True)
        for line in describe(decisions):
            print(line, flush=True)
    if args.promote_if_better and os.environ.get("RANK", "0") == "0":
        _promote(args, version)
    return 0


def _decisions(project: str, version: str) -> dict[str, Any]:
    """What the default path decided for ``version`` (``metrics["training"]``), {} if none."""
    from defectssft.project import Project

    if os.environ.get("RANK", "0") != "0":
        return {}
    return Project.open(project).get_model(version)["metrics"].get("training") or {}


def _promote(args: argparse.Namespace, version: str) -> None:
    """Promote ``version`` if it is not worse; a refusal is a normal outcome (exit 0)."""
    from defectssft.project import Project
    from defectssft.promote import maybe_promote

    promoted, reason = maybe_promote(
        Project.open(args.project), version, overkill_tolerance=args.overkill_tolerance
    )
    if args.json_progress:
        _json_line(
            {"event": "promotion", "version": version, "promoted": promoted, "reason": reason}
        )
    else:
        print(("promoted: " if promoted else "not promoted: ") + reason, flush=True)
