"""Screenshots of the real app for the README: main window, label book, training dialog.

Builds a throw-away project from samples/neu-det (two thirds labeled from the file names, the
rest unlabeled), trains a tiny model through the training dialog (a real child process, a few
seconds on a CPU), predicts the unlabeled images, shows a heat map, and saves
``QWidget.grab()`` images offscreen:

    python scripts/screenshots.py [--out docs/screenshots]

-> main-window.png, label-book.png, training.png
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
DESCRIPTIONS = {
    "crazing": "network of fine surface cracks",
    "inclusion": "foreign particles rolled into the surface",
    "patches": "irregular darker areas",
    "pitted_surface": "small pits or craters",
    "rolled-in_scale": "oxide scale pressed into the strip",
    "scratches": "long straight marks along the rolling direction",
}
TINY = (
    "model.name=test_efficientnet model.weights=none input.height=64 input.width=64 "
    "train.batch_size=8 train.num_workers=0 train.log_every=2 train.eval_every=10 "
    "train.threads=1"
)


def wait(app, cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"error: timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.01)


def build_project(root: Path):
    from defectssft.ingest import import_paths
    from defectssft.project import Project

    files = sorted((REPO / "samples" / "neu-det").glob("*.jpg"))
    classes = sorted({f.name.rsplit("_", 1)[0] for f in files})
    project = Project.create(root, classes=classes, name="steel-strip line 3")
    for c in project.classes():
        project.update_class(c.name, description=DESCRIPTIONS.get(c.name, ""))
    labeled = [f for i, f in enumerate(files) if i % 3 != 2]
    unlabeled = [f for i, f in enumerate(files) if i % 3 == 2]
    import_paths(project, labeled, label_from=r"filename:^(.+)_\d+\.jpg$")
    import_paths(project, unlabeled)
    return project


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshots of the app for the README.")
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PySide6.QtWidgets import QApplication

    from defectssft_gui.window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory(prefix="screens-") as tmp:
        project = build_project(Path(tmp) / "project")
        window = MainWindow(project, quiet=True)
        window.resize(1400, 860)
        window.show()
        wait(app, lambda: window.current_row() is not None, 20, "the grid")

        # Training dialog: a real (tiny) run through the child process.
        window.open_training()
        dlg = window.train_dialog
        dlg.resize(760, 760)
        dlg.steps.setValue(args.steps)
        dlg.extra.setText(TINY)
        finished: list[str] = []
        evaluated: list[int] = []
        dlg.runFinished.connect(lambda status, _code: finished.append(status))
        dlg.evaluationFinished.connect(evaluated.append)
        dlg.start()
        wait(app, lambda: bool(finished), 600, "training")
        if finished[0] != "completed":
            raise SystemExit(f"error: training {finished[0]}: {dlg.state_label.text()}")
        wait(app, lambda: bool(evaluated), 300, "the evaluation")
        for _ in range(5):  # let the layout settle around the report
            app.processEvents()
            time.sleep(0.02)
        dlg.grab().save(str(out / "training.png"))
        dlg.close()

        # Main window: predictions of the new model, an uncertain image with its heat map.
        done: list[int] = []
        window.predictionsDone.connect(done.append)
        window.run_predict()
        wait(app, lambda: bool(done), 300, "predictions")
        loaded: list[int] = []
        window.rowsLoaded.connect(loaded.append)
        window.set_filter("useful", top=True)
        wait(app, lambda: bool(loaded), 60, "the grid")
        shown: list[str] = []
        window.camReady.connect(shown.append)
        window.actions_by_name["heatmap"].setChecked(True)
        window.compute_heatmap()
        wait(app, lambda: bool(shown), 120, "the heat map")
        wait(
            app,
            lambda: all(
                window.model.has_thumbnail(i) for i in range(min(12, window.model.total()))
            ),
            30,
            "thumbnails",
        )
        app.processEvents()
        window.grab().save(str(out / "main-window.png"))

        # Label book.
        window.open_label_book()
        book = window.label_book
        book.resize(860, 560)
        book.table.setCurrentCell(5, 0)
        app.processEvents()
        book.grab().save(str(out / "label-book.png"))
        book.close()
        window.close()
        app.processEvents()
    for name in ("main-window.png", "label-book.png", "training.png"):
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
