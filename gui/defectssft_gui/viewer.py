"""The image view: zoom, pan, fit, 1:1, window/level (brightness/contrast) and a heat-map overlay.

Files are decoded off the GUI thread (``DecodeWorker``) into a small cache that also holds the
neighbours of the current image (prefetch), so stepping to the next image usually shows it at
once. Window/level is kept as fractions of the sensor's full scale, so the same setting applies
to the next image, 8- or 16-bit (``bit_depth`` from the project, as in training).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np
from PySide6.QtCore import QObject, QRectF, QRunnable, Qt, QThreadPool, Signal
from PySide6.QtGui import QImage, QPainter, QPixmap, QWheelEvent
from PySide6.QtWidgets import QGraphicsPixmapItem, QGraphicsScene, QGraphicsView, QWidget

from defectssft_line.preprocess import ImageDecodeError, read_image

CACHE_IMAGES = 12


def window_lut(dtype: np.dtype, bit_depth: int, low: float, high: float) -> np.ndarray:
    """Lookup table raw value -> display uint8 for window [low, high] (fractions of full scale)."""
    full = 255.0 if dtype == np.uint8 else float((1 << bit_depth) - 1)
    size = 256 if dtype == np.uint8 else 65536
    lo, hi = low * full, max(high * full, low * full + 1e-6)
    x = np.arange(size, dtype=np.float32)
    return np.clip((x - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def to_display(raw: np.ndarray, bit_depth: int, low: float = 0.0, high: float = 1.0) -> QImage:
    """Decoded image (as stored) -> QImage for the screen, with window/level applied."""
    lut = window_lut(raw.dtype, bit_depth, low, high)
    img = lut[raw]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.ascontiguousarray(img)
        h, w = img.shape
        return QImage(img.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
    code = cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
    rgb = np.ascontiguousarray(cv2.cvtColor(img, code))
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def heat_to_qimage(heat: np.ndarray, alpha: float = 0.45) -> QImage:
    """A heat map in [0, 1] (HxW) -> semi-transparent RGBA colour map."""
    h8 = np.clip(heat * 255.0, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(h8, cv2.COLORMAP_JET)
    rgba = np.dstack(
        [cv2.cvtColor(colour, cv2.COLOR_BGR2RGB), (h8.astype(np.float32) * alpha).astype(np.uint8)]
    )
    rgba = np.ascontiguousarray(rgba)
    h, w = rgba.shape[:2]
    return QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()


class _Decode(QRunnable):
    def __init__(self, cache: DecodeCache, path: str) -> None:
        super().__init__()
        self.cache, self.path = cache, path

    def run(self) -> None:
        try:
            raw = read_image(self.path)
        except (ImageDecodeError, OSError, cv2.error) as e:
            self.cache._done(self.path, None, str(e).split("\n")[0])
            return
        self.cache._done(self.path, raw, "")


class DecodeCache(QObject):
    """Decoded images by path, made on a worker thread; ``loaded`` fires on the GUI thread."""

    loaded = Signal(str)
    failed = Signal(str, str)

    def __init__(self, size: int = CACHE_IMAGES, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.size = size
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)
        self._lock = threading.Lock()
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: set[str] = set()

    def get(self, path: str) -> np.ndarray | None:
        with self._lock:
            raw = self._images.get(path)
            if raw is not None:
                self._images.move_to_end(path)
            return raw

    def request(self, path: str) -> None:
        with self._lock:
            if path in self._images or path in self._pending:
                return
            self._pending.add(path)
        self.pool.start(_Decode(self, path))

    def _done(self, path: str, raw: np.ndarray | None, error: str) -> None:
        with self._lock:
            self._pending.discard(path)
            if raw is not None:
                self._images[path] = raw
                while len(self._images) > self.size:
                    self._images.popitem(last=False)
        if raw is None:
            self.failed.emit(path, error)
        else:
            self.loaded.emit(path)

    def close(self) -> None:
        self.pool.clear()
        self.pool.waitForDone(5000)


class ImageViewer(QGraphicsView):
    """Shows one image; wheel zooms at the cursor, drag pans."""

    imageShown = Signal(str)
    loadFailed = Signal(str, str)

    def __init__(self, bit_depth: int = 16, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bit_depth = bit_depth
        self.low, self.high = 0.0, 1.0
        self.cache = DecodeCache(parent=self)
        self.cache.loaded.connect(self._on_loaded)
        self.cache.failed.connect(self._on_failed)
        self._scene = QGraphicsScene(self)
        self.setScene(self._scene)
        self._item = QGraphicsPixmapItem()
        self._item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._overlay = QGraphicsPixmapItem(self._item)
        self._overlay.setVisible(False)
        self._scene.addItem(self._item)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setBackgroundBrush(Qt.GlobalColor.black)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.path: str | None = None
        self._fit = True

    # ------------------------------------------------------------ images
    def show_path(self, path: str | None, prefetch: list[str] | None = None) -> None:
        """Show ``path`` (now if decoded already, else when the worker has it)."""
        self.path = path
        self.clear_heatmap()
        if path is None:
            self._item.setPixmap(QPixmap())
            return
        if self.cache.get(path) is not None:
            self._render()
        else:
            self.cache.request(path)
        for p in prefetch or []:
            self.cache.request(p)

    def _on_loaded(self, path: str) -> None:
        if path == self.path:
            self._render()

    def _on_failed(self, path: str, error: str) -> None:
        if path == self.path:
            self._item.setPixmap(QPixmap())
            self.loadFailed.emit(path, error)

    def _render(self) -> None:
        raw = self.cache.get(self.path) if self.path else None
        if raw is None:
            return
        pm = QPixmap.fromImage(to_display(raw, self.bit_depth, self.low, self.high))
        self._item.setPixmap(pm)
        self._scene.setSceneRect(QRectF(pm.rect()))
        if self._fit:
            self.fit()
        self.imageShown.emit(self.path or "")

    def raw(self) -> np.ndarray | None:
        return self.cache.get(self.path) if self.path else None

    # ------------------------------------------------------------ window / level
    def set_window(self, low: float, high: float) -> None:
        """Display range as fractions of full scale (0..1); kept for the next images."""
        low = float(np.clip(low, 0.0, 1.0))
        high = float(np.clip(high, 0.0, 1.0))
        if high <= low:
            high = min(1.0, low + 1e-3)
        self.low, self.high = low, high
        self._render()

    def reset_window(self) -> None:
        self.set_window(0.0, 1.0)

    # ------------------------------------------------------------ heat map
    def set_heatmap(self, heat: np.ndarray | None) -> None:
        if heat is None:
            self.clear_heatmap()
            return
        pm = self._item.pixmap()
        if pm.isNull():
            return
        img = heat_to_qimage(
            cv2.resize(
                heat.astype(np.float32), (pm.width(), pm.height()), interpolation=cv2.INTER_LINEAR
            )
        )
        self._overlay.setPixmap(QPixmap.fromImage(img))
        self._overlay.setVisible(True)

    def clear_heatmap(self) -> None:
        self._overlay.setVisible(False)
        self._overlay.setPixmap(QPixmap())

    def heatmap_visible(self) -> bool:
        return self._overlay.isVisible()

    # ------------------------------------------------------------ zoom
    def fit(self) -> None:
        self._fit = True
        if not self._item.pixmap().isNull():
            self.fitInView(self._item, Qt.AspectRatioMode.KeepAspectRatio)

    def one_to_one(self) -> None:
        self._fit = False
        self.resetTransform()

    def zoom(self, factor: float) -> None:
        self._fit = False
        self.scale(factor, factor)

    def zoom_factor(self) -> float:
        return float(self.transform().m11())

    def wheelEvent(self, event: QWheelEvent) -> None:
        self.zoom(1.25 if event.angleDelta().y() > 0 else 0.8)

    def resizeEvent(self, event) -> None:  # type: ignore[no-untyped-def]
        super().resizeEvent(event)
        if self._fit:
            self.fit()
