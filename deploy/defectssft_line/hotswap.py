"""Pick up a newly promoted model at the path the runtime runs from, without a restart.

The file is polled (size, mtime, inode). A changed file is loaded and checked in full
(``LineModel.load``) *before* it replaces the running model; the swap is one reference
assignment, so an image is always scored by exactly one complete model. A new file that
fails the check (or fails to load in any other way) is reported once and the old model keeps
running; a later change retries.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from defectssft_line.model import LineError, LineModel


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ModelHolder:
    """Holds the running model and swaps in a changed file once it has loaded and checked."""

    def __init__(
        self,
        path: str | Path,
        load: Callable[[Path], LineModel],
        poll_s: float = 2.0,
        log: Callable[[str], None] = _stderr,
    ) -> None:
        self.path = Path(path)
        self._load = load
        self.poll_s = poll_s
        self._log = log
        self._signature = _signature(self.path)
        self.model = load(self.path)  # the first load must succeed: errors reach the caller
        self._rejected: tuple[int, int, int] | None = None
        self._last_poll = time.monotonic()
        self.swaps = 0

    def current(self) -> LineModel:
        """The model to use now (polls the file at most every ``poll_s`` seconds)."""
        now = time.monotonic()
        if now - self._last_poll >= self.poll_s:
            self._last_poll = now
            self.check_for_update()
        return self.model

    def check_for_update(self) -> bool:
        """Load the file if it changed; True when a new model was swapped in."""
        sig = _signature(self.path)
        if sig is None or sig == self._signature or sig == self._rejected:
            return False
        try:
            new = self._load(self.path)
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the new file, keep running
            self._rejected = sig
            reason = str(e) if isinstance(e, LineError) else f"{type(e).__name__}: {e}"
            reason = (reason.strip().splitlines() or [type(e).__name__])[0]
            self._log(
                f"warning: new model file rejected, still running "
                f"{self.model.version or 'the previous model'}: {reason}"
            )
            return False
        old = self.model
        self.model, self._signature, self._rejected = new, sig, None
        self.swaps += 1
        self._log(f"model updated: {old.version or '?'} -> {new.version or '?'} ({self.path})")
        return True
