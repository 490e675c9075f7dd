"""Thumbnails made off the GUI thread and cached on disk (PROJECT/cache/thumbs/<sha>.jpg).

``ThumbnailLoader.request`` queues a picture; worker threads (QThreadPool) serve the newest
requests first, so when the user scrolls fast the cells now on screen come before those scrolled
past. A thumbnail made once is a small JPEG on disk: reopening a project of 20,000 images reads
those instead of decoding the originals again. Results arrive on the GUI thread as ``ready``.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage

from defectssft_line.preprocess import ImageDecodeError, read_image, to_rgb8

THUMB_SIZE = 128


def thumb_dir(project_root: Path) -> Path:
    return Path(project_root) / "cache" / "thumbs"


def make_thumbnail(src: str | Path, size: int = THUMB_SIZE, bit_depth: int = 16) -> np.ndarray:
    """Decode ``src`` and shrink it to fit ``size`` x ``size`` (aspect kept): RGB uint8."""
    rgb = to_rgb8(read_image(src), bit_depth)
    h, w = rgb.shape[:2]
    scale = min(1.0, size / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    return np.ascontiguousarray(rgb)


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """A QImage that owns a copy of an HxWx3 RGB uint8 array."""
    h, w = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb)
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def _write_jpeg(dest: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
    )
    if not ok:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        os.replace(tmp, dest)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def load_thumbnail(
    key: str, src: str, cache: Path | None, size: int = THUMB_SIZE, bit_depth: int = 16
) -> QImage:
    """The cached thumbnail of ``key`` if present, else made from ``src`` (and cached)."""
    cached = cache / f"{key}.jpg" if cache is not None and key and ":" not in key else None
    if cached is not None and cached.is_file():
        img = QImage(str(cached))
        if not img.isNull():
            return img
    rgb = make_thumbnail(src, size, bit_depth)
    if cached is not None:
        _write_jpeg(cached, rgb)
    return rgb_to_qimage(rgb)


class _Worker(QRunnable):
    def __init__(self, loader: ThumbnailLoader) -> None:
        super().__init__()
        self.loader = loader

    def run(self) -> None:
        self.loader._drain()


class ThumbnailLoader(QObject):
    """Makes thumbnails on ``threads`` worker threads, newest request first."""

    ready = Signal(str, QImage)
    failed = Signal(str, str)

    def __init__(
        self,
        cache: Path | None,
        size: int = THUMB_SIZE,
        bit_depth: int = 16,
        threads: int = 2,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.cache = cache
        self.size = size
        self.bit_depth = bit_depth
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max(1, threads))
        self._lock = threading.Lock()
        self._stack: list[tuple[str, str]] = []
        self._queued: set[str] = set()
        self._running = 0
        self._closed = False

    def request(self, key: str, src: str) -> None:
        with self._lock:
            if self._closed:
                return
            if key in self._queued:
                # Already waiting: move it to the top, it is wanted now.
                try:
                    self._stack.remove((key, src))
                except ValueError:
                    return  # being made right now
                self._stack.append((key, src))
                return
            self._queued.add(key)
            self._stack.append((key, src))
            start = self._running < self.pool.maxThreadCount()
            if start:
                self._running += 1
        if start:
            self.pool.start(_Worker(self))

    def cancel_pending(self) -> None:
        """Forget requests not started yet (e.g. the list was refiltered)."""
        with self._lock:
            for key, _ in self._stack:
                self._queued.discard(key)
            self._stack.clear()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.cancel_pending()
        self.pool.waitForDone(5000)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._stack or self._closed:
                    self._running -= 1
                    return
                key, src = self._stack.pop()
            try:
                img = load_thumbnail(key, src, self.cache, self.size, self.bit_depth)
            except (ImageDecodeError, ValueError, OSError, cv2.error) as e:
                with self._lock:
                    self._queued.discard(key)
                self.failed.emit(key, str(e).split("\n")[0])
                continue
            with self._lock:
                self._queued.discard(key)
            self.ready.emit(key, img)
