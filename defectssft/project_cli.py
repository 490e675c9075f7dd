"""CLI commands that create and feed a project: init, import, status, classes, split, watch, capture."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from typing import Any

from defectssft.errors import ProjectError
from defectssft.import_cli import add_import_options
from defectssft.project import Project


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_init(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in (args.classes or "").split(",") if c.strip()]
    ok = args.ok_class
    if ok is None and "ok" in classes:
        ok = "ok"
    like = None
    if args.like:  # read before creating: a bad path creates nothing
        from defectssft.input_proposal import image_files, proposal, sizes_of

        like = proposal(sizes_of(image_files(args.like)))
    project = Project.create(args.project, classes=classes, ok_class=ok)
    if args.bit_depth:
        project.set_setting("input.bit_depth", args.bit_depth)
    if args.json:
        _print_json(project.status())
    else:
        print(f"created project {project.root}")
        print(
            f"classes: {', '.join(classes) or '(none yet)'}" + (f"  (OK class: {ok})" if ok else "")
        )
        for line in like or []:
            print(line.replace("PROJECT", str(project.root)))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from defectssft.import_cli import run_import

    return run_import(args)


def cmd_status(args: argparse.Namespace) -> int:
    project = Project.open(args.project)
    st = project.status()
    if args.json:
        if args.quarantine:
            st["quarantine"] = project.quarantined()
        _print_json(st)
        return 0
    print(f"project {st['project']} at {st['path']}")
    print(
        f"images: {st['images']}  labeled: {st['labeled']}  unlabeled: {st['unlabeled']}  "
        f"quarantined: {st['quarantined']}"
    )
    print("by class:")
    for name, n in st["by_class"].items():
        mark = "  (OK class)" if name == st["ok_class"] else ""
        print(f"  {name:<24} {n:>8}{mark}")
    print("by split:          labeled  unlabeled")
    for split, c in st["by_split"].items():
        print(f"  {split:<16} {c['labeled']:>8} {c['unlabeled']:>10}")
    print(f"models: {st['models']}  production: {st['production_model'] or '-'}")
    from defectssft.check import missing_image_files

    missing = missing_image_files(project)
    if missing:
        print(
            f"warning: {len(missing)} image(s) have no stored file: run `defectssft check "
            f"{project.root}` and import the originals again"
        )
    if args.quarantine:
        for q in project.quarantined():
            print(f"  quarantined {q['path']}: {q['reason']}")
    return 0


def cmd_classes(args: argparse.Namespace) -> int:
    project = Project.open(args.project)
    if args.action == "add":
        project.add_class(
            args.name,
            description=args.description or "",
            colour=args.colour,
            hotkey=args.hotkey,
            is_ok=args.ok,
        )
    elif args.action == "set":
        fields: dict[str, Any] = {}
        for key in ("description", "colour", "hotkey"):
            if getattr(args, key) is not None:
                fields[key] = getattr(args, key)
        if args.ok:
            fields["is_ok"] = True
        project.update_class(args.name, **fields)
    elif args.action == "rename":
        info = project.rename_class(args.name, args.new_name, who=args.who)
        if not args.json and info.name != args.name:
            note = (
                f"; models trained before report {args.name!r} until retrained"
                if project.models()
                else ""
            )
            print(f"renamed class {args.name!r} to {info.name!r}{note}")
    elif args.action in ("delete", "merge"):
        from defectssft.class_ops import delete_class, merge_class

        if args.action == "merge":
            done = merge_class(project, args.name, args.new_name, who=args.who)
        else:
            done = delete_class(project, args.name, who=args.who, unlabel=args.unlabel)
        if not args.json:
            where = f"; {done.moved} labels moved to {done.into!r}" if done.into else ""
            gone = f"; {done.moved} images unlabeled" if not done.into and done.moved else ""
            print(f"deleted class {done.name!r}{where}{gone} (label history kept)")
    rows = [c.__dict__ for c in project.classes()]
    if args.json:
        _print_json(rows)
    else:
        for c in rows:
            ok = " OK" if c["is_ok"] else ""
            print(
                f"{c['hotkey'] or '-'}  {c['name']:<24} {c['colour'] or '':<8}{ok}  "
                f"{c['description']}"
            )
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    project = Project.open(args.project)
    if args.val is not None:
        project.set_setting("split.val_fraction", args.val)
    if args.test is not None:
        project.set_setting("split.test_fraction", args.test)
    if args.min_labels is not None:
        if args.min_labels < 0:
            raise ProjectError(f"--min-labels must be 0 or more, got {args.min_labels}")
        project.set_setting("split.min_labels", args.min_labels)
    moved = project.assign_splits(seed=args.seed)
    st = project.status()["by_split"]
    if args.json:
        _print_json({"assigned": moved, "by_split": st})
    else:
        print(f"assigned now: {moved}")
        print("labeled per split: " + ", ".join(f"{k}={v['labeled']}" for k, v in st.items()))
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return stop


def cmd_watch(args: argparse.Namespace) -> int:
    from defectssft.ingest import HotFolder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    project = Project.open(args.project)

    def report(path, result) -> None:  # type: ignore[no-untyped-def]
        from defectssft_line.names import safe_text

        path = safe_text(path)
        line = {
            "file": path,
            "status": result.status,
            "image_id": result.image_id,
            "reason": result.reason,
        }
        print(
            json.dumps(line)
            if args.json
            else f"{result.status:<11} {path}"
            + (f": {result.reason}" if result.reason and result.status == "quarantined" else ""),
            flush=True,
        )

    folder = HotFolder(project, args.folder, settle=args.settle, after=args.after, on_result=report)
    stop = _stop_on_signals()
    if not args.json:
        print(f"watching {args.folder} -> {project.root} (Ctrl-C to stop)", flush=True)
    folder.run(stop=stop, poll=args.poll)
    if not args.json:
        print(f"stopped: {folder.counts}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from defectssft.ingest import capture

    project = Project.open(args.project)
    stop = _stop_on_signals()
    if args.cti:  # a GenTL producer file is accepted on the standard variable
        os.environ["GENICAM_GENTL64_PATH"] = args.cti
    counts = capture(
        project,
        args.source,
        every=args.every,
        max_frames=args.max_frames,
        stop=stop,
        camera_settings=args.camera_settings,
    )
    if args.json:
        _print_json(counts)
    else:
        print(
            f"read {counts['frames']} frames: {counts['added']} stored, "
            f"{counts['duplicate']} duplicates, {counts['quarantined']} bad"
        )
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from defectssft.check import collect_garbage

    report = collect_garbage(Project.open(args.project), args.grace)
    if args.json:
        _print_json(report.as_dict())
    else:
        print(report.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    p = sub.add_parser("init", help="create a project folder")
    p.add_argument("project", help="folder to create the project in")
    p.add_argument("--classes", help="comma-separated class names, e.g. ok,scratch,dent")
    p.add_argument("--ok-class", help="the good-part class (default: 'ok' when present)")
    p.add_argument(
        "--bit-depth",
        type=int,
        choices=range(8, 17),
        metavar="8..16",
        help="sensor bit depth of 16-bit images (e.g. 12); default 16",
    )
    p.add_argument(
        "--like",
        nargs="+",
        metavar="IMAGES",
        help="images or folders like the project's: propose the input height x width from "
        "their aspect ratio, and the tile grid at native resolution",
    )
    p.add_argument("--json", action="store_true", help="print the new project's status as JSON")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("import", help="import image files, folders or globs into a project")
    p.add_argument("project")
    p.add_argument("paths", nargs="+", help="files, folders (recursive) or glob patterns")
    p.add_argument(
        "--label-from",
        metavar="RULE",
        help="folder | filename:REGEX (first group is the class) | yolo; default: unlabeled",
    )
    p.add_argument("--source", default="import", help="source tag stored with each image")
    p.add_argument(
        "--split",
        action="store_true",
        help="draw the frozen val/test hold-out from the labeled images now",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_import_options(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("status", help="counts by class, split, labeled/unlabeled, quarantined")
    p.add_argument("project")
    p.add_argument("--quarantine", action="store_true", help="list quarantined files too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "classes",
        help="list, add, change or rename classes (the label book)",
        description="list | add NAME | set NAME | rename OLD NEW | merge NAME INTO | delete NAME. "
        "A rename keeps every label, the label history, the splits and the OK flag (they refer "
        "to the class, not its name); models trained before report the old name until "
        "retrained. merge gives NAME's images the label INTO (with history) and deletes NAME; "
        "delete refuses a class images carry (unless --unlabel) and the OK class.",
    )
    p.add_argument("project")
    p.add_argument(
        "action",
        nargs="?",
        choices=["list", "add", "set", "rename", "merge", "delete"],
        default="list",
    )
    p.add_argument("name", nargs="?", help="the class (for rename: its current name)")
    p.add_argument(
        "new_name",
        nargs="?",
        metavar="new",
        help="rename: the new name; merge: the class to merge into",
    )
    p.add_argument("--description")
    p.add_argument("--colour")
    p.add_argument("--hotkey")
    p.add_argument("--ok", action="store_true", help="make this the OK (good part) class")
    p.add_argument(
        "--unlabel",
        action="store_true",
        help="delete only: the images that carry the class become unlabeled (with history)",
    )
    p.add_argument(
        "--who", default="operator", help="rename/merge/delete: name kept in the log and history"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_classes_checked)

    p = sub.add_parser("split", help="assign the frozen val/test hold-out to newly labeled images")
    p.add_argument("project")
    p.add_argument("--val", type=float, help="validation fraction (saved in the project)")
    p.add_argument("--test", type=float, help="test fraction (saved in the project)")
    p.add_argument(
        "--min-labels",
        type=int,
        metavar="N",
        help="hold out from a class only once it has N labels (saved in the project; default 30)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("watch", help="ingest images as cameras drop them into a hot folder")
    p.add_argument("project")
    p.add_argument("folder", help="the hot folder")
    p.add_argument(
        "--after",
        choices=["keep", "move", "delete"],
        default="keep",
        help="what to do with a file once ingested (default keep; bad files are "
        "moved to _quarantine/ with move/delete)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds a file must stay unchanged before it is taken (default 1)",
    )
    p.add_argument("--poll", type=float, default=0.5, help="rescan interval in seconds")
    p.add_argument("--json", action="store_true", help="one JSON line per file")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("capture", help="store frames from a camera, stream or video file")
    p.add_argument("project")
    p.add_argument(
        "--source",
        "--camera",
        dest="source",
        required=True,
        help="camera index (0), rtsp://... URL, video file or genicam://SERIAL_OR_INDEX",
    )
    p.add_argument("--cti", help="GenTL producer (.cti) for genicam:// (or GENICAM_GENTL64_PATH)")
    p.add_argument("--camera-settings", metavar="YAML", help="GenICam settings (see deploy/README)")
    p.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    p.add_argument("--max-frames", type=int, help="stop after storing this many frames")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser(
        "gc", help="remove image and temporary files left by interrupted imports and exports"
    )
    p.add_argument("project")
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="S",
        help="only remove files older than this many seconds (default 3600: an import "
        "running now may still commit them)",
    )
    p.add_argument("--json", action="store_true", help="list what was removed as JSON")
    p.set_defaults(func=cmd_gc)


def _classes_checked(args: argparse.Namespace) -> int:
    if args.action in ("add", "set") and not args.name:
        raise ProjectError(f"`classes {args.action}` needs a class name")
    if args.action in ("merge", "delete"):
        if not args.name or (args.action == "merge" and not args.new_name):
            raise ProjectError(
                "`classes merge` needs the class and the class to merge it into: "
                "classes PROJECT merge NAME INTO"
                if args.action == "merge"
                else "`classes delete` needs the class name: classes PROJECT delete NAME"
            )
        if args.action == "delete" and args.new_name is not None:
            raise ProjectError(
                f"`classes delete` takes one class name, got {args.name!r} and "
                f"{args.new_name!r} (to move its labels: classes PROJECT merge NAME INTO)"
            )
        given = [f"--{k}" for k in ("description", "colour", "hotkey", "ok") if getattr(args, k)]
        if given:
            raise ProjectError(f"`classes {args.action}` does not take {', '.join(given)}")
    elif args.action == "rename":
        if not args.name or not args.new_name:
            raise ProjectError(
                "`classes rename` needs the current and the new name: "
                "classes PROJECT rename OLD NEW"
            )
        given = [f"--{k}" for k in ("description", "colour", "hotkey", "ok") if getattr(args, k)]
        if given:
            raise ProjectError(
                f"`classes rename` only renames; change {', '.join(given)} with `classes set`"
            )
    elif args.new_name is not None:
        raise ProjectError(
            f"`classes {args.action}` takes one class name, got {args.name!r} and {args.new_name!r}"
        )
    return cmd_classes(args)
