"""CPU placement: the thread that scores parts gets a CPU of its own (``--scoring-cpu``).

On a line PC the part's preprocess + ONNX (onnxruntime at ``--threads 1`` computes on the
calling thread) sets the latency and the rate; everything else the runtime runs (the camera
read-ahead, the sinks' threads and event loops, the metrics server, the archive writer) is
light but wakes up often. Sharing one CPU with them, the scoring thread is pre-empted in the
middle of a part. So, as line PCs do for inference, ``--scoring-cpu`` pins the scoring thread
to one CPU and every other thread of the process to the others:

* ``auto`` (default): on Linux with two or more usable CPUs, the scoring thread goes to an
  isolated CPU if the kernel has one (``isolcpus=``, listed in
  ``/sys/devices/system/cpu/isolated``), else to the last usable CPU; the other threads stay
  on the remaining usable CPUs.
* ``N``: that CPU (a usable or an isolated one; any other is a one-line error at start).
* ``off``: the operating system places the threads.

With one usable CPU, or outside Linux, nothing is pinned, and the log says so once. Threads
that start later (a camera reconnect, a sink's new connection, a new model's session)
inherit the CPUs of the thread that started them; ``keep()``, called between parts (after
each camera frame's record, before each file), pins those too (it lists ``/proc/self/task``:
microseconds). ``release()`` gives every pinned
thread back the CPUs it had, so a run inside a longer-lived process leaves no trace.

Pinning never stops inspection: a refusal by the kernel (a container's cpuset, a CPU taken
offline) is one warning line and the threads are left where they are.

A pinned thread cannot move away from a busy CPU: on a PC that also runs other heavy work the
scoring thread would wait for its one CPU (BENCHMARKS.md measured 2-3 x slower parts). So
``keep()`` watches how long the scoring thread waited for its CPU (the kernel's run-queue time,
``/proc/thread-self/schedstat``) against how long it ran, over windows of ``WINDOW_S``: when it
waited more than ``BUSY_WAIT`` times as long as it ran, ``auto`` gives the CPUs back for the
rest of the run and says so in one warning line; an explicit ``N`` stays pinned and warns once.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from defectssft_line.model import LineError

CHOICES_HELP = "auto, off, or a CPU number"
ISOLATED = Path("/sys/devices/system/cpu/isolated")
WINDOW_S = 10.0  # seconds between looks at the scoring thread's waiting for its CPU
BUSY_WAIT = 0.5  # waited for the CPU more than this times its running time: the CPU is busy
MIN_RUN_S = 0.5  # a window in which the scoring thread ran less than this says nothing


def scoring_cpu(text: str) -> str | int:
    """argparse type of ``--scoring-cpu``: ``auto``, ``off`` or a CPU number >= 0."""
    import argparse

    t = str(text).strip().lower()
    if t in ("auto", "off"):
        return t
    if t.isdigit():
        return int(t)
    raise argparse.ArgumentTypeError(f"expected {CHOICES_HELP}, got {text!r}")


def cpu_list(text: str) -> set[int]:
    """A kernel CPU list (``0-2,5``) as a set; empty for an empty or malformed list."""
    out: set[int] = set()
    for part in text.strip().split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return set() if part.strip() else out
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def describe(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``0-2,5``."""
    s = sorted(set(cpus))
    runs: list[str] = []
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        runs.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(runs)


def _isolated() -> set[int]:
    try:
        return cpu_list(ISOLATED.read_text())
    except OSError:
        return set()


def _tasks() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def thread_schedstat() -> tuple[float, float]:
    """(seconds on a CPU, seconds waiting for one) of the calling thread; zeros if unknown."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            on, waited = f.read().split()[:2]
        return int(on) / 1e9, int(waited) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Placement:
    """The plan (``scoring``: the scoring CPU, ``others``: the rest) and the pinning.

    ``choice`` is ``auto``, ``off`` or a CPU number. ``allowed`` / ``isolated`` / ``platform``
    / ``setter`` / ``getter`` / ``tasks`` default to this process and this machine (tests
    pass their own). A bad ``choice`` raises LineError (one line); the one-CPU and non-Linux
    cases log one line and pin nothing (``active`` is False).
    """

    def __init__(
        self,
        choice: str | int = "auto",
        log: Callable[[str], None] = _stderr,
        allowed: set[int] | None = None,
        isolated: set[int] | None = None,
        platform: str = sys.platform,
        setter: Callable[[int, set[int]], None] | None = None,
        getter: Callable[[int], set[int]] | None = None,
        tasks: Callable[[], list[int]] = _tasks,
        schedstat: Callable[[], tuple[float, float]] = thread_schedstat,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._schedstat, self._clock = schedstat, clock
        self._window: tuple[float, float, float] | None = None  # (when, on, waited)
        self.fallback = choice == "auto"  # a busy scoring CPU: give the CPUs back
        self.on_give_up: Callable[[], None] | None = None  # then also this (--keep-warm's stop)
        self.busy_warned = False
        self._set = setter or getattr(os, "sched_setaffinity", None)
        self._get = getter or getattr(os, "sched_getaffinity", None)
        self._tasks = tasks
        # threads of the line's child processes (servers in a process of their own): placed
        # with the line's other threads (set by the runtime: ``LineOutputs.process_tasks``)
        self.extra_tasks: Callable[[], list[int]] = list
        self.scoring: int | None = None
        self.others: set[int] = set()
        self.note = ""  # why nothing is pinned, for the log
        self._scoring_tid: int | None = None
        self._placed: dict[int, set[int]] = {}  # tid -> the CPUs it had before
        self._seen: frozenset[int] = frozenset()
        self._base: set[int] | None = None  # the scoring thread's CPUs before the first pin
        self._lock = threading.Lock()
        if choice == "off":
            self.note = "CPU placement off (--scoring-cpu off)"
            return
        if not platform.startswith("linux") or self._set is None or self._get is None:
            self.note = f"CPU placement: not supported on {platform}; threads not pinned"
            return
        usable = set(allowed if allowed is not None else self._get(0))
        iso = set(isolated if isolated is not None else _isolated())
        if isinstance(choice, int):
            if choice not in usable | iso:
                raise LineError(
                    f"--scoring-cpu {choice}: not a CPU this process may use "
                    f"(usable: {describe(usable)}"
                    + (f"; isolated: {describe(iso)}" if iso else "")
                    + ")"
                )
            cpu = choice
        else:
            cpu = max(iso) if iso else max(usable)
        rest = usable - {cpu}
        if not rest:
            self.note = (
                f"CPU placement: only CPU {describe(usable)} is usable; threads not pinned "
                "(the scoring thread shares it with the camera and the sinks)"
            )
            return
        self.scoring, self.others = cpu, rest

    @property
    def active(self) -> bool:
        return self.scoring is not None

    def summary(self) -> str:
        """One line for the log: the plan, or why there is none."""
        if not self.active:
            return self.note
        return (
            f"CPU placement: scoring thread on CPU {self.scoring}, the other threads on "
            f"CPU {describe(self.others)} (--scoring-cpu)"
        )

    def _pin(self, tid: int, cpus: set[int], before: set[int] | None = None) -> bool:
        """Pin one thread, noting the CPUs it goes back to (``before``, else its own); False
        when it is gone. Another OSError propagates (the caller turns placement off)."""
        assert self._set is not None and self._get is not None
        try:
            if tid not in self._placed:
                self._placed[tid] = set(before if before is not None else self._get(tid))
            self._set(tid, cpus)
            return True
        except ProcessLookupError:  # the thread ended meanwhile
            self._placed.pop(tid, None)
            return False

    def _all_tasks(self) -> list[int]:
        return [*self._tasks(), *self.extra_tasks()]

    def apply(self) -> None:
        """Pin the calling thread (the scoring thread) to the scoring CPU and every other
        thread of the process to the others."""
        if not self.active:
            return
        me = threading.get_native_id()
        with self._lock:
            try:
                names = self._all_tasks()
                # a thread started after the first look inherited the pinned CPUs of its
                # parent: it goes back to what the process had
                later = self._base if self._seen else None
                self._pin(me, {self.scoring}, later)  # type: ignore[arg-type]
                if self._base is None:
                    self._base = set(self._placed[me])
                self._scoring_tid = me
                for tid in names:
                    if tid != me:
                        self._pin(tid, self.others, later)
                self._seen = frozenset(names)
            except OSError as e:
                self._give_up(e)

    def keep(self) -> None:
        """Before each part: pin threads started since the last look (and the scoring
        thread again if another thread scores now)."""
        if not self.active:
            return
        self._watch()
        if not self.active:
            return
        if (
            frozenset(self._all_tasks()) == self._seen
            and threading.get_native_id() == self._scoring_tid
        ):
            return
        self.apply()

    def _watch(self) -> None:
        """Every WINDOW_S: did the scoring thread wait for its CPU (see the module docstring)?"""
        now = self._clock()
        if self._window is None or threading.get_native_id() != self._scoring_tid:
            self._window = (now, *self._schedstat())
            return
        if now - self._window[0] < WINDOW_S:
            return
        on, waited = self._schedstat()
        ran, queued = on - self._window[1], waited - self._window[2]
        self._window = (now, on, waited)
        if ran < MIN_RUN_S or queued <= BUSY_WAIT * ran:
            return
        what = (
            f"the scoring CPU {self.scoring} is busy with other work: the scoring thread waited "
            f"{queued:.1f} s for it while it ran {ran:.1f} s"
        )
        if self.fallback:
            self._log(
                f"warning: {what}; CPU placement given up for this run (threads placed by the "
                "system, as --scoring-cpu off)"
            )
            self.release()
            self.scoring, self.others = None, set()
            self.note = "CPU placement given up: the scoring CPU was busy with other work"
            if self.on_give_up is not None:
                self.on_give_up()
        elif not self.busy_warned:
            self.busy_warned = True
            self._log(f"warning: {what} (--scoring-cpu {self.scoring} keeps it pinned)")

    def _give_up(self, e: OSError) -> None:
        self._log(
            f"warning: CPU placement refused by the system ({e.strerror or e}); "
            "threads left where the system puts them, inspection goes on"
        )
        self._restore()
        self.scoring, self.others = None, set()
        self.note = "CPU placement refused by the system"

    def _restore(self) -> None:
        placed, self._placed = self._placed, {}
        for tid, cpus in placed.items():
            try:
                self._set(tid, cpus)  # type: ignore[misc]
            except OSError:  # ended, or refused: nothing more to do
                pass

    def release(self) -> None:
        """Give every pinned thread back the CPUs it had before."""
        with self._lock:
            self._restore()
            self._seen = frozenset()
            self._base = None
            self._scoring_tid = None
