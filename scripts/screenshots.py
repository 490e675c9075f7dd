"""Screenshots of the real app for docs/GUI.md: main window, label book, training dialog, and each
step of a new user's first session.

1. A throw-away project from samples/neu-det (two thirds labeled from the file names, the rest
   unlabeled): a tiny model trained through the training dialog (a real child process, a few
   seconds on a CPU), predictions, a heat map -> main-window.png, label-book.png, training.png.
2. ``walkthrough``: a new project, samples/kolektorsdd imported, 10 images labeled by keyboard,
   a tiny model trained, its verdicts, promoted from the Models panel, a second model, roll back
   -> walk-01-new-project.png … walk-09-rolled-back.png. ``tests/gui/test_walkthrough.py`` runs
   the same function (without pictures) as a test.
3. ``operating``: the operating-point panel on a copy of an existing project with a trained
   model (``--project PATH``; the copy is scored and changed, the original never):
   -> operating-point.png, operating-point-band.png, operating-point-verdicts.png.

    python scripts/screenshots.py [--out docs/screenshots] [--only walkthrough]
    python scripts/screenshots.py --only operating --project PROJECT [--model VERSION]

All offscreen (``QWidget.grab()``).
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


def wait_thumbnails(app, window, first: int = 12) -> None:
    """Until the grid's first ``first`` thumbnails are drawn."""
    wait(
        app,
        lambda: all(window.model.has_thumbnail(i) for i in range(min(first, window.model.total()))),
        30,
        "thumbnails",
    )


WALK_TINY = (
    "model.name=test_efficientnet model.weights=none "
    "train.batch_size=4 train.num_workers=0 train.log_every=1 train.eval_every=2 "
    "train.checkpoint_every=1000 train.threads=1"
)


def walkthrough(app, root: Path, wait, shoot=None, steps: int = 4) -> dict:
    """A new user's first session on samples/kolektorsdd through the real window.

    ``wait(cond, seconds, what)`` waits for a condition (polling here, ``qtbot.waitUntil`` in the
    test); ``shoot(widget, name)`` saves a screenshot (None: no pictures). Returns what a test
    checks: labels given, versions, verdicts seen, production after each step.
    """
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QWizard

    from defectssft_gui import project_flows
    from defectssft_gui.window import MainWindow

    def snap(widget, name: str) -> None:
        if shoot is not None:
            for _ in range(5):
                app.processEvents()
                time.sleep(0.02)
            shoot(widget, name)

    out: dict = {}
    # 1. New project from the wizard: the sample folder's 16 images, imported unlabeled
    #    (rule "none"), classes good (key 1) / defective (key 2), OK class good.
    window = MainWindow(None, quiet=True)
    window.resize(1280, 800)
    window.show()
    imported: list = []
    window.importDone.connect(imported.append)
    wizard = project_flows.new_project(window)
    wizard.folder_page.folder.setText(str(root))
    wizard.next()
    wizard.images_page.paths.setText(str(REPO / "samples" / "kolektorsdd"))
    wizard.images_page.rule.set_rule(None)
    wizard.next()
    wizard.classes_page.add_row("good", "1")
    wizard.classes_page.add_row("defective", "2")
    wizard.classes_page.set_ok("good")
    snap(wizard, "walk-01-new-project")
    wizard.next()
    wizard.next()
    wizard.button(QWizard.WizardButton.FinishButton).click()
    # 2. The wizard's import runs on a pool thread; the grid fills.
    wait(lambda: bool(imported), 60, "the import")
    wait(lambda: window.model is not None and window.model.total() == 16, 30, "the grid")
    window.activateWindow()  # the wizard had the keyboard; class hotkeys need the window's
    wait(lambda: app.activeWindow() is window, 10, "the window to be active")
    snap(window, "walk-02-imported")
    # 3. Label 10 images by keyboard (1 = good, 2 = defective, D = skip), 5 of each.
    p = window.project
    defective = {f.name for f in (REPO / "samples" / "kolektorsdd" / "defective").iterdir()}
    counts = {"good": 0, "defective": 0}
    for _ in range(40):
        if sum(counts.values()) == 10:
            break
        row = window.current_row()
        truth = "defective" if row.name in defective else "good"
        window.activateWindow()
        if counts[truth] < 5 and row.label is None:
            QTest.keyClick(window, Qt.Key.Key_2 if truth == "defective" else Qt.Key.Key_1)
            counts[truth] += 1
        else:
            QTest.keyClick(window, Qt.Key.Key_D)
    out["labeled"] = dict(p.status()["by_class"])
    wait(lambda: "10 labeled" in window.counts_label.text(), 10, "the counts")
    snap(window, "walk-03-labeled")
    # The whole cycle needs a test split from 5 labels a class (`defectssft split --min-labels
    # 3`): by default a class is held out from only at 30 labels, and training cross-fits.
    p.set_setting("split.min_labels", 3)

    # 4. Train a tiny model in the training dialog; it is evaluated, then predicts by itself.
    def train(seed: int = 0) -> str:
        window.open_training()
        dlg = window.train_dialog
        dlg.resize(760, 760)
        dlg.steps.setValue(steps)  # input height x width: the dialog's proposal
        dlg.extra.setText(f"{WALK_TINY} train.seed={seed}")
        finished: list = []
        evaluated: list = []
        predicted: list = []

        def on_predicted(code: int) -> None:
            predicted.append(code)

        dlg.runFinished.connect(lambda status, _code: finished.append(status))
        dlg.evaluationFinished.connect(evaluated.append)
        window.predictionsDone.connect(on_predicted)
        auto = p.production_model() is None  # the new model is the one shown: it predicts
        if not dlg.start():
            raise SystemExit("error: the training did not start")
        wait(lambda: bool(finished), 600, "training")
        if finished[0] != "completed":
            raise SystemExit(f"error: training {finished[0]}: {dlg.log.toPlainText()[-500:]}")
        wait(lambda: bool(evaluated), 300, "the evaluation")
        if auto:
            wait(lambda: bool(predicted), 300, "the automatic predictions")
        window.predictionsDone.disconnect(on_predicted)
        return str(dlg.version)

    out["v1"] = train()
    snap(window.train_dialog, "walk-04-training")
    window.train_dialog.close()
    # 5. The verdicts of the new model on the images nobody labeled.
    loaded: list = []

    def on_rows(n: int) -> None:
        loaded.append(n)

    window.rowsLoaded.connect(on_rows)
    window.set_filter("unlabeled", top=True)
    wait(lambda: bool(loaded), 30, "the grid")
    window.rowsLoaded.disconnect(on_rows)
    out["verdicts"] = [window.verdicts.get(window.model.row(i).image_id) for i in range(6)]
    out["strip_verdict"] = window.strip.verdict
    snap(window, "walk-05-verdicts")
    # 6. Promote it from the Models panel (the first production model: published).
    window.open_models()
    models = window.models_dialog
    models.resize(1100, 640)
    changed: list = []
    models.productionChanged.connect(changed.append)
    models.select(out["v1"])
    models.promote()
    wait(lambda: not models._tasks, 300, "the promotion")
    out["promoted"] = (p.production_model(), models.last_message)
    if p.production_model() is None:  # a handful of test images is no evidence: publish anyway
        models.promote(force=True, version=out["v1"])
        wait(lambda: not models._tasks, 300, "the forced promotion")
        out["promoted"] = (p.production_model(), models.last_message)
    snap(models, "walk-06-promoted")
    models.show_report(out["v1"])
    snap(models, "walk-07-report")
    # 7. A second model, compared, then made production and rolled back.
    out["v2"] = train(seed=1)  # another start: not the same model again
    window.train_dialog.close()
    models.reload()
    models.select(out["v2"])
    models.promote()  # the CLI's rule: only if not worse
    wait(lambda: not models._tasks, 300, "the promotion")
    out["second"] = (p.production_model(), models.last_message)
    if p.production_model() != out["v2"]:
        models.promote(force=True, version=out["v2"])  # a deliberate change
        wait(lambda: not models._tasks, 300, "the forced promotion")
    all_done: list = []

    def on_all(summary: dict) -> None:
        all_done.append(summary)

    window.predictAllDone.connect(on_all)
    window.predict_all()  # the new production model scores every image: more to compare
    wait(lambda: bool(all_done), 300, "predict all")
    window.predictAllDone.disconnect(on_all)
    models.compare_a.setCurrentText(out["v1"])
    models.compare_b.setCurrentText(out["v2"])
    models.tabs.setCurrentIndex(1)
    snap(models, "walk-08-compare")
    models.tabs.setCurrentIndex(0)
    models.select(out["v1"])
    models.promote(force=True, version=out["v1"])  # roll back
    wait(lambda: not models._tasks, 300, "the roll back")
    out["rolled_back"] = (p.production_model(), models.last_message)
    out["production_onnx"] = (p.root / "exports" / "production.onnx").is_file()
    out["changes"] = list(changed)
    snap(models, "walk-09-rolled-back")
    wait(lambda: window.model_version == out["v1"], 30, "the window to follow")
    out["window_model"] = window.model_version
    models.close()
    window.close()
    app.processEvents()
    return out


def operating_point_shots(app, source: Path, out: Path, version: str | None = None) -> list[str]:
    """The operating-point panel on a copy of ``source``: as evaluated, then with an UNSURE band
    saved, and the main window's UNSURE filter that follows it."""
    import shutil

    from defectssft.project import Project
    from defectssft_gui.window import MainWindow

    names = []
    with tempfile.TemporaryDirectory(prefix="operating-") as tmp:
        root = Path(tmp) / source.name
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("runs", "cache", "*.onnx"))
        project = Project.open(root)
        window = MainWindow(project, quiet=True)
        window.resize(1400, 860)
        window.show()
        wait(app, lambda: window.current_row() is not None, 60, "the grid")
        window.open_operating_point(version)
        dlg = window.operating_dialog
        dlg.resize(1150, 780)
        wait(app, lambda: dlg.data is not None and not dlg._tasks, 120, "the scores")
        if dlg.data.missing:
            dlg.score_missing()
            wait(app, lambda: not dlg._tasks and dlg.data is not None, 900, "scoring")
            wait(app, lambda: not dlg._tasks, 120, "the scores")

        def shoot(widget, name: str) -> None:
            for _ in range(5):
                app.processEvents()
                time.sleep(0.02)
            widget.grab().save(str(out / f"{name}.png"))
            names.append(f"{name}.png")

        shoot(dlg, "operating-point")
        # An UNSURE band around the threshold, 1.5 either side on the logit axis.
        from defectssft.operating import from_logit, to_logit

        ng = dlg.data.current.ng
        low, high = (float(from_logit(to_logit(ng) + d)) for d in (-1.5, 1.5))
        dlg.set_thresholds(low, ng, high)
        loaded: list[int] = []
        window.rowsLoaded.connect(loaded.append)
        dlg.save()
        shoot(dlg, "operating-point-band")
        wait(app, lambda: bool(loaded), 60, "the grid")
        loaded.clear()
        window.set_filter("verdict:unsure")
        wait(app, lambda: bool(loaded), 60, "the UNSURE filter")
        wait_thumbnails(app, window)
        shoot(window, "operating-point-verdicts")
        dlg.close()
        window.close()
        app.processEvents()
    return names


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
    parser.add_argument("--only", choices=["walkthrough", "operating"], default=None)
    parser.add_argument("--project", help="with --only operating: a project with a trained model")
    parser.add_argument("--model", help="with --only operating: the version (default: current)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PySide6.QtWidgets import QApplication

    from defectssft_gui.window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    if args.only == "operating":
        if not args.project:
            parser.error("--only operating needs --project PATH")
        for name in operating_point_shots(app, Path(args.project), out, args.model):
            print(out / name)
        return 0
    with tempfile.TemporaryDirectory(prefix="walk-") as tmp:
        names: list[str] = []

        def shoot(widget, name: str) -> None:
            widget.grab().save(str(out / f"{name}.png"))
            names.append(f"{name}.png")

        walkthrough(app, Path(tmp) / "kolektor", lambda c, s, w: wait(app, c, s, w), shoot)
        for name in names:
            print(out / name)
    if args.only == "walkthrough":
        return 0
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
        wait_thumbnails(app, window)
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
