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
``--scoring-cpu auto`` giving the CPUs back: ``Placement.on_give_up``), and by itself when the
runtime is gone (the kernel kills it with its parent; it also watches its parent), so a killed
runtime leaves no spinning process behind. The price is a CPU kept at 100 % (power, heat): for a line PC
whose scoring CPU is its own (``--scoring-cpu``). Linux only; elsewhere, or when the system
refuses, one warning line and the line runs as without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable

# The spinner: Python's own loop (a few hundred bytes of cache), checking every ~1 ms that the
# runtime that started it (its pid passed as the argument, so a runtime gone before the spinner
# started is noticed too) is still its parent.
SPIN = (
    "import os, sys\n"
    "parent = int(sys.argv[1])\n"
    "while os.getppid() == parent:\n"
    "    for _ in range(20000):\n"
    "        pass\n"
)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel to SIGKILL the child when its parent thread ends.

    The spinner at ``SCHED_IDLE`` gets almost no CPU while the machine is busy: its own check
    of its parent (even Python's start-up before it) could then take seconds to minutes of
    wall time, so the kernel's signal is what ends it promptly; the check stays as the
    fallback. ``prctl`` is looked up here, in the parent, so the child only calls it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return hook


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
        """Start the spinner; False (one warning line) when this system cannot.

        Call it from the thread that lives as long as the runtime (the CLI's main thread):
        the kernel ends the spinner with the thread that started it."""
        if not self._platform.startswith("linux") or not hasattr(os, "SCHED_IDLE"):
            self._log(f"warning: --keep-warm: not supported on {self._platform}; not used")
            return False
        try:
            self.proc = subprocess.Popen(
                [self._python, "-I", "-S", "-c", SPIN, str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                preexec_fn=_die_with_parent(),
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
