"""The operating-point panel: a version's score histogram (labeled OK vs defective parts, and the
unlabeled stream) with the NG threshold and the UNSURE band as lines you drag, the escapes,
overkill, UNSURE and stream review rate they give (counts and 95 % intervals), *Save* (the
project's ``set_operating_point``, which the next export writes) and *Export with these
thresholds*.

A thin layer over ``defectssft.operating``: loading the scores and binning them, scoring images
the version has not predicted, and the export run on a pool thread; the rates of a candidate are
a few bisections, cheap enough to follow the mouse on the GUI thread.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import QPointF, QRectF, Qt, QThreadPool, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPen,
    QValidator,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QAbstractSpinBox,
    QCheckBox,
    QDialog,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from defectssft import operating as O
from defectssft.project import Project
from defectssft_gui.workers import Task, start_task
from defectssft_line.decision import ThresholdError, Thresholds

OK_COLOUR = QColor(46, 125, 50)
DEFECT_COLOUR = QColor(198, 40, 40)
STREAM_COLOUR = QColor(21, 101, 192)
BAND_COLOUR = QColor(239, 150, 0)
NOVEL_COLOUR = QColor(123, 31, 162)
TICKS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999)
PICK_PX = 8


def _load(project: Project, version: str, bins: int) -> tuple[O.OperatingData, O.Histogram]:
    """Scores and their histogram (a pool thread: tens of thousands of stored predictions)."""
    data = O.load_operating_data(project, version)
    return data, O.histogram(data, bins)


class ScoreHistogram(QWidget):
    """Histogram on a logit score axis with three draggable lines: UNSURE from (low), the NG
    threshold, NG from (high). ``changed(low, ng, high)`` while dragging. Lines that coincide
    (no band) move together as the NG threshold; Shift-drag pulls a band edge out of them."""

    changed = Signal(float, float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hist: O.Histogram | None = None
        self.on_novel = "UNSURE"  # what a novel part becomes (the legend says it)
        self.log_scale = True
        self.low = self.ng = self.high = 0.5
        self._drag: str | None = None
        self.setMinimumSize(640, 260)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setToolTip(
            "Drag the red line (NG threshold) or the amber band edges; Shift-drag pulls a band "
            "edge out of the threshold. Green: labeled OK parts, red: labeled defects, blue: the "
            "unlabeled stream, purple dots: parts the anomaly head finds novel."
        )

    # ----------------------------------------------------------- geometry
    def plot_rect(self) -> QRectF:
        return QRectF(48, 28, max(10, self.width() - 64), max(10, self.height() - 64))

    def _range(self) -> tuple[float, float]:
        if self.hist is None:
            return -6.0, 6.0
        return float(self.hist.edges[0]), float(self.hist.edges[-1])

    def x_of(self, score: float) -> float:
        lo, hi = self._range()
        r = self.plot_rect()
        x = float(O.to_logit(score))
        return r.left() + (min(max(x, lo), hi) - lo) / (hi - lo) * r.width()

    def score_at(self, px: float) -> float:
        lo, hi = self._range()
        r = self.plot_rect()
        t = min(max((px - r.left()) / r.width(), 0.0), 1.0)
        return float(O.from_logit(lo + t * (hi - lo)))

    # ----------------------------------------------------------- state
    def set_histogram(self, hist: O.Histogram) -> None:
        self.hist = hist
        self.update()

    def set_log_scale(self, on: bool) -> None:
        self.log_scale = on
        self.update()

    def set_thresholds(self, low: float, ng: float, high: float) -> None:
        self.low, self.ng, self.high = low, ng, high
        self.update()

    # ----------------------------------------------------------- mouse
    def mousePressEvent(self, event: QMouseEvent) -> None:
        x = event.position().x()
        lines = {"ng": self.x_of(self.ng), "low": self.x_of(self.low), "high": self.x_of(self.high)}
        near = {k: abs(v - x) for k, v in lines.items() if abs(v - x) <= PICK_PX}
        if not near:
            return super().mousePressEvent(event)
        best = min(near.values())
        tied = [k for k in ("ng", "low", "high") if near.get(k, 99) <= best + 0.5]
        shift = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        self._drag = "edge" if shift and "ng" in tied else tied[0]
        self._press_x = x
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag is None:
            return super().mouseMoveEvent(event)
        x = event.position().x()
        if self._drag == "edge":  # Shift-drag from the threshold: the side says which edge
            if abs(x - self._press_x) < 2:
                return
            self._drag = "low" if x < self._press_x else "high"
        s = self.score_at(x)
        low, ng, high = self.low, self.ng, self.high
        if self._drag == "ng":  # the threshold pushes the band edges it crosses
            ng = s
            low, high = min(low, ng), max(high, ng)
            if self.low == self.ng:
                low = ng
            if self.high == self.ng:
                high = ng
        elif self._drag == "low":
            low = min(s, ng)
        else:
            high = max(s, ng)
        self.set_thresholds(low, ng, high)
        self.changed.emit(low, ng, high)
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._drag = None
        super().mouseReleaseEvent(event)

    # ----------------------------------------------------------- paint
    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), self.palette().base())
        r = self.plot_rect()
        p.setPen(QPen(self.palette().text().color(), 1))
        p.drawRect(r)
        h = self.hist
        if h is not None:
            series = [h.ok, h.defect, h.stream]
            top = max([int(s.max()) for s in series if s.size] + [1])

            def y_of(count: float) -> float:
                frac = (
                    (math.log1p(count) / math.log1p(top) if self.log_scale else count / top)
                    if count > 0
                    else 0.0
                )
                return r.bottom() - frac * (r.height() - 4)

            edges = [
                r.left() + (e - h.edges[0]) / (h.edges[-1] - h.edges[0]) * r.width()
                for e in h.edges
            ]
            for counts, colour in ((h.ok, OK_COLOUR), (h.defect, DEFECT_COLOUR)):
                fill = QColor(colour)
                fill.setAlpha(110)
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(fill)
                for i, c in enumerate(counts):
                    if c:
                        p.drawRect(
                            QRectF(edges[i], y_of(c), edges[i + 1] - edges[i], r.bottom() - y_of(c))
                        )
            if h.stream.any():
                path = QPainterPath(QPointF(edges[0], r.bottom()))
                for i, c in enumerate(h.stream):
                    path.lineTo(edges[i], y_of(c))
                    path.lineTo(edges[i + 1], y_of(c))
                path.lineTo(edges[-1], r.bottom())
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.setPen(QPen(STREAM_COLOUR, 2))
                p.drawPath(path)
            if h.novel is not None and h.novel.any():  # novel parts: a mark under their bin
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(NOVEL_COLOUR)
                for i, c in enumerate(h.novel):
                    if c:
                        x = (edges[i] + edges[i + 1]) / 2
                        p.drawEllipse(QPointF(x, r.bottom() - 5), 4, 4)
            self._axes(p, r, top)
        # the UNSURE band, then its edges and the threshold
        band = QColor(BAND_COLOUR)
        band.setAlpha(45)
        xl, xn, xh = self.x_of(self.low), self.x_of(self.ng), self.x_of(self.high)
        p.fillRect(QRectF(xl, r.top(), xh - xl, r.height()), band)
        for x, colour, width, style in (
            (xl, BAND_COLOUR, 2, Qt.PenStyle.DashLine),
            (xh, BAND_COLOUR, 2, Qt.PenStyle.DashLine),
            (xn, DEFECT_COLOUR, 3, Qt.PenStyle.SolidLine),
        ):
            p.setPen(QPen(colour, width, style))
            p.drawLine(QPointF(x, r.top() - 6), QPointF(x, r.bottom()))
        p.setPen(QPen(DEFECT_COLOUR))
        if self.low == self.high:
            p.drawText(QPointF(xn + 4, r.top() - 8), f"NG ≥ {self.ng:.4g}")
        else:
            p.drawText(QPointF(xn + 4, r.top() - 8), f"threshold {self.ng:.4g}")
            p.setPen(QPen(BAND_COLOUR.darker(130)))
            p.drawText(QPointF(xh + 4, r.bottom() - 6), f"NG ≥ {self.high:.4g}")
            text = f"UNSURE ≥ {self.low:.4g}"
            x = xl - 4 - p.fontMetrics().horizontalAdvance(text)
            if x < r.left() + 2:  # no room left of the band: inside the plot, a line higher
                x, y = r.left() + 2, r.bottom() - 8 - p.fontMetrics().height()
            else:
                y = r.bottom() - 6
            p.drawText(QPointF(x, y), text)
        self._legend(p, r)
        p.end()

    def _axes(self, p: QPainter, r: QRectF, top: int) -> None:
        p.setPen(QPen(self.palette().text().color(), 1))
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() - 1))
        p.setFont(small)
        lo, hi = self._range()
        for t in TICKS:
            x = float(O.to_logit(t))
            if lo <= x <= hi:
                px = self.x_of(t)
                p.drawLine(QPointF(px, r.bottom()), QPointF(px, r.bottom() + 4))
                p.drawText(
                    QRectF(px - 30, r.bottom() + 5, 60, 16), Qt.AlignmentFlag.AlignHCenter, f"{t:g}"
                )
        p.drawText(
            QRectF(r.left(), r.bottom() + 20, r.width(), 16),
            Qt.AlignmentFlag.AlignHCenter,
            "defect score (logit axis)",
        )
        p.drawText(QRectF(0, r.top(), 44, 16), Qt.AlignmentFlag.AlignRight, str(top))
        p.drawText(QRectF(0, r.bottom() - 16, 44, 16), Qt.AlignmentFlag.AlignRight, "0")
        p.drawText(
            QRectF(0, r.top() + 18, 44, 16),
            Qt.AlignmentFlag.AlignRight,
            "log" if self.log_scale else "",
        )

    def _legend(self, p: QPainter, r: QRectF) -> None:
        if self.hist is None:
            return
        items = [
            (OK_COLOUR, f"labeled OK ({int(self.hist.ok.sum())})"),
            (DEFECT_COLOUR, f"labeled defect ({int(self.hist.defect.sum())})"),
            (STREAM_COLOUR, f"stream ({int(self.hist.stream.sum())})"),
            (BAND_COLOUR, "UNSURE band"),
        ]
        n_novel = 0 if self.hist.novel is None else int(self.hist.novel.sum())
        if n_novel:
            items.append((NOVEL_COLOUR, f"novel ({n_novel}): {self.on_novel} if passed"))
        x = r.left() + 8
        for colour, text in items:
            p.fillRect(QRectF(x, r.top() + 8, 12, 12), colour)
            p.setPen(QPen(self.palette().text().color()))
            p.drawText(QPointF(x + 16, r.top() + 19), text)
            x += 24 + p.fontMetrics().horizontalAdvance(text)


class ScoreSpin(QDoubleSpinBox):
    """A score to 6 significant digits ("1.057e-06", "0.064929"), kept to 12 decimals: a few-label
    calibration can put a threshold near 1e-6, which 6 fixed decimals would show as 0.000001
    and round. Steps are a tenth of the value's decade; exponents can be typed."""

    def __init__(self) -> None:
        super().__init__()
        self.setDecimals(12)
        self.setStepType(QAbstractSpinBox.StepType.AdaptiveDecimalStepType)

    def textFromValue(self, value: float) -> str:
        return f"{value:.6g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int) -> QValidator.State:
        try:
            value = float(text)
        except ValueError:  # a number being typed ("1e-", "-", "") or not a number
            bad = text.strip() and not set(text.strip()) <= set("0123456789.eE+-")
            return QValidator.State.Invalid if bad else QValidator.State.Intermediate
        if self.minimum() <= value <= self.maximum():
            return QValidator.State.Acceptable
        return QValidator.State.Intermediate


class OperatingPointDialog(QDialog):
    """Non-modal. ``saved(version)`` after *Save* (the window refreshes its verdicts),
    ``exported(path)`` after an export, ``loaded()`` once the scores are in."""

    saved = Signal(str)
    exported = Signal(str)
    loaded = Signal()

    ROWS = ("val", "test", "oof", "all")

    def __init__(
        self, project: Project, version: str | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.project = project
        self.version = project.get_model(version)["version"]
        self.data: O.OperatingData | None = None
        self.table_rates: O.RatesTable | None = None
        self.last_message = ""
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)
        self._tasks: set[Task] = set()
        self.setWindowTitle(f"Operating point — {project.name} {self.version}")
        self.resize(1100, 760)

        self.title = QLabel(f"{self.version}: loading scores…")
        f = self.title.font()
        f.setPointSizeF(f.pointSizeF() + 2)
        f.setBold(True)
        self.title.setFont(f)
        self.histogram = ScoreHistogram()
        self.histogram.changed.connect(self._dragged)
        self.log_box = QCheckBox("log counts")
        self.log_box.setChecked(True)
        self.log_box.setToolTip("OK parts outnumber defects: a log count axis shows both")
        self.log_box.toggled.connect(self.histogram.set_log_scale)

        self.low_spin, self.ng_spin, self.high_spin = (self._spin() for _ in range(3))
        self.low_spin.setToolTip("UNSURE from this score (below: OK)")
        self.ng_spin.setToolTip("NG threshold: what the line rejects when there is no band")
        self.high_spin.setToolTip("NG from this score (between the edges: UNSURE, to review)")
        controls = QHBoxLayout()
        for text, spin in (
            ("UNSURE from", self.low_spin),
            ("NG threshold", self.ng_spin),
            ("NG from", self.high_spin),
        ):
            controls.addWidget(QLabel(text))
            controls.addWidget(spin)
        controls.addStretch(1)
        controls.addWidget(self.log_box)
        self.low_spin.valueChanged.connect(lambda v: self._spun(low=v))
        self.high_spin.valueChanged.connect(lambda v: self._spun(high=v))
        self.ng_spin.valueChanged.connect(self._ng_spun)

        # the headline rates (all labeled parts, and the stream)
        self.headline: dict[str, QLabel] = {}
        head = QGridLayout()
        for col, (key, text) in enumerate(
            (
                ("escapes", "escapes (defects passed)"),
                ("overkill", "overkill (OK rejected)"),
                ("unsure", "UNSURE, labeled"),
                ("review", "stream to review (NG + UNSURE)"),
                ("stream_unsure", "stream UNSURE"),
            )
        ):
            name = QLabel(text)
            value = QLabel("—")
            vf = value.font()
            vf.setPointSizeF(vf.pointSizeF() + 1)
            vf.setBold(True)
            value.setFont(vf)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            head.addWidget(name, 0, col)
            head.addWidget(value, 1, col)
            self.headline[key] = value

        self.table = QTableWidget(0, 6)
        self.table.setHorizontalHeaderLabels(
            ["evidence", "OK", "defect", "escapes", "overkill", "UNSURE"]
        )
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setToolTip("count / parts = rate [95 % Wilson interval]")

        self.novelty = QLabel("")
        self.novelty.setWordWrap(True)
        self.novelty.setToolTip(
            "The rates are the line's verdicts: with the anomaly head of the file that ships, a "
            "novel part the classifier passes is UNSURE (or NG) wherever the lines are"
        )
        self.notes = QLabel("")
        self.notes.setWordWrap(True)
        self.notes.setStyleSheet("color: #8a5a00")
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.score_button = QPushButton("Score missing images")
        self.score_button.setToolTip(
            "Predict the val, test and unlabeled images this version has not scored yet"
        )
        self.reset_button = QPushButton("Back to saved")
        self.clear_button = QPushButton("Forget saved")
        self.clear_button.setToolTip(
            "Remove the saved operating point: back to the one `defectssft evaluate` chose "
            "(`defectssft thresholds PROJECT --clear`)"
        )
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip(
            "Store these thresholds for the version: the app's verdicts follow at once and the "
            "next `defectssft export` writes them"
        )
        self.export_button = QPushButton("Export with these thresholds")
        self.export_button.setToolTip(
            "Save, then export the version to ONNX with these thresholds (no retraining); the "
            "production version is also republished to exports/production.onnx"
        )
        self.score_button.clicked.connect(self.score_missing)
        self.reset_button.clicked.connect(self.reset)
        self.clear_button.clicked.connect(self.clear_saved)
        self.save_button.clicked.connect(lambda: self.save())
        self.export_button.clicked.connect(lambda: self.export())
        buttons = QHBoxLayout()
        for b in (self.score_button, self.reset_button, self.clear_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        for b in (self.save_button, self.export_button):
            buttons.addWidget(b)

        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.histogram, 1)
        lay.addLayout(controls)
        lay.addLayout(head)
        lay.addWidget(self.table)
        lay.addWidget(self.novelty)
        lay.addWidget(self.notes)
        lay.addWidget(self.message)
        lay.addLayout(buttons)
        self._sync_buttons()
        self.reload()

    @staticmethod
    def _spin() -> QDoubleSpinBox:
        s = ScoreSpin()
        s.setRange(-1.0, 2.0)  # out-of-range values are typed, then refused with one line
        s.setKeyboardTracking(False)
        s.setMinimumWidth(110)
        return s

    # ------------------------------------------------------------ loading
    def reload(self) -> None:
        """Load the version's scores and histogram on the pool thread."""
        self._run("loading scores", _load, self.project, self.version, 60, done=self._loaded)

    def _loaded(self, result: tuple[O.OperatingData, O.Histogram]) -> None:
        self.data, hist = result
        d = self.data
        self.histogram.on_novel = d.novelty.on_novel if d.novelty is not None else "UNSURE"
        self.histogram.set_histogram(hist)
        self.novelty.setText(O.novelty_text(d))
        self.novelty.setVisible(bool(self.novelty.text()))
        self.title.setText(f"{d.version}: operating point {d.source}")
        self.notes.setText("\n".join(f"• {n}" for n in d.notes))
        self.set_thresholds(d.current.unsure_low, d.current.ng, d.current.unsure_high)
        self.loaded.emit()

    # ------------------------------------------------------------ thresholds
    def set_thresholds(self, low: float, ng: float, high: float) -> None:
        """Show a candidate: spin boxes, lines and rates (the spin boxes' signals held)."""
        for spin, v in ((self.low_spin, low), (self.ng_spin, ng), (self.high_spin, high)):
            spin.blockSignals(True)
            spin.setValue(v)
            spin.blockSignals(False)
        self.histogram.set_thresholds(low, ng, high)
        self._update_rates()

    def candidate(self) -> Thresholds:
        """The thresholds shown; ThresholdError (one line) when out of order or outside [0, 1].
        Read from the histogram, which holds them exactly (a spin box shows 6 digits)."""
        h = self.histogram
        return O.candidate(h.ng, h.low, h.high)

    def _dragged(self, low: float, ng: float, high: float) -> None:
        self.set_thresholds(low, ng, high)

    def _ng_spun(self, ng: float) -> None:
        """The threshold moves the band edges it meets (as dragging it does): without a band
        there is none after; an edge it crosses comes along. A band edge typed past the
        threshold is refused instead (``_spun``)."""
        low, high = self.histogram.low, self.histogram.high
        old = self.histogram.ng
        low = ng if low == old or low > ng else low
        high = ng if high == old or high < ng else high
        if 0.0 <= ng <= 1.0:
            self.set_thresholds(low, ng, high)
        else:  # shown as typed, refused by the rates (one line)
            self.histogram.set_thresholds(self.histogram.low, ng, self.histogram.high)
            self._update_rates()

    def _spun(self, low: float | None = None, high: float | None = None) -> None:
        """A band edge typed: only that edge changes (the others keep their exact values)."""
        h = self.histogram
        h.set_thresholds(h.low if low is None else low, h.ng, h.high if high is None else high)
        self._update_rates()

    def _update_rates(self) -> None:
        if self.data is None:
            return
        try:
            t = self.candidate()
        except ThresholdError as e:
            self.table_rates = None
            self._say(f"error: {e}")
            for label in self.headline.values():
                label.setText("—")
            self._sync_buttons()
            return
        if self.last_message.startswith("error: thresholds"):
            self._say("")
        table = self.table_rates = O.rates(self.data, t)
        a = table.parts["all"]
        self.headline["escapes"].setText(a.escapes.text())
        self.headline["overkill"].setText(a.overkill.text())
        self.headline["unsure"].setText(a.unsure.text())
        self.headline["review"].setText(table.stream.review.text())
        self.headline["stream_unsure"].setText(table.stream.unsure.text())
        self.headline["escapes"].setStyleSheet("color: #c62828" if a.escapes.k else "")
        rows = [k for k in self.ROWS if k in table.parts]
        self.table.setRowCount(len(rows))
        for r, key in enumerate(rows):
            pr = table.parts[key]
            cells = [
                O.PART_NAMES[key],
                str(pr.n_ok),
                str(pr.n_defect),
                pr.escapes.text(),
                pr.overkill.text(),
                pr.unsure.text(),
            ]
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        height = self.table.horizontalHeader().height() + 2 * self.table.frameWidth() + 4
        height += sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        self.table.setFixedHeight(height)
        self._sync_buttons()

    # ------------------------------------------------------------ actions
    def _say(self, text: str) -> None:
        self.last_message = text
        self.message.setText(text)

    def _sync_buttons(self) -> None:
        busy = bool(self._tasks)
        ready = self.data is not None and self.table_rates is not None and not busy
        self.save_button.setEnabled(ready)
        self.export_button.setEnabled(ready)
        self.reset_button.setEnabled(self.data is not None and not busy)
        self.clear_button.setEnabled(
            self.data is not None and self.data.saved is not None and not busy
        )
        missing = self.data is not None and bool(self.data.missing)
        self.score_button.setEnabled(missing and not busy)

    def _run(self, what: str, fn: Any, *args: Any, done: Any) -> None:
        task = Task(fn, *args)
        self._tasks.add(task)
        self._say(f"{what}…")
        self._sync_buttons()

        def ok(result: Any) -> None:
            self._tasks.discard(task)
            if self.last_message == f"{what}…":
                self._say("")
            done(result)
            self._sync_buttons()

        def failed(msg: str) -> None:
            self._tasks.discard(task)
            self._say(f"error: {what}: {msg}")
            self._sync_buttons()

        start_task(self.pool, task, ok, failed)

    def reset(self) -> None:
        if self.data is not None:
            c = self.data.current
            self.set_thresholds(c.unsure_low, c.ng, c.unsure_high)

    def clear_saved(self) -> None:
        """Forget the saved point (the window's verdicts follow), then reload what applies now."""
        if self.data is None or self._tasks:
            return
        self.project.set_operating_point(self.version, None)
        self._say(f"the saved operating point of {self.version} is forgotten")
        self.saved.emit(self.version)
        self.reload()

    def save(self) -> bool:
        """Store the shown thresholds for the version; a bad band is refused (nothing stored)."""
        try:
            t = self.candidate()
        except ThresholdError as e:
            self._say(f"error: {e}; nothing saved")
            return False
        point = self.project.set_operating_point(
            self.version, t.ng, t.unsure_low, t.unsure_high, source="app"
        )
        if self.data is not None:  # no reload of every score: only the point changed
            d = self.data
            d.saved = point
            if d.model_own is None:
                d.current = t
            d.source = O.source_text(d.model_own, point, {})
            self.title.setText(f"{d.version}: operating point {d.source}")
        self._say(
            f"saved for {self.version}: NG ≥ {t.unsure_high:.6g}, UNSURE from {t.unsure_low:.6g} "
            f"(threshold {t.ng:.6g}); the next export writes them"
        )
        self._sync_buttons()
        self.saved.emit(self.version)
        return True

    def export(self) -> None:
        """Save, then export with these thresholds on the pool thread (production: republish)."""
        from defectssft.export import export_project_model
        from defectssft.promote import publish
        from defectssft.verdicts import publish_with_head

        if self._tasks or not self.save():
            return
        t = self.candidate()
        if self.project.production_model() == self.version:

            def done(path: Any) -> None:
                self._say(f"exported and published {path} (the line picks it up)")
                self.exported.emit(str(path))

            self._run(
                f"exporting {self.version} and publishing it",
                publish,
                self.project,
                self.version,
                done=done,
            )
            return

        def exported(result: Any) -> None:
            self._say(f"exported {result.path} with NG threshold {t.ng:.6g}")
            self.exported.emit(str(result.path))

        self._run(
            f"exporting {self.version}",
            lambda: export_project_model(
                self.project,
                self.version,
                threshold=t.ng,
                unsure_low=t.unsure_low,
                unsure_high=t.unsure_high,
                anomaly=publish_with_head(self.project, self.version),  # the head as last shipped
            ),
            done=exported,
        )

    def score_missing(self) -> None:
        """Predict the val/test/unlabeled images the version has no prediction of, then reload."""
        if self._tasks:
            return

        def done(summary: dict[str, Any]) -> None:
            self._say(f"scored {summary['predicted']} image(s)")
            self.reload()

        self._run("scoring missing images", O.score_unscored, self.project, self.version, done=done)

    def closeEvent(self, event: Any) -> None:
        self.pool.waitForDone(60000)  # an export in flight finishes (its file is atomic)
        super().closeEvent(event)
