"""Camera frames read ahead: the next frame is fetched while the current one is scored.

``FramePrefetcher`` runs a ``camera.CameraStream`` (its reads, its reconnects and waits) on a
thread of its own and hands each frame, with the camera's metadata taken in the same step
(GenICam frame id and timestamp), to the scoring thread through a bounded queue of ``depth``
frames. Frames come out in the order the camera gave them and none is skipped: when the queue
is full the reading thread waits, so a PC that falls behind leaves frames in the camera's own
buffers, exactly as a loop that reads and scores in turn would. The scoring thread never waits
inside a camera driver; it only waits for the queue.

Two options let the scoring thread run nothing but the model while the reader works:

* ``prepare`` (a function of the image) runs on the reading thread for a frame that the
  consumer is not already waiting for, its result in ``Frame.prepared`` (the line runtime
  passes ``Runner.prepare_ahead``: the one preprocessing definition, for the model running
  now). While the consumer scores the previous frame, preparing the next one here takes that
  work off the consumer (the rate); a consumer that waits idle for the frame prepares it
  itself, at once, on its own CPU (the latency). ``prepared`` None (also after an exception
  in ``prepare``): the consumer prepares (and reports) the frame itself.
* ``pace=True``: after handing frame N over, the reader waits until the consumer says it is
  scoring it (``scoring()``, called right before the model runs, when the consumer lets go of
  Python's GIL for milliseconds) or comes back for the next frame, and only then reads frame
  N + 1. The reader's own GIL-holding work (a GenICam producer taking its buffer back, the next
  frame's conversion) then overlaps the model instead of delaying the frame's hand-over, its
  decision and its record. The reader stays one frame ahead.

``stop()`` (any thread; the line runtime calls it on SIGINT / SIGTERM) stops reading: a
reconnect wait is cut short, a threaded read is abandoned (``CameraStream.stop``), a
hardware-triggered GenICam wait ends (``on_stop``). Frames already read are still handed out,
so each one gets its verdict. ``limit`` reads no more than that many frames (``--max-frames``),
so none is read that would not be scored, and releases the camera only once the consumer is
done with the last one (releasing it holds the GIL for a long while: the last verdict comes
first). ``close()`` ends the thread even when the consumer
stopped taking frames (an exception in the scoring loop).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from defectssft_line.camera import CameraStream

THREAD_NAME = "read-ahead"  # the reading thread's name: "read-ahead SOURCE"
_END = object()
_SLICE = 0.1  # seconds: the reading thread re-checks close() while it waits for the consumer


@dataclass
class Frame:
    """One camera frame as read: the image (decoded-file convention), the camera's metadata
    of this very frame, and when it left the camera stream (``time.perf_counter``)."""

    image: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    t_read: float = 0.0
    prepared: Any = None  # what ``prepare`` made of the image on the reading thread


class FramePrefetcher:
    """Reads ``stream`` on its own thread; iterate to get the frames (see the module docstring)."""

    def __init__(
        self,
        stream: CameraStream,
        meta: Callable[[], dict[str, Any]] = dict,
        depth: int = 1,
        limit: int = 0,
        on_stop: Callable[[], None] | None = None,
        prepare: Callable[[np.ndarray], Any] | None = None,
        pace: bool = False,
    ) -> None:
        self.stream = stream
        self._meta = meta
        self._prepare = prepare
        self.pace = pace
        self._pace = threading.Condition()
        self._taken = 0  # frames the consumer took (its thread only)
        self._scoring = 0  # the frame the consumer said it scores (or is done with)
        self._waiting = False  # the consumer waits for the next frame (idle)
        self._last_done = False  # the consumer is done with frame ``limit``
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, int(depth)))
        self.limit = max(0, int(limit))
        self._on_stop = on_stop
        self._stopped = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.read = 0  # frames read from the camera (all of them are handed out)

    def start(self) -> FramePrefetcher:
        self._thread = threading.Thread(
            target=self._run, name=f"{THREAD_NAME} {self.stream.source}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Read no further frames; those read are still handed out. Safe from a signal handler."""
        self._stopped.set()
        self.stream.stop()
        if self._on_stop is not None:
            self._on_stop()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def _put(self, item: Any) -> bool:
        """Queue ``item``, waiting for room; False when closed meanwhile."""
        while not self._closed.is_set():
            try:
                self._q.put(item, timeout=_SLICE)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            with contextlib.closing(self.stream.frames()) as frames:
                for image in frames:
                    frame = Frame(image, dict(self._meta() or {}))
                    if self._prepare is not None and not self._waiting:
                        try:
                            frame.prepared = self._prepare(image)
                        except Exception:  # noqa: BLE001 - the consumer prepares it and reports
                            frame.prepared = None
                    frame.t_read = time.perf_counter()
                    self.read += 1
                    if not self._put(frame):
                        return
                    if self.limit and self.read >= self.limit:
                        self._wait_for_last()  # its verdict before the camera's release
                        return  # closing the generator releases the camera, on this thread
                    if self._stopped.is_set():
                        return
                    if self.pace and not self._wait_for_scoring(self.read):
                        return
        except BaseException as e:  # noqa: BLE001 - raised again on the consumer's thread
            self.error = e
        finally:
            self._put(_END)

    def _wait_for_scoring(self, n: int) -> bool:
        """On the reading thread: wait until the consumer scores frame ``n`` (``pace``);
        False when closed or stopped meanwhile (read no further)."""
        with self._pace:
            while self._scoring < n and not (self._closed.is_set() or self._stopped.is_set()):
                self._pace.wait(_SLICE)
        return not (self._closed.is_set() or self._stopped.is_set())

    def _wait_for_last(self) -> None:
        """On the reading thread: wait until the consumer is done with frame ``limit`` (or
        closed or stopped us)."""
        with self._pace:
            while not (self._last_done or self._closed.is_set() or self._stopped.is_set()):
                self._pace.wait(_SLICE)

    def scoring(self) -> None:
        """The consumer scores the frame it took last, in native code from now on: the reader
        may read the next one (``pace``). Cheap; the consumer's thread only."""
        if self.pace and self._scoring < self._taken:
            with self._pace:
                self._scoring = self._taken
                self._pace.notify()

    def __iter__(self) -> Iterator[Frame]:
        """The frames in camera order, until the stream ends, ``limit``, or stop(); the
        stream's error (LineError: the source does not open) is raised here."""
        while True:
            self._waiting = self._q.empty()
            item = self._q.get()
            self._waiting = False
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            self._taken += 1
            yield item
            if self.limit and self._taken >= self.limit:  # the last: the camera may go now
                with self._pace:
                    self._last_done = True
                    self._pace.notify_all()
            self.scoring()  # done with it, whether or not it said when it began

    def close(self, timeout: float = 3.0) -> bool:
        """Stop reading and wait up to ``timeout`` s for the thread (it releases the camera);
        False when it is still inside the driver (it is a daemon thread, left behind)."""
        self.stop()
        self._closed.set()
        with self._pace:
            self._pace.notify_all()
        with contextlib.suppress(queue.Empty):
            while True:  # make room: a reading thread waiting to queue a frame sees _closed
                self._q.get_nowait()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()
