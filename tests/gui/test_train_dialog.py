"""Training and export through the dialog: real child processes, a tiny model, a few steps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

pytestmark = pytest.mark.slow  # trains models in the app: `make test-fast` skips these

TINY = (
    "model.name=test_efficientnet model.weights=none input.height=32 input.width=32 "
    "train.batch_size=4 train.num_workers=0 train.log_every=1 train.eval_every=2 "
    "train.checkpoint_every=1000 train.threads=1"
)


@pytest.fixture
def labeled_window(window, image_files, qtbot):
    """15 labeled images (5 per class: enough for val and test splits) and 3 unlabeled."""
    p = window.project
    for f in image_files(6, start=50):
        p.add_image(f)
    ids = p.image_ids()
    for i, image_id in enumerate(ids[:15]):
        p.set_label(image_id, ["ok", "scratch", "dent"][i % 3])
    p.assign_splits(min_labels=3)  # the splits of old (the default holds out from 30 labels)
    return window


def open_dialog(window, qtbot):
    window.open_training()
    dlg = window.train_dialog
    qtbot.addWidget(dlg)
    dlg.extra.setText(TINY)
    return dlg


def test_train_to_completion_then_export(labeled_window, qtbot):
    window = labeled_window
    dlg = open_dialog(window, qtbot)
    assert not dlg.export_button.isEnabled()  # nothing trained yet
    dlg.steps.setValue(4)
    steps_seen = []
    dlg.proc.event.connect(lambda ev: steps_seen.append(ev.get("event")))
    with qtbot.waitSignal(dlg.runFinished, timeout=120000) as sig:
        assert dlg.start()
        assert not dlg.start_button.isEnabled() and dlg.cancel_button.isEnabled()
    status, code = sig.args
    assert (status, code) == ("completed", 0), dlg.log.toPlainText()
    assert dlg.version == "v0001"
    assert "step" in steps_seen and "model" in steps_seen
    assert len(dlg.curves.loss) >= 4
    assert dlg.progress.value() == 100
    assert "model v0001" in dlg.report.text()
    with qtbot.waitSignal(dlg.evaluationFinished, timeout=120000) as sig:
        pass  # evaluation on the test split starts by itself after a completed run
    assert sig.args == [0], dlg.log.toPlainText()
    assert "on the test split" in dlg.report.text()
    assert (window.project.models_dir / "v0001" / "eval").is_dir()
    assert (window.project.models_dir / "v0001" / "model.pt").is_file()
    assert window.model_version == "v0001"  # the window picked up the new model
    with qtbot.waitSignal(dlg.exportFinished, timeout=120000) as sig:
        qtbot.mouseClick(dlg.export_button, Qt.MouseButton.LeftButton)
    code, path = sig.args
    assert code == 0, dlg.log.toPlainText()
    assert path.endswith(".onnx") and Path(path).is_file() and os.path.getsize(path) > 0
    # Predict with the new model in a child process; the grid then shows suggestions.
    with qtbot.waitSignal(window.predictionsDone, timeout=120000) as sig:
        window.run_predict()
    assert sig.args == [0], window.last_error
    unlabeled = {r.id for r in window.project.query_images(unlabeled=True)}
    assert len(unlabeled) == 3
    assert unlabeled <= set(window.project.predictions("v0001"))
    with qtbot.waitSignal(window.rowsLoaded):
        window.set_filter("unlabeled")
    assert window.current_row().pred in ("ok", "scratch", "dent")


def test_cancel_a_training_run(labeled_window, qtbot):
    dlg = open_dialog(labeled_window, qtbot)
    dlg.auto_evaluate = False
    dlg.steps.setValue(100000)
    with qtbot.waitSignal(dlg.runFinished, timeout=120000) as sig:
        dlg.start()
        qtbot.waitUntil(lambda: len(dlg.curves.loss) >= 1, timeout=90000)
        qtbot.mouseClick(dlg.cancel_button, Qt.MouseButton.LeftButton)
    status, code = sig.args
    assert status == "interrupted", dlg.log.toPlainText()
    assert code != 0
    assert dlg.start_button.isEnabled()
    runs = list((labeled_window.project.runs_dir).glob("*/last.pt"))
    assert runs, "the trainer saves a checkpoint when cancelled"


def test_bad_override_and_failing_trainer_are_one_line(labeled_window, qtbot):
    dlg = open_dialog(labeled_window, qtbot)
    dlg.extra.setText("steps=3")
    assert not dlg.start()
    assert dlg.state_label.text().startswith("error: override 'steps=3'")
    dlg.extra.setText("model.name=no_such_model_xyz model.weights=none")
    with qtbot.waitSignal(dlg.runFinished, timeout=120000) as sig:
        dlg.start()
    assert sig.args[0] == "failed"
    text = dlg.state_label.text()
    assert text.startswith("error: training failed:") and "\n" not in text
