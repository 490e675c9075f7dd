"""Import rules, bad batches, interrupted imports, concurrent writers, hot folders, cameras."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectssft.cli import main as cli
from defectssft.ingest import HotFolder, IngestError, LabelRule, capture, import_paths
from defectssft.project import Project

from .conftest import noise_image, write_image

# ---------------------------------------------------------------- import and label rules


def test_import_neu_samples_with_filename_rule(tmp_path: Path, samples: Path) -> None:
    p = Project.create(tmp_path / "p")
    s = import_paths(p, [samples / "neu-det"], label_from=r"filename:^(.*)_\d+\.jpg$")
    assert (s.added, s.labeled, s.quarantined) == (60, 60, 0)
    assert sorted(s.new_classes) == sorted(
        ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    )
    assert all(n == 10 for n in p.status()["by_class"].values())
    again = import_paths(p, [samples / "neu-det"], label_from=r"filename:^(.*)_\d+\.jpg$")
    assert (again.added, again.duplicates) == (0, 60)


def test_import_folder_rule_and_glob(tmp_path: Path, samples: Path) -> None:
    p = Project.create(tmp_path / "p", classes=["good", "defective"], ok_class="good")
    s = import_paths(p, [str(samples / "kolektorsdd" / "*" / "*.jpg")], label_from="folder")
    assert s.added == 16 and s.new_classes == []
    assert p.status()["by_class"] == {"good": 10, "defective": 6}
    rec = p.query_images(label="defective")[0]
    assert rec.height > 1000 and rec.channels == 1


def test_import_yolo_rule(tmp_path: Path) -> None:
    root = tmp_path / "kolektor"
    for i, text in enumerate(["", "0 0.1 0.1 0.2 0.2 0.3 0.1\n", ""]):
        write_image(root / "images" / "train" / f"{i:03d}.png", noise_image(seed=i))
        lbl = root / "labels" / "train" / f"{i:03d}.txt"
        lbl.parent.mkdir(parents=True, exist_ok=True)
        lbl.write_text(text)
    write_image(root / "images" / "train" / "999.png", noise_image(seed=9))  # no label file
    p = Project.create(tmp_path / "p", classes=["ok", "ng"], ok_class="ok")
    s = import_paths(p, [root / "images"], label_from="yolo")
    assert s.added == 4 and s.labeled == 3
    assert p.status()["by_class"] == {"ok": 2, "ng": 1}
    assert p.status()["unlabeled"] == 1


def test_label_rule_errors() -> None:
    with pytest.raises(IngestError, match="unknown --label-from"):
        LabelRule.parse("magic")
    with pytest.raises(IngestError, match="needs a \\(group\\)"):
        LabelRule.parse("filename:abc")
    with pytest.raises(IngestError, match="bad regex"):
        LabelRule.parse("filename:(")


def test_empty_and_missing_paths(tmp_path: Path) -> None:
    p = Project.create(tmp_path / "p")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no image files found"):
        import_paths(p, [tmp_path / "empty"])
    with pytest.raises(IngestError, match="no such file or folder"):
        import_paths(p, [tmp_path / "nope"])
    with pytest.raises(IngestError, match="no file matches"):
        import_paths(p, [str(tmp_path / "*.png")])


def test_batch_goes_on_past_bad_files(tmp_path: Path, make_image) -> None:
    folder = tmp_path / "batch"
    for i in range(5):
        make_image(f"good_{i}.png", folder=folder)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_bytes(b"not an image at all")
    good = (folder / "good_0.png").read_bytes()
    (folder / "half.png").write_bytes(good[: len(good) // 2])
    p = Project.create(tmp_path / "p")
    s = import_paths(p, [folder])
    assert (s.added, s.quarantined) == (5, 3)
    assert {Path(path).name for path, _ in s.problems} == {"zero.jpg", "text.png", "half.png"}
    assert len(p.quarantined()) == 3


# ---------------------------------------------------------------- interrupted import


def test_killed_import_leaves_a_consistent_project(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    for i in range(400):
        write_image(folder / f"{i:04d}.png", noise_image(64, 64, seed=i))
    proj = tmp_path / "p"
    Project.create(proj, classes=["ok"]).close()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "defectssft",
            "import",
            str(proj),
            str(folder),
            "--label-from",
            "filename:^(\\d)",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = proj / "project.db"
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the import is part-way through, then kill -9
        try:
            con = sqlite3.connect(db, timeout=5)
            n = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            con.close()
        except sqlite3.OperationalError:
            n = 0
        if n >= 20 or proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    p = Project.open(proj)
    assert p._con().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = p.query_images()
    assert 0 < len(rows) < 400, "the import should have been killed part-way"
    for r in rows:  # every row has its whole file and its label event
        assert r.path.is_file() and len(r.path.read_bytes()) > 0
        assert r.label is not None and len(p.label_history(r.id)) == 1
    s = import_paths(p, [folder], label_from="filename:^(\\d)")
    assert s.added + s.duplicates == 400
    assert p.count_images() == 400
    p.gc()


# ---------------------------------------------------------------- concurrent writers


def _ingest_worker(proj: str, folder: str) -> None:
    p = Project.open(proj)
    import_paths(p, [folder], workers=1)


def _label_worker(proj: str, ids: list[int], rounds: int) -> None:
    p = Project.open(proj)
    for r in range(rounds):
        for image_id in ids:
            p.set_label(image_id, "ok" if (image_id + r) % 2 else "ng", who=f"w{os.getpid()}")


def test_concurrent_ingest_and_labeling_lose_nothing(tmp_path: Path) -> None:
    proj = tmp_path / "p"
    p = Project.create(proj, classes=["ok", "ng"], ok_class="ok")
    for i in range(30):
        p.add_image(write_image(tmp_path / "first" / f"{i}.png", noise_image(seed=i)))
    ids = p.image_ids()
    for i in range(150):
        write_image(tmp_path / "stream" / f"{i}.png", noise_image(seed=1000 + i))
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_ingest_worker, args=(str(proj), str(tmp_path / "stream"))),
        ctx.Process(target=_label_worker, args=(str(proj), ids, 5)),
        ctx.Process(target=_label_worker, args=(str(proj), ids[::-1], 5)),
    ]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(120)
        assert pr.exitcode == 0
    assert p.count_images() == 180
    events = p._con().execute("SELECT COUNT(*) FROM label_events").fetchone()[0]
    history_total = sum(len(p.label_history(i)) for i in ids)
    assert events == history_total
    for image_id in ids:  # the current label is the last event in the history
        hist = p.label_history(image_id)
        assert hist and p.get_image(image_id).label == hist[-1].label


# ---------------------------------------------------------------- hot folder


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_hot_folder_waits_for_whole_files(tmp_path: Path, make_image) -> None:
    hot = tmp_path / "hot"
    hot.mkdir()
    p = Project.create(tmp_path / "p")
    clock = FakeClock()
    hf = HotFolder(p, hot, settle=1.0, clock=clock)
    data = make_image("src.jpg", h=80, w=80).read_bytes()
    target = hot / "cam_0001.jpg"
    target.write_bytes(data[: len(data) // 3])  # the camera is still writing
    assert hf.scan_once() == []
    clock.t += 2
    assert hf.scan_once() == []  # looks truncated: wait for the writer, don't quarantine yet
    with open(target, "ab") as f:
        f.write(data[len(data) // 3 :])
    assert hf.scan_once() == []  # changed: settle again
    clock.t += 0.5
    assert hf.scan_once() == []
    clock.t += 1.0
    [(path, res)] = hf.scan_once()
    assert path == target and res.status == "added"
    assert p.get_image(res.image_id).path.read_bytes() == data
    assert p.quarantined() == []


def test_hot_folder_ignores_temp_names_until_renamed(tmp_path: Path, make_image) -> None:
    hot = tmp_path / "hot"
    hot.mkdir()
    p = Project.create(tmp_path / "p")
    clock = FakeClock()
    hf = HotFolder(p, hot, settle=0.5, clock=clock)
    src = make_image("a.png")
    tmp = hot / "a.png.part"
    tmp.write_bytes(src.read_bytes())
    (hot / ".hidden.png").write_bytes(src.read_bytes())
    for _ in range(3):
        clock.t += 1
        assert hf.scan_once() == []
    tmp.rename(hot / "a.png")
    hf.scan_once()
    clock.t += 1
    assert [r.status for _, r in hf.scan_once()] == ["added"]


def test_hot_folder_restart_does_not_ingest_twice(tmp_path: Path, make_image) -> None:
    hot = tmp_path / "hot"
    for i in range(3):
        make_image(f"{i}.png", folder=hot)
    p = Project.create(tmp_path / "p")
    for _ in range(2):  # two processes' lifetimes, the second after a restart
        clock = FakeClock()
        hf = HotFolder(p, hot, settle=0.5, clock=clock, after="keep")
        hf.scan_once()
        clock.t += 1
        hf.scan_once()
    assert p.count_images() == 3
    rows = p._con().execute("SELECT COUNT(*) FROM seen_files").fetchone()[0]
    assert rows == 3
    assert hf.counts == {"added": 0, "duplicate": 0, "quarantined": 0}  # nothing re-read


def test_hot_folder_survives_bad_files_and_moves(tmp_path: Path, make_image) -> None:
    hot = tmp_path / "hot"
    make_image("good.png", folder=hot)
    (hot / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage IEND")
    (hot / "empty.jpg").write_bytes(b"")
    (hot / "notes.txt").write_text("not for us")
    p = Project.create(tmp_path / "p")
    clock = FakeClock()
    hf = HotFolder(p, hot, settle=0.5, clock=clock, after="move")
    hf.scan_once()
    clock.t += 1
    results = {path.name: r.status for path, r in hf.scan_once()}
    assert results == {"good.png": "added", "broken.png": "quarantined"}
    assert (hot / "empty.jpg").exists()  # still zero bytes: a camera may not have written yet
    assert (hot / "notes.txt").exists()
    moved = {f.name for f in hot.rglob("*") if f.is_file() and f.parent != hot}
    assert "good.png" in moved and "broken.png" in moved and "broken.png.reason.txt" in moved
    reason = next(hot.rglob("broken.png.reason.txt")).read_text()
    assert "not a readable image" in reason


def test_hot_folder_run_loop_with_real_events(tmp_path: Path, make_image) -> None:
    import threading

    hot = tmp_path / "hot"
    hot.mkdir()
    p = Project.create(tmp_path / "p")
    got = threading.Event()
    hf = HotFolder(p, hot, settle=0.2, on_result=lambda path, res: got.set())
    stop = threading.Event()
    t = threading.Thread(target=hf.run, kwargs={"stop": stop, "poll": 0.1})
    t.start()
    try:
        make_image("live.png", folder=hot)
        assert got.wait(20)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    assert p.count_images() == 1


def test_hot_folder_bad_options(tmp_path: Path) -> None:
    p = Project.create(tmp_path / "p")
    with pytest.raises(IngestError, match="no such folder"):
        HotFolder(p, tmp_path / "missing")
    with pytest.raises(IngestError, match="--after"):
        HotFolder(p, tmp_path, after="shred")


# ---------------------------------------------------------------- camera / video


def test_capture_from_video_file(tmp_path: Path) -> None:
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for i in range(10):
        frame = np.full((48, 64, 3), i * 20, np.uint8)
        cv2.putText(frame, str(i), (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    p = Project.create(tmp_path / "p")
    counts = capture(p, str(video), every=3)
    assert counts["frames"] == 10 and counts["added"] == 4  # frames 1, 4, 7, 10
    recs = p.query_images()
    assert all(r.source == f"camera:{video}" and r.capture_time for r in recs)
    assert (recs[0].width, recs[0].height, recs[0].channels) == (64, 48, 3)
    with pytest.raises(IngestError, match="no such video file"):
        capture(p, str(tmp_path / "nope.mp4"))


# ---------------------------------------------------------------- CLI


def test_cli_init_import_status(tmp_path: Path, samples: Path, capsys) -> None:
    proj = str(tmp_path / "p")
    assert cli(["init", proj, "--classes", "good,defective", "--ok-class", "good"]) == 0
    assert "created project" in capsys.readouterr().out
    assert (
        cli(
            [
                "import",
                proj,
                str(samples / "kolektorsdd"),
                "--label-from",
                "folder",
                "--split",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["added"] == 16 and out["split"]["train"] >= 10
    assert cli(["status", proj, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["by_class"] == {"good": 10, "defective": 6} and st["ok_class"] == "good"
    assert cli(["status", proj]) == 0
    assert "defective" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert cli(["status", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    cli(["init", str(tmp_path / "p")])
    capsys.readouterr()
    assert (
        cli(["import", str(tmp_path / "p"), str(tmp_path / "none"), "--label-from", "bogus"]) == 2
    )
    assert "unknown --label-from" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", ["init", "import", "status", "classes", "split", "watch", "capture", "gc"]
)
def test_every_command_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli([command, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out
