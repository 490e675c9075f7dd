"""The operating-point panel (defectssft_gui.operating_panel), offscreen: dragging the threshold and
the spin boxes change the rates, Save stores the point (a bad band is refused), the window's
verdicts follow at once, and *Export with these thresholds* writes them into the ONNX file."""

from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import CLASSES, add_tiny_model, write_png
from PySide6.QtCore import QPoint, Qt

from defectssft.metrics import operating_point


def _scores(project, version: str) -> dict[int, float]:
    """Stored predictions: labeled OK parts score .05-.25, defects .55-.95, the stream .0-.9."""
    labels = project.labels_of(project.image_ids())
    probs, k = {}, 0
    for i, lab in sorted(labels.items()):
        k += 1
        s = {"ok": 0.05 + 0.01 * k, "scratch": 0.5 + 0.02 * k}.get(lab or "", (k % 10) / 10)
        s = min(s, 0.97)
        probs[i] = [1 - s, s * 0.7, s * 0.3]
    project.save_predictions(version, probs.items())
    return probs


@pytest.fixture
def op_project(tmp_path: Path):
    """ok/scratch/dent project: 16 OK + 8 scratch labeled (frozen splits), 10 unlabeled, and a
    model record whose stored predictions separate OK from scratch around 0.3-0.5."""
    from defectssft.project import Project

    p = Project.create(tmp_path / "op", classes=CLASSES, ok_class="ok")
    for i in range(34):
        label = "ok" if i < 16 else "scratch" if i < 24 else None
        p.add_image(write_png(tmp_path / "src" / f"{i}.png", seed=i), label=label)
    p.assign_splits(val_fraction=0.25, test_fraction=0.25, seed=0, min_labels=3)
    p.models_dir.joinpath("v0001").mkdir(parents=True)
    p.register_model("v0001", {"classes": CLASSES, "ok_class": "ok"}, {})
    _scores(p, "v0001")
    yield p
    p.close()


def open_panel(qtbot, project, version="v0001"):
    from defectssft_gui.operating_panel import OperatingPointDialog

    dlg = OperatingPointDialog(project, version)
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.waitUntil(lambda: dlg.data is not None and not dlg._tasks, timeout=20000)
    return dlg


def test_spin_and_drag_change_the_rates_and_save_stores(qtbot, op_project):
    dlg = open_panel(qtbot, op_project)
    n_def = dlg.data.labeled.defect.size
    assert n_def > 0 and dlg.data.stream.size == 10
    assert dlg.ng_spin.value() == 0.5  # never evaluated: the line's default
    assert dlg.table.rowCount() == 3  # val, test, all labeled
    # A threshold above every defect: every labeled defect escapes.
    dlg.ng_spin.setValue(0.99)
    assert dlg.headline["escapes"].text().startswith(f"{n_def}/{n_def} = 100.0 %")
    dlg.ng_spin.setValue(0.4)
    assert dlg.headline["escapes"].text().startswith(f"0/{n_def} = 0.0 % [0.0–")
    before = dlg.headline["review"].text()

    # Drag the NG line to the left: more of the stream goes to review.
    h = dlg.histogram
    y = int(h.plot_rect().center().y())
    start = QPoint(int(h.x_of(0.4)), y)
    to = QPoint(int(h.x_of(0.02)), y)
    qtbot.mousePress(h, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(h, to)
    qtbot.mouseRelease(h, Qt.MouseButton.LeftButton, pos=to)
    assert dlg.ng_spin.value() < 0.05
    assert dlg.low_spin.value() == dlg.ng_spin.value() == dlg.high_spin.value()  # no band
    assert dlg.headline["review"].text() != before
    assert dlg.headline["overkill"].text().split("/")[0] != "0"  # OK parts now rejected

    # Shift-drag out of the threshold opens the UNSURE band's upper edge.
    dlg.set_thresholds(0.3, 0.3, 0.3)
    start = QPoint(int(h.x_of(0.3)), y)
    to = QPoint(int(h.x_of(0.7)), y)
    qtbot.mousePress(h, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, start)
    qtbot.mouseMove(h, to)
    qtbot.mouseRelease(h, Qt.MouseButton.LeftButton, pos=to)
    assert dlg.ng_spin.value() == pytest.approx(0.3)
    assert dlg.high_spin.value() > 0.6 and dlg.low_spin.value() == pytest.approx(0.3)
    assert "UNSURE" not in dlg.headline["unsure"].text() and "/" in dlg.headline["unsure"].text()

    with qtbot.waitSignal(dlg.saved):
        assert dlg.save()
    point = operating_point(op_project.get_model("v0001")["metrics"])
    assert point["ng"] == pytest.approx(0.3) and point["unsure_high"] > 0.6
    assert op_project.get_model("v0001")["metrics"]["operating_point"]["source"] == "app"
    assert "saved by app" in dlg.title.text()
    assert dlg.clear_button.isEnabled()  # what is saved can be forgotten


def test_a_bad_band_is_refused_and_nothing_is_stored(qtbot, op_project):
    op_project.set_operating_point("v0001", 0.45)
    dlg = open_panel(qtbot, op_project)
    dlg.low_spin.setValue(0.6)  # above the NG threshold
    assert dlg.last_message.startswith("error: thresholds must satisfy")
    assert not dlg.save_button.isEnabled() and not dlg.export_button.isEnabled()
    assert not dlg.save()
    assert "nothing saved" in dlg.last_message and "\n" not in dlg.last_message
    dlg.low_spin.setValue(0.4)
    dlg.ng_spin.setValue(1.5)  # out of [0, 1]
    assert not dlg.save()
    assert operating_point(op_project.get_model("v0001")["metrics"]) == {
        "ng": 0.45,
        "unsure_low": 0.45,
        "unsure_high": 0.45,
    }
    dlg.reset()  # back to what is saved
    assert dlg.ng_spin.value() == 0.45 and dlg.save_button.isEnabled()
    with qtbot.waitSignal(dlg.saved):
        dlg.clear_button.click()  # forget it: back to the line's default (never evaluated)
    qtbot.waitUntil(lambda: not dlg._tasks, timeout=20000)
    assert operating_point(op_project.get_model("v0001")["metrics"]) is None
    assert dlg.ng_spin.value() == 0.5 and not dlg.clear_button.isEnabled()


def test_a_tiny_band_is_shown_and_saved_exactly(qtbot, op_project):
    """A few-label calibration can put the band near 1e-6: the spin boxes show it to 6 digits
    (not "0.000001"), the rates and Save use the exact values, and typing one edge (an exponent
    too) leaves the others exact."""
    op_project.set_operating_point("v0001", 1.906123e-6, 1.057321e-6, 2.5e-6)
    dlg = open_panel(qtbot, op_project)
    assert dlg.low_spin.text() == "1.05732e-06" and dlg.ng_spin.text() == "1.90612e-06"
    assert dlg.candidate().ng == 1.906123e-6 and dlg.candidate().unsure_low == 1.057321e-6
    dlg.high_spin.lineEdit().setText("3e-6")
    dlg.high_spin.interpretText()
    assert dlg.candidate().unsure_high == pytest.approx(3e-6, rel=1e-9)
    assert dlg.candidate().ng == 1.906123e-6  # untouched: not rounded through its spin box
    with qtbot.waitSignal(dlg.saved):
        assert dlg.save()
    point = operating_point(op_project.get_model("v0001")["metrics"])
    assert point["ng"] == 1.906123e-6 and point["unsure_low"] == 1.057321e-6
    assert point["unsure_high"] == pytest.approx(3e-6, rel=1e-9)
    dlg.high_spin.lineEdit().setText("oops")  # not a number: refused as typed, nothing changes
    dlg.high_spin.interpretText()
    assert dlg.candidate().unsure_high == pytest.approx(3e-6, rel=1e-9)


def test_window_verdicts_follow_the_saved_point(qtbot, op_project):
    from defectssft_gui.window import MainWindow

    win = MainWindow(op_project, quiet=True)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.current_row() is not None, timeout=20000)
    with qtbot.waitSignal(win.rowsLoaded, timeout=20000) as shown:
        win.set_filter("verdict:unsure")
    assert shown.args == [0]  # no band yet: nothing UNSURE
    win.open_operating_point()
    dlg = win.operating_dialog
    qtbot.waitUntil(lambda: dlg.data is not None and not dlg._tasks, timeout=20000)
    dlg.set_thresholds(0.0, 0.5, 1.0)  # everything in the band
    with qtbot.waitSignal(win.rowsLoaded, timeout=20000) as shown:
        dlg.save()
    assert shown.args == [len(op_project.image_ids())]
    assert win.verdicts is not None and win.verdicts.thresholds.unsure_high == 1.0
    assert win.strip.verdict == "UNSURE"
    dlg.close()
    win.close()


def test_score_missing_then_export_with_these_thresholds_on_a_worker(qtbot, op_project):
    from defectssft.export import read_metadata

    version = add_tiny_model(op_project)
    dlg = open_panel(qtbot, op_project, version)
    # Nothing scored by the new version yet: the panel says so and scores them on its worker.
    assert dlg.data.missing and dlg.score_button.isEnabled() and not len(dlg.data.labeled)
    dlg.score_missing()
    qtbot.waitUntil(lambda: not dlg._tasks and not dlg.data.missing, timeout=120000)
    split = op_project.training_data(assign=False)
    assert len(dlg.data.labeled) == len(split.val_ids) + len(split.test_ids)
    assert dlg.data.stream.size == 10 and not dlg.score_button.isEnabled()
    dlg.set_thresholds(0.2, 0.35, 0.6)
    with qtbot.waitSignal(dlg.exported, timeout=120000) as done:
        dlg.export()
        assert not dlg.export_button.isEnabled()  # one at a time, the window stays live
    meta = read_metadata(done.args[0])
    assert meta["thresholds"] == {"ng": 0.35, "unsure_low": 0.2, "unsure_high": 0.6}
    assert operating_point(op_project.get_model(version)["metrics"])["ng"] == 0.35
    # Production is republished with the new thresholds, without retraining.
    op_project.set_production(version)
    dlg.set_thresholds(0.25, 0.3, 0.5)
    with qtbot.waitSignal(dlg.exported, timeout=120000) as done:
        dlg.export()
    assert Path(done.args[0]).name == "production.onnx"
    assert read_metadata(done.args[0])["thresholds"]["ng"] == 0.3


def test_models_panel_opens_it_and_shows_the_saved_threshold(qtbot, op_project):
    from defectssft_gui.models_panel import ModelsDialog, model_row

    op_project.update_model_metrics("v0001", {"test": {"n": 4, "accuracy": 1.0}})
    op_project.set_operating_point("v0001", 0.42)
    assert model_row(op_project.get_model("v0001"))[7] == "0.4200 saved"
    dlg = ModelsDialog(op_project)
    qtbot.addWidget(dlg)
    dlg.select("v0001")
    with qtbot.waitSignal(dlg.operatingPointRequested) as asked:
        dlg.operating_button.click()
    assert asked.args == ["v0001"]


def test_no_ok_class_is_one_line(qtbot, tmp_path):
    from defectssft.errors import DefectssftError
    from defectssft.project import Project
    from defectssft_gui.operating_panel import OperatingPointDialog

    p = Project.create(tmp_path / "nok", classes=["scratch", "dent"])
    p.models_dir.joinpath("v0001").mkdir(parents=True)
    p.register_model("v0001", {"classes": ["scratch", "dent"]}, {})
    dlg = OperatingPointDialog(p, "v0001")
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: not dlg._tasks, timeout=20000)
    assert dlg.last_message.startswith("error: loading scores: ") and "no OK class" in (
        dlg.last_message
    )
    assert not dlg.save_button.isEnabled()
    assert issubclass(type(DefectssftError("x")), Exception)
