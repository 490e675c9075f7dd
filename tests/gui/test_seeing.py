"""What the window shows about the current image and the grid: the line's verdict (from the line's
own rule), class buttons, captions, thumbnails at the project's bit depth and window/level, counts,
names, shortcuts, the label history, and controls without a project."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from gui_helpers import CLASSES, add_fake_model
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest


def press(qtbot, window, key, mod=Qt.KeyboardModifier.NoModifier):
    window.activateWindow()
    QTest.keyClick(window, key, mod)


def test_verdict_strip_and_class_buttons_follow_the_current_image(window, qtbot):
    p = window.project
    ids = p.image_ids()
    probs = {i: [0.9, 0.05, 0.05] for i in ids}
    probs[ids[-1]] = [0.1, 0.8, 0.1]  # the current (newest) image: scratch, NG
    add_fake_model(p, probs=probs)
    p.set_labels([ids[-1]], "ok")  # the human says OK, the model says scratch
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    row = window.current_row()
    assert row.image_id == ids[-1]
    strip = window.strip
    assert strip.verdict == "NG"
    assert "scratch" in strip.suggestion_chip.text() and "80%" in strip.suggestion_chip.text()
    assert "ok" in strip.label_chip.text() and "≠ model" in strip.label_chip.text()
    # A disagreeing label is not drawn in its class's reassuring colour.
    ok_colour = p.classes()[0].colour
    assert ok_colour.lower() not in strip.label_chip.styleSheet().lower()
    assert "line verdict NG" in window.pred_label.text()
    assert window.class_buttons["ok"].isChecked()
    assert not window.class_buttons["scratch"].isChecked()
    # The grid caption says the same and is not in the label's colour either.
    idx = window.model.index(window.grid.currentIndex().row())
    caption = window.model.data(idx, Qt.ItemDataRole.DisplayRole)
    assert caption.startswith("≠ ok") and "NG 80% scratch" in caption
    colour = window.model.data(idx, Qt.ItemDataRole.ForegroundRole).name()
    assert colour.lower() != ok_colour.lower()
    assert "line verdict: NG" in window.model.data(idx, Qt.ItemDataRole.ToolTipRole)


def test_verdict_filters_list_escapes_overkill_and_unsure(window, qtbot):
    p = window.project
    ids = p.image_ids()
    probs = {i: [0.9, 0.05, 0.05] for i in ids}  # OK verdicts
    probs[ids[0]] = [0.1, 0.8, 0.1]  # NG
    probs[ids[1]] = [0.1, 0.1, 0.8]  # NG
    add_fake_model(p, probs=probs)
    p.set_labels([ids[0]], "ok")  # overkill: a good part the line rejects
    p.set_labels([ids[2]], "dent")  # escape: a defect the line passes
    p.set_labels([ids[1]], "dent")  # right
    for spec, expected in (
        ("verdict:overkill", [ids[0]]),
        ("verdict:escape", [ids[2]]),
        ("verdict:wrong", sorted([ids[0], ids[2]])),
        ("verdict:unsure", []),
    ):
        with qtbot.waitSignal(window.rowsLoaded):
            window.set_filter(spec)
        got = sorted(window.model.row(i).image_id for i in range(window.model.total()))
        assert got == expected, spec


def test_new_model_without_predictions_keeps_the_old_suggestions(window, qtbot):
    from defectssft.verdicts import shown_version

    p = window.project
    add_fake_model(p)
    p.models_dir.joinpath("v0002").mkdir()
    p.register_model("v0002", {"classes": CLASSES}, {})  # trained, nothing predicted yet
    assert shown_version(p) == "v0001"
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    assert window.model_version == "v0001" and window.current_row().pred is not None
    p.save_predictions("v0002", [(p.image_ids()[0], [0.2, 0.2, 0.6])])
    assert shown_version(p) == "v0002"


def test_class_bar_wraps_nine_classes_at_1280(qtbot, tmp_path, image_files):
    from defectssft.project import Project
    from defectssft_gui.window import MainWindow

    names = [
        "ok",
        "scratch",
        "dent",
        "stain",
        "crack",
        "pit",
        "inclusion",
        "rolled_in_scale",
        "burr",
    ]
    p = Project.create(tmp_path / "nine", classes=names, ok_class="ok")
    for f in image_files(2):
        p.add_image(f)
    win = MainWindow(p, quiet=True)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitUntil(lambda: win.current_row() is not None)
    assert win.minimumSizeHint().width() <= 1280
    assert win.width() <= 1280
    tops = {win.class_bar.itemAt(i).geometry().top() for i in range(win.class_bar.count())}
    assert len(tops) >= 2 and win.class_bar.count() == 9  # wrapped onto a second row
    win.close()


def test_thumbnails_follow_bit_depth_and_window_level(qtbot, tmp_path):
    """A 12-bit image in a 16-bit file: bright at depth 12, and the sliders change it."""
    from defectssft.project import Project
    from defectssft_gui.thumbs import load_thumbnail
    from defectssft_gui.window import MainWindow

    img = np.full((64, 64), 2000, dtype=np.uint16)  # about half of 12-bit full scale
    path = tmp_path / "twelve.png"
    cv2.imwrite(str(path), img)
    dark = load_thumbnail("k16", str(path), tmp_path / "c", size=32, bit_depth=16)
    bright = load_thumbnail("k16", str(path), tmp_path / "c", size=32, bit_depth=12)
    assert dark.pixelColor(5, 5).red() < 10 and 120 < bright.pixelColor(5, 5).red() < 130
    assert (tmp_path / "c" / "k16.u16.png").is_file()
    with pytest.raises(ValueError):
        load_thumbnail("k16", str(path), tmp_path / "c", bit_depth=20)

    p = Project.create(tmp_path / "p12", classes=CLASSES, ok_class="ok")
    p.set_setting("input.bit_depth", 12)
    p.add_image(path)
    win = MainWindow(p, quiet=True)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.model is not None and win.model.total() == 1)
    qtbot.waitUntil(lambda: win.model.has_thumbnail(0), timeout=10000)

    def grey() -> int:
        pm = win.model.data(win.model.index(0), Qt.ItemDataRole.DecorationRole)
        return pm.toImage().pixelColor(5, 5).red()

    assert 120 < grey() < 130
    win.level_slider.setValue(250)  # window centred lower: the same pixels brighter
    win.window_slider.setValue(500)
    qtbot.waitUntil(lambda: win.model.has_thumbnail(0) and grey() > 200, timeout=10000)
    win.close()


def test_counts_follow_labeling(window, qtbot):
    assert "0 labeled" in window.counts_label.text()
    with qtbot.waitSignal(window.labelsSaved):
        press(qtbot, window, Qt.Key.Key_2)
    qtbot.waitUntil(lambda: "1 labeled, 11 unlabeled" in window.counts_label.text())


def test_least_confident_without_an_ok_class(qtbot, tmp_path, image_files):
    from defectssft.project import Project
    from defectssft_gui.window import MainWindow

    p = Project.create(tmp_path / "nok", classes=["scratch", "dent"], ok_class=None)
    for f in image_files(2):
        p.add_image(f)
    win = MainWindow(p, quiet=True)
    qtbot.addWidget(win)
    texts = [win.sort_box.itemText(i) for i in range(win.sort_box.count())]
    assert "least confident first" in texts and not any("defect" in t for t in texts)
    filters = [win.filter_box.itemData(i) for i in range(win.filter_box.count())]
    assert "verdict:unsure" in filters and "verdict:escape" not in filters
    win.close()


def test_controls_need_a_project_and_keys_follow_the_platform(qtbot):
    from PySide6.QtGui import QKeySequence

    from defectssft_gui.window import MainWindow

    win = MainWindow(None, quiet=True)
    qtbot.addWidget(win)
    for w in (win.accept_button, win.level_slider, win.window_slider):
        assert not w.isEnabled()
    a = win.actions_by_name
    assert not a["accept"].isEnabled() and not a["models"].isEnabled()
    assert a["open"].isEnabled() and a["close"].isEnabled()
    close_keys = [k.toString() for k in a["close"].shortcuts()]
    assert QKeySequence(QKeySequence.StandardKey.Close).toString() in close_keys
    assert "Ctrl+W" not in [k.toString() for k in a["watch"].shortcuts()]
    win.close()


def test_label_history_viewer(window, qtbot):
    p = window.project
    first = window.current_row().image_id
    with qtbot.waitSignal(window.labelsSaved):
        press(qtbot, window, Qt.Key.Key_2)
    window.go_to(0)
    with qtbot.waitSignal(window.labelsSaved):
        press(qtbot, window, Qt.Key.Key_3)
    window.go_to(0)
    assert window.current_row().image_id == first
    window.open_history()
    dlg = window.history_dialog
    assert dlg.table.rowCount() == 2
    assert dlg.table.item(0, 2).text() == "dent" and dlg.table.item(0, 3).text() == "scratch"
    assert dlg.table.item(1, 2).text() == "scratch"
    assert dlg.table.item(0, 1).text() == str(p.get_setting("gui.who", "operator"))
    window.go_to(1)  # it follows the current image
    assert "0 change(s)" in dlg.title.text()


def test_heat_map_without_model_says_so(window):
    window.actions_by_name["heatmap"].setChecked(True)
    window.compute_heatmap()
    assert "no trained model" in window.last_error
    assert not window.actions_by_name["heatmap"].isChecked()


def test_models_panel_metrics_with_intervals(window, qtbot, tmp_path: Path):
    from defectssft_gui.models_panel import ModelsDialog, disagreements, model_row, rate_text

    assert rate_text(0, 30) == "0/30 = 0.0 % [0.0–11.4 %]"
    assert rate_text(0, 0) == "—"
    p = window.project
    add_fake_model(p, "v0001")
    ids = p.image_ids()
    add_fake_model(p, "v0002", probs={i: [0.8, 0.1, 0.1] for i in ids})
    test = {
        "n": 20,
        "accuracy": 0.9,
        "classes": CLASSES,
        "confusion_matrix": [[8, 1, 0], [1, 5, 0], [0, 0, 5]],
        "inspection": {"n_defective": 11, "n_good": 9},
        "operating_point": {"threshold": 0.42, "escape_rate": 1 / 11, "overkill_rate": 1 / 9},
    }
    p.update_model_metrics("v0001", {"test": test})
    p.set_production("v0001")
    row = model_row(p.get_model("v0001"))
    assert row[1] == "★ production" and row[3] == "20"
    assert row[4].startswith("18/20 = 90.0 %") and row[5].startswith("1/11 = 9.1 % [")
    assert row[6].startswith("1/9 = 11.1 %") and row[7] == "0.4200"
    assert model_row(p.get_model("v0002"))[3] == "not evaluated"
    diff = disagreements(p, "v0001", "v0002")
    expected = [i for i in ids if i % 3 != 0]  # v0001 says ok only for ids divisible by 3
    assert [d["image_id"] for d in diff] == expected

    dlg = ModelsDialog(p, window)
    qtbot.addWidget(dlg)
    assert dlg.table.rowCount() == 2
    dlg.compare_a.setCurrentText("v0001")
    dlg.compare_b.setCurrentText("v0002")
    assert dlg.gallery.count() == len(expected)
    assert "disagree" in dlg.gallery_title.text()
    assert "<table" in dlg.side[0].toHtml() or "8" in dlg.side[0].toPlainText()
    # The report is rendered (Markdown, not a path) once one exists.
    dlg.select("v0001")
    assert not dlg.show_report() and "Evaluate it first" in dlg.last_message
    folder = p.models_dir / "v0001" / "eval"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "confusion.png"), np.zeros((20, 20, 3), np.uint8))
    (folder / "report.md").write_text(
        "# Evaluation of model v0001\n\n![confusion](confusion.png)\n"
    )
    assert dlg.show_report()
    assert "Evaluation of model v0001" in dlg.report.toPlainText()
    assert "#" not in dlg.report.toPlainText().splitlines()[0]


def test_training_dialog_proposes_height_and_width(qtbot, tmp_path):
    from defectssft.project import Project
    from defectssft_gui.train_dialog import TrainDialog

    p = Project.create(tmp_path / "strips", classes=CLASSES, ok_class="ok")
    for i in range(3):
        f = tmp_path / f"s{i}.png"
        cv2.imwrite(str(f), np.full((1240, 500), i, np.uint8))  # tall strips, as KolektorSDD
        p.add_image(f)
    p.close()
    dlg = TrainDialog(tmp_path / "strips")
    qtbot.addWidget(dlg)
    dlg.preset.setCurrentText("quick")  # 96 x 96
    h, w = dlg.input_h.value(), dlg.input_w.value()
    assert h > w > 0 and h % 32 == 0 and w % 32 == 0
    assert f"input.height={h}" in dlg.overrides() and f"input.width={w}" in dlg.overrides()
    dlg.input_w.setValue(0)  # back to the preset's width
    assert not any(o.startswith("input.width") for o in dlg.overrides())


def test_models_panel_failed_promotion_is_one_line_and_changes_nothing(window, qtbot):
    """A version without weights cannot be exported: the panel says so, production stays."""
    from defectssft_gui.models_panel import ModelsDialog

    p = window.project
    add_fake_model(p, "v0001")  # a record and predictions, no model.pt
    dlg = ModelsDialog(p, window)
    qtbot.addWidget(dlg)
    dlg.select("v0001")
    dlg.promote(force=True)
    assert not dlg.force_button.isEnabled()  # one at a time
    qtbot.waitUntil(lambda: not dlg._tasks, timeout=60000)
    assert dlg.last_message.startswith("error: making v0001 production: ")
    assert "\n" not in dlg.last_message
    assert p.production_model() is None
    assert not (p.root / "exports" / "production.onnx").exists()
    dlg.promote()  # the CLI's rule: evaluation needs a test split first
    qtbot.waitUntil(lambda: not dlg._tasks, timeout=60000)
    assert dlg.last_message.startswith("error: promoting v0001: ")
    assert p.production_model() is None


def test_a_novel_part_the_classifier_passes_is_unsure_in_the_window(window, qtbot):
    """A version with an anomaly head: the line makes an OK part that is novel UNSURE, and so
    do the verdict strip, the grid's tooltip and the UNSURE filter."""
    import json

    from defectssft.novel_scores import save_scores

    p = window.project
    ids = p.image_ids()
    add_fake_model(p, probs={i: [0.9, 0.05, 0.05] for i in ids})  # the classifier: all OK
    folder = p.models_dir / "v0001"
    (folder / "anomaly.json").write_text(json.dumps({"threshold": 2.0, "on_novel": "UNSURE"}))
    save_scores(folder, [ids[-1], ids[0]], np.array([3.0, 1.0], np.float32))  # newest: novel
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    assert window.current_row().image_id == ids[-1]
    assert window.strip.verdict == "UNSURE"
    assert "line verdict UNSURE (novel" in window.pred_label.text()
    idx = window.model.index(window.grid.currentIndex().row())
    assert "line verdict: UNSURE (novel)" in window.model.data(idx, Qt.ItemDataRole.ToolTipRole)
    with qtbot.waitSignal(window.rowsLoaded):
        window.set_filter("verdict:unsure")
    got = [window.model.row(i).image_id for i in range(window.model.total())]
    assert got == [ids[-1]]


def test_an_unsure_part_says_why_and_shows_a_tiny_score_as_it_is(window, qtbot):
    """A band near 1e-6 (a few-label project's calibration can put it there): the info line shows
    the score to 4 significant digits, not "0.000", and that it lies in the UNSURE band."""
    p = window.project
    ids = p.image_ids()
    probs = {i: [0.9, 0.05, 0.05] for i in ids}
    probs[ids[-1]] = [1 - 1.5e-6, 1e-6, 0.5e-6]  # the current image: defect score 1.5e-6
    add_fake_model(p, probs=probs)
    p.set_operating_point("v0001", 2e-6, 1e-6, 3e-6)
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    assert window.current_row().image_id == ids[-1]
    text = window.pred_label.text()
    assert "line verdict UNSURE (in the UNSURE band 1e-06 to 3e-06)" in text
    assert "defect score 1.5e-06" in text and "0.000" not in text
