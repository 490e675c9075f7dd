"""A clean stop of a camera run on Ctrl+C (SIGINT) or SIGTERM (systemd, ``docker stop``).

While a camera run is on, the first SIGINT or SIGTERM only asks it to stop (``on_stop``): no
more frames are read, those already read are scored and written, the sinks send what they
hold and the summary is printed. A second signal acts at once as it would otherwise (Ctrl+C:
KeyboardInterrupt; SIGTERM: the default action, the process ends). After a SIGTERM the process
also ends by the default action of SIGTERM once the run has stopped (``finish``), or after
``grace`` seconds if stopping takes longer (``end_by_sigterm``), so a service manager sees what it
asked for.

Handlers can only be set on the main thread; elsewhere (a run inside a worker thread) this
does nothing and the signals keep their usual effect.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

DEFAULT_GRACE_S = 8.0


class StopOnSignal:
    """Context manager: see the module docstring. ``signum`` is the signal that asked for the
    stop (None: none came)."""

    def __init__(self, on_stop: Callable[[], None], grace: float = DEFAULT_GRACE_S) -> None:
        self._on_stop = on_stop
        self.grace = grace
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._handle:  # SIGTERM after a stop stays SIG_DFL
                signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:  # a second Ctrl+C: at once (a second SIGTERM: SIG_DFL)
            raise KeyboardInterrupt
        self.signum = signum
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the process
            timer = threading.Timer(self.grace, os.kill, (os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()
        self._on_stop()


def end_by_sigterm() -> None:
    """After a run stopped by SIGTERM: end the process by SIGTERM's default action."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
