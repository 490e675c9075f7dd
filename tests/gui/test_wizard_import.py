"""The New project wizard, the import preview dialog, import undo and class merge/delete in the
app, offscreen on the real widgets, with the samples/ images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gui_helpers import write_png
from PySide6.QtWidgets import QWizard

REPO = Path(__file__).resolve().parents[2]
KOLEKTOR = REPO / "samples" / "kolektorsdd"
NEU = REPO / "samples" / "neu-det"


@pytest.fixture
def empty_window(qtbot):
    from defectssft_gui.window import MainWindow

    win = MainWindow(None, quiet=True)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


def _fill_wizard(wizard, folder: Path, images: Path | None, rule: str | None) -> None:
    wizard.folder_page.folder.setText(str(folder))
    assert wizard.folder_page.isComplete()
    wizard.next()
    if images is not None:
        wizard.images_page.paths.setText(str(images))
    wizard.images_page.rule.set_rule(rule)
    wizard.next()


def _finish(wizard) -> None:
    wizard.button(QWizard.WizardButton.FinishButton).click()


def test_wizard_creates_kolektor_project_with_mapping(empty_window, qtbot, tmp_path):
    from defectssft_gui import project_flows

    wizard = project_flows.new_project(empty_window)
    _fill_wizard(wizard, tmp_path / "kol", KOLEKTOR, "folder")
    page = wizard.classes_page
    assert page.rows() == [("defective", "1"), ("good", "2")]  # found, no bogus ok/defect
    assert page.ok_combo.currentData() == "good"
    wizard.next()
    sensor = wizard.sensor_page
    assert not sensor.from_import  # JPEGs: the 12-bit test image is shown
    sensor.depth.setValue(12)
    bright12 = sensor.image.pixmap().toImage().pixelColor(150, 110).value()
    sensor.depth.setValue(16)
    bright16 = sensor.image.pixmap().toImage().pixelColor(150, 110).value()
    assert bright12 > 3 * bright16  # the 12-bit image is only visible at 12 bit
    sensor.depth.setValue(12)
    wizard.next()
    table = wizard.preview_page.table
    assert table.mapping() == {"defective": "defective", "good": "good"}
    with qtbot.waitSignal(empty_window.importDone, timeout=30000) as sig:
        _finish(wizard)
    assert sig.args[0].added == 16 and sig.args[0].new_classes == []
    p = empty_window.project
    assert p.status()["by_class"] == {"defective": 6, "good": 10}
    assert p.ok_class == "good" and p.get_setting("input.bit_depth") == 12
    assert [(c.name, c.hotkey) for c in p.classes()] == [("defective", "1"), ("good", "2")]


def test_wizard_on_neu_det_with_folder_rule_makes_no_neu_det_class(empty_window, qtbot, tmp_path):
    from defectssft.import_plan import UNLABELED
    from defectssft_gui import project_flows

    wizard = project_flows.new_project(empty_window)
    _fill_wizard(wizard, tmp_path / "neu", NEU, "folder")
    assert wizard.classes_page.rows() == []
    wizard.classes_page.add_row("scratches", "1")
    wizard.next()
    wizard.next()
    assert wizard.preview_page.table.mapping() == {"neu-det": UNLABELED}
    assert "directly in the imported folder" in wizard.preview_page.summary.text()
    with qtbot.waitSignal(empty_window.importDone, timeout=30000):
        _finish(wizard)
    p = empty_window.project
    assert p.class_names() == ["scratches"] and p.status()["unlabeled"] == 60


def test_wizard_filename_rule_and_no_images(empty_window, tmp_path):
    from defectssft_gui import project_flows

    wizard = project_flows.new_project(empty_window)
    _fill_wizard(wizard, tmp_path / "n", NEU, r"filename:^(.*)_\d+\.jpg$")
    assert len(wizard.classes_page.rows()) == 6
    wizard.back()
    wizard.images_page.paths.setText("")
    wizard.next()
    wizard.classes_page.initializePage()
    assert wizard.classes_page.rows() == []
    wizard.classes_page.add_row("ok", "1")
    wizard.classes_page.add_row("crack", "2")
    wizard.classes_page.set_ok("ok")
    wizard.next()
    wizard.next()
    _finish(wizard)
    assert empty_window.project.class_names() == ["ok", "crack"]
    assert empty_window.project.ok_class == "ok" and empty_window.project.count_images() == 0


def test_wizard_refuses_bad_folders_and_classes(empty_window, tmp_path):
    from defectssft_gui import project_flows

    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    wizard = project_flows.new_project(empty_window)
    page = wizard.folder_page
    page.folder.setText(str(other))
    assert not page.isComplete() and "is not empty" in page.check.text()
    shots = tmp_path / "shots"
    write_png(shots / "a.png", seed=1)
    page.folder.setText(str(shots))
    assert not page.isComplete() and page.use_beside.isVisible()
    page.use_beside.click()  # project beside the images, which become the import
    assert page.isComplete() and page.folder.text() == str(tmp_path / "shots-project")
    assert wizard.images_page.paths.text() == str(shots)
    wizard.next()
    wizard.images_page.rule.set_rule("filename:(")
    assert not wizard.images_page.validatePage()
    assert "bad regex" in wizard.images_page.error.text()
    wizard.images_page.rule.set_rule(None)
    wizard.next()
    classes = wizard.classes_page
    for rows, message in [
        ([("ok", "1"), ("ok", "2")], "listed twice"),
        ([("ok", "1"), ("ng", "1")], "both use key 1"),
        ([("a b", "")], "invalid class name"),
        ([("ok", "D")], "key D is already the shortcut of an action"),
    ]:
        classes.table.setRowCount(0)
        for name, key in rows:
            classes.add_row(name, key)
        assert not classes.validatePage()
        assert message in classes.error.text()
    assert wizard.currentPage() is classes and not (tmp_path / "shots-project").exists()


def test_open_refuses_unrelated_folder_and_offers_import(empty_window, tmp_path):
    from defectssft_gui import project_flows

    other = tmp_path / "docs"
    other.mkdir()
    (other / "report.pdf").write_bytes(b"%PDF")
    project_flows.choose_project(empty_window, str(other))
    assert "is not empty" in empty_window.last_error and empty_window.project is None
    assert not (other / "project.db").exists()
    shots = tmp_path / "shots"
    write_png(shots / "a.png", seed=1)
    project_flows.choose_project(empty_window, str(shots))
    wizard = empty_window.wizard
    assert wizard.folder_page.folder.text() == str(tmp_path / "shots-project")
    assert wizard.images_page.paths.text() == str(shots)
    assert not (shots / "project.db").exists()


def test_new_project_action_is_enabled_without_a_project(empty_window):
    assert empty_window.actions_by_name["new_project"].isEnabled()
    assert not empty_window.actions_by_name["imports"].isEnabled()


# ---------------------------------------------------------------- import dialog and history


@pytest.fixture
def good_window(qtbot, tmp_path):
    from defectssft.project import Project
    from defectssft_gui.window import MainWindow

    project = Project.create(tmp_path / "p", classes=["good", "crack"], ok_class="good")
    win = MainWindow(project, quiet=True)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


def test_import_dialog_preview_mapping_and_import(good_window, qtbot):
    from defectssft_gui import project_flows

    dialog = project_flows.open_import_dialog(good_window, [str(KOLEKTOR)], "folder")
    qtbot.waitUntil(lambda: dialog.scan is not None, timeout=20000)
    assert good_window.project.count_images() == 0  # a preview writes nothing
    assert dialog.table.mapping() == {"defective": "new:defective", "good": "good"}
    assert "16 images" in dialog.summary.text()
    dialog.table.set_target("defective", "nope")
    dialog.accept_plan()
    assert "mapped to class 'nope', which does not exist" in dialog.error.text()
    assert dialog.isVisible() and good_window.project.count_images() == 0
    dialog.table.set_target("defective", "crack")
    with qtbot.waitSignal(good_window.importDone, timeout=30000) as sig:
        dialog.import_button.click()
    assert sig.args[0].import_id == 1
    assert good_window.project.status()["by_class"] == {"good": 10, "crack": 6}
    # again, mapping defective -> good, with relabel: the preview says so, then labels change
    dialog = project_flows.open_import_dialog(good_window, [str(KOLEKTOR)], "folder")
    qtbot.waitUntil(lambda: dialog.scan is not None, timeout=20000)
    assert dialog.scan.duplicates == 16
    dialog.table.set_target("defective", "good")
    assert "kept (tick Relabel" in dialog.summary.text()
    dialog.relabel.setChecked(True)
    assert "they will be relabeled" in dialog.summary.text()
    with qtbot.waitSignal(good_window.importDone, timeout=30000) as sig:
        dialog.import_button.click()
    assert sig.args[0].relabeled == 6
    assert good_window.project.status()["by_class"] == {"good": 16, "crack": 0}


def test_import_dialog_bad_paths_and_no_preview(good_window, qtbot, tmp_path):
    from defectssft_gui import project_flows

    dialog = project_flows.open_import_dialog(good_window)
    dialog.accept_plan()
    assert "press Preview first" in dialog.error.text()
    dialog.paths_edit.setText(str(tmp_path / "missing"))
    with qtbot.waitSignal(dialog.scanned, timeout=20000):
        dialog.start_scan()
    assert "no such file or folder" in dialog.error.text()
    assert not dialog.import_button.isEnabled()


def test_yolo_without_label_files_is_said(good_window, qtbot):
    from defectssft_gui import project_flows

    dialog = project_flows.open_import_dialog(good_window, [str(KOLEKTOR)], "yolo")
    qtbot.waitUntil(lambda: dialog.scan is not None, timeout=20000)
    assert "16 of 16 images have no YOLO label file" in dialog.summary.text()


def test_import_history_undo(good_window, qtbot):
    from defectssft.import_plan import import_with_plan
    from defectssft_gui import project_flows

    p = good_window.project
    import_with_plan(p, [KOLEKTOR], "folder", {"defective": "crack"})
    import_with_plan(p, [KOLEKTOR], "folder", {"defective": "good"}, relabel=True)
    dialog = project_flows.open_imports(good_window)
    assert dialog.table.rowCount() == 2
    dialog.select_import(2)
    with qtbot.waitSignal(dialog.changed, timeout=20000):
        dialog.undo_selected("labels")
    assert p.status()["by_class"] == {"good": 10, "crack": 6}
    assert "undone (labels)" in dialog.table.item(1, 8).text()
    dialog.select_import(2)
    with qtbot.waitSignal(dialog.changed, timeout=20000):
        dialog.undo_selected("images")
    assert "import 2 was already undone" in dialog.error.text()
    dialog.select_import(1)
    with qtbot.waitSignal(dialog.changed, timeout=20000):
        dialog.undo_selected("images")
    assert p.count_images() == 0 and "removed 16 images" in dialog.status.text()
    qtbot.waitUntil(lambda: good_window.model.total() == 0, timeout=10000)


# ---------------------------------------------------------------- label book: merge / delete


def test_label_book_merge_and_delete(window, qtbot):
    from defectssft_gui.dialogs import LabelBookDialog

    p = window.project
    ids = p.image_ids()
    p.set_labels(ids[:3], "dent")
    book = LabelBookDialog(p)
    qtbot.addWidget(book)
    book.classesChanged.connect(window._classes_changed)
    window.set_filter("class:dent")
    qtbot.waitUntil(lambda: window.model.total() == 3, timeout=10000)
    book.select_class("dent")
    assert not book.merge_class("dent")
    assert "cannot merge 'dent' into itself" in book.error.text()
    book.select_class("ok")
    assert not book.delete_class()
    assert "it is the OK class" in book.error.text()
    book.select_class("dent")
    assert not book.delete_class()
    assert "3 images carry it" in book.error.text()
    assert p.class_names() == ["ok", "scratch", "dent"]
    assert book.merge_class("scratch")
    assert p.class_names() == ["ok", "scratch"] and p.status()["by_class"]["scratch"] == 3
    assert book.table.rowCount() == 2 and book.merge_into.count() == 2
    assert window.filter_box.findData("class:dent") < 0
    qtbot.waitUntil(lambda: window.model is not None and window.current_filter() != "class:dent")
    assert "unknown class" not in window.last_error
    book.select_class("scratch")
    assert book.delete_class(unlabel=True)
    assert p.class_names() == ["ok"] and p.get_image(ids[0]).label is None
    assert np.all([e.who for e in p.label_history(ids[0])])


def test_app_create_refuses_a_folder_of_other_files(tmp_path, capsys):
    from defectssft_gui.app import main

    other = tmp_path / "docs"
    other.mkdir()
    (other / "plan.xlsx").write_bytes(b"x")
    assert main([str(other), "--create", "ok,ng"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not empty" in err and err.count("\n") == 1
    assert sorted(f.name for f in other.iterdir()) == ["plan.xlsx"]
