"""The real main window, driven offscreen: hotkeys, undo, filters, bulk labels, suggestions,
settings, label book, import, hot folder, heat map and the one-line errors a user can cause."""

from __future__ import annotations

import shutil

import pytest
from gui_helpers import CLASSES, add_fake_model, write_png
from PySide6.QtCore import QItemSelectionModel, Qt


def press(qtbot, window, key, modifier=Qt.KeyboardModifier.NoModifier):
    qtbot.keyClick(window.grid, key, modifier)


def labels(project, ids):
    return [project.get_image(i).label for i in ids]


def test_grid_lists_images_and_makes_cached_thumbnails(window, qtbot):
    p = window.project
    assert window.model.total() == 12
    assert window.count_label.text() == "12 images"
    # Newest capture first: the current image is the last one captured.
    assert window.current_row().image_id == p.image_ids()[-1]
    qtbot.waitUntil(lambda: window.model.has_thumbnail(0), timeout=10000)
    cached = list((p.root / "cache" / "thumbs").glob("*.jpg"))
    assert cached and cached[0].name.split(".")[0] in {r.sha256 for r in p.query_images()}
    qtbot.waitUntil(lambda: not window.viewer._item.pixmap().isNull(), timeout=10000)


def test_hotkeys_label_and_advance_undo_redo(window, qtbot):
    p = window.project
    first = window.current_row().image_id
    with qtbot.waitSignal(window.labelsSaved):
        press(qtbot, window, Qt.Key.Key_2)  # class 2 = scratch
    assert p.get_image(first).label == "scratch"
    second = window.current_row().image_id
    assert second != first
    press(qtbot, window, Qt.Key.Key_3)
    assert p.get_image(second).label == "dent"
    assert "dent" in window.model.data(window.model.index(window.model.row_of(second)))
    press(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert p.get_image(second).label is None
    assert window.current_row().image_id == second  # undo shows the image it changed
    press(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert p.get_image(first).label is None
    press(
        qtbot,
        window,
        Qt.Key.Key_Z,
        Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier,
    )
    assert p.get_image(first).label == "scratch"
    # Every change is in the append-only history, made by the operator.
    assert [e.label for e in p.label_history(first)] == ["scratch", None, "scratch"]


def test_next_previous_from_keyboard(window, qtbot):
    start = window.grid.currentIndex().row()
    press(qtbot, window, Qt.Key.Key_D)
    assert window.grid.currentIndex().row() == start + 1
    press(qtbot, window, Qt.Key.Key_Right)
    assert window.grid.currentIndex().row() == start + 2
    press(qtbot, window, Qt.Key.Key_A)
    press(qtbot, window, Qt.Key.Key_Left)
    assert window.grid.currentIndex().row() == start
    press(qtbot, window, Qt.Key.Key_Left)  # stays on the first image
    assert window.grid.currentIndex().row() == 0


def test_filters(window, qtbot):
    p = window.project
    ids = p.image_ids()
    p.set_label(ids[0], "dent")
    p.set_label(ids[1], "dent")
    with qtbot.waitSignal(window.rowsLoaded) as sig:
        window.set_filter("class:dent")
    assert sig.args == [2]
    assert {window.model.row(i).image_id for i in range(2)} == {ids[0], ids[1]}
    with qtbot.waitSignal(window.rowsLoaded) as sig:
        window.set_filter("unlabeled")
    assert sig.args == [10]
    with qtbot.waitSignal(window.rowsLoaded):
        window.set_filter("all", sort="capture")
    assert window.model.row(0).image_id == ids[0]
    window.set_filter("nonsense")
    assert window.last_error == "unknown filter 'nonsense'"


def test_bulk_label_selection(window, qtbot):
    p = window.project
    sel = window.grid.selectionModel()
    rows = [2, 3, 5]
    for i, r in enumerate(rows):
        flag = QItemSelectionModel.SelectionFlag.Select
        if i == 0:
            flag = QItemSelectionModel.SelectionFlag.ClearAndSelect
        sel.select(window.model.index(r), flag)
    ids = window.selected_ids()
    assert len(ids) == 3
    current = window.grid.currentIndex().row()
    with qtbot.waitSignal(window.labelsSaved) as sig:
        press(qtbot, window, Qt.Key.Key_3)
    assert sorted(sig.args[0]) == sorted(ids)
    assert labels(p, ids) == ["dent"] * 3
    assert window.grid.currentIndex().row() == current  # bulk labeling does not move on
    press(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert labels(p, ids) == [None] * 3


def test_accept_suggestion(window, qtbot):
    p = window.project
    probs = add_fake_model(p)
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    row = window.current_row()
    expected = CLASSES[max(range(3), key=lambda k: probs[row.image_id][k])]
    assert row.pred == expected
    assert expected in window.pred_label.text()
    press(qtbot, window, Qt.Key.Key_Space)
    assert p.get_image(row.image_id).label == expected
    assert p.label_history(row.image_id)[-1].source == "human"


def test_accept_without_prediction_is_a_clear_error(window, qtbot):
    press(qtbot, window, Qt.Key.Key_Space)
    assert window.last_error.startswith("no model suggestion for this image")
    assert window.project.get_image(window.current_row().image_id).label is None


def test_next_most_useful_queue(window, qtbot):
    p = window.project
    ids = p.image_ids()
    probs = {i: [0.9, 0.05, 0.05] for i in ids}
    probs[ids[4]] = [0.34, 0.33, 0.33]
    add_fake_model(p, probs=probs)
    with qtbot.waitSignal(window.rowsLoaded):
        press(qtbot, window, Qt.Key.Key_N)
    assert window.current_filter() == "useful"
    assert window.current_row().image_id == ids[4]


def test_settings_change_a_shortcut_and_reject_a_clash(window, qtbot):
    from defectssft_gui.dialogs import SettingsDialog

    dlg = SettingsDialog(window.project, window)
    qtbot.addWidget(dlg)
    dlg.set_shortcut("next", "J")
    dlg.saved.connect(window._settings_saved)
    assert dlg.save()
    assert window.project.get_setting("gui.shortcuts") == {"next": ["J"]}
    start = window.grid.currentIndex().row()
    press(qtbot, window, Qt.Key.Key_J)
    assert window.grid.currentIndex().row() == start + 1
    dlg.set_shortcut("prev", "J")
    assert not dlg.save()
    assert dlg.error.text() == "key J is used by both next and prev"
    dlg.set_shortcut("prev", "2")
    assert not dlg.save()
    assert "hotkey of class scratch" in dlg.error.text()
    dlg.set_shortcut("prev", "A")
    dlg.who.setText("  ")
    assert not dlg.save() and "name cannot be empty" in dlg.error.text()


def test_label_book_edits_classes_and_hotkeys(window, qtbot):
    from defectssft_gui.dialogs import LabelBookDialog

    p = window.project
    p.set_label(p.image_ids()[0], "dent")
    dlg = LabelBookDialog(p, window)
    qtbot.addWidget(dlg)
    dlg.classesChanged.connect(window._classes_changed)
    assert dlg.example_ids("dent") == [p.image_ids()[0]]
    dlg.set_cell("dent", "Hotkey", "7")
    dlg.set_cell("dent", "Description", "a dent deeper than 0.2 mm")
    dlg.set_cell("dent", "Colour", "#123456")
    assert dlg.save(), dlg.error.text()
    info = {c.name: c for c in p.classes()}["dent"]
    assert (info.hotkey, info.description, info.colour) == (
        "7",
        "a dent deeper than 0.2 mm",
        "#123456",
    )
    target = window.current_row().image_id
    press(qtbot, window, Qt.Key.Key_7)
    assert p.get_image(target).label == "dent"
    # Bad inputs: one line each, nothing saved.
    dlg.set_cell("dent", "Hotkey", "Ctrl+Z")
    assert not dlg.save() and "already the shortcut of an action" in dlg.error.text()
    dlg.set_cell("dent", "Hotkey", "1")
    assert not dlg.save() and dlg.error.text() == "classes ok and dent both use key 1"
    dlg.set_cell("dent", "Hotkey", "7")
    dlg.set_cell("dent", "Colour", "notacolour")
    assert not dlg.save() and "is not a colour" in dlg.error.text()
    dlg.set_cell("dent", "Colour", "#123456")
    dlg.set_cell("dent", "OK class", True)
    assert not dlg.save() and dlg.error.text() == "only one class can be the OK class"
    dlg.set_cell("dent", "OK class", False)
    dlg.new_name.setText("bad name!")
    assert not dlg.add_class() and "invalid class name" in dlg.error.text()
    dlg.new_name.setText("crack")
    assert dlg.add_class()
    assert "crack" in p.class_names()
    assert any("crack" in a.text() for a in window.class_actions)


def test_label_book_renames_a_class(window, qtbot):
    p = window.project
    ids = p.image_ids()
    add_fake_model(p)
    p.set_label(ids[0], "scratch")
    target = window.current_row().image_id
    press(qtbot, window, Qt.Key.Key_2)  # scratch, on the undo stack by name
    p.set_setting("labelbook.examples", {"scratch": [ids[0]]})
    with qtbot.waitSignal(window.rowsLoaded):
        window.set_filter("class:scratch")
    window.open_label_book()
    dlg = window.label_book
    qtbot.addWidget(dlg)
    dlg.select_class("scratch")
    assert dlg.rename_edit.text() == "scratch"  # selecting a class offers its name to edit

    # Errors: one line in the dialog, nothing renamed.
    for bad, message in [
        ("dent", "class 'dent' already exists"),
        ("bad name!", "invalid class name 'bad name!'"),
    ]:
        dlg.rename_edit.setText(bad)
        qtbot.mouseClick(dlg.rename_button, Qt.MouseButton.LeftButton)
        assert message in dlg.error.text() and "\n" not in dlg.error.text()
    assert p.class_names() == CLASSES

    dlg.rename_edit.setText("scratches")
    with qtbot.waitSignal(window.rowsLoaded) as sig:
        qtbot.mouseClick(dlg.rename_button, Qt.MouseButton.LeftButton)
    assert dlg.error.text() == ""
    names = [dlg.table.item(r, 0).text() for r in range(dlg.table.rowCount())]
    assert names == ["ok", "scratches", "dent"]
    assert dlg.examples_title.text() == "Examples of scratches"
    assert dlg.example_ids("scratches")[0] == ids[0]
    assert p.class_names() == ["ok", "scratches", "dent"]
    assert p.get_image(ids[0]).label == p.get_image(target).label == "scratches"
    # The window follows: hotkey buttons, class actions, filters (the shown one included).
    assert "2  scratches" in [
        window.class_bar.itemAt(i).widget().text() for i in range(window.class_bar.count())
    ]
    assert any(a.text() == "Label scratches" for a in window.class_actions)
    filters = [window.filter_box.itemData(i) for i in range(window.filter_box.count())]
    assert "class:scratches" in filters and "pred:scratches" in filters
    assert "class:scratch" not in filters
    assert window.current_filter() == "class:scratches" and sig.args == [2]
    assert all(window.model.row(i).label == "scratches" for i in range(2))
    # Undo after the rename puts back the image's previous label (none).
    dlg.close()
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow)
    press(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert window.last_error == ""
    assert p.get_image(target).label is None
    # The class keeps its hotkey under its new name.
    with qtbot.waitSignal(window.rowsLoaded):
        window.set_filter("unlabeled")
    target = window.current_row().image_id
    press(qtbot, window, Qt.Key.Key_2)
    assert p.get_image(target).label == "scratches"


def test_mark_example(window, qtbot):
    p = window.project
    press(qtbot, window, Qt.Key.Key_E)
    assert "label the image first" in window.last_error
    target = window.current_row().image_id
    press(qtbot, window, Qt.Key.Key_2)
    press(qtbot, window, Qt.Key.Key_A)
    press(qtbot, window, Qt.Key.Key_E)
    assert p.get_setting("labelbook.examples") == {"scratch": [target]}


def test_import_through_the_core(window, qtbot, image_files, tmp_path):
    files = image_files(3, start=100)
    with qtbot.waitSignal(window.importDone, timeout=20000) as sig:
        window.import_paths([str(f) for f in files])
    assert sig.args[0].added == 3
    qtbot.waitUntil(lambda: window.model.total() == 15, timeout=10000)
    window.import_paths([str(tmp_path / "does-not-exist")])
    qtbot.waitUntil(lambda: "no such file or folder" in window.last_error, timeout=10000)


def test_import_labels_from_folders_adds_classes(window, qtbot, tmp_path):
    write_png(tmp_path / "lab" / "crack" / "a.png", seed=200)
    write_png(tmp_path / "lab" / "ok" / "b.png", seed=201)
    with qtbot.waitSignal(window.importDone, timeout=20000):
        window.import_paths([str(tmp_path / "lab")], label_from="folder")
    assert "crack" in window.project.class_names()
    assert window.filter_box.findData("class:crack") >= 0


def test_hot_folder_watch(window, qtbot, tmp_path):
    hot = tmp_path / "hot"
    hot.mkdir()
    assert window.start_watch(hot)
    assert window.actions_by_name["watch"].isChecked()
    write_png(hot / "cam_001.png", seed=300)
    qtbot.waitUntil(lambda: window.project.count_images() == 13, timeout=20000)
    qtbot.waitUntil(lambda: window.model.total() == 13, timeout=10000)
    window.stop_watch()
    assert not window.actions_by_name["watch"].isChecked()
    assert not window.start_watch(tmp_path / "nope")
    assert "no such folder to watch" in window.last_error


def test_view_zoom_fit_and_levels_kept_across_images(window, qtbot):
    v = window.viewer
    qtbot.waitUntil(lambda: not v._item.pixmap().isNull(), timeout=10000)
    qtbot.keyClick(window.grid, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)
    assert v.zoom_factor() == pytest.approx(1.0)
    qtbot.keyClick(window.grid, Qt.Key.Key_Plus)
    assert v.zoom_factor() == pytest.approx(1.25)
    press(qtbot, window, Qt.Key.Key_F)
    assert v._fit
    window.window_slider.setValue(200)
    low, high = v.low, v.high
    assert high - low == pytest.approx(0.2)
    press(qtbot, window, Qt.Key.Key_D)
    assert (v.low, v.high) == (low, high)
    press(qtbot, window, Qt.Key.Key_R)
    assert (v.low, v.high) == (0.0, 1.0)


def test_heatmap_with_a_tiny_model(window, qtbot):
    from defectssft.modeling import build_model, save_model_file

    p = window.project
    press(qtbot, window, Qt.Key.Key_H)
    assert "no trained model yet" in window.last_error
    version, folder = p.new_model_dir()
    model = build_model("test_resnet", 3, weights="none")
    save_model_file(
        folder / "model.pt",
        model,
        {
            "model_name": "test_resnet",
            "classes": CLASSES,
            "ok_class": "ok",
            "input": {"height": 64, "width": 64, "bit_depth": 8},
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
            "version": version,
        },
    )
    p.register_model(version, {"classes": CLASSES}, {})
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    with qtbot.waitSignal(window.camReady, timeout=30000):
        press(qtbot, window, Qt.Key.Key_H)
    assert window.viewer.heatmap_visible()
    assert "heat map of" in window.pred_label.text()


def test_grad_cam_values(tmp_path):
    from defectssft.explain import grad_cam
    from defectssft.modeling import build_model, save_model_file

    model = build_model("test_resnet", 2, weights="none")
    path = save_model_file(
        tmp_path / "model.pt",
        model,
        {
            "model_name": "test_resnet",
            "classes": ["ok", "ng"],
            "input": {"height": 64, "width": 64, "bit_depth": 8},
        },
    )
    img = write_png(tmp_path / "x.png", seed=1, size=40)
    r = grad_cam(path, img)
    assert r.heat.shape == (40, 40)
    assert 0.0 <= r.heat.min() <= r.heat.max() <= 1.0
    assert sum(r.probs) == pytest.approx(1.0, abs=1e-5)
    r1 = grad_cam(path, img, class_index=1)
    assert r1.class_index == 1
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(path, img, class_index=5)
    from defectssft.errors import ModelFileError

    with pytest.raises(ModelFileError, match="model file not found"):
        grad_cam(tmp_path / "missing.pt", img)


def test_open_bad_project_is_one_line(window, tmp_path):
    assert not window.open_project(tmp_path / "nothing-here")
    assert "no such project folder" in window.last_error
    assert window.project is not None  # the open project stays open


def test_unreadable_image_shows_placeholder_not_crash(window, qtbot):
    p = window.project
    rec = p.get_image(window.current_row().image_id)
    rec.path.chmod(0o644)
    rec.path.write_bytes(b"garbage")
    shutil.rmtree(p.root / "cache", ignore_errors=True)
    window.viewer.cache._images.clear()
    window.model._pixmaps.clear()
    with qtbot.waitSignal(window.viewer.loadFailed, timeout=10000):
        window.go_to(1)
        window.go_to(0)
    assert window.model.row(0).image_id == rec.id


def test_app_main_bad_path(tmp_path, capsys):
    from defectssft_gui.app import main

    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "--create" in capsys.readouterr().err
    assert main(["--create", "ok,ng"]) == 2
    assert main([str(tmp_path / "new"), "--create", "ok,bad name"]) == 2
    assert "invalid class name" in capsys.readouterr().err


def test_app_main_opens_a_project(gui_project, qapp, monkeypatch):
    from defectssft_gui import app
    from defectssft_gui.window import MainWindow

    shown = []

    def fake_exec(application):  # instead of the event loop: look at the window, close it
        wins = [
            w for w in application.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()
        ]
        shown.extend(w.project.root for w in wins if w.project is not None)
        for w in wins:
            w.close()
        return 0

    monkeypatch.setattr(app, "run_event_loop", fake_exec)
    assert app.main([str(gui_project.root)]) == 0
    assert gui_project.root in shown


def test_known_bad_pyside_is_refused_with_one_line(monkeypatch, capsys):
    import sys
    from collections import namedtuple

    import PySide6

    from defectssft_gui import app

    V = namedtuple("V", "major minor micro releaselevel serial")
    monkeypatch.setattr(PySide6, "__version__", "6.12.0")
    monkeypatch.setattr(sys, "version_info", V(3, 11, 7, "final", 0))
    assert app.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: PySide6 6.12.0 crashes on Python 3.11") and err.count("\n") == 1
    monkeypatch.setattr(sys, "version_info", V(3, 12, 1, "final", 0))
    assert app.qt_problem() is None


def test_rows_reach_the_view_in_batches(gui_project, qapp, monkeypatch):
    from defectssft import queries
    from defectssft_gui import gallery
    from defectssft_gui.thumbs import ThumbnailLoader

    monkeypatch.setattr(gallery, "BATCH", 4)
    loader = ThumbnailLoader(None)
    m = gallery.ImageListModel(loader)
    m.set_rows(queries.fetch_rows(gui_project, "all", "capture"))
    assert (m.rowCount(), m.total()) == (4, 12)
    m.ensure_shown(5)  # keyboard navigation past the batch
    assert m.rowCount() == 8
    m.ensure_shown(11)
    assert m.rowCount() == 12 and not m.canFetchMore(gallery.QModelIndex())
    loader.close()
