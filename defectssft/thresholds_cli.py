"""``defectssft thresholds PROJECT``: a version's operating point (NG threshold + UNSURE band) and
what it does, with counts and 95 % intervals; with values, check and store a new one (the next
``defectssft export`` writes it). The numbers come from ``defectssft.operating``.
"""

from __future__ import annotations

import argparse
import json
import sys


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _chosen(args: argparse.Namespace, current):
    """The thresholds asked for: ``--ng`` alone drops the band (as ``export --threshold``
    does); a band edge alone changes that edge of the current point."""
    from defectssft.errors import DefectssftError
    from defectssft.operating import candidate
    from defectssft_line.decision import ThresholdError

    for flag, value in (
        ("--ng", args.ng),
        ("--unsure-low", args.unsure_low),
        ("--unsure-high", args.unsure_high),
    ):
        if value is not None and not 0.0 <= value <= 1.0:
            raise DefectssftError(f"{flag} must be in [0, 1], got {value}")
    ng = current.ng if args.ng is None else args.ng
    keep = args.ng is None
    low = args.unsure_low if args.unsure_low is not None else (current.unsure_low if keep else ng)
    high = (
        args.unsure_high if args.unsure_high is not None else (current.unsure_high if keep else ng)
    )
    try:
        return candidate(ng, low, high)
    except ThresholdError as e:
        raise DefectssftError(
            f"{e}; nothing saved (--ng alone drops the band, give --unsure-low/--unsure-high too)"
        ) from None


def _print(data, table, as_json: bool, hist_bins: int = 40) -> None:
    from defectssft.operating import histogram, novelty_text, table_text

    if as_json:
        rule = data.novelty
        out = {
            "version": data.version,
            "source": data.source,
            "saved": data.saved,
            "novelty": {
                "source": data.novelty_source,
                "threshold": None if rule is None else rule.threshold,
                "on_novel": None if rule is None else rule.on_novel,
                "novel_labeled": len(data.labeled.novel_ok) + len(data.labeled.novel_defect),
                "novel_stream": len(data.stream_novel),
            },
            "rates": table.as_dict(),
            "notes": data.notes,
            "histogram": histogram(data, hist_bins).as_dict(),
        }
        print(json.dumps(out, indent=2))
        return
    print(f"model {data.version}: operating point {data.source}")
    print(table_text(table))
    said = novelty_text(data)
    if said:
        print(f"  {said}")
    for note in data.notes:
        print(f"note: {note}")


def cmd_thresholds(args: argparse.Namespace) -> int:
    from defectssft.errors import DefectssftError
    from defectssft.operating import load_operating_data, rates, score_unscored
    from defectssft.project import Project

    project = Project.open(args.project)
    values = (args.ng, args.unsure_low, args.unsure_high)
    if args.clear and any(v is not None for v in values):
        raise DefectssftError("--clear cannot be combined with --ng/--unsure-low/--unsure-high")
    version = project.get_model(args.model)["version"]
    if args.score:
        summary = score_unscored(project, version)
        print(
            f"scored {summary['predicted']} image(s) with {version}"
            + (f" ({summary['skipped']} unreadable)" if summary["skipped"] else ""),
            file=sys.stderr,
        )
    data = load_operating_data(project, version)
    if args.clear:
        project.set_operating_point(version, None)
        data = load_operating_data(project, version)
        if not args.json:
            print(f"cleared the saved operating point of {version}")
    elif any(v is not None for v in values):
        chosen = _chosen(args, data.current)
        before = data.current
        project.set_operating_point(
            version, chosen.ng, chosen.unsure_low, chosen.unsure_high, source="cli"
        )
        data = load_operating_data(project, version)
        if not args.json:
            print(
                f"saved for {version} (was ng {before.ng:.6g}, band [{before.unsure_low:.6g}, "
                f"{before.unsure_high:.6g})); the next `defectssft export {args.project} "
                f"--model {version}` writes it"
            )
            if project.production_model() == version:
                print(
                    f"{version} is production: exports/production.onnx keeps the old thresholds "
                    f"until republished (`defectssft promote {args.project} {version} --force`)"
                )
    _print(data, rates(data, data.current), args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    p = sub.add_parser(
        "thresholds",
        help="a version's NG threshold and UNSURE band: escapes, overkill, review rate; set them",
        description="Without values: the version's operating point (what the next export writes) "
        "and, on the labeled val/test/out-of-fold images and the unlabeled stream, its escapes, "
        "overkill, UNSURE and review rates with counts and 95 %% intervals. With values: check "
        "them (0 <= unsure-low <= ng <= unsure-high <= 1), store them for the version and print "
        "the new table. --ng alone drops the UNSURE band; a band edge alone changes that edge.",
    )
    p.add_argument("project")
    p.add_argument(
        "--model", metavar="VERSION", help="model version (default: production, else newest)"
    )
    p.add_argument("--ng", type=_number, metavar="X", help="NG threshold on the defect score")
    p.add_argument("--unsure-low", type=_number, metavar="L", help="UNSURE band lower edge")
    p.add_argument(
        "--unsure-high", type=_number, metavar="H", help="UNSURE band upper edge (NG from here)"
    )
    p.add_argument(
        "--clear",
        action="store_true",
        help="forget the saved point: back to the one `defectssft evaluate` chose",
    )
    p.add_argument(
        "--score",
        action="store_true",
        help="first score the val, test and unlabeled images the version has no prediction of",
    )
    p.add_argument("--json", action="store_true", help="print the rates and histogram as JSON")
    p.set_defaults(func=cmd_thresholds)
