"""Image writes off the scoring thread: archive images and ``--send-unsure`` camera frames.

Encoding a frame as PNG and writing it takes milliseconds (more on a slow or network disk);
on the scoring thread that time would delay the next part. ``ImageQueue`` runs those writes on
a thread of its own, in order. Verdicts never go through it: records and sinks are written
by the scoring thread before the image is queued.

The queue is bounded (``max_jobs``, ``--image-queue``): when it is full, the oldest queued
*archive* image is dropped (a warning line, the first and then every 100th, and a count in the
summary and the status), because the archive is a sample that may miss a part. A
``--send-unsure`` frame is never dropped (operators label from it): when the queue holds
nothing but those, the scoring thread waits for room. ``close()`` writes everything still
queued before it returns, so stopping the line (Ctrl+C, SIGTERM, the end of the input) loses
no image.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

DEFAULT_JOBS = 32
THREAD_NAME = "image writer"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ImageQueue:
    """A bounded queue of image writes and the thread that runs them (see the module docstring)."""

    def __init__(self, max_jobs: int = DEFAULT_JOBS, log: Callable[[str], None] = _stderr) -> None:
        self.max_jobs = max(1, int(max_jobs))
        self._log = log
        self._jobs: deque[tuple[Callable[[], Any], bool]] = deque()  # (write, droppable)
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self.done = 0
        self.dropped = 0
        self.failed = 0

    def start(self) -> ImageQueue:
        self._thread = threading.Thread(target=self._work, name=THREAD_NAME, daemon=True)
        self._thread.start()
        return self

    def put(self, write: Callable[[], Any], droppable: bool = True) -> None:
        """Queue ``write`` (an archive image: ``droppable``; a send-unsure frame: not).
        Without a running thread (not started, or closed) it runs here and now."""
        if self._thread is None or self._closing:
            self._run(write)
            return
        with self._cond:
            while len(self._jobs) >= self.max_jobs:
                oldest = next((i for i, (_, d) in enumerate(self._jobs) if d), None)
                if oldest is not None:
                    del self._jobs[oldest]
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 100 == 0:
                        self._log(
                            f"warning: image writes fall behind (slow disk?): dropped the "
                            f"oldest queued archive image, {self.dropped} so far; verdicts "
                            "are not affected"
                        )
                    break
                self._cond.wait(0.1)  # only send-unsure frames queued: wait for room
            self._jobs.append((write, droppable))
            self._cond.notify_all()

    def _run(self, write: Callable[[], Any]) -> None:
        try:
            write()
        except Exception as e:  # noqa: BLE001 - an image write never stops inspection
            self.failed += 1
            if self.failed <= 10 or self.failed % 100 == 0:
                self._log(f"warning: image write failed ({type(e).__name__}: {e})")
        else:
            self.done += 1

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return  # closing and drained
                write, _ = self._jobs.popleft()
                self._busy = True
                self._cond.notify_all()
            try:
                self._run(write)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._jobs) + (1 if self._busy else 0)

    def close(self) -> None:
        """Write everything queued, then stop the thread."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread.join()
        self._thread = None

    def stats(self) -> dict[str, int]:
        return {"written": self.done, "dropped": self.dropped, "failed": self.failed}
