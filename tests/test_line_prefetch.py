"""The camera read ahead of scoring (defectssft_line.prefetch) and the clean stop on a signal
(defectssft_line.stopping): frames keep their order and their own camera metadata, ``limit``
reads no frame too many and releases the camera after the last frame's scoring, a stop hands out every frame already read, and SIGTERM / Ctrl+C
during a camera run end it with every frame read scored and the summary printed. A paced reader
reads the next frame only once the consumer scores the current one (or comes back), prepares
frames on its own thread, and the runner scores what was prepared for the running model.

Waits are bounded; nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from defectssft_line.camera import CameraStream
from defectssft_line.model import LineError
from defectssft_line.prefetch import FramePrefetcher
from tests.helpers import REPO

WAIT = 20.0


def wait_for(cond: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := cond():
            return got
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout} s")


class CountingCapture:
    """Frame k is filled with k; ``meta`` is this capture's last-read metadata, as a GenICam
    opener's ``last_meta`` is: overwritten by each read."""

    def __init__(self, frames: int | None = None) -> None:
        self.frames = frames  # None: endless
        self.reads = 0
        self.read_threads: set[threading.Thread] = set()
        self.released_by: threading.Thread | None = None
        self.meta: dict[str, int] = {}

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.read_threads.add(threading.current_thread())
        if self.frames is not None and self.reads >= self.frames:
            return False, None
        self.reads += 1
        self.meta = {"frame_id": self.reads}
        return True, np.full((4, 4, 3), self.reads % 256, np.uint8)

    def release(self) -> None:
        self.released_by = threading.current_thread()


def stream_of(cap: CountingCapture, **kw: Any) -> CameraStream:
    return CameraStream("clip.avi", opener=lambda source: cap, log=lambda m: None, **kw)


def test_frames_keep_their_order_and_their_own_metadata():
    cap = CountingCapture(frames=6)
    p = FramePrefetcher(stream_of(cap), meta=lambda: cap.meta).start()
    got = []
    for frame in p:
        got.append(frame)
        if len(got) == 1:  # while frame 1 is "scored", the next one is read
            wait_for(lambda: cap.reads >= 2)
            assert cap.meta == {"frame_id": 2}
    assert p.close()
    assert [f.meta["frame_id"] for f in got] == [1, 2, 3, 4, 5, 6]
    assert [int(f.image[0, 0, 0]) for f in got] == [1, 2, 3, 4, 5, 6]
    assert all(a.t_read <= b.t_read for a, b in zip(got, got[1:], strict=False))
    assert threading.current_thread() not in cap.read_threads and len(cap.read_threads) == 1
    assert cap.released_by in cap.read_threads  # released by the thread that read it


class ObservedCapture(CountingCapture):
    """Notes, at each read, how many frames the consumer had said it scores."""

    def __init__(self, frames: int, said: list[int]) -> None:
        super().__init__(frames)
        self.said = said
        self.seen_at_read: list[int] = []

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.seen_at_read.append(len(self.said))
        return super().read()


def test_paced_reader_reads_the_next_frame_once_the_consumer_scores_this_one():
    said: list[int] = []
    cap = ObservedCapture(6, said)
    p = FramePrefetcher(stream_of(cap), meta=lambda: cap.meta, pace=True).start()
    got = []
    for frame in p:
        got.append(int(frame.image[0, 0, 0]))
        said.append(got[-1])  # the consumer is about to run the model on this frame
        p.scoring()
        if len(got) == 1:  # ... and the reader reads frame 2 meanwhile (still read ahead)
            wait_for(lambda: cap.reads >= 2)
    assert p.close()
    assert got == [1, 2, 3, 4, 5, 6]
    # frame k + 1 (read number k + 1, 0-based k) was read only after frame k was being scored
    assert all(seen >= k for k, seen in enumerate(cap.seen_at_read))


def test_paced_reader_goes_on_when_the_consumer_never_says_it_scores():
    cap = CountingCapture(frames=5)
    p = FramePrefetcher(stream_of(cap), meta=lambda: cap.meta, pace=True).start()
    assert [f.meta["frame_id"] for f in p] == [1, 2, 3, 4, 5]  # coming back is enough
    assert p.close() and cap.released_by is not None


def test_prepare_runs_on_the_reading_thread_while_the_consumer_is_busy():
    cap = CountingCapture(frames=4)
    threads: set[threading.Thread] = set()

    def prepare(image: np.ndarray) -> int:
        threads.add(threading.current_thread())
        if int(image[0, 0, 0]) == 3:
            raise ValueError("ROI outside the frame")
        return int(image[0, 0, 0]) * 10

    p = FramePrefetcher(stream_of(cap), prepare=prepare).start()
    it = iter(p)
    next(it)  # frame 1; while it is "scored", frames 2 (queued) and 3 (waiting) are read
    wait_for(lambda: cap.reads >= 3)
    assert [next(it).prepared, next(it).prepared] == [20, None]  # 3: the consumer prepares it
    assert threads == cap.read_threads
    list(it)
    assert p.close()


def test_a_frame_the_consumer_waits_for_is_handed_over_unprepared():
    gate = threading.Event()

    class Gated(CountingCapture):
        def read(self) -> tuple[bool, np.ndarray | None]:
            gate.wait(WAIT)  # the frame "arrives" once the consumer waits, idle
            return super().read()

    cap = Gated(frames=1)
    p = FramePrefetcher(stream_of(cap), prepare=lambda image: "prepared").start()
    got: list[Any] = []
    consumer = threading.Thread(target=lambda: got.extend(p))
    consumer.start()
    wait_for(lambda: p._waiting)
    gate.set()
    consumer.join(WAIT)
    assert [f.prepared for f in got] == [None]  # prepared on the idle consumer's own CPU
    assert p.close()


def test_a_paced_reader_is_ended_by_close_while_it_waits():
    cap = CountingCapture()  # endless
    p = FramePrefetcher(stream_of(cap, reconnect=False), pace=True).start()
    it = iter(p)
    next(it)  # taken, never said to be scored, never came back for the next
    wait_for(lambda: cap.reads >= 1)
    assert p.close() and cap.released_by is not None


def test_limit_reads_no_frame_that_would_not_be_scored():
    cap = CountingCapture()  # endless
    p = FramePrefetcher(stream_of(cap, reconnect=False), limit=3).start()
    assert [int(f.image[0, 0, 0]) for f in p] == [1, 2, 3]
    assert p.close() and cap.reads == 3 and cap.released_by is not None


def test_with_a_limit_the_camera_goes_only_after_the_last_frame_is_scored():
    """Releasing a camera holds the GIL for a long while (a GenICam producer stopping): with
    ``limit`` the reader releases it once the consumer is done with the last frame, not while
    that frame is scored."""
    cap = CountingCapture()  # endless
    p = FramePrefetcher(stream_of(cap, reconnect=False), limit=2, pace=True).start()
    released_while_scoring = []
    for frame in p:
        if int(frame.image[0, 0, 0]) == 2:  # the last: "scored" for a while
            p.scoring()
            time.sleep(0.3)
            released_while_scoring.append(cap.released_by is not None)
    assert p.close() and cap.released_by is not None
    assert released_while_scoring == [False]
    cap = CountingCapture()  # a consumer that stops taking frames: close() still ends it
    p = FramePrefetcher(stream_of(cap, reconnect=False), limit=1, pace=True).start()
    next(iter(p))
    assert p.close() and cap.released_by is not None


def test_stop_hands_out_every_frame_already_read():
    cap = CountingCapture()  # endless
    p = FramePrefetcher(stream_of(cap, reconnect=False), depth=2).start()
    seen = []
    for frame in p:
        seen.append(int(frame.image[0, 0, 0]))
        if len(seen) == 2:
            wait_for(lambda: p.read >= 4)  # two more read ahead (the queue holds two)
            p.stop()
    assert p.close()
    assert seen == list(range(1, p.read + 1)) and p.read >= 4  # none read and dropped


def test_the_streams_error_is_raised_to_the_consumer():
    stream = CameraStream("clip.avi", opener=lambda s: None, reconnect=False, log=lambda m: None)
    p = FramePrefetcher(stream).start()
    with pytest.raises(LineError, match="cannot open camera/video source 'clip.avi'"):
        list(p)
    assert p.close()


def test_close_ends_the_reader_when_the_consumer_gave_up():
    cap = CountingCapture()  # endless; the reader waits for room in the queue
    p = FramePrefetcher(stream_of(cap, reconnect=False)).start()
    with pytest.raises(RuntimeError):
        for _frame in p:
            raise RuntimeError("the scoring loop failed")
    assert p.close() and cap.released_by is not None


def test_stop_cuts_a_reconnect_wait_short():
    stream = CameraStream(
        "0", opener=lambda s: None, first_wait=600, max_wait=600, log=lambda m: None
    )
    p = FramePrefetcher(stream).start()
    wait_for(lambda: stream.failed_attempts >= 1)  # now in the 600 s wait
    p.stop()
    assert list(p) == [] and p.close()


ENDLESS_CAMERA = """
import sys, time
import cv2, numpy as np
class Endless:
    def __init__(self, source): self.n = 0
    def isOpened(self): return True
    def read(self):
        time.sleep(0.02)
        self.n += 1
        print(f"fake: read {self.n}", file=sys.stderr, flush=True)
        return True, np.full((16, 16, 3), self.n % 256, np.uint8)
    def release(self): print("fake: released", file=sys.stderr, flush=True)
cv2.VideoCapture = Endless
from defectssft_line.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_a_camera_run_with_every_frame_read_scored(tmp_path, sig):
    from tests.helpers import fixed_onnx_model

    model = fixed_onnx_model(tmp_path / "m.onnx", [0.0, 0.0, 0.0])
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO / "deploy")}
    proc = subprocess.Popen(
        [sys.executable, "-c", ENDLESS_CAMERA, "run", "--model", str(model)]
        + ["--camera", "0", "--output", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reads = err.count("fake: read ")
    names = [json.loads(line)["file"] for line in out.read_text().splitlines()]
    assert names == [f"frame{i:06d}.png" for i in range(1, reads + 1)], err  # none lost
    assert "fake: released" in err and f"done: NG {reads}" in err
    assert "Traceback" not in err
    # Ctrl+C: exit 0; SIGTERM: the process still ends by SIGTERM (what a service manager sent)
    assert proc.returncode == (0 if sig == signal.SIGINT else -signal.SIGTERM)


# --------------------------------------------------------------------------- prepared ahead


def test_runner_scores_a_frame_prepared_ahead_and_counts_its_preprocessing(tmp_path):
    from defectssft_line.cli import Prepared, Runner
    from defectssft_line.hotswap import ModelHolder
    from defectssft_line.model import LineModel
    from defectssft_line.output import ResultWriter
    from tests.helpers import fixed_onnx_model

    path = fixed_onnx_model(tmp_path / "m.onnx", [0.0, 3.0, 0.0])
    holder = ModelHolder(path, LineModel.load, poll_s=3600)
    writer = ResultWriter("jsonl", tmp_path / "out.jsonl")
    runner = Runner(holder, writer, None)
    model = holder.model
    calls: list[str] = []
    runner.on_scoring = lambda: calls.append("scoring")  # the read-ahead may go on
    inputs = model.classify_inputs
    model.classify_inputs = lambda b: calls.append("inputs") or inputs(b)  # type: ignore[method-assign]
    prepare = model.prepare
    model.prepare = lambda im: calls.append("prepare") or prepare(im)  # type: ignore[method-assign]
    frame = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)

    ahead = runner.prepare_ahead(frame)  # the one preprocessing definition, on the reader
    assert ahead is not None and ahead.model is model
    assert np.array_equal(ahead.batch, model.prepare(frame)[None])
    calls.clear()
    rec = runner.score_frame("f1", frame, {"frame_id": 1}, Prepared(model, ahead.batch, 1000.0))
    assert calls == ["scoring", "inputs"] and rec["verdict"] == "NG"
    assert rec["latency_ms"] >= 1000.0  # its preprocessing counts in the part's own time

    calls.clear()  # prepared for a model that has been swapped out since: prepared again,
    other = Prepared(LineModel.load(path), ahead.batch, 1000.0)  # before the reader goes on
    rec = runner.score_frame("f2", frame, {"frame_id": 2}, other)
    assert calls == ["prepare", "scoring", "inputs"] and rec["verdict"] == "NG"

    calls.clear()  # not prepared ahead (its preprocessing failed there): an ERROR record
    rec = runner.score_frame("f3", np.zeros((0, 5, 3), np.uint8), {"frame_id": 3}, None)
    assert rec["verdict"] == "ERROR" and runner.skipped_frames == 1
    writer.close()
