"""Model → Predict all images (pool thread, batches, cancel) and bulk labels as one undo step,
driven through the real window offscreen."""

from __future__ import annotations

import threading

import pytest
from gui_helpers import CLASSES, add_fake_model, add_tiny_model
from PySide6.QtCore import QItemSelectionModel, Qt

import defectssft.predict as predict_mod


def press(qtbot, window, key, modifier=Qt.KeyboardModifier.NoModifier):
    qtbot.keyClick(window.grid, key, modifier)


def labels(project, ids):
    return [project.get_image(i).label for i in ids]


def select_rows(window, rows):
    sel = window.grid.selectionModel()
    for i, r in enumerate(rows):
        flag = (
            QItemSelectionModel.SelectionFlag.ClearAndSelect
            if i == 0
            else QItemSelectionModel.SelectionFlag.Select
        )
        sel.select(window.model.index(r), flag)
    return window.selected_ids()


def model_menu(window):
    return next(a.menu() for a in window.menuBar().actions() if a.text() == "&Model")


def with_model(window, qtbot, batch: int) -> str:
    version = add_tiny_model(window.project)
    window.project.set_setting("gui.predict_batch", batch)
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    return version


# ---------------------------------------------------------------- predict all
def test_predict_all_from_the_menu_fills_the_grid(window, qtbot):
    p = window.project
    version = with_model(window, qtbot, batch=5)
    action = window.actions_by_name["predict_all"]
    assert action in model_menu(window).actions()
    assert window.actions_by_name["cancel_predict"] in model_menu(window).actions()
    assert action.shortcut().toString() == "Ctrl+Shift+P"
    assert not window.actions_by_name["cancel_predict"].isEnabled()  # nothing running
    messages: list[str] = []
    window.statusBar().messageChanged.connect(messages.append)
    summaries: list[dict] = []
    window.predictAllDone.connect(summaries.append)
    with qtbot.waitSignals([window.predictAllDone, window.rowsLoaded], timeout=60000):
        press(
            qtbot,
            window,
            Qt.Key.Key_P,
            Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
        )
        assert window.prediction_running() and window.predict_cancel_button.isVisible()
    (summary,) = summaries
    assert summary["cancelled"] is False and summary["predicted"] == 12, summary
    assert set(p.predictions(version)) == set(p.image_ids())  # labeled or not: every image
    assert any("predicting 5/12" in m for m in messages)
    assert any("predicting 12/12" in m for m in messages)
    assert "predicted 12 images with v0001" in window.statusBar().currentMessage()
    # The grid shows the suggestions, and the prediction filters use them.
    assert all(window.model.row(r).pred in CLASSES for r in range(window.model.total()))
    assert f"model {version}:" in window.pred_label.text()
    pred = window.current_row().pred
    with qtbot.waitSignal(window.rowsLoaded) as rows:
        window.set_filter(f"pred:{pred}")
    assert rows.args[0] >= 1
    assert not window.prediction_running() and not window.predict_bar.isVisible()
    assert not window.actions_by_name["cancel_predict"].isEnabled()


@pytest.mark.parametrize("how", ["button", "key"])
def test_cancel_keeps_saved_batches_and_window_stays_responsive(window, qtbot, monkeypatch, how):
    p = window.project
    version = with_model(window, qtbot, batch=4)  # 12 images: 3 batches
    reached, release = threading.Event(), threading.Event()
    loads: list[str] = []
    real_load = predict_mod.load_for_model

    def controlled_load(path, *args, **kwargs):
        loads.append(threading.current_thread().name)
        if len(loads) == 5:  # first image of the second batch: hold it until the test says
            reached.set()
            release.wait(30)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(predict_mod, "load_for_model", controlled_load)
    try:
        window.actions_by_name["predict_all"].trigger()
        qtbot.waitUntil(reached.is_set, timeout=60000)
        assert len(p.predictions(version)) == 4  # batch 1 is already committed
        assert window.actions_by_name["cancel_predict"].isEnabled()
        # The GUI thread is free while the worker is stuck: browse and label.
        row = window.grid.currentIndex().row()
        press(qtbot, window, Qt.Key.Key_D)
        assert window.grid.currentIndex().row() == row + 1
        labeled = window.current_row().image_id
        with qtbot.waitSignal(window.labelsSaved):
            press(qtbot, window, Qt.Key.Key_2)
        assert p.get_image(labeled).label == "scratch"
        window.actions_by_name["predict_all"].trigger()  # a second run is refused
        assert window.statusBar().currentMessage() == "prediction already running"
        if how == "button":
            qtbot.mouseClick(window.predict_cancel_button, Qt.MouseButton.LeftButton)
        else:
            press(qtbot, window, Qt.Key.Key_Escape)  # the cancel action's default shortcut
        assert window.statusBar().currentMessage() == "cancelling after the current batch…"
    finally:
        release.set()
    with qtbot.waitSignal(window.predictAllDone, timeout=60000) as sig:
        pass
    summary = sig.args[0]
    assert summary["cancelled"] is True and (summary["done"], summary["total"]) == (8, 12)
    assert len(p.predictions(version)) == 8  # the batch in flight finished and was saved
    assert len(loads) == 8  # batch 3 never started
    assert threading.main_thread().name not in loads  # never on the GUI thread
    qtbot.waitUntil(
        lambda: "prediction cancelled: 8 of 12" in window.statusBar().currentMessage(),
        timeout=10000,
    )
    assert not window.prediction_running()
    # It can run again afterwards and finish the job.
    monkeypatch.setattr(predict_mod, "load_for_model", real_load)
    with qtbot.waitSignal(window.predictAllDone, timeout=60000) as sig:
        window.actions_by_name["predict_all"].trigger()
    assert sig.args[0]["cancelled"] is False
    assert set(p.predictions(version)) == set(p.image_ids())


def test_predict_all_without_a_model_says_so(window, qtbot):
    window.actions_by_name["predict_all"].trigger()
    assert window.last_error == "no trained model yet: Model → Train first"
    assert not window.prediction_running()


def test_predict_all_with_an_unreadable_model_is_one_line(window, qtbot):
    p = window.project
    version, folder = p.new_model_dir()
    (folder / "model.pt").write_bytes(b"not a torch file")
    p.register_model(version, {"classes": CLASSES}, {})
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    with qtbot.waitSignal(window.predictAllDone, timeout=60000) as sig:
        window.actions_by_name["predict_all"].trigger()
    assert "error" in sig.args[0]
    assert window.last_error.startswith("predict all: ") and "\n" not in window.last_error
    assert p.predictions(version) == {}
    assert not window.prediction_running() and not window.predict_bar.isVisible()


# ---------------------------------------------------------------- bulk label undo
def test_bulk_label_is_one_undo_step(window, qtbot):
    p = window.project
    first = window.current_row().image_id
    press(qtbot, window, Qt.Key.Key_2)  # first image: scratch, then the next one is current
    ids = select_rows(window, [0, 1, 2, 4])
    assert first in ids and len(ids) == 4
    before = labels(p, ids)
    with qtbot.waitSignal(window.labelsSaved):
        press(qtbot, window, Qt.Key.Key_3)
    assert labels(p, ids) == ["dent"] * 4
    with qtbot.waitSignal(window.labelsSaved) as sig:
        press(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert sorted(sig.args[0]) == sorted(ids)
    assert labels(p, ids) == before  # one press: all four back, scratch included
    undo_events = [p.label_history(i)[-1] for i in ids]
    assert len({e.time for e in undo_events}) == 1  # one transaction, one event per image
    press(
        qtbot,
        window,
        Qt.Key.Key_Z,
        Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
    )
    assert labels(p, ids) == ["dent"] * 4  # one redo re-applies all
    press(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    press(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert p.get_image(first).label is None  # the next step back is the single label
    for row in range(window.model.total()):
        r = window.model.row(row)
        assert r.label == p.get_image(r.image_id).label  # the grid follows


def test_bulk_accept_of_different_suggestions_is_one_undo_step(window, qtbot):
    p = window.project
    probs = add_fake_model(p)  # image id % 3 decides the class: a selection of 3 has all three
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    ids = select_rows(window, [0, 1, 2])
    expected = [CLASSES[probs[i].index(max(probs[i]))] for i in ids]
    assert len(set(expected)) == 3
    with qtbot.waitSignal(window.labelsSaved):
        press(qtbot, window, Qt.Key.Key_Space)
    assert labels(p, ids) == expected
    press(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert labels(p, ids) == [None] * 3
    assert not window.session.can_undo
    press(
        qtbot,
        window,
        Qt.Key.Key_Z,
        Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
    )
    assert labels(p, ids) == expected
