"""``--scoring-cpu``: the scoring thread on a CPU of its own, the runtime's other threads on the
rest (``defectssft_line.placement``). The plan and the pinning with a recording stand-in for the
kernel (any machine), real threads' affinity on Linux with two or more CPUs, and the CLI:
a bad CPU number, a bad word, one usable CPU, and the run giving the CPUs back."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from defectssft_line.cli import main
from defectssft_line.model import LineError
from defectssft_line.placement import Placement, cpu_list, describe

ME = threading.get_native_id


class Kernel:
    """Records sched_setaffinity calls; threads 100, 101 exist besides the caller."""

    def __init__(self, cpus: set[int], threads: list[int] | None = None) -> None:
        self.cpus = cpus
        self.threads = threads if threads is not None else [100, 101]
        self.affinity: dict[int, set[int]] = {}
        self.refuse: type[OSError] | None = None

    def tasks(self) -> list[int]:
        return [ME(), *self.threads]

    def get(self, tid: int) -> set[int]:
        return set(self.affinity.get(tid, self.cpus))

    def set(self, tid: int, cpus: set[int]) -> None:
        if self.refuse is not None:
            raise self.refuse(22, "Invalid argument")
        if tid not in self.tasks():
            raise ProcessLookupError(3, "No such process")
        self.affinity[tid] = set(cpus)


def placement(kernel: Kernel, choice: str | int = "auto", **kw) -> Placement:
    logs: list[str] = []
    p = Placement(
        choice,
        log=logs.append,
        allowed=kw.pop("allowed", kernel.cpus),
        platform=kw.pop("platform", "linux"),
        setter=kernel.set,
        getter=kernel.get,
        tasks=kernel.tasks,
        **kw,
    )
    p.logs = logs  # type: ignore[attr-defined]
    return p


def test_cpu_lists():
    assert cpu_list("0-2,5\n") == {0, 1, 2, 5}
    assert cpu_list("") == set() and cpu_list("x") == set()
    assert describe({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"


def test_plan_auto_explicit_isolated_and_bad_numbers():
    k = Kernel({0, 1, 2, 3})
    p = placement(k, isolated=set())
    assert (p.scoring, p.others) == (3, {0, 1, 2})
    assert "scoring thread on CPU 3, the other threads on CPU 0-2" in p.summary()
    # isolcpus=3: the default affinity leaves CPU 3 out; scoring goes there, the rest stays
    p = placement(Kernel({0, 1, 2}), isolated={3})
    assert (p.scoring, p.others) == (3, {0, 1, 2})
    p = placement(k, 0, isolated=set())
    assert (p.scoring, p.others) == (0, {1, 2, 3})
    with pytest.raises(LineError) as e:
        placement(k, 9, isolated=set())
    assert str(e.value) == "--scoring-cpu 9: not a CPU this process may use (usable: 0-3)"
    assert "\n" not in str(e.value)


def test_one_cpu_non_linux_and_off_pin_nothing():
    k = Kernel({0})
    for p, said in [
        (placement(k, isolated=set()), "only CPU 0 is usable; threads not pinned"),
        (placement(k, 0, isolated=set()), "only CPU 0 is usable"),
        (placement(Kernel({0, 1}), platform="win32"), "not supported on win32"),
        (placement(Kernel({0, 1}), "off"), "CPU placement off"),
    ]:
        assert not p.active and said in p.summary()
        p.apply()
        p.keep()
        p.release()
    assert k.affinity == {}


def test_apply_keep_and_release_pin_each_thread():
    k = Kernel({0, 1, 2, 3})
    p = placement(k, isolated=set())
    p.apply()
    assert k.affinity == {ME(): {3}, 100: {0, 1, 2}, 101: {0, 1, 2}}
    k.threads.append(102)  # a thread started after: a reconnect, a new connection
    k.affinity[102] = {3}  # inherited from the scoring thread that started it
    p.keep()
    assert k.affinity[102] == {0, 1, 2}
    k.threads.remove(101)  # a thread that ended is no error
    del k.affinity[101]
    p.keep()
    p.release()  # each thread back to the CPUs it had; the late one to the process's
    assert k.affinity == {ME(): {0, 1, 2, 3}, 100: {0, 1, 2, 3}, 102: {0, 1, 2, 3}}


def test_a_refusal_is_one_warning_and_inspection_goes_on():
    k = Kernel({0, 1})
    p = placement(k, isolated=set())
    k.refuse = PermissionError
    p.apply()
    assert not p.active and len(p.logs) == 1  # type: ignore[attr-defined]
    assert "CPU placement refused by the system" in p.logs[0]  # type: ignore[attr-defined]
    p.keep()  # nothing more
    assert len(p.logs) == 1  # type: ignore[attr-defined]


linux_2cpu = pytest.mark.skipif(
    not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux with two or more usable CPUs",
)


@linux_2cpu
def test_real_threads_are_pinned_and_given_back():
    before = os.sched_getaffinity(0)
    stop = threading.Event()
    early = threading.Thread(target=stop.wait, daemon=True)
    early.start()
    p = Placement("auto", log=lambda m: None, isolated=set())
    try:
        p.apply()
        assert os.sched_getaffinity(ME()) == {p.scoring}
        assert os.sched_getaffinity(early.native_id) == p.others
        late = threading.Thread(target=stop.wait, daemon=True)
        late.start()  # started by the scoring thread: inherits its CPU ...
        assert os.sched_getaffinity(late.native_id) == {p.scoring}
        p.keep()  # ... until the next part
        assert os.sched_getaffinity(late.native_id) == p.others
    finally:
        p.release()
        stop.set()
    assert os.sched_getaffinity(ME()) == before
    assert os.sched_getaffinity(late.native_id) == before


def test_cli_bad_scoring_cpu_is_one_line(still_model, still_frames, capsys):
    base = ["run", "--model", str(still_model), "--camera", still_frames]
    assert main([*base, "--scoring-cpu", "4096"]) == 2
    err = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error")]
    assert len(err) == 1 and err[0].startswith("error: --scoring-cpu 4096: not a CPU")
    assert main([*base, "--scoring-cpu", "0", "--threads", "2"]) == 2
    assert "use it with --threads 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*base, "--scoring-cpu", "fast"])
    assert e.value.code == 2
    assert "expected auto, off, or a CPU number, got 'fast'" in capsys.readouterr().err


@linux_2cpu
def test_cli_camera_run_pins_then_gives_the_cpus_back(still_model, still_frames, capsys):
    before = os.sched_getaffinity(0)
    assert (
        main(["run", "--model", str(still_model), "--camera", still_frames, "--scoring-cpu", "0"])
        == 0
    )
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3
    said = [line for line in captured.err.splitlines() if "CPU placement" in line]
    assert said == [
        f"CPU placement: scoring thread on CPU 0, the other threads on CPU "
        f"{describe(before - {0})} (--scoring-cpu)"
    ]
    assert os.sched_getaffinity(ME()) == before


def test_cli_one_cpu_says_so_once(still_model, still_frames, capsys, monkeypatch):
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity here")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr("defectssft_line.placement._isolated", set)
    assert main(["run", "--model", str(still_model), "--camera", still_frames]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "CPU placement" in line]
    assert len(said) == 1 and "only CPU 0 is usable; threads not pinned" in said[0]


def test_cli_several_onnx_threads_turn_auto_placement_off(still_model, still_frames, capsys):
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    assert (
        main(["run", "--model", str(still_model), "--camera", still_frames, "--threads", "2"]) == 0
    )
    said = [line for line in capsys.readouterr().err.splitlines() if "CPU placement" in line]
    assert said == ["CPU placement off: --threads 2 runs ONNX on several CPUs"]
    if before is not None:
        assert os.sched_getaffinity(ME()) == before


class Clock:
    """A settable clock and a scoring thread's (on a CPU, waiting for one) seconds."""

    def __init__(self) -> None:
        self.now, self.on, self.waited = 0.0, 0.0, 0.0

    def advance(self, seconds: float, on: float, waited: float) -> None:
        self.now, self.on, self.waited = self.now + seconds, self.on + on, self.waited + waited


def watched(k: Kernel, choice: str | int, c: Clock) -> Placement:
    return placement(
        k, choice, isolated=set(), schedstat=lambda: (c.on, c.waited), clock=lambda: c.now
    )


def test_auto_gives_the_cpus_back_when_the_scoring_cpu_is_busy():
    k, c = Kernel({0, 1}), Clock()
    p = watched(k, "auto", c)
    given_up: list[bool] = []
    p.on_give_up = lambda: given_up.append(True)  # --keep-warm stops its spinner here
    p.apply()
    p.keep()  # the first look
    c.advance(11, on=2.0, waited=0.2)  # a dedicated CPU: it ran, it hardly waited
    p.keep()
    assert p.active and p.logs == [] and given_up == []  # type: ignore[attr-defined]
    c.advance(11, on=2.0, waited=5.0)  # other work on its CPU: it waited more than it ran
    p.keep()
    assert not p.active and k.affinity == {ME(): {0, 1}, 100: {0, 1}, 101: {0, 1}}
    assert given_up == [True]
    (said,) = p.logs  # type: ignore[attr-defined]
    assert "the scoring CPU 1 is busy with other work" in said and "given up" in said
    assert "given up" in p.summary()
    c.advance(11, on=2.0, waited=5.0)
    p.keep()
    assert len(p.logs) == 1  # type: ignore[attr-defined]


def test_an_explicit_cpu_stays_pinned_and_warns_once_an_idle_line_says_nothing():
    k, c = Kernel({0, 1}), Clock()
    p = watched(k, 1, c)
    p.apply()
    p.keep()
    c.advance(11, on=0.1, waited=5.0)  # hardly any parts: no judgement
    p.keep()
    assert p.logs == []  # type: ignore[attr-defined]
    for _ in range(2):
        c.advance(11, on=2.0, waited=5.0)
        p.keep()
    assert p.active and k.affinity[ME()] == {1}
    (said,) = p.logs  # type: ignore[attr-defined]
    assert said.endswith("(--scoring-cpu 1 keeps it pinned)")
