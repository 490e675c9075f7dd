"""The line runtime's camera mode: reconnect with a capped backoff, give up after
--max-reconnects, skip bad frames, play a video file once (or loop it), stop promptly on
Ctrl+C / SIGTERM. A fake cv2.VideoCapture stands in for the camera; sleeps are recorded, not
slept.
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
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectssft_line import camera
from defectssft_line.camera import CameraStream, backoff, source_kind
from defectssft_line.cli import main
from tests.test_line_runtime import REPO, export_fixed

GOOD = np.full((32, 32, 3), 90, np.uint8)
BAD = np.zeros((32, 32, 3), np.float64)  # preprocessing refuses this pixel type


class FakeCapture:
    """One connection: ``frames`` then a dropped stream (read -> (False, None))."""

    def __init__(self, frames: list[np.ndarray] | None) -> None:
        self.frames = list(frames or [])
        self.opened = frames is not None
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 - the cv2 name
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.released or not self.frames:
            return False, None
        return True, self.frames.pop(0)

    def release(self) -> None:
        self.released = True


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
    assert [source_kind(s) for s in ("0", "/dev/video2", "rtsp://cam/1", "http://x/mjpg",
                                     "v4l2src ! appsink", "line.avi", "f_%04d.png")] == \
        ["device", "device", "stream", "stream", "stream", "file", "file"]


def test_camera_reconnects_keeps_inspecting_and_gives_up(model_path, sleeps, monkeypatch, capsys):
    fake = FakeCamera([None, None, [GOOD] * 3, [GOOD, BAD, GOOD]])  # then every open fails
    monkeypatch.setattr(cv2, "VideoCapture", fake)
    rc, rows, err = run_cli(["run", "--model", str(model_path), "--camera", "0",
                             "--max-reconnects", "3"], capsys)
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
    assert sum("no frame (stream ended or camera dropped); reconnecting in 0.5 s (attempt 1/3)"
               in line for line in lines) == 2
    assert "camera 0: reconnected after 1 attempt(s)" in lines
    assert any(line.startswith("warning: frame skipped (1 so far): frame000005.png")
               for line in lines)
    assert "error: camera 0: cannot open; giving up after 3 reconnect attempt(s) without a " \
           "frame (--max-reconnects 3)" in lines
    assert "camera 0: 2 reconnect(s), 5 failed attempt(s)" in lines
    assert lines[-1] == "done: ERROR 1, NG 5"


def test_backoff_is_capped_and_max_frames_ends_the_run(model_path, sleeps, monkeypatch, capsys):
    fake = FakeCamera([None] * 5 + [[GOOD] * 10])
    monkeypatch.setattr(cv2, "VideoCapture", fake)
    rc, rows, err = run_cli(["run", "--model", str(model_path), "--camera", "rtsp://cam/1",
                             "--reconnect-wait", "0.25", "--reconnect-max-wait", "1",
                             "--max-frames", "4"], capsys)
    assert rc == 0, err
    assert len(rows) == 4 and {r["verdict"] for r in rows} == {"NG"}
    assert sleeps == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert "(attempt 5)" in err and "reconnected after 5 attempt(s)" in err
    assert fake.opened[-1].released  # the capture is released when --max-frames is reached


def test_no_reconnect_ends_at_the_first_drop(model_path, sleeps, monkeypatch, capsys):
    fake = FakeCamera([[GOOD] * 2, [GOOD] * 2])
    monkeypatch.setattr(cv2, "VideoCapture", fake)
    rc, rows, err = run_cli(["run", "--model", str(model_path), "--camera", "0",
                             "--no-reconnect"], capsys)
    assert rc == 0 and len(rows) == 2 and sleeps == [] and len(fake.opened) == 1
    assert "not reconnecting (--no-reconnect)" in err
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera([None]))
    assert main(["run", "--model", str(model_path), "--camera", "0", "--no-reconnect"]) == 2
    assert "cannot open camera/video source '0'" in capsys.readouterr().err


def test_read_and_open_exceptions_count_as_failed_attempts(sleeps):
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
    stream = CameraStream("0", opener=opener, sleep=sleeps.append, log=log.append,
                          max_attempts=2)
    assert len(list(stream.frames())) == 2
    # open raises, read raises, 2 frames, drop, 2 failed reopens: give up (max_attempts=2)
    assert stream.reconnects == 1 and stream.failed_attempts == 4 and stream.gave_up
    assert sleeps == [0.5, 1.0, 0.5, 1.0]
    assert any("cannot open (RuntimeError: usb reset)" in line for line in log)
    assert any("read failed (error: driver fell over)" in line for line in log)


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

    rc, rows, err = run_cli(["run", "--model", str(model_path), "--camera", str(video),
                             "--reconnect", "--max-frames", "12"], capsys)
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


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_backoff_wait_promptly(model_path, sig):
    env = {**os.environ, "PYTHONPATH": str(REPO / "deploy")}
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_CAMERA, "run", "--model", str(model_path), "--camera", "0",
         "--reconnect-wait", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines = _stderr_lines(proc)
    try:
        _wait_for_line(lines, "reconnecting in 60 s (attempt 1)")
        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=20)
        assert time.monotonic() - t0 < 10
        rest = _rest(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        assert rc == 0 and "done: no images" in rest  # Ctrl+C: clean summary
    else:
        assert rc == -signal.SIGTERM  # SIGTERM: the default, immediate end
