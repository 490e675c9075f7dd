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
first failure.

A driver may also *hang* in the open or in ``read()`` (some RTSP/FFmpeg back-ends block for a long
time on a dead stream). With ``read_timeout`` (seconds) the open and each read run on a daemon
thread and the caller waits at most that long, in short slices so Ctrl+C still stops it. A call
that does not return in time is abandoned: one line on the log, and the normal reconnect (backoff,
``max_attempts``) with a fresh capture. The abandoned capture is never released by the caller
while its thread is inside the driver; the thread releases it if the call ever returns, and
``hung_reads`` counts the abandoned calls still inside. By default (``read_timeout="auto"``) a
stream (URL, GStreamer pipeline) gets 30 s; a device and a file get none, since a hardware-
triggered industrial camera may legitimately block in ``read()`` until a part arrives. ``None``
or ``0`` turns it off: the open and the read are then called directly, on the caller's thread.

``stop()`` (from any thread) ends ``frames()`` soon: a reconnect wait is cut short, a threaded
open/read the caller waits for is abandoned as on Ctrl+C, and no reconnect follows. The line
runtime reads the stream on a thread of its own (``prefetch.FramePrefetcher``) and stops it so.

The opener and the sleep are parameters, so tests need no camera and no waiting.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np

from defectssft_line.model import LineError

DEFAULT_FIRST_WAIT = 0.5
DEFAULT_MAX_WAIT = 5.0
DEFAULT_STREAM_READ_TIMEOUT = 30.0  # seconds; only for stream sources (see default_read_timeout)
AUTO: Literal["auto"] = "auto"  # read_timeout: by the kind of source
_WAIT_SLICE = 0.1  # the caller waits for a threaded open/read in slices this long

Opener = Callable[[str], Any]  # source -> an opened capture (cv2.VideoCapture-like) or None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def source_kind(source: str) -> str:
    """``device`` (index, /dev/...), ``stream`` (URL, GStreamer pipeline) or ``file``."""
    if source.isdigit() or source.startswith(("/dev/", "genicam://")):
        return "device"
    if "://" in source or " ! " in source:
        return "stream"
    return "file"  # a video file or an image sequence pattern such as frame_%04d.png


def default_read_timeout(kind: str) -> float | None:
    """The read timeout for a ``source_kind``: 30 s for a stream; None (off) for a device, which
    may block in read() until a hardware trigger fires, and for a file."""
    return DEFAULT_STREAM_READ_TIMEOUT if kind == "stream" else None


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


_TIME_WAIT = wait  # the real one: a stream replaces it by a wait that stop() cuts short


def backoff(
    attempt: int, first_wait: float = DEFAULT_FIRST_WAIT, max_wait: float = DEFAULT_MAX_WAIT
) -> float:
    """Seconds to wait before reopen attempt ``attempt`` (1, 2, ...): doubling, capped."""
    return min(first_wait * 2.0 ** max(0, attempt - 1), max_wait)


def _release(cap: Any) -> None:
    try:
        cap.release()
    except Exception:  # noqa: BLE001 - a dead device may fail to release; it is dropped anyway
        pass


def _release_if_any(cap: Any) -> None:
    if cap is not None:
        _release(cap)


class _Call:
    """One open or read running on its own daemon thread (see CameraStream._call). The stream's
    lock orders "the call returned" against "the caller abandoned it", so exactly one side
    cleans up what the call returned."""

    def __init__(
        self, fn: Callable[[], Any], cleanup: Callable[[Any], None], stream: CameraStream
    ) -> None:
        self.fn, self.cleanup, self.stream = fn, cleanup, stream
        self.done = threading.Event()
        self.abandoned = False
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller, raised there
            self.error = e
        with self.stream._lock:
            abandoned = self.abandoned
            self.done.set()
        if abandoned:  # nobody waits for it any more: release what it holds here
            try:
                self.cleanup(self.result)
            finally:
                with self.stream._lock:
                    self.stream._hung -= 1
            self.result = self.error = None

    def abandon(self) -> bool:
        """True when the call was still running and is now abandoned (its thread cleans up);
        False when it had returned (the caller owns the result)."""
        with self.stream._lock:
            if self.done.is_set():
                return False
            self.abandoned = True
            self.stream._hung += 1
            return True


_TIMED_OUT = object()
_STOPPED = object()


class CameraStream:
    """Yields frames from ``source``, reopening it after failures (see the module docstring)."""

    def __init__(
        self,
        source: str,
        reconnect: bool | None = None,
        first_wait: float = DEFAULT_FIRST_WAIT,
        max_wait: float = DEFAULT_MAX_WAIT,
        max_attempts: int = 0,
        opener: Opener | None = None,
        sleep: Callable[[float], None] | None = None,
        log: Callable[[str], None] = _stderr,
        read_timeout: float | None | Literal["auto"] = AUTO,
    ) -> None:
        self.source = source
        self.kind = source_kind(source)
        self.reconnect = self.kind != "file" if reconnect is None else reconnect
        if read_timeout == AUTO:
            read_timeout = default_read_timeout(self.kind)
        elif read_timeout is not None and not read_timeout >= 0:
            raise ValueError(f"read_timeout must be >= 0 or None, got {read_timeout}")
        # seconds an open or a read may take before it is abandoned; None: no limit, no thread
        self.read_timeout: float | None = float(read_timeout) if read_timeout else None
        self.first_wait, self.max_wait = first_wait, max(max_wait, first_wait)
        self.max_attempts = max_attempts
        self._open = opener or open_capture
        self._sleep = sleep or wait
        self._stopping = threading.Event()
        self._log = log
        self.frames_read = 0
        self.reconnects = 0  # times a lost source came back with frames
        self.failed_attempts = 0  # opens (first one included) that brought no frame, in total
        self.timeouts = 0  # opens/reads abandoned after read_timeout, in total
        self.gave_up = False
        self._lock = threading.Lock()
        self._hung = 0

    def stop(self) -> None:
        """End ``frames()`` soon, from any thread (see the module docstring)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _pause(self, seconds: float) -> None:
        """The reconnect wait; stop() ends the real one at once."""
        if self._sleep is _TIME_WAIT:
            self._stopping.wait(seconds)
        else:
            self._sleep(seconds)

    @property
    def hung_reads(self) -> int:
        """Abandoned opens/reads (timed out, or left by Ctrl+C) whose thread is still inside the
        driver. Each holds a thread and its capture until the driver returns."""
        with self._lock:
            return self._hung

    def _call(self, fn: Callable[[], Any], cleanup: Callable[[Any], None]) -> Any:
        """``fn()`` on a daemon thread: its result (its exception is raised here) if it returns
        within ``read_timeout``, else ``_TIMED_OUT`` (``_STOPPED`` after stop()). A call given
        up on (timeout, stop(), or Ctrl+C while waiting) is left to its thread, which runs ``cleanup(result)`` if ``fn`` ever
        returns: a capture in use by the driver is never released from here."""
        assert self.read_timeout
        call = _Call(fn, cleanup, self)
        threading.Thread(target=call.run, name=f"camera {self.source}", daemon=True).start()
        deadline = time.monotonic() + self.read_timeout
        try:  # short slices: Ctrl+C (KeyboardInterrupt) gets through on every platform
            while not call.done.wait(min(_WAIT_SLICE, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline or self._stopping.is_set():
                    break
        except BaseException:
            if not call.abandon():  # it returned meanwhile: its result is ours to clean up
                cleanup(call.result)
            raise
        if self._stopping.is_set() and not call.done.is_set():
            if call.abandon():  # like Ctrl+C: left to its thread, not a timeout
                return _STOPPED
        if call.abandon():
            self.timeouts += 1
            return _TIMED_OUT
        if call.error is not None:
            raise call.error
        return call.result

    def _try_open(self) -> tuple[Any, str | None, bool]:
        """(capture or None, why not, whether the open hung and was abandoned)."""
        try:
            if self.read_timeout:
                cap = self._call(lambda: self._open(self.source), _release_if_any)
                if cap is _STOPPED:
                    return None, "stopped", True
                if cap is _TIMED_OUT:
                    return (
                        None,
                        (f"cannot open within {self.read_timeout:g} s (open hung in the driver)"),
                        True,
                    )
            else:
                cap = self._open(self.source)
        except Exception as e:  # noqa: BLE001 - a driver error is one more failed attempt
            return None, f"cannot open ({type(e).__name__}: {e})", False
        return (cap, None, False) if cap is not None else (None, "cannot open", False)

    def _read(self, cap: Any) -> tuple[np.ndarray | None, str | None, bool]:
        """(frame or None, why not, whether the read hung and ``cap`` was abandoned: then it
        must not be released here)."""
        try:
            if self.read_timeout:
                got = self._call(cap.read, lambda _: _release(cap))
                if got is _STOPPED:
                    return None, "stopped", True
                if got is _TIMED_OUT:
                    return (
                        None,
                        (f"no frame within {self.read_timeout:g} s (read hung in the driver)"),
                        True,
                    )
                ok, frame = got
            else:
                ok, frame = cap.read()
        except Exception as e:  # noqa: BLE001 - treated like a dropped camera
            return None, f"read failed ({type(e).__name__}: {e})", False
        if not ok or frame is None:
            if self.kind == "file":
                return None, "end of video", False
            return None, "no frame (stream ended or camera dropped)", False
        return frame, None, False

    def frames(self) -> Iterator[np.ndarray]:
        """Frames until the source ends (file), fails without reconnect, or ``max_attempts``
        reopen attempts in a row fail, or stop(). Raises LineError when the source never opens
        and is not to be reconnected. Closing the iterator releases the capture."""
        name = f"camera {self.source}"
        cap, reason, hung = self._try_open()
        if cap is None and self._stopping.is_set():
            return
        if cap is None and not self.reconnect:
            why = f" within {self.read_timeout:g} s (open hung in the driver)" if hung else ""
            raise LineError(f"cannot open camera/video source {self.source!r}{why}")
        fresh = True  # cap was just opened and has not given a frame yet
        if cap is None:
            self.failed_attempts += 1
        attempts = 0  # reopen attempts since the last frame
        replay = False  # reopening a file that ended (--reconnect on a file), not a drop-out
        try:
            while True:
                if self._stopping.is_set():
                    return
                if cap is None:
                    assert reason is not None
                    if not self.reconnect:
                        if self.kind != "file" or reason != "end of video":
                            self._log(
                                f"warning: {name}: {reason}; not reconnecting (--no-reconnect)"
                            )
                        return
                    if self.max_attempts and attempts >= self.max_attempts:
                        self.gave_up = True
                        self._log(
                            f"error: {name}: {reason}; giving up after {attempts} "
                            f"reconnect attempt(s) without a frame (--max-reconnects "
                            f"{self.max_attempts})"
                        )
                        return
                    if attempts == 0:
                        replay = reason == "end of video"
                    attempts += 1
                    delay = backoff(attempts, self.first_wait, self.max_wait)
                    limit = f"/{self.max_attempts}" if self.max_attempts else ""
                    if reason == "end of video":  # --reconnect on a file: play it again
                        self._log(f"{name}: end of video; reopening in {delay:g} s")
                    else:
                        verb = "abandoning it and reconnecting" if hung else "reconnecting"
                        self._log(
                            f"warning: {name}: {reason}; {verb} in {delay:g} s "
                            f"(attempt {attempts}{limit})"
                        )
                    self._pause(delay)
                    if self._stopping.is_set():
                        return
                    cap, reason, hung = self._try_open()
                    fresh = True
                    if cap is None:
                        if not self._stopping.is_set():
                            self.failed_attempts += 1
                        continue
                try:
                    frame, reason, hung = self._read(cap)
                except BaseException:  # Ctrl+C: a threaded read saw to its capture (_call)
                    if self.read_timeout:
                        cap = None
                    raise
                if frame is None:
                    if not hung:  # a hung read's thread releases its capture, if it returns
                        _release(cap)
                    cap = None
                    if fresh and not self._stopping.is_set():
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
