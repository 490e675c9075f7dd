"""Archive and ``--send-unsure`` image writes off the scoring thread (``imagequeue.py``): in order,
bounded (a full queue drops the oldest archive image and says so, never a send-unsure frame,
never a verdict), nothing lost when the line stops, a failing write is a warning."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectssft_line.archive import Archive
from defectssft_line.cli import main
from defectssft_line.imagequeue import THREAD_NAME, ImageQueue
from defectssft_line.lineio import LineOutputs
from tests.helpers import fixed_onnx_model


def gated(q: ImageQueue) -> tuple[threading.Event, threading.Event]:
    """Occupy the writer with a job that waits for the returned gate."""
    gate, running = threading.Event(), threading.Event()

    def blocker() -> None:
        running.set()
        gate.wait(30)

    q.put(blocker)
    assert running.wait(30)
    return gate, running


def test_full_queue_drops_the_oldest_archive_image_and_says_so():
    logs: list[str] = []
    done: list[str] = []
    q = ImageQueue(max_jobs=3, log=logs.append).start()
    gate, _ = gated(q)
    q.put(lambda: done.append("unsure"), droppable=False)
    for i in range(4):  # a1 pushes nothing out; a2 pushes out a0, a3 pushes out a1
        q.put(lambda i=i: done.append(f"a{i}"))
    assert q.dropped == 2 and q.pending() == 4  # the running job and three queued
    assert len(logs) == 1 and "dropped the oldest queued archive image, 1 so far" in logs[0]
    assert "verdicts are not affected" in logs[0]
    gate.set()
    q.close()  # writes what is queued
    assert done == ["unsure", "a2", "a3"]
    assert q.stats() == {"written": 4, "dropped": 2, "failed": 0}


def test_send_unsure_frames_are_never_dropped_the_scorer_waits_for_room():
    done: list[int] = []
    q = ImageQueue(max_jobs=2, log=lambda m: None).start()
    gate, _ = gated(q)
    q.put(lambda: done.append(0), droppable=False)
    q.put(lambda: done.append(1), droppable=False)
    putting = threading.Thread(target=q.put, args=(lambda: done.append(2), False))
    putting.start()
    putting.join(0.3)
    assert putting.is_alive()  # waits: nothing it may drop
    gate.set()
    putting.join(30)
    q.close()
    assert done == [0, 1, 2] and q.dropped == 0


def test_a_failing_write_is_a_warning_and_the_rest_goes_on():
    logs: list[str] = []
    done: list[int] = []
    q = ImageQueue(log=logs.append).start()

    def fail() -> None:
        raise ValueError("cannot encode")

    q.put(fail)
    q.put(lambda: done.append(1))
    q.close()
    assert done == [1] and q.failed == 1
    assert logs == ["warning: image write failed (ValueError: cannot encode)"]
    q.put(lambda: done.append(2))  # after close: written at once, on the caller's thread
    assert done == [1, 2]


def test_the_archive_writes_on_the_writer_thread_after_the_verdict(tmp_path):
    archive = Archive(tmp_path / "arch", 10**9, log=lambda m: None)
    q = ImageQueue(log=lambda m: None)
    outputs = LineOutputs(archive=archive, images=q, log=lambda m: None)
    outputs.start()
    gate, _ = gated(q)
    threads: list[str] = []
    write = archive.write

    def noted(*a, **k):
        threads.append(threading.current_thread().name)
        return write(*a, **k)

    archive.write = noted  # type: ignore[method-assign]
    frame = np.full((20, 20, 3), 7, np.uint8)
    rec = outputs.handle({"file": "p1.png", "verdict": "NG"}, frame=frame, camera=True)
    assert rec["part_id"] and archive.saved == 0  # handled; the image still queued
    rec["verdict"] = "changed later"  # the queued record is a copy
    outputs.handle({"file": "p2.png", "verdict": "OK"}, frame=frame, camera=True)  # not kept
    gate.set()
    outputs.close()
    assert threads == [THREAD_NAME] and archive.saved == 1
    (kept,) = (tmp_path / "arch").rglob("*.png")
    assert kept.parent.name == "NG" and '"verdict": "NG"' in Path(f"{kept}.json").read_text()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return fixed_onnx_model(tmp_path_factory.mktemp("m") / "m.onnx", [0.0, 0.0, 0.0])


def test_cli_camera_run_loses_no_image_on_stop(model, tmp_path, capsys):
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"f_{i:03d}.png"), np.full((40, 40, 3), 40 * i, np.uint8))
    args = ["run", "--model", str(model), "--camera", str(tmp_path / "f_%03d.png")]
    args += ["--unsure-low", "0.1", "--unsure-high", "0.9"]  # every frame UNSURE (score 2/3)
    args += ["--send-unsure", str(tmp_path / "unsure"), "--archive", str(tmp_path / "arch")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert [line.count('"UNSURE"') for line in out.splitlines()] == [1] * 5
    assert len(list((tmp_path / "unsure").glob("*.png"))) == 5
    assert len(list((tmp_path / "arch").rglob("*.png"))) == 5
    assert "5 saved" in err and "image writer" not in err  # nothing dropped, nothing to say
    # a queue of one behind a writer that is slower than the line: archive images go,
    # send-unsure frames and verdicts do not
    assert main([*args, "--image-queue", "1", "--archive", str(tmp_path / "arch1")]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 5 and len(list((tmp_path / "unsure").glob("*.png"))) == 10
    kept = len(list((tmp_path / "arch1").rglob("*.png")))
    assert f"{kept} saved" in err and (kept == 5 or f"{5 - kept} dropped (queue full)" in err)
