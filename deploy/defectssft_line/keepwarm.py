"""Keep the scoring CPU awake between parts (``--keep-warm``).

On a triggered line the scoring thread waits idle for most of each cycle (at 10 parts a second,
about 85 of every 100 ms), and an idle CPU sleeps: on bare metal it drops into a C-state and
its clock, in a VM the virtual CPU halts and the host runs something else on that core. The
next part then starts on cold caches and a slow clock, and the model takes longer than it
does back to back (BENCHMARKS.md measured it, line end to end, the paired protocol).

``KeepWarm`` starts one small process that spins on the scoring CPU at the kernel's lowest
priority (``SCHED_IDLE``): it runs only when nothing else wants that CPU, and the scoring
thread, waking for a part, takes the CPU from it at once. It is a process of its own, so it
never takes Python's GIL from the line. It ends with ``stop()`` (the end of the run, or
``--scoring-cpu auto`` giving the CPUs back: ``Placement.on_give_up``), and by itself within a
millisecond or so when the runtime is gone (it watches its parent), so a killed runtime leaves
no spinning process behind. The price is a CPU kept at 100 % (power, heat): for a line PC
whose scoring CPU is its own (``--scoring-cpu``). Linux only; elsewhere, or when the system
refuses, one warning line and the line runs as without it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable

# The spinner: Python's own loop (a few hundred bytes of cache), checking every ~1 ms that the
# runtime that started it is still its parent.
SPIN = (
    "import os\n"
    "parent = os.getppid()\n"
    "while os.getppid() == parent:\n"
    "    for _ in range(20000):\n"
    "        pass\n"
)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class KeepWarm:
    """A ``SCHED_IDLE`` spinner pinned to ``cpu`` (see the module docstring)."""

    def __init__(
        self,
        cpu: int,
        log: Callable[[str], None] = _stderr,
        python: str = sys.executable,
        platform: str = sys.platform,
    ) -> None:
        self.cpu = cpu
        self._log = log
        self._python = python
        self._platform = platform
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> bool:
        """Start the spinner; False (one warning line) when this system cannot."""
        if not self._platform.startswith("linux") or not hasattr(os, "SCHED_IDLE"):
            self._log(f"warning: --keep-warm: not supported on {self._platform}; not used")
            return False
        try:
            self.proc = subprocess.Popen(
                [self._python, "-I", "-S", "-c", SPIN],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as e:
            self._log(f"warning: --keep-warm: cannot start the spinner: {e.strerror or e}")
            return False
        try:
            # lowest priority first, then the CPU: it never competes with normal threads
            os.sched_setscheduler(self.proc.pid, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        except OSError as e:
            self.stop()
            self._log(
                f"warning: --keep-warm: the system refused to place the spinner on CPU "
                f"{self.cpu}: {e.strerror or e}; not used"
            )
            return False
        self._log(
            f"keep-warm: CPU {self.cpu} kept awake between parts by a lowest-priority spinner "
            f"(pid {self.proc.pid})"
        )
        return True

    def stop(self) -> None:
        """End the spinner (idempotent)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
