"""The browse grid's model: rows of ``queries.Row`` shown as thumbnails, exposed in batches.

A QAbstractListModel for a QListView in IconMode: no widget per image, rows handed to the view
``BATCH`` at a time through ``canFetchMore``/``fetchMore``, thumbnails requested only when the view
asks for a cell it paints, kept in a bounded in-memory cache of pixmaps.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, QSize, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap

from defectssft.queries import Row
from defectssft_gui.thumbs import THUMB_SIZE, ThumbnailLoader
from defectssft_gui.widgets import DISAGREE_COLOUR

BATCH = 500
PIXMAP_CACHE = 3000
RowRole = Qt.ItemDataRole.UserRole + 1
ImageIdRole = Qt.ItemDataRole.UserRole + 2

Index = QModelIndex | QPersistentModelIndex


def _placeholder(size: int, colour: str, text: str = "") -> QPixmap:
    pm = QPixmap(size, size)
    pm.fill(QColor(colour))
    if text:
        p = QPainter(pm)
        p.setPen(QColor("#ffffff"))
        p.drawText(pm.rect(), Qt.AlignmentFlag.AlignCenter, text)
        p.end()
    return pm


class ImageListModel(QAbstractListModel):
    def __init__(
        self, loader: ThumbnailLoader, colours: dict[str, str] | None = None, parent: Any = None
    ) -> None:
        super().__init__(parent)
        self.loader = loader
        self.colours = colours or {}
        self.verdicts: Any = (
            None  # defectssft.verdicts.VerdictCache of the shown model, set by the window
        )
        self.ok_known = True  # False: the project has no OK class (the score is 1 - confidence)
        self._rows: list[Row] = []
        self._shown = 0
        self._by_key: dict[str, list[int]] = {}
        self._by_id: dict[int, int] = {}
        self._pixmaps: OrderedDict[str, QPixmap] = OrderedDict()
        self._errors: dict[str, str] = {}
        self._loading = _placeholder(THUMB_SIZE, "#3a3a3a", "…")
        self._broken = _placeholder(THUMB_SIZE, "#7a1f1f", "unreadable")
        loader.ready.connect(self._on_ready)
        loader.failed.connect(self._on_failed)

    # ------------------------------------------------------------ contents
    def set_rows(self, rows: list[Row]) -> None:
        self.loader.cancel_pending()
        self.beginResetModel()
        self._rows = rows
        self._shown = min(BATCH, len(rows))
        self._by_key = {}
        self._by_id = {}
        for i, r in enumerate(rows):
            self._by_key.setdefault(r.key, []).append(i)
            if r.image_id is not None:
                self._by_id[r.image_id] = i
        self.endResetModel()

    def row(self, i: int) -> Row:
        return self._rows[i]

    def total(self) -> int:
        """All rows of the current filter (the view may have been shown fewer so far)."""
        return len(self._rows)

    def row_of(self, image_id: int) -> int | None:
        return self._by_id.get(image_id)

    def ensure_shown(self, i: int) -> None:
        """Expose rows up to ``i`` to the view (keyboard navigation past the loaded batch)."""
        while i >= self._shown and self.canFetchMore(QModelIndex()):
            self.fetchMore(QModelIndex())

    def update_labels(self, labels: dict[int, str | None]) -> None:
        """Rows of these images now carry these labels (the grid keeps its order)."""
        changed = []
        for image_id, label in labels.items():
            i = self._by_id.get(image_id)
            if i is not None:
                self._rows[i].label = label
                changed.append(i)
        for i in changed:
            if i < self._shown:
                idx = self.index(i)
                self.dataChanged.emit(
                    idx,
                    idx,
                    [
                        Qt.ItemDataRole.DisplayRole,
                        Qt.ItemDataRole.ForegroundRole,
                        Qt.ItemDataRole.ToolTipRole,
                    ],
                )

    # ------------------------------------------------------------ Qt model API
    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else self._shown

    def canFetchMore(self, parent: Index) -> bool:
        return not parent.isValid() and self._shown < len(self._rows)

    def fetchMore(self, parent: Index) -> None:
        if parent.isValid():
            return
        n = min(BATCH, len(self._rows) - self._shown)
        if n <= 0:
            return
        self.beginInsertRows(QModelIndex(), self._shown, self._shown + n - 1)
        self._shown += n
        self.endInsertRows()

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= self._shown:
            return None
        r = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._caption(r, self._verdict(r))
        if role == Qt.ItemDataRole.DecorationRole:
            return self._pixmap(r)
        if role == Qt.ItemDataRole.ForegroundRole and r.label:
            if r.pred is not None and r.pred != r.label:  # not the label's reassuring colour
                return QColor(DISAGREE_COLOUR)
            return QColor(self.colours.get(r.label, "#dddddd"))
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(r)
        if role == RowRole:
            return r
        if role == ImageIdRole:
            return r.image_id
        if role == Qt.ItemDataRole.SizeHintRole:
            return QSize(THUMB_SIZE + 16, THUMB_SIZE + 44)
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    # ------------------------------------------------------------ thumbnails
    def _pixmap(self, r: Row) -> QPixmap:
        pm = self._pixmaps.get(r.key)
        if pm is not None:
            self._pixmaps.move_to_end(r.key)
            return pm
        if r.key in self._errors:
            return self._broken
        self.loader.request(r.key, r.path)
        return self._loading

    def redisplay(self) -> None:
        """The display mapping changed (bit depth, window/level): drop the thumbnails held and
        let the view ask again for the cells it shows."""
        self._pixmaps.clear()
        if self._shown:
            self.dataChanged.emit(
                self.index(0), self.index(self._shown - 1), [Qt.ItemDataRole.DecorationRole]
            )

    def text_changed(self) -> None:
        """Captions and tooltips of the shown rows changed (e.g. verdicts became known)."""
        if self._shown:
            self.dataChanged.emit(
                self.index(0),
                self.index(self._shown - 1),
                [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole],
            )

    def has_thumbnail(self, i: int) -> bool:
        return self._rows[i].key in self._pixmaps

    def _on_ready(self, key: str, img: QImage) -> None:
        self._pixmaps[key] = QPixmap.fromImage(img)
        while len(self._pixmaps) > PIXMAP_CACHE:
            self._pixmaps.popitem(last=False)
        self._changed(key)

    def _on_failed(self, key: str, reason: str) -> None:
        self._errors[key] = reason
        self._changed(key)

    def _changed(self, key: str) -> None:
        for i in self._by_key.get(key, []):
            if i < self._shown:
                idx = self.index(i)
                self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])

    # ------------------------------------------------------------ text
    def _verdict(self, r: Row) -> str | None:
        if self.verdicts is None or r.pred is None:
            return None
        return self.verdicts.get(r.image_id)

    @staticmethod
    def _caption(r: Row, verdict: str | None = None) -> str:
        """Two short lines that elide at the end: the label (``≠`` when the model disagrees),
        then the verdict and confidence before the suggested class, so a cut keeps them."""
        if r.reason is not None:
            return "quarantined"
        label = r.label or "unlabeled"
        if r.pred is not None and r.confidence is not None:
            mark = "≠ " if r.label is not None and r.pred != r.label else ""
            head = f"{verdict} " if verdict else ""
            return f"{mark}{label}\n{head}{r.confidence:.0%} {r.pred}"
        return label

    def _tooltip(self, r: Row) -> str:
        lines = [r.name or r.path, f"captured {r.capture}"]
        if r.reason is not None:
            lines.append(f"quarantined: {r.reason}")
        if r.label:
            lines.append(f"label: {r.label}")
        if r.pred is not None:
            score = "defect score" if self.ok_known else "least-confident score"
            lines.append(
                f"model: {r.pred} ({(r.confidence or 0):.1%}), {score} {(r.score or 0):.3f}"
            )
            verdict = self._verdict(r)
            if verdict:
                novel = self.verdicts.novel(r.image_id) if self.verdicts is not None else None
                lines.append(f"line verdict: {verdict}" + (" (novel)" if novel else ""))
        if r.key in self._errors:
            lines.append(f"cannot show: {self._errors[r.key]}")
        return "\n".join(lines)
