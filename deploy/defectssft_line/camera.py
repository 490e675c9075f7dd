"""Frames from an OpenCV source that survives drop-outs: reopen with a capped backoff.

A line PC must never stop because a camera was unplugged, rebooted or a stream hiccuped. A
source that does not open, returns no frame or ends is released and reopened after a wait that
doubles from ``first_wait`` up to ``max_wait`` seconds; each failure is one line on the log, as
is the reconnect. ``max_attempts`` (0: never) ends the stream after that many reopen attempts in
a row brought no frame.

By default (``reconnect=None``) live sources (a device index such as ``0``, ``/dev/video0``, a
``rtsp://``/``http://`` URL, a GStreamer pipeline) reconnect forever, while a video file or an
image sequence (``frames_%04d.png``) is played once and its end ends the stream cleanly;
``reconnect=True`` replays a file (a loop), ``reconnect=False`` makes a live source end at its
first failure. The opener and the sleep are parameters, so tests need no camera and no waiting.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from defectssft_line.model import LineError

DEFAULT_FIRST_WAIT = 0.5
DEFAULT_MAX_WAIT = 5.0

Opener = Callable[[str], Any]  # source -> an opened capture (cv2.VideoCapture-like) or None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def source_kind(source: str) -> str:
    """``device`` (index, /dev/...), ``stream`` (URL, GStreamer pipeline) or ``file``."""
    if source.isdigit() or source.startswith("/dev/"):
        return "device"
    if "://" in source or " ! " in source:
        return "stream"
    return "file"  # a video file or an image sequence pattern such as frame_%04d.png


def open_capture(source: str) -> Any:
    """An opened ``cv2.VideoCapture`` for ``source``, or None when it does not open."""
    import cv2

    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if cap.isOpened():
        return cap
    cap.release()
    return None


def wait(seconds: float) -> None:
    """The backoff sleep (tests replace it). Ctrl+C interrupts it at once."""
    time.sleep(seconds)


def backoff(attempt: int, first_wait: float = DEFAULT_FIRST_WAIT,
            max_wait: float = DEFAULT_MAX_WAIT) -> float:
    """Seconds to wait before reopen attempt ``attempt`` (1, 2, ...): doubling, capped."""
    return min(first_wait * 2.0 ** max(0, attempt - 1), max_wait)


def _release(cap: Any) -> None:
    try:
        cap.release()
    except Exception:  # noqa: BLE001 - a dead device may fail to release; it is dropped anyway
        pass


class CameraStream:
    """Yields frames from ``source``, reopening it after failures (see the module docstring)."""

    def __init__(self, source: str, reconnect: bool | None = None,
                 first_wait: float = DEFAULT_FIRST_WAIT, max_wait: float = DEFAULT_MAX_WAIT,
                 max_attempts: int = 0, opener: Opener | None = None,
                 sleep: Callable[[float], None] | None = None,
                 log: Callable[[str], None] = _stderr) -> None:
        self.source = source
        self.kind = source_kind(source)
        self.reconnect = self.kind != "file" if reconnect is None else reconnect
        self.first_wait, self.max_wait = first_wait, max(max_wait, first_wait)
        self.max_attempts = max_attempts
        self._open = opener or open_capture
        self._sleep = sleep or wait
        self._log = log
        self.frames_read = 0
        self.reconnects = 0  # times a lost source came back with frames
        self.failed_attempts = 0  # opens (first one included) that brought no frame, in total
        self.gave_up = False

    def _try_open(self) -> tuple[Any, str | None]:
        try:
            cap = self._open(self.source)
        except Exception as e:  # noqa: BLE001 - a driver error is one more failed attempt
            return None, f"cannot open ({type(e).__name__}: {e})"
        return (cap, None) if cap is not None else (None, "cannot open")

    def _read(self, cap: Any) -> tuple[np.ndarray | None, str | None]:
        try:
            ok, frame = cap.read()
        except Exception as e:  # noqa: BLE001 - treated like a dropped camera
            return None, f"read failed ({type(e).__name__}: {e})"
        if not ok or frame is None:
            if self.kind == "file":
                return None, "end of video"
            return None, "no frame (stream ended or camera dropped)"
        return frame, None

    def frames(self) -> Iterator[np.ndarray]:
        """Frames until the source ends (file), fails without reconnect, or ``max_attempts``
        reopen attempts in a row fail. Raises LineError when the source never opens and is not
        to be reconnected. Closing the iterator releases the capture."""
        name = f"camera {self.source}"
        cap, reason = self._try_open()
        if cap is None and not self.reconnect:
            raise LineError(f"cannot open camera/video source {self.source!r}")
        fresh = True  # cap was just opened and has not given a frame yet
        if cap is None:
            self.failed_attempts += 1
        attempts = 0  # reopen attempts since the last frame
        replay = False  # reopening a file that ended (--reconnect on a file), not a drop-out
        try:
            while True:
                if cap is None:
                    assert reason is not None
                    if not self.reconnect:
                        if self.kind != "file" or reason != "end of video":
                            self._log(f"warning: {name}: {reason}; not reconnecting "
                                      f"(--no-reconnect)")
                        return
                    if self.max_attempts and attempts >= self.max_attempts:
                        self.gave_up = True
                        self._log(f"error: {name}: {reason}; giving up after {attempts} "
                                  f"reconnect attempt(s) without a frame (--max-reconnects "
                                  f"{self.max_attempts})")
                        return
                    if attempts == 0:
                        replay = reason == "end of video"
                    attempts += 1
                    delay = backoff(attempts, self.first_wait, self.max_wait)
                    limit = f"/{self.max_attempts}" if self.max_attempts else ""
                    if reason == "end of video":  # --reconnect on a file: play it again
                        self._log(f"{name}: end of video; reopening in {delay:g} s")
                    else:
                        self._log(f"warning: {name}: {reason}; reconnecting in {delay:g} s "
                                  f"(attempt {attempts}{limit})")
                    self._sleep(delay)
                    cap, reason = self._try_open()
                    fresh = True
                    if cap is None:
                        self.failed_attempts += 1
                        continue
                frame, reason = self._read(cap)
                if frame is None:
                    _release(cap)
                    cap = None
                    if fresh:
                        self.failed_attempts += 1  # opened, but no frame came
                    continue
                if attempts and not (replay and attempts == 1):
                    self.reconnects += 1
                    self._log(f"{name}: reconnected after {attempts} attempt(s)")
                attempts, fresh = 0, False
                self.frames_read += 1
                yield frame
        finally:
            if cap is not None:
                _release(cap)
