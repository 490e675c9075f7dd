"""The line runtime's camera mode: reconnect with a capped backoff, give up after
--max-reconnects, skip bad frames, play a video file once (or loop it), abandon an open/read
that hangs in the driver (--read-timeout), stop promptly on Ctrl+C / SIGTERM. A fake
cv2.VideoCapture stands in for the camera; sleeps are recorded, not slept; a hung read blocks
on a threading.Event and the read timeout is a quarter of a second.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectssft_line import camera
from defectssft_line.camera import CameraStream, backoff, source_kind
from defectssft_line.cli import build_parser, main
from tests.helpers import REPO
from tests.helpers import fixed_onnx_model as export_fixed

GOOD = np.full((32, 32, 3), 90, np.uint8)
BAD = np.zeros((32, 32, 3), np.float64)  # preprocessing refuses this pixel type


class FakeCapture:
    """One connection: ``frames`` then a dropped stream (read -> (False, None))."""

    def __init__(self, frames: list[np.ndarray] | None) -> None:
        self.frames = list(frames or [])
        self.opened = frames is not None
        self.released = False
        self.released_by: threading.Thread | None = None
        self.read_threads: list[threading.Thread] = []

    def isOpened(self) -> bool:  # noqa: N802 - the cv2 name
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.read_threads.append(threading.current_thread())
        if self.released or not self.frames:
            return False, None
        return True, self.frames.pop(0)

    def release(self) -> None:
        self.released = True
        self.released_by = threading.current_thread()


class FakeCamera:
    """Replaces cv2.VideoCapture: each open takes the next script entry (None: fails to open;
    past the end of the script every open fails)."""

    def __init__(self, script: list[list[np.ndarray] | None]) -> None:
        self.script = list(script)
        self.opened: list[FakeCapture] = []
        self.sources: list[object] = []

    def __call__(self, source: object) -> FakeCapture:
        self.sources.append(source)
        cap = FakeCapture(self.script.pop(0) if self.script else None)
        self.opened.append(cap)
        return cap


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return export_fixed(tmp_path_factory.mktemp("m") / "model.onnx", [0.0, 0.0, 0.0])


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(camera, "wait", waited.append)
    return waited


def run_cli(args: list[str], capsys) -> tuple[int, list[dict], str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_backoff_and_source_kinds():
    assert [backoff(i, 0.5, 5.0) for i in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert [
        source_kind(s)
        for s in (
            "0",
            "/dev/video2",
            "rtsp://cam/1",
            "http://x/mjpg",
            "v4l2src ! appsink",
            "line.avi",
            "f_%04d.png",
        )
    ] == ["device", "device", "stream", "stream", "stream", "file", "file"]


def test_camera_reconnects_keeps_inspecting_and_gives_up(model_path, sleeps, monkeypatch, capsys):
    fake = FakeCamera([None, None, [GOOD] * 3, [GOOD, BAD, GOOD]])  # then every open fails
    monkeypatch.setattr(cv2, "VideoCapture", fake)
    rc, rows, err = run_cli(
        ["run", "--model", str(model_path), "--camera", "0", "--max-reconnects", "3"], capsys
    )
    # Two failed opens, 3 frames, drop, 3 frames (one bad), drop, 3 failed reopens: give up.
    assert rc == 1, err
    assert [r["file"] for r in rows] == [f"frame{i:06d}.png" for i in range(1, 7)]
    assert [r["verdict"] for r in rows] == ["NG"] * 4 + ["ERROR", "NG"]
    assert "unsupported pixel type" in rows[4]["error"]
    assert len(fake.opened) == 7 and fake.sources == [0] * 7
    assert all(c.released for c in fake.opened)
    assert sleeps == [0.5, 1.0, 0.5, 0.5, 1.0, 2.0]
    lines = err.splitlines()
    assert "warning: camera 0: cannot open; reconnecting in 0.5 s (attempt 1/3)" in lines
    assert "warning: camera 0: cannot open; reconnecting in 1 s (attempt 2/3)" in lines
    assert "camera 0: reconnected after 2 attempt(s)" in lines
    assert (
        sum(
            "no frame (stream ended or camera dropped); reconnecting in 0.5 s (attempt 1/3)" in line
            for line in lines
        )
        == 2
    )
    assert "camera 0: reconnected after 1 attempt(s)" in lines
    assert any(
        line.startswith("warning: frame skipped (1 so far): frame000005.png") for line in lines
    )
    assert (
        "error: camera 0: cannot open; giving up after 3 reconnect attempt(s) without a "
        "frame (--max-reconnects 3)" in lines
    )
    assert "camera 0: 2 reconnect(s), 5 failed attempt(s)" in lines
    assert lines[-1] == "done: ERROR 1, NG 5"


def test_backoff_is_capped_and_max_frames_ends_the_run(model_path, sleeps, monkeypatch, capsys):
    fake = FakeCamera([None] * 5 + [[GOOD] * 10])
    monkeypatch.setattr(cv2, "VideoCapture", fake)
    rc, rows, err = run_cli(
        [
            "run",
            "--model",
            str(model_path),
            "--camera",
            "rtsp://cam/1",
            "--reconnect-wait",
            "0.25",
            "--reconnect-max-wait",
            "1",
            "--max-frames",
            "4",
        ],
        capsys,
    )
    assert rc == 0, err
    assert len(rows) == 4 and {r["verdict"] for r in rows} == {"NG"}
    assert sleeps == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert "(attempt 5)" in err and "reconnected after 5 attempt(s)" in err
    assert fake.opened[-1].released  # the capture is released when --max-frames is reached


def test_no_reconnect_ends_at_the_first_drop(model_path, sleeps, monkeypatch, capsys):
    fake = FakeCamera([[GOOD] * 2, [GOOD] * 2])
    monkeypatch.setattr(cv2, "VideoCapture", fake)
    rc, rows, err = run_cli(
        ["run", "--model", str(model_path), "--camera", "0", "--no-reconnect"], capsys
    )
    assert rc == 0 and len(rows) == 2 and sleeps == [] and len(fake.opened) == 1
    assert "not reconnecting (--no-reconnect)" in err
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera([None]))
    assert main(["run", "--model", str(model_path), "--camera", "0", "--no-reconnect"]) == 2
    assert "cannot open camera/video source '0'" in capsys.readouterr().err


@pytest.mark.parametrize("read_timeout", [None, 5.0], ids=["direct", "threaded"])
def test_read_and_open_exceptions_count_as_failed_attempts(sleeps, read_timeout):
    class Boom(FakeCapture):
        def read(self) -> tuple[bool, np.ndarray | None]:
            raise cv2.error("driver fell over")

    opens = iter([RuntimeError("usb reset"), Boom([GOOD]), FakeCapture([GOOD, GOOD])])

    def opener(source: str) -> FakeCapture | None:
        item = next(opens, None)
        if isinstance(item, Exception):
            raise item
        return item

    log: list[str] = []
    stream = CameraStream(
        "0",
        opener=opener,
        sleep=sleeps.append,
        log=log.append,
        max_attempts=2,
        read_timeout=read_timeout,
    )
    assert len(list(stream.frames())) == 2
    # open raises, read raises, 2 frames, drop, 2 failed reopens: give up (max_attempts=2)
    assert stream.reconnects == 1 and stream.failed_attempts == 4 and stream.gave_up
    assert sleeps == [0.5, 1.0, 0.5, 1.0]
    assert any("cannot open (RuntimeError: usb reset)" in line for line in log)
    assert any("read failed (error: driver fell over)" in line for line in log)
    assert stream.timeouts == 0 and stream.hung_reads == 0


# ------------------------------------------------------------- reads that hang in the driver

TINY = 0.25  # --read-timeout here: short, yet generous for a busy test machine


class HangingCapture(FakeCapture):
    """Gives ``frames``, then its next read blocks until ``gate`` is set (a driver stuck on a
    dead stream) and then reports no frame. ``release_seen`` is set when it is released."""

    def __init__(self, frames: list[np.ndarray] | None = None) -> None:
        super().__init__(frames or [])
        self.gate = threading.Event()
        self.hanging = threading.Event()
        self.release_seen = threading.Event()

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.frames:
            return super().read()
        self.read_threads.append(threading.current_thread())
        self.hanging.set()
        self.gate.wait()
        return False, None

    def release(self) -> None:
        assert self.gate.is_set(), "released while its read is still inside the driver"
        super().release()
        self.release_seen.set()


@pytest.fixture
def gates() -> Iterator[list[threading.Event]]:
    """Events that unblock hung fakes; all are set at teardown so no thread is left behind."""
    events: list[threading.Event] = []
    yield events
    for event in events:
        event.set()


def _until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_hung_read_is_abandoned_and_the_stream_reconnects(sleeps, gates):
    hung = HangingCapture([GOOD, GOOD])  # two frames, then the stream dies inside read()
    gates.append(hung.gate)
    opens = iter([hung, FakeCapture([GOOD] * 5)])
    log: list[str] = []
    stream = CameraStream(
        "rtsp://cam/1",
        opener=lambda s: next(opens),
        sleep=sleeps.append,
        log=log.append,
        read_timeout=TINY,
    )
    with closing(stream.frames()) as frames:
        got = list(islice(frames, 5))
    assert len(got) == 5  # frames go on from the reopened capture
    assert stream.reconnects == 1 and stream.failed_attempts == 0 and sleeps == [0.5]
    assert stream.timeouts == 1 and stream.hung_reads == 1
    assert log == [
        "warning: camera rtsp://cam/1: no frame within 0.25 s (read hung in the "
        "driver); abandoning it and reconnecting in 0.5 s (attempt 1)",
        "camera rtsp://cam/1: reconnected after 1 attempt(s)",
    ]
    assert not hung.released  # nobody released it while its read was inside the driver
    assert threading.main_thread() not in hung.read_threads
    hung.gate.set()  # the driver finally returns: the abandoned thread releases the capture
    assert hung.release_seen.wait(10)
    assert hung.released_by is not threading.main_thread()
    assert _until(lambda: stream.hung_reads == 0)


def test_hung_open_is_abandoned_like_a_failed_open(sleeps, gates):
    gate = threading.Event()
    gates.append(gate)
    late = FakeCapture([GOOD])  # what the hung open returns when it finally does
    good = FakeCapture([GOOD, GOOD])
    calls = iter(["hang", "ok"])

    def opener(source: str) -> FakeCapture:
        if next(calls) == "hang":
            gate.wait()
            return late
        return good

    log: list[str] = []
    stream = CameraStream(
        "rtsp://cam/1",
        opener=opener,
        sleep=sleeps.append,
        log=log.append,
        read_timeout=TINY,
        max_attempts=3,
    )
    with closing(stream.frames()) as frames:
        assert len(list(islice(frames, 2))) == 2
    assert stream.failed_attempts == 1 and stream.reconnects == 1 and sleeps == [0.5]
    assert stream.timeouts == 1 and stream.hung_reads == 1
    assert log[0] == (
        "warning: camera rtsp://cam/1: cannot open within 0.25 s (open hung in "
        "the driver); abandoning it and reconnecting in 0.5 s (attempt 1/3)"
    )
    assert good.released and not late.released
    gate.set()  # the open returns after all: its capture is released by that thread
    assert _until(lambda: late.released)
    assert late.released_by is not threading.main_thread() and late.read_threads == []
    assert _until(lambda: stream.hung_reads == 0)


def test_hung_open_without_reconnect_is_an_error(gates):
    gate = threading.Event()
    gates.append(gate)
    stream = CameraStream(
        "rtsp://cam/1", opener=lambda s: gate.wait(), reconnect=False, read_timeout=TINY
    )
    with pytest.raises(camera.LineError, match="within 0.25 s .open hung in the driver"):
        next(stream.frames())
    assert stream.hung_reads == 1


def test_every_read_hanging_gives_up_after_max_attempts(sleeps, gates):
    caps: list[HangingCapture] = []

    def opener(source: str) -> HangingCapture:
        caps.append(HangingCapture())
        gates.append(caps[-1].gate)
        return caps[-1]

    log: list[str] = []
    stream = CameraStream(
        "0", opener=opener, sleep=sleeps.append, log=log.append, read_timeout=TINY, max_attempts=2
    )
    assert list(stream.frames()) == []  # returns: the hung reads do not hang the caller
    assert stream.gave_up and stream.failed_attempts == 3 and stream.reconnects == 0
    assert stream.timeouts == 3 and stream.hung_reads == 3 and sleeps == [0.5, 1.0]
    assert log[-1] == (
        "error: camera 0: no frame within 0.25 s (read hung in the driver); "
        "giving up after 2 reconnect attempt(s) without a frame "
        "(--max-reconnects 2)"
    )
    assert len(caps) == 3 and not any(c.released for c in caps)
    for c in caps:
        c.gate.set()
    assert all(c.release_seen.wait(10) for c in caps)
    assert _until(lambda: stream.hung_reads == 0)


def test_timeout_off_reads_on_the_calling_thread_and_on_reads_on_another(sleeps):
    here = threading.current_thread()
    for source, timeout, threaded in [
        ("0", "auto", False),
        ("line.avi", "auto", False),
        ("rtsp://cam/1", 0, False),
        ("rtsp://cam/1", None, False),
        ("rtsp://cam/1", "auto", True),
        ("0", 5.0, True),
    ]:
        openers: list[threading.Thread] = []
        cap = FakeCapture([GOOD, GOOD])

        def opener(
            s: str, cap: FakeCapture = cap, openers: list[threading.Thread] = openers
        ) -> FakeCapture:
            openers.append(threading.current_thread())
            return cap

        stream = CameraStream(
            source,
            opener=opener,
            sleep=sleeps.append,
            reconnect=False,
            log=lambda msg: None,
            read_timeout=timeout,
        )
        assert len(list(stream.frames())) == 2, source
        threads = openers + cap.read_threads
        assert len(threads) == 4  # one open, three reads (the last one: end of the frames)
        if threaded:
            assert here not in threads and all(t.daemon for t in threads), (source, timeout)
        else:
            assert set(threads) == {here}, (source, timeout)


def test_default_read_timeout_by_source_kind():
    assert camera.DEFAULT_STREAM_READ_TIMEOUT == 30.0
    for source, expected in [
        ("rtsp://cam/1", 30.0),
        ("http://x/mjpg", 30.0),
        ("v4l2src ! appsink", 30.0),
        ("0", None),
        ("/dev/video0", None),
        ("line.avi", None),
        ("f_%04d.png", None),
    ]:
        assert CameraStream(source).read_timeout == expected, source
    assert CameraStream("rtsp://cam/1", read_timeout=0).read_timeout is None
    assert CameraStream("rtsp://cam/1", read_timeout=None).read_timeout is None
    assert CameraStream("0", read_timeout=2).read_timeout == 2.0
    with pytest.raises(ValueError, match="read_timeout"):
        CameraStream("0", read_timeout=-1)


def test_read_timeout_option(model_path, sleeps, monkeypatch, capsys, gates):
    def parse(*extra: str) -> float | None:
        args = build_parser().parse_args(["run", "--model", "m.onnx", "--camera", "0", *extra])
        return args.read_timeout

    assert parse() is None and parse("--read-timeout", "0") == 0.0
    assert parse("--read-timeout", "2.5") == 2.5
    for bad in ("-1", "soon"):
        with pytest.raises(SystemExit) as e:
            parse("--read-timeout", bad)
        assert e.value.code == 2
    assert "--read-timeout: must be >= 0, got -1.0" in capsys.readouterr().err

    # 0 turns the default 30 s of a stream off: each read is called directly, on the one
    # thread that reads the camera ahead of scoring (prefetch.py), never on the scoring thread
    fake = FakeCamera([[GOOD] * 2])
    monkeypatch.setattr(cv2, "VideoCapture", fake)
    rc, rows, err = run_cli(
        [
            "run",
            "--model",
            str(model_path),
            "--camera",
            "rtsp://cam/1",
            "--read-timeout",
            "0",
            "--max-frames",
            "2",
        ],
        capsys,
    )
    assert rc == 0 and len(rows) == 2, err
    assert {t.name for t in fake.opened[0].read_threads} == {"read-ahead rtsp://cam/1"}
    assert "read timeout" not in err

    fake = FakeCamera([[GOOD] * 2])
    monkeypatch.setattr(cv2, "VideoCapture", fake)
    rc, rows, err = run_cli(
        ["run", "--model", str(model_path), "--camera", "rtsp://cam/1", "--max-frames", "2"], capsys
    )
    assert rc == 0 and len(rows) == 2, err
    threads = fake.opened[0].read_threads  # a helper thread per read, which may be abandoned
    assert len(set(threads)) == 2 and {t.name for t in threads} == {"camera rtsp://cam/1"}
    assert "(stream, reconnects when lost, read timeout 30 s;" in err

    # a positive value applies to a device too: the hung read is abandoned and the run goes on
    hung = HangingCapture([GOOD])
    gates.append(hung.gate)
    caps = iter([hung, FakeCapture([GOOD] * 3)])
    monkeypatch.setattr(cv2, "VideoCapture", lambda source: next(caps))
    rc, rows, err = run_cli(
        [
            "run",
            "--model",
            str(model_path),
            "--camera",
            "0",
            "--read-timeout",
            "0.25",
            "--max-frames",
            "3",
        ],
        capsys,
    )
    assert rc == 0 and len(rows) == 3, err
    lines = err.splitlines()
    assert (
        "warning: camera 0: no frame within 0.25 s (read hung in the driver); abandoning it "
        "and reconnecting in 0.5 s (attempt 1)" in lines
    )
    assert (
        "camera 0: 1 reconnect(s), 0 failed attempt(s), 1 hung open/read(s) abandoned, "
        "1 still hung in the driver" in lines
    )
    assert not hung.released
    hung.gate.set()
    assert hung.release_seen.wait(10)


def write_video(path: Path, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    return path


def test_video_file_plays_once_and_loops_with_reconnect(model_path, sleeps, tmp_path, capsys):
    video = write_video(tmp_path / "line.avi", 5)
    rc, rows, err = run_cli(["run", "--model", str(model_path), "--camera", str(video)], capsys)
    assert rc == 0, err
    assert [r["file"] for r in rows] == [f"frame{i:06d}.png" for i in range(1, 6)]
    assert {r["verdict"] for r in rows} == {"NG"}
    assert sleeps == [] and "reconnect" not in err.replace("ends when the source ends", "")
    assert "warning" not in err and err.splitlines()[-1] == "done: NG 5"

    rc, rows, err = run_cli(
        [
            "run",
            "--model",
            str(model_path),
            "--camera",
            str(video),
            "--reconnect",
            "--max-frames",
            "12",
        ],
        capsys,
    )
    assert rc == 0, err
    assert len(rows) == 12 and sleeps == [0.5, 0.5]
    assert err.count(f"camera {video}: end of video; reopening in 0.5 s") == 2
    assert "warning" not in err and "reconnected" not in err


STUCK_CAMERA = """
import sys
import cv2
class Never:
    def __init__(self, source): pass
    def isOpened(self): return False
    def release(self): pass
cv2.VideoCapture = Never
from defectssft_line.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _stderr_lines(proc: subprocess.Popen) -> queue.Queue[str | None]:
    """Lines of the child's stderr as they come (None at EOF), read on a helper thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str | None], text: str, timeout: float = 60.0) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not seen; stderr so far:\n{seen}")


def _rest(lines: queue.Queue[str | None]) -> str:
    out = ""
    while (line := lines.get(timeout=20)) is not None:
        out += line
    return out


HUNG_READ_CAMERA = """
import sys
import threading
import cv2
class Hangs:
    def __init__(self, source): pass
    def isOpened(self): return True
    def read(self):
        print("fake: read hangs", file=sys.stderr, flush=True)
        threading.Event().wait()
    def release(self): raise AssertionError("released while its read hangs")
cv2.VideoCapture = Hangs
from defectssft_line.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("stuck", ["backoff", "hung-read"])
def test_signal_stops_the_run_promptly(model_path, sig, stuck):
    """In a reconnect wait, and while the main thread waits on a read hung in the driver."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "deploy")}
    script, extra, waiting_for = {
        "backoff": (
            STUCK_CAMERA,
            ["--camera", "0", "--reconnect-wait", "60"],
            "reconnecting in 60 s (attempt 1)",
        ),
        "hung-read": (
            HUNG_READ_CAMERA,
            ["--camera", "rtsp://cam/1", "--read-timeout", "600"],
            "fake: read hangs",
        ),
    }[stuck]
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "run", "--model", str(model_path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines = _stderr_lines(proc)
    try:
        _wait_for_line(lines, waiting_for)
        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=45)
        # well before the 60 s reconnect wait / 600 s read timeout would end it; generous
        # enough for a machine busy with other work
        assert time.monotonic() - t0 < 40
        rest = _rest(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        assert rc == 0 and "done: no images" in rest  # Ctrl+C: clean summary
        if stuck == "hung-read":
            assert (
                "camera rtsp://cam/1: 0 reconnect(s), 0 failed attempt(s), 1 still hung in "
                "the driver"
                in rest
                and "Traceback" not in rest
            )
    else:
        assert rc == -signal.SIGTERM  # SIGTERM: the default, immediate end
