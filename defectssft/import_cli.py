"""CLI for imports with a preview, relabel and undo: ``import`` (run), ``imports list|undo``.

``defectssft import`` itself is declared in ``project_cli``; its work is ``run_import`` here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from defectssft.project import Project


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def add_import_options(p: argparse.ArgumentParser) -> None:
    """The preview / mapping / relabel flags of ``defectssft import``."""
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show what the import would do (labels found, counts, classes, duplicates) "
        "and write nothing",
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FOUND=TARGET",
        help="send files whose found label (folder name, regex group) is FOUND to TARGET: a "
        "class, new:NAME (create it), :unlabeled or :ignore (skip the files); repeatable",
    )
    p.add_argument(
        "--relabel",
        action="store_true",
        help="images already in the project take the label this import gives them "
        "(recorded in the label history) instead of keeping theirs",
    )
    p.add_argument("--who", default="import", help="name kept in the label history")


def run_import(args: argparse.Namespace) -> int:
    from defectssft.import_plan import apply_plan, parse_mapping, plan_import, scan_import

    project = Project.open(args.project)
    show = sys.stderr.isatty() and not args.json
    mapping = parse_mapping(args.map)

    def progress(done: int, total: int) -> None:
        if show and (done % 50 == 0 or done == total):
            print(f"\r{done}/{total} files", end="" if done < total else "\n", file=sys.stderr)

    scan = scan_import(
        args.paths,
        args.label_from,
        project,
        hash_files=args.dry_run,
        progress=progress if args.dry_run else None,
    )
    plan = plan_import(
        scan, project.class_names(), project.ok_class, mapping or None, relabel=args.relabel
    )
    if args.dry_run:
        if args.json:
            _print_json({"dry_run": True, **plan.as_dict()})
        else:
            print("dry run: nothing written")
            for line in plan.summary_lines():
                print(line)
        return 0
    summary = apply_plan(project, plan, source=args.source, who=args.who, progress=progress)
    summary_split = project.assign_splits() if args.split else None
    if args.json:
        out = summary.as_dict()
        if summary_split is not None:
            out["split"] = summary_split
        _print_json(out)
        return 0
    rate = summary.total / summary.seconds if summary.seconds else 0.0
    print(
        f"imported {summary.added} images ({summary.labeled} labeled), "
        f"{summary.duplicates} duplicates skipped, {summary.quarantined} quarantined "
        f"in {summary.seconds:.1f} s ({rate:.0f} files/s)"
    )
    if summary.relabeled:
        print(f"relabeled {summary.relabeled} images already in the project")
    if summary.skipped:
        print(f"skipped {summary.skipped} files (mapped to :ignore)")
    if summary.new_classes:
        print(f"new classes: {', '.join(summary.new_classes)}")
    for note in summary.notes:
        print(f"warning: {note}")
    for path, reason in summary.problems[:20]:
        print(f"  quarantined {path}: {reason}")
    if len(summary.problems) > 20:
        print(f"  ... and {len(summary.problems) - 20} more (see `defectssft status --json`)")
    for path, reason in summary.conflicts[:20]:
        print(f"  label conflict {path}: {reason}")
    if len(summary.conflicts) > 20:
        print(f"  ... and {len(summary.conflicts) - 20} more label conflicts (--json lists all)")
    if summary.restored:
        print(f"restored the missing stored file of {summary.restored} duplicate(s)")
    if summary_split is not None:
        print(f"split: {summary_split}")
    print(
        f"import {summary.import_id} (undo: defectssft imports {args.project} undo {summary.import_id})"
    )
    return 0


def cmd_imports(args: argparse.Namespace) -> int:
    from defectssft.import_log import ImportLogError, list_imports, undo_import

    project = Project.open(args.project)
    if args.action == "undo":
        if args.id is None:
            raise ImportLogError("`imports undo` needs the import's id (see `imports list`)")
        result = undo_import(
            project, args.id, mode="labels" if args.labels_only else "images", who=args.who
        )
        if args.json:
            _print_json(result.as_dict())
        else:
            what = (
                f"removed {result.removed} images, "
                if result.mode == "images"
                else "kept its images, "
            )
            print(
                f"undid import {result.import_id}: {what}put back {result.restored} labels"
                + (f", kept {result.kept} labels changed since" if result.kept else "")
                + (
                    f"; deleted the classes it created: {', '.join(result.classes_removed)}"
                    if result.classes_removed
                    else ""
                )
            )
        return 0
    if args.id is not None:
        raise ImportLogError("`imports list` takes no id")
    rows = list_imports(project)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no recorded imports")
    for r in rows:
        s = r["summary"]
        state = f"undone ({r['undone']['mode']})" if r["undone"] else ""
        print(
            f"{r['id']:>4}  {r['time'][:19]}  {r['who']:<10} added {s.get('added', '?')}, "
            f"labeled {s.get('labeled', '?')}, relabeled {s.get('relabeled', 0)}  "
            f"{r['label_from'] or 'unlabeled'}  {' '.join(r['paths'])}  {state}"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    p = sub.add_parser(
        "imports",
        help="list recorded imports or undo one",
        description="list | undo ID. Undo removes the images the import added and puts back the "
        "labels it set or changed (--labels-only: only the labels); labels changed by a person "
        "since are kept.",
    )
    p.add_argument("project")
    p.add_argument("action", nargs="?", choices=["list", "undo"], default="list")
    p.add_argument("id", nargs="?", type=int, help="undo only: the import's id (see list)")
    p.add_argument(
        "--labels-only",
        action="store_true",
        help="undo only the labels the import set; keep its images",
    )
    p.add_argument("--who", default="operator", help="name kept in the label history")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_imports)
