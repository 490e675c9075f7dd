"""``--keep-warm`` (``defectssft_line.keepwarm``): a lowest-priority spinner process on the
scoring CPU. Real processes on Linux: its policy and CPU, stop(), that it ends by itself when
the runtime is killed, a refusal and an unsupported system as one warning line, and the CLI
(with and without a scoring CPU of its own), leaving no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from defectssft_line.cli import main
from defectssft_line.keepwarm import SPIN, KeepWarm

linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "SCHED_IDLE"),
    reason="needs Linux (SCHED_IDLE, sched_setaffinity)",
)


def gone(pid: int, within_s: float = 10.0) -> bool:
    """The process ended (no longer exists, or a zombie its new parent has not reaped)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@linux
def test_spinner_runs_lowest_priority_on_the_cpu_and_stops():
    cpu = max(os.sched_getaffinity(0))
    logs: list[str] = []
    warm = KeepWarm(cpu, log=logs.append)
    assert warm.start()
    try:
        assert warm.proc is not None and warm.running
        pid = warm.proc.pid
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.sched_getaffinity(pid) == {cpu}
        assert logs == [
            f"keep-warm: CPU {cpu} kept awake between parts by a lowest-priority spinner "
            f"(pid {pid})"
        ]
    finally:
        warm.stop()
    assert not warm.running and gone(pid)
    warm.stop()  # twice is harmless


@linux
def test_spinner_ends_by_itself_when_the_runtime_is_killed(tmp_path):
    script = tmp_path / "runtime.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path[:0] = {sys.path!r}
            from defectssft_line.keepwarm import KeepWarm
            w = KeepWarm({max(os.sched_getaffinity(0))}, log=lambda m: None)
            assert w.start()
            print(w.proc.pid, flush=True)
            time.sleep(60)
            """
        )
    )
    runtime = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert runtime.stdout is not None
        spinner = int(runtime.stdout.readline())
        assert not gone(spinner, within_s=0.2)  # it spins while the runtime lives
        runtime.send_signal(signal.SIGKILL)  # no stop(), no cleanup
        runtime.wait(10)
        assert gone(spinner)
    finally:
        runtime.kill()
        runtime.wait(10)


@linux
def test_spinner_ends_at_once_when_its_runtime_died_before_it_started():
    """The spinner is told its runtime's pid: started by another process (its runtime already
    gone, the spinner adopted), it sees a parent that is not that runtime and ends instead of
    spinning forever."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    spinner = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SPIN, str(dead.pid)], timeout=60, check=False
    )
    assert spinner.returncode == 0


@linux
def test_a_refused_cpu_is_one_warning_and_no_spinner_is_left():
    logs: list[str] = []
    warm = KeepWarm(4096, log=logs.append)
    assert not warm.start()
    assert not warm.running
    assert len(logs) == 1
    assert logs[0].startswith("warning: --keep-warm: the system refused to place the spinner")


def test_an_unsupported_system_is_one_warning():
    logs: list[str] = []
    warm = KeepWarm(1, log=logs.append, platform="win32")
    assert not warm.start() and warm.proc is None
    assert logs == ["warning: --keep-warm: not supported on win32; not used"]


def test_cli_keep_warm_without_a_scoring_cpu_is_one_warning(still_model, still_frames, capsys):
    base = ["run", "--model", str(still_model), "--camera", still_frames, "--keep-warm"]
    assert main([*base, "--scoring-cpu", "off"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3  # every frame scored
    said = [line for line in captured.err.splitlines() if "keep-warm" in line]
    assert said == [
        "warning: --keep-warm needs the scoring thread on a CPU of its own (--scoring-cpu); "
        "not used"
    ]


@linux
@pytest.mark.skipif(
    sys.platform.startswith("linux") and len(os.sched_getaffinity(0)) < 2,
    reason="needs two or more usable CPUs",
)
def test_cli_keep_warm_spins_on_the_scoring_cpu_and_stops_with_the_run(
    still_model, still_frames, capsys
):
    cpu = max(os.sched_getaffinity(0))
    argv = ["run", "--model", str(still_model), "--camera", still_frames, "--scoring-cpu", str(cpu)]
    assert main([*argv, "--keep-warm"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3
    said = [line for line in captured.err.splitlines() if "keep-warm" in line]
    assert len(said) == 1 and said[0].startswith(f"keep-warm: CPU {cpu} kept awake")
    pid = int(re.search(r"pid (\d+)", said[0]).group(1))  # type: ignore[union-attr]
    assert gone(pid)


@linux
@pytest.mark.skipif(
    sys.platform.startswith("linux") and len(os.sched_getaffinity(0)) < 2,
    reason="needs two or more usable CPUs",
)
def test_the_spinner_stops_when_auto_placement_gives_the_cpus_back():
    import argparse

    from defectssft_line.cli import _keep_warm
    from defectssft_line.placement import Placement

    placement = Placement("auto", log=lambda m: None)
    warm = _keep_warm(argparse.Namespace(keep_warm=True), placement)
    assert warm is not None and warm.running
    assert warm.proc is not None
    pid = warm.proc.pid
    try:
        assert placement.on_give_up is not None
        placement.on_give_up()  # what a busy scoring CPU leads to (test_line_placement)
        assert not warm.running and gone(pid)
    finally:
        warm.stop()
