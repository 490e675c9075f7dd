"""CLI commands for what happens after training: ``evaluate``, ``export``, ``promote``, ``demo``.

Heavy imports (torch, timm, onnx) happen inside the commands so ``defectssft --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _review_rate(text: str) -> float:
    value = _fraction(text)
    if value >= 0.5:
        raise argparse.ArgumentTypeError(f"must be in [0, 0.5), got {value}")
    return value


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 10.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 10] logits, got {value}")
    return value


def _open(path: str):
    from defectssft.project import Project

    return Project.open(path)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


# --------------------------------------------------------------------------- evaluate


def print_evaluation(m: dict) -> None:
    from defectssft.evaluate import stream_text
    from defectssft.metrics import format_rate

    def claim(name: str, c: dict | None) -> str:
        return f"{name} n/a" if not c else format_rate(name, c)

    acc, tested = m.get("accuracy_claim"), m["n"] > 0
    if tested:
        print(
            f"model {m['version']} on the test split ({m['n']} images): accuracy "
            f"{_pct(m['accuracy'])} ({claim('correct', acc)}), macro F1 {m['macro_f1']:.3f}"
        )
        for name, pc in m["per_class"].items():
            print(
                f"  {name:<20} P {pc['precision']:.3f}  R {pc['recall']:.3f}  "
                f"F1 {pc['f1']:.3f}  n {pc['support']}"
            )
    else:  # every label trained: no accuracy to state, the evidence is out of fold + stream
        print(
            f"model {m['version']}: the test split (0 images) holds nothing to score; "
            "the evidence below is out of fold and the unlabeled stream"
        )
    insp, op = m.get("inspection"), m.get("operating_point", {})
    if insp:
        auc, ap = insp["roc_auc"], insp["average_precision"]
        if tested:
            print(
                f"  OK/NG: ROC AUC {'n/a' if auc is None else f'{auc:.4f}'}, "
                f"AP {'n/a' if ap is None else f'{ap:.4f}'}"
            )
        ev = op.get("evidence") or op.get("calibrated", {}).get("evidence") or {}
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in ev.items())
        print(
            f"  operating threshold {op['threshold']:.4g} (from {op['chosen_on']}; {counts}), "
            f"UNSURE band [{op.get('unsure_low', op['threshold']):.4g}, "
            f"{op.get('unsure_high', op['threshold']):.4g})"
        )
        applied = op.get("applied") or {}
        if applied.get("source") == "chosen":
            print(
                f"  the line uses the operating point chosen for this version: NG from "
                f"{applied['unsure_high']:.4g}, UNSURE from {applied['unsure_low']:.4g}"
            )
        if tested:
            print(
                f"  line verdicts on test: {claim('escapes', op.get('escapes'))}; "
                f"{claim('overkill', op.get('overkill'))}; {claim('UNSURE', op.get('unsure'))}"
            )
        said = stream_text(op)
        if said:
            print(f"  {said}")
        verdicts = (m.get("verdicts") or {}) if tested else {}
        for name, v in verdicts.items():
            print(f"  {name:<20} verdicts: OK {v['OK']}  NG {v['NG']}  UNSURE {v['UNSURE']}")
        nov = m.get("novelty")
        if nov:
            print(
                f"  anomaly head (novel at score >= {nov['threshold']:.4g}): {nov['changed']} "
                f"test part(s) the classifier passed are novel -> {nov['on_novel']}, as on the line"
            )
    elif op.get("errors"):
        print(f"  {op['note']}: {claim('errors', op['errors'])}")
    oof = m.get("oof")
    if oof:
        print(
            f"  out-of-fold ({oof['n']} labeled images): {claim('escapes', oof['escapes'])}; "
            f"{claim('overkill', oof['overkill'])}; {claim('UNSURE', oof['unsure'])} "
            "(scores of the fold models, which trained shorter on fewer labels than this one)"
        )
    for w in m.get("warnings", []):
        print(w)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from defectssft.calibration import SETTING_MARGIN, SETTING_REVIEW_RATE
    from defectssft.evaluate import comparison_table, evaluate_project_model

    project = _open(args.project)
    if args.review_rate is not None:
        project.set_setting(SETTING_REVIEW_RATE, args.review_rate)
    if args.margin is not None:
        project.set_setting(SETTING_MARGIN, args.margin)
    ev = evaluate_project_model(project, args.model, args.max_escape, report=not args.no_report)
    print_evaluation(ev.metrics)
    if ev.report:
        print(f"report: {ev.report}")
    print("\n" + comparison_table(project))
    return 0


# --------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from defectssft.export import ExportError, export_project_model
    from defectssft_line.recheck import NO_GAIN_SHARE

    project = _open(args.project)
    if args.output is not None:
        out = Path(args.output)
        if out.is_dir():
            raise ExportError(
                f"-o {out}: is a folder; give the file to write, e.g. -o {out / 'model.onnx'}"
            )
        if out.parent.exists() and not out.parent.is_dir():
            raise ExportError(f"-o {out}: {out.parent} is not a folder")
    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    result = export_project_model(
        project,
        args.model,
        args.output,
        precision,
        threshold=args.threshold,
        unsure_low=args.unsure_low,
        unsure_high=args.unsure_high,
        max_int8_drop=args.max_int8_drop,
        anomaly=not args.no_anomaly,
        anomaly_map=not args.no_map,
        max_flip_logit=args.max_flip_logit,
        recheck=not args.no_recheck,
    )
    t = result.metadata["thresholds"]
    for note in result.notes:
        print(note)
    print(f"exported {result.summary()}")
    print(
        f"thresholds: ng {t['ng']:.4g}, unsure band [{t['unsure_low']:.4g}, {t['unsure_high']:.4g})"
    )
    check = result.verdict_check
    if check.get("n"):
        print(
            f"verdicts: the same as torch on all {check['n']} val/test/stream images "
            f"(max |dscore| {check['max_score_diff']:.2e})"
            + (" with the widened UNSURE band" if check.get("widened") else "")
        )
    again = result.metadata.get("recheck")
    if again:
        said = check.get("rechecked") or {}
        share = (
            f"; {said['stream']} of {said['stream_n']} stream images"
            if said.get("stream_n") else ""
        )  # fmt: skip
        print(
            f"INT8 with the exact re-check: parts within {again['logit']:.3g} logits of a verdict "
            f"edge run through the fp32 graph too ({said.get('n', 0)} of {check.get('n', 0)} "
            f"checked images{share})"
        )
        if said.get("stream_n") and said["stream"] > NO_GAIN_SHARE * said["stream_n"]:
            print(
                f"warning: the re-check would run {said['stream'] / said['stream_n']:.0%} of the "
                "stream's parts through fp32 as well: this INT8 file is no faster than fp32 "
                "on the line; export fp32 instead (the model's INT8 error is large)"
            )
    said = _stream_forecast(project, result.metadata)
    if said:
        print(said)
    if result.metadata.get("anomaly"):
        a = result.metadata["anomaly"]
        print(f"anomaly head: novel at score >= {a['threshold']:.4g} -> {a['on_novel']}")
    print(f"run it: defectssft-line run --model {result.path} --input IMAGES...")
    return 0


def _stream_forecast(project, metadata: dict) -> str | None:
    """What the exported file (its thresholds and anomaly head) does to the unlabeled images
    the version has predictions of: the line's verdicts, counts with exact 95 % intervals."""
    from defectssft.metrics import format_rate, rate_claim
    from defectssft.verdicts import stream_forecast
    from defectssft_line.decision import Thresholds
    from defectssft_line.novelty import NoveltyRule

    if project.ok_class is None:
        return None
    t = Thresholds(
        **{k: float(metadata["thresholds"][k]) for k in ("ng", "unsure_low", "unsure_high")}
    )
    f = stream_forecast(project, metadata["model_version"], t, NoveltyRule.from_metadata(metadata))
    if not f["n"]:
        return (
            "predicted on the unlabeled stream: unknown (no unlabeled image has a prediction of "
            "this version; `defectssft thresholds PROJECT --score` scores them)"
        )
    n = f["n"]
    return (
        f"predicted on the unlabeled stream ({n} scored): "
        + format_rate("to review (UNSURE)", rate_claim(f["UNSURE"], n))
        + (f", of which {f['novel']} novel" if f["novel"] else "")
        + "; "
        + format_rate("rejected (NG)", rate_claim(f["NG"], n))
    )


# --------------------------------------------------------------------------- promote


def cmd_promote(args: argparse.Namespace) -> int:
    from defectssft.promote import force_promote, maybe_promote

    project = _open(args.project)
    if args.force:
        ok, reason = force_promote(project, args.version)
    else:
        ok, reason = maybe_promote(project, args.version, args.overkill_tolerance, args.max_escape)
    print(reason)
    return 0 if ok else 1


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from defectssft.demo import run_demo

    run_demo(
        Path(args.workdir),
        tiny=args.tiny,
        epochs=args.epochs,
        force=args.force,
        samples=Path(args.samples) if args.samples else None,
        data=args.data,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from defectssft.evaluate import DEFAULT_MAX_ESCAPE
    from defectssft.promote import DEFAULT_OVERKILL_TOLERANCE

    p = subparsers.add_parser(
        "evaluate", help="metrics and report of a model on the frozen test split"
    )
    p.add_argument("project")
    p.add_argument(
        "--model", metavar="VERSION", help="model version (default: production, else newest)"
    )
    p.add_argument(
        "--max-escape",
        type=_fraction,
        default=DEFAULT_MAX_ESCAPE,
        help="escapes allowed among the evidence defects when calibrating (default 0: the NG "
        "threshold sits a margin below the lowest one)",
    )
    p.add_argument(
        "--review-rate",
        type=_review_rate,
        help="share of the unlabeled stream the UNSURE band may send to review; stored as the "
        "project setting decision.review_rate (default 0.02)",
    )
    p.add_argument(
        "--margin",
        type=_margin,
        help="NG margin below the lowest evidence defect, in logits; stored as the project "
        "setting decision.margin_logit (default 1.0)",
    )
    p.add_argument("--no-report", action="store_true", help="metrics only, no report folder")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("export", help="one checked ONNX file for the line runtime")
    p.add_argument("project")
    p.add_argument(
        "--model", metavar="VERSION", help="model version (default: production, else newest)"
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", help="default: models/VERSION/model[.int8|.fp16].onnx"
    )
    prec = p.add_mutually_exclusive_group()
    prec.add_argument(
        "--int8", action="store_true", help="static INT8, calibrated on project images"
    )
    prec.add_argument("--fp16", action="store_true", help="half precision weights and arithmetic")
    p.add_argument(
        "--no-recheck",
        action="store_true",
        help="INT8: the INT8 graph alone (smaller file), without the fp32 graph the line runs on "
        "parts near a verdict edge (default: both in one file)",
    )
    p.add_argument("--threshold", type=_fraction, help="NG threshold to write (default: evaluated)")
    p.add_argument("--unsure-low", type=_fraction, help="UNSURE band lower edge")
    p.add_argument("--unsure-high", type=_fraction, help="UNSURE band upper edge (NG from here)")
    p.add_argument(
        "--max-int8-drop",
        type=_fraction,
        default=0.02,
        help="refuse INT8 if accuracy drops more than this (default 0.02 = 2 pt)",
    )
    p.add_argument(
        "--max-flip-logit",
        type=_margin,
        default=None,
        help="a verdict that flips between torch and the file with scores at most this many "
        "logits apart widens the UNSURE band over it (stored for the version, said); farther "
        "apart the export is refused (default 0.5; 0: refuse every flip)",
    )
    p.add_argument(
        "--no-map",
        action="store_true",
        help="with an anomaly head: output anomaly_score only, not anomaly_map",
    )
    p.add_argument(
        "--no-anomaly",
        action="store_true",
        help="leave the version's anomaly head (defectssft fit-anomaly) out of the export",
    )
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("promote", help="make a version production if it is not worse")
    p.add_argument("project")
    p.add_argument("version")
    p.add_argument(
        "--overkill-tolerance",
        type=_fraction,
        default=DEFAULT_OVERKILL_TOLERANCE,
        help="allowed overkill (or error) rate increase (default 0.005)",
    )
    p.add_argument("--max-escape", type=_fraction, default=DEFAULT_MAX_ESCAPE)
    p.add_argument("--force", action="store_true", help="skip the comparison (rollback)")
    p.set_defaults(func=cmd_promote)

    p = subparsers.add_parser("demo", help="the whole workflow on samples/ in a few minutes")
    p.add_argument(
        "--workdir", default="demo-project", help="folder for the demo (default demo-project)"
    )
    p.add_argument(
        "--data",
        choices=("neu", "kolektor"),
        default="neu",
        help="neu: NEU-DET, 6 defect types (default); kolektor: KolektorSDD good/defective, "
        "OK/NG verdicts with a calibrated threshold",
    )
    p.add_argument("--tiny", action="store_true", help="a tiny random model: seconds, for tests")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: preset)")
    p.add_argument("--samples", help="samples folder (default: the repository's samples/)")
    p.add_argument("--force", action="store_true", help="replace an existing demo workdir")
    p.set_defaults(func=cmd_demo)


if __name__ == "__main__":  # pragma: no cover
    print("use: defectssft evaluate|export|promote|demo", file=sys.stderr)
