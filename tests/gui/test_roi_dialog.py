"""The region-of-interest dialog: drawn and typed rectangles saved to the project, a rectangle
outside the images refused in the dialog with nothing saved, and the menu entry."""

from __future__ import annotations

from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from defectssft.project_roi import project_roi, set_roi


def test_draw_type_save_and_clear(window, qtbot):
    window.actions_by_name["roi"].trigger()
    dlg = window.roi_dialog
    qtbot.waitExposed(dlg)
    canvas = dlg.canvas
    assert canvas.image_size() == (48, 48)
    canvas.resize(480, 480)  # 10 screen px per image px
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, pos=QPoint(50, 100))
    QTest.mouseMove(canvas, QPoint(200, 300))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=QPoint(200, 300))
    assert dlg.rects() == [(5, 10, 15, 20)]
    dlg.entry.setText("30,30,10,10")
    dlg.add_typed()
    dlg.save()
    assert project_roi(window.project).rects == ((5, 10, 15, 20), (30, 30, 10, 10))

    window.actions_by_name["roi"].trigger()  # opens with the stored rectangles
    dlg = window.roi_dialog
    assert dlg.list.count() == 2
    dlg.clear_all()
    dlg.save()
    assert project_roi(window.project) is None


def test_bad_rectangles_are_refused_in_the_dialog(window, qtbot):
    set_roi(window.project, ["1,1,5,5"])
    window.actions_by_name["roi"].trigger()
    dlg = window.roi_dialog
    dlg.entry.setText("1,2,3")
    dlg.add_typed()
    assert "x,y,w,h" in dlg.error.text() and dlg.list.count() == 1
    dlg.entry.setText("40,40,20,20")  # beyond the 48 x 48 images
    dlg.add_typed()
    dlg.save()
    assert "does not fit 12 of 12 project image(s)" in dlg.error.text()
    assert dlg.isVisible()
    assert project_roi(window.project).rects == ((1, 1, 5, 5),)  # nothing saved


def test_train_dialog_proposes_shape_or_the_tile_size(tmp_path, qtbot):
    import cv2
    import numpy as np

    from defectssft.project import Project
    from defectssft_gui.train_dialog import TrainDialog

    project = Project.create(tmp_path / "tall", classes=["ok", "ng"], ok_class="ok")
    for i in range(3):
        f = tmp_path / f"t{i}.png"
        cv2.imwrite(str(f), np.full((1260, 500), 40 + i, np.uint8))
        project.add_image(f)
    project.close()
    dlg = TrainDialog(tmp_path / "tall")
    qtbot.addWidget(dlg)
    dlg.preset.setCurrentText("quick")
    assert dlg.input_h.value() > dlg.input_w.value() > 0  # tall parts stay tall
    assert "the resize shrinks the parts" in dlg.size_note.text()  # 500 px wide to 64: 7.8x
    dlg.preset.setCurrentText("tiles")
    assert (dlg.input_h.value(), dlg.input_w.value()) == (0, 0)  # the preset's 128 x 128 tiles
    assert "tiles of 128 × 128 at native resolution" in dlg.size_note.text()
