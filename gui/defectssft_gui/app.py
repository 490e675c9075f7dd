"""``defectssft-gui [PROJECT]``: start the desktop app, optionally on a project folder.

A folder that does not exist yet (or is empty) can be made a project with ``--create CLASSES``
(a folder holding other files is refused);
a path that cannot be opened ends with ``error: <message>`` and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from defectssft.errors import DefectssftError
from defectssft.project import Project


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defectssft-gui", description="Label, browse and train defect images."
    )
    parser.add_argument("project", nargs="?", help="project folder to open")
    parser.add_argument(
        "--create",
        metavar="CLASSES",
        help="create the project first with these comma-separated classes",
    )
    parser.add_argument("--ok-class", default=None, help="the good-part class (with --create)")
    return parser


def open_or_create(path: str, create: str | None, ok_class: str | None) -> Project:
    """The project at ``path``; DefectssftError (one line) if it cannot be opened or made."""
    if create is not None:
        from defectssft.new_project import check_project_folder

        check = check_project_folder(path)
        if check.kind in ("images", "other"):  # never next to unrelated files
            raise DefectssftError(check.message())
        classes = [c.strip() for c in create.split(",") if c.strip()]
        ok = ok_class or ("ok" if "ok" in classes else None)
        return Project.create(path, classes=classes, ok_class=ok)
    p = Path(path)
    if p.is_dir() and not (p / "project.db").exists() and not any(p.iterdir()):
        raise DefectssftError(
            f"{p}: empty folder; create a project with `defectssft-gui {p} --create ok,scratch` "
            "or in the app with File → New project"
        )
    return Project.open(path)


def qt_problem() -> str | None:
    """A known-bad PySide6 for this Python, as a one-line reason (None when fine).

    PySide6 6.12.0 on Python < 3.12 drops a reference to None/True/False on every call that
    returns them; the interpreter aborts after a few thousand calls ("none_dealloc").
    """
    import PySide6

    version = tuple(int(x) for x in PySide6.__version__.split(".")[:3] if x.isdigit())
    if version[:3] == (6, 12, 0) and sys.version_info < (3, 12):
        return (
            f"PySide6 {PySide6.__version__} crashes on Python "
            f"{sys.version_info.major}.{sys.version_info.minor} (reference-count bug); "
            "install another: pip install 'pyside6-essentials>=6.5,<6.12'"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = qt_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    project = None
    if args.project:
        try:
            project = open_or_create(args.project, args.create, args.ok_class)
        except DefectssftError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    elif args.create:
        print("error: --create needs a PROJECT folder", file=sys.stderr)
        return 2
    from PySide6.QtWidgets import QApplication

    from defectssft_gui.window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("defectssft")
    window = MainWindow(project)
    window.show()
    return run_event_loop(app)


def run_event_loop(app) -> int:  # type: ignore[no-untyped-def]
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(main())
