"""The region-of-interest dialog: draw rectangles on an example image, save them to the project.

A thin layer over ``defectssft.project_roi`` (which checks the ROI against every project image
and stores it); drag on the image to add a rectangle, or type ``x,y,w,h``. A rectangle that does
not fit some project image is refused with the core's one-line reason, shown in the dialog, and
nothing is saved. A mask set from the command line (``defectssft roi --mask``) is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QPoint, QRect, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from defectssft.errors import ProjectError
from defectssft.project import Project
from defectssft.project_roi import clear_roi, project_roi, set_roi
from defectssft_line.preprocess import ImageDecodeError, read_image, to_rgb8
from defectssft_line.roi import Rect, RoiError, parse_rect


class RoiCanvas(QWidget):
    """An image scaled to fit, its rectangles drawn over it; a mouse drag adds one."""

    rectDrawn = Signal(tuple)  # (x, y, w, h) in image pixels

    def __init__(self, image: np.ndarray | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rects: list[Rect] = []
        self._drag: tuple[QPoint, QPoint] | None = None
        self.pixmap: QPixmap | None = None
        if image is not None:
            rgb = np.ascontiguousarray(image)
            h, w = rgb.shape[:2]
            qimg = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
            self.pixmap = QPixmap.fromImage(qimg.copy())
        self.setMinimumSize(320, 240)
        self.setMouseTracking(False)

    def image_size(self) -> tuple[int, int]:
        """(width, height) of the image (0, 0 without one)."""
        return (self.pixmap.width(), self.pixmap.height()) if self.pixmap else (0, 0)

    def _scale(self) -> float:
        w, h = self.image_size()
        if not w or not h:
            return 1.0
        return min(self.width() / w, self.height() / h)

    def to_image(self, p: QPoint) -> tuple[int, int]:
        s = self._scale()
        w, h = self.image_size()
        return min(max(0, round(p.x() / s)), w), min(max(0, round(p.y() / s)), h)

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if self.pixmap is not None and event.button() == Qt.MouseButton.LeftButton:
            p = event.position().toPoint()
            self._drag = (p, p)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._drag is not None:
            self._drag = (self._drag[0], event.position().toPoint())
            self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._drag is None:
            return
        (x0, y0), (x1, y1) = self.to_image(self._drag[0]), self.to_image(event.position().toPoint())
        self._drag = None
        x, y, w, h = min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0)
        if w >= 1 and h >= 1:
            self.rectDrawn.emit((x, y, w, h))
        self.update()

    def paintEvent(self, _event: QPaintEvent) -> None:  # noqa: N802
        painter = QPainter(self)
        s = self._scale()
        if self.pixmap is not None:
            w, h = self.image_size()
            painter.drawPixmap(QRect(0, 0, round(w * s), round(h * s)), self.pixmap)
        painter.setPen(QPen(QColor(0, 220, 0), 2))
        for x, y, w, h in self.rects:
            painter.drawRect(QRect(round(x * s), round(y * s), round(w * s), round(h * s)))
        if self._drag is not None:
            painter.setPen(QPen(QColor(255, 200, 0), 1, Qt.PenStyle.DashLine))
            painter.drawRect(QRect(self._drag[0], self._drag[1]).normalized())
        painter.end()


class RoiDialog(QDialog):
    """Edit the project's ROI on ``image_path`` (an example image of the project)."""

    def __init__(
        self, project: Project, image_path: str | Path | None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Region of interest")
        self.project = project
        image = None
        self.note = ""
        if image_path is not None:
            try:
                image = to_rgb8(read_image(image_path), project.get_setting("input.bit_depth", 16))
            except (ImageDecodeError, ValueError) as e:
                self.note = f"cannot show the example image: {e}"
        current = project_roi(project)
        self.mask = current.mask if current is not None else None
        self.canvas = RoiCanvas(image, self)
        self.canvas.rectDrawn.connect(self.add_rect)
        self.list = QListWidget(self)
        self.entry = QLineEdit(self)
        self.entry.setPlaceholderText("x,y,w,h")
        self.entry.returnPressed.connect(self.add_typed)
        add = QPushButton("Add", self)
        add.clicked.connect(self.add_typed)
        remove = QPushButton("Remove", self)
        remove.clicked.connect(self.remove_selected)
        clear = QPushButton("Clear all", self)
        clear.clicked.connect(self.clear_all)
        self.error = QLabel(self.note, self)
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #b00020")
        help_text = QLabel(
            "Drag on the image to add a rectangle. The model sees the bounding box of the "
            "rectangles (black outside them), in training, evaluation and on the line. "
            "Retrain for a change to take effect.",
            self,
        )
        help_text.setWordWrap(True)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)

        side = QVBoxLayout()
        side.addWidget(QLabel("Rectangles (x,y,w,h):", self))
        side.addWidget(self.list)
        row = QHBoxLayout()
        row.addWidget(self.entry)
        row.addWidget(add)
        side.addLayout(row)
        side.addWidget(remove)
        side.addWidget(clear)
        top = QHBoxLayout()
        top.addWidget(self.canvas, 3)
        top.addLayout(side, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(help_text)
        layout.addWidget(self.error)
        layout.addWidget(buttons)
        for r in current.rects if current is not None else ():
            self.add_rect(r)

    def rects(self) -> list[Rect]:
        return list(self.canvas.rects)

    def add_rect(self, rect: Rect) -> None:
        rect = tuple(int(v) for v in rect)  # type: ignore[assignment]
        self.canvas.rects.append(rect)
        self.list.addItem(",".join(str(v) for v in rect))
        self.canvas.update()

    def add_typed(self) -> None:
        try:
            rect = parse_rect(self.entry.text())
        except RoiError as e:
            self.error.setText(str(e))
            return
        self.error.setText("")
        self.entry.clear()
        self.add_rect(rect)

    def remove_selected(self) -> None:
        row = self.list.currentRow()
        if row >= 0:
            self.list.takeItem(row)
            del self.canvas.rects[row]
            self.canvas.update()

    def clear_all(self) -> None:
        self.list.clear()
        self.canvas.rects.clear()
        self.mask = None
        self.canvas.update()

    def save(self) -> None:
        """Store the rectangles (none: clear the ROI); a refusal is shown, the dialog stays."""
        try:
            if self.canvas.rects:
                set_roi(self.project, self.canvas.rects, mask=self.mask)
            else:
                clear_roi(self.project)
        except ProjectError as e:
            self.error.setText(str(e))
            return
        self.accept()
