"""``defectssft check PROJECT``: is every image, model version and the production export whole?"""

from __future__ import annotations

import argparse
import json
import sys


def cmd_check(args: argparse.Namespace) -> int:
    from defectssft.check import check_project
    from defectssft.project import Project

    project = Project.open(args.project)
    show = sys.stderr.isatty() and not args.json

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\r{done}/{total} images", end="" if done < total else "\n", file=sys.stderr)

    report = check_project(project, verify_hashes=not args.quick, progress=progress)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        what = "sizes" if args.quick else "hashes"
        print(
            f"checked {report.images} image(s) ({what}) and {report.models} model version(s): "
            + ("ok" if report.ok else f"{len(report.problems)} problem(s)")
        )
        for line in report.problems:
            print(f"  problem: {line}")
        for line in report.notes:
            print(f"  note: {line}")
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    p = sub.add_parser(
        "check",
        help="verify the project: every image file present with its hash, models, production",
        description="Exit status 0 when the project is whole, 1 when a problem was found "
        "(each printed on one line with what to do). Never changes the project.",
    )
    p.add_argument("project")
    p.add_argument(
        "--quick", action="store_true", help="compare file sizes only, do not hash every image"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)
