"""Thumbnails made off the GUI thread and cached on disk (PROJECT/cache/thumbs/).

``ThumbnailLoader.request`` queues a picture; worker threads (QThreadPool) serve the newest
requests first, so when the user scrolls fast the cells now on screen come before those scrolled
past. A thumbnail made once is a small file on disk: reopening a project of 20,000 images reads
those instead of decoding the originals again. Results arrive on the GUI thread as ``ready``.

The cache keeps the shrunk *raw* pixels (``<sha>.u8.jpg`` for 8-bit files, a lossless 16-bit
``<sha>.u16.png`` for 16-bit ones), and the display mapping is applied when a thumbnail is shown:
the project's bit depth and the viewer's window/level (``viewer.to_display``), so 12-bit data in
16-bit files is as bright in the grid as in the viewer, and follows the sliders.
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

from defectssft_gui.viewer import to_display
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


def make_raw_thumbnail(src: str | Path, size: int = THUMB_SIZE) -> np.ndarray:
    """Decode ``src`` and shrink it to fit ``size`` x ``size`` keeping its pixel type (uint8 or
    uint16, gray or BGR): the display mapping is applied later."""
    raw = read_image(src)
    if raw.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported pixel type {raw.dtype}")
    if raw.ndim == 3 and raw.shape[2] == 4:
        raw = raw[:, :, :3]
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    h, w = raw.shape[:2]
    scale = min(1.0, size / max(h, w))
    if scale < 1.0:
        raw = cv2.resize(
            raw, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    return np.ascontiguousarray(raw)


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """A QImage that owns a copy of an HxWx3 RGB uint8 array."""
    h, w = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb)
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def _write_raw(dest: Path, raw: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if raw.dtype == np.uint8 else []
    ok, buf = cv2.imencode(dest.suffix, raw, params)
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


def load_raw_thumbnail(
    key: str, src: str, cache: Path | None, size: int = THUMB_SIZE
) -> np.ndarray:
    """The cached raw thumbnail of ``key`` if present, else made from ``src`` (and cached)."""
    ok_key = cache is not None and key and ":" not in key
    if ok_key:
        assert cache is not None
        for cached in (cache / f"{key}.u8.jpg", cache / f"{key}.u16.png"):
            if cached.is_file():
                raw = cv2.imread(str(cached), cv2.IMREAD_UNCHANGED)
                if raw is not None:
                    return raw
    raw = make_raw_thumbnail(src, size)
    if ok_key:
        assert cache is not None
        ext = ".u8.jpg" if raw.dtype == np.uint8 else ".u16.png"
        _write_raw(cache / f"{key}{ext}", raw)
    return raw


def load_thumbnail(
    key: str,
    src: str,
    cache: Path | None,
    size: int = THUMB_SIZE,
    bit_depth: int = 16,
    low: float = 0.0,
    high: float = 1.0,
) -> QImage:
    """The thumbnail of ``key`` as shown: cached raw pixels through the display mapping
    (``bit_depth`` and the window ``low``..``high``, fractions of full scale)."""
    if not 8 <= bit_depth <= 16:
        raise ValueError(f"bit_depth must be between 8 and 16, got {bit_depth}")
    return to_display(load_raw_thumbnail(key, src, cache, size), bit_depth, low, high)


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
        self.low, self.high = 0.0, 1.0
        self.generation = 0  # bumped by set_display: results made before are dropped
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

    def set_display(self, bit_depth: int, low: float, high: float) -> bool:
        """New display mapping for thumbnails made from now on; True if it changed (the
        caller then drops the thumbnails it holds and asks again)."""
        with self._lock:
            if (bit_depth, low, high) == (self.bit_depth, self.low, self.high):
                return False
            self.bit_depth, self.low, self.high = bit_depth, low, high
            self.generation += 1
        self.cancel_pending()
        return True

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
                gen, depth, low, high = self.generation, self.bit_depth, self.low, self.high
            try:
                img = load_thumbnail(key, src, self.cache, self.size, depth, low, high)
            except (ImageDecodeError, ValueError, OSError, cv2.error) as e:
                with self._lock:
                    self._queued.discard(key)
                self.failed.emit(key, str(e).split("\n")[0])
                continue
            with self._lock:
                self._queued.discard(key)
                stale = gen != self.generation
            if not stale:
                self.ready.emit(key, img)
