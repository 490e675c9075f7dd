"""Small widgets of the main window: the browse panel (filter, sort, thumbnail grid), the
brightness/contrast bar, a wrapping class bar, class buttons in their colours, and the strip that
shows the current image's label, the model's suggestion and the line's verdict.

Nothing here talks to the project; the window fills them in.
"""

from __future__ import annotations

from PySide6.QtCore import QMargins, QPoint, QRect, QSize, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLayoutItem,
    QListView,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from defectssft_gui.thumbs import THUMB_SIZE

VERDICT_COLOURS = {"OK": "#2e7d32", "NG": "#c62828", "UNSURE": "#ef8f00"}
DISAGREE_COLOUR = "#ffb74d"  # a caption/label the model disagrees with: never the class colour


SORTS = (
    ("newest first", "-capture"),
    ("oldest first", "capture"),
    ("defect score ↓", "score"),
    ("defect score ↑", "-score"),
)


class BrowsePanel(QWidget):
    """Show (filter) and Sort boxes, the image count and the thumbnail grid: a QListView in
    icon mode, uniform cells with a two-line caption that elides at the end."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.filter_box = QComboBox()
        self.filter_box.setToolTip("Which images to list")
        self.sort_box = QComboBox()
        for text, key in SORTS:
            self.sort_box.addItem(text, key)
        self.count_label = QLabel("")
        grid = self.grid = QListView()
        grid.setViewMode(QListView.ViewMode.IconMode)
        grid.setResizeMode(QListView.ResizeMode.Adjust)
        grid.setMovement(QListView.Movement.Static)
        grid.setUniformItemSizes(True)
        grid.setLayoutMode(QListView.LayoutMode.Batched)
        grid.setBatchSize(200)
        grid.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        grid.setGridSize(QSize(THUMB_SIZE + 16, THUMB_SIZE + 44))
        grid.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        grid.setWordWrap(False)
        grid.setTextElideMode(Qt.TextElideMode.ElideRight)
        top = QHBoxLayout()
        top.addWidget(QLabel("Show"))
        top.addWidget(self.filter_box, 1)
        top.addWidget(QLabel("Sort"))
        top.addWidget(self.sort_box)
        top.addWidget(self.count_label)
        lv = QVBoxLayout(self)
        lv.setContentsMargins(4, 4, 4, 4)
        lv.addLayout(top)
        lv.addWidget(grid, 1)


class LevelsBar(QWidget):
    """Brightness (window level) and contrast (window width) sliders, 1..1000 = 0.1 %..100 %."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.level_slider = QSlider(Qt.Orientation.Horizontal)
        self.window_slider = QSlider(Qt.Orientation.Horizontal)
        for s, tip in (
            (self.level_slider, "Brightness (window level)"),
            (self.window_slider, "Contrast (window width)"),
        ):
            s.setRange(1, 1000)
            s.setToolTip(tip)
            s.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.level_slider.setValue(500)
        self.window_slider.setValue(1000)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel("Brightness"))
        lay.addWidget(self.level_slider)
        lay.addWidget(QLabel("Contrast"))
        lay.addWidget(self.window_slider)


def text_colour_on(background: str) -> str:
    """Black or white, whichever reads better on ``background``."""
    c = QColor(background)
    luma = 0.299 * c.red() + 0.587 * c.green() + 0.114 * c.blue()
    return "#000000" if luma > 150 else "#ffffff"


class FlowLayout(QLayout):
    """Lays its widgets left to right and wraps them onto new rows (Qt's flow layout example),
    so nine class buttons fit a 1280 px window instead of widening it."""

    def __init__(self, parent: QWidget | None = None, spacing: int = 4) -> None:
        super().__init__(parent)
        self._items: list[QLayoutItem] = []
        self.setSpacing(spacing)
        self.setContentsMargins(QMargins(0, 0, 0, 0))

    def addItem(self, item: QLayoutItem) -> None:
        self._items.append(item)

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, index: int) -> QLayoutItem | None:
        return self._items[index] if 0 <= index < len(self._items) else None

    def takeAt(self, index: int) -> QLayoutItem | None:
        return self._items.pop(index) if 0 <= index < len(self._items) else None

    def expandingDirections(self) -> Qt.Orientation:
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        return self._do_layout(QRect(0, 0, width, 0), test=True)

    def setGeometry(self, rect: QRect) -> None:
        super().setGeometry(rect)
        self._do_layout(rect, test=False)

    def sizeHint(self) -> QSize:
        return self.minimumSize()

    def minimumSize(self) -> QSize:
        size = QSize()
        for item in self._items:
            size = size.expandedTo(item.minimumSize())
        m = self.contentsMargins()
        return size + QSize(m.left() + m.right(), m.top() + m.bottom())

    def _do_layout(self, rect: QRect, test: bool) -> int:
        m = self.contentsMargins()
        area = rect.adjusted(m.left(), m.top(), -m.right(), -m.bottom())
        x, y, line = area.x(), area.y(), 0
        gap = self.spacing()
        for item in self._items:
            hint = item.sizeHint()
            if x + hint.width() > area.right() + 1 and line > 0:
                x, y, line = area.x(), y + line + gap, 0
            if not test:
                item.setGeometry(QRect(QPoint(x, y), hint))
            x += hint.width() + gap
            line = max(line, hint.height())
        return y + line - rect.y() + m.bottom()


class ClassButton(QPushButton):
    """A class's button: its colour as a swatch, bold and framed when it is the current label."""

    def __init__(self, text: str, colour: str | None, parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.colour = colour or "#9e9e9e"
        self.setCheckable(True)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self._current: bool | None = None
        self.set_current(False)

    def set_current(self, current: bool) -> None:
        self.setChecked(current)
        if current == self._current:
            return  # a style sheet costs a re-polish: only when it changes
        self._current = current
        fg = text_colour_on(self.colour)
        if current:
            style = (
                f"QPushButton {{ background: {self.colour}; color: {fg}; font-weight: bold; "
                f"border: 3px solid palette(highlight); padding: 4px 8px; }}"
            )
        else:
            style = (
                f"QPushButton {{ border-left: 8px solid {self.colour}; padding: 4px 8px; "
                f"border-top: 1px solid #888; border-right: 1px solid #888; "
                f"border-bottom: 1px solid #888; }}"
            )
        self.setStyleSheet(style)


class _Chip(QLabel):
    def __init__(self, title: str) -> None:
        super().__init__()
        self.title = title
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumHeight(44)
        self._style = ""
        self.show_value(None)

    def show_value(self, value: str | None, colour: str | None = None, note: str = "") -> None:
        shown = value if value else "—"
        bg = colour or "#424242"
        fg = text_colour_on(bg)
        extra = f" <span style='font-size:11pt'>{note}</span>" if note else ""
        self.setText(
            f"<span style='font-size:9pt'>{self.title}</span><br>"
            f"<b style='font-size:15pt'>{shown}</b>{extra}"
        )
        style = (
            f"QLabel {{ background: {bg}; color: {fg}; border-radius: 6px; padding: 2px 10px; }}"
        )
        if style != self._style:  # a style sheet costs a re-polish: only when it changes
            self._style = style
            self.setStyleSheet(style)


class VerdictStrip(QWidget):
    """Label | Suggestion | Line verdict of the current image, large and in colour."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label_chip = _Chip("label")
        self.suggestion_chip = _Chip("model suggests")
        self.verdict_chip = _Chip("line verdict")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        for chip, stretch in (
            (self.label_chip, 3),
            (self.suggestion_chip, 3),
            (self.verdict_chip, 2),
        ):
            lay.addWidget(chip, stretch)
        self.verdict: str | None = None

    def show_image(
        self,
        label: str | None,
        label_colour: str | None,
        pred: str | None,
        pred_colour: str | None,
        confidence: float | None,
        verdict: str | None,
    ) -> None:
        disagree = label is not None and pred is not None and label != pred
        self.label_chip.show_value(
            label or "unlabeled",
            (DISAGREE_COLOUR if disagree else label_colour) if label else None,
            "≠ model" if disagree else "",
        )
        self.suggestion_chip.show_value(
            pred,
            pred_colour if pred else None,
            f"{confidence:.0%}" if confidence is not None else "",
        )
        self.verdict = verdict
        self.verdict_chip.show_value(verdict, VERDICT_COLOURS.get(verdict or ""))
        self.verdict_chip.setToolTip(
            "What the production line would do with this image: the model's defect score against "
            "the thresholds exported with the model and, for a model with an anomaly head, a "
            "part it passes that is novel goes to UNSURE"
        )

    def clear(self) -> None:
        self.show_image(None, None, None, None, None, None)
        self.label_chip.show_value(None)
