"""Screenshots of the New project wizard and the import preview, from the real windows, offscreen.

    python scripts/screenshots_import.py [--out docs/screenshots]

-> wizard-classes.png (classes found in samples/kolektorsdd, OK class chosen), wizard-bit-depth.png
(the 12-bit test image at 12 bit), import-preview.png (KolektorSDD again into a project that has
some of it, with the folders mapped to its classes), import-history.png (the imports, one undone).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
KOLEKTOR = REPO / "samples" / "kolektorsdd"


def wait(app, cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"error: timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.01)


def settle(app) -> None:
    for _ in range(5):
        app.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshots of the wizard and import preview.")
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PySide6.QtWidgets import QApplication

    from defectssft.import_log import undo_import
    from defectssft.import_plan import import_with_plan
    from defectssft_gui import project_flows
    from defectssft_gui.window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    saved = []
    with tempfile.TemporaryDirectory(prefix="screens-") as tmp:
        window = MainWindow(None, quiet=True)
        window.resize(1280, 800)
        window.show()

        # The wizard on KolektorSDD with sub-folder labels.
        wizard = project_flows.new_project(window)
        wizard.resize(720, 560)
        wizard.folder_page.folder.setText(str(Path(tmp) / "line-3"))
        wizard.next()
        wizard.images_page.paths.setText(str(KOLEKTOR))
        wizard.images_page.rule.set_rule("folder")
        wizard.next()
        wizard.classes_page.add_row("scratch", "3")
        settle(app)
        wizard.grab().save(str(out / "wizard-classes.png"))
        saved.append("wizard-classes.png")
        wizard.next()
        wizard.sensor_page.depth.setValue(12)
        settle(app)
        wizard.grab().save(str(out / "wizard-bit-depth.png"))
        saved.append("wizard-bit-depth.png")
        wizard.close()
        window.close()

        # The import preview: a project that already holds part of KolektorSDD, relabel on.
        from defectssft.project import Project

        project = Project.create(
            Path(tmp) / "p", classes=["ok", "crack", "scratch"], ok_class="ok", name="line 3"
        )
        first = import_with_plan(
            project, sorted(KOLEKTOR.glob("*/*.jpg"))[:8], "folder", {"defective": "scratch"}
        )
        import_with_plan(project, [REPO / "samples" / "neu-det"], None)
        window = MainWindow(project, quiet=True)
        window.resize(1280, 800)
        window.show()
        dialog = project_flows.open_import_dialog(window, [str(KOLEKTOR)], "folder")
        dialog.resize(780, 520)
        wait(app, lambda: dialog.scan is not None, 60, "the preview")
        dialog.table.set_target("defective", "crack")
        dialog.relabel.setChecked(True)
        settle(app)
        dialog.grab().save(str(out / "import-preview.png"))
        saved.append("import-preview.png")
        dialog.close()

        undo_import(project, first.import_id, mode="labels")
        history = project_flows.open_imports(window)
        history.resize(900, 300)
        settle(app)
        history.grab().save(str(out / "import-history.png"))
        saved.append("import-history.png")
        history.close()
        window.close()
        app.processEvents()
    for name in saved:
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
