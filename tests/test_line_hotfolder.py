"""Hot folder: only whole files are scored, bad files are set aside, restarts score nothing twice;
hot swap: a good new model is picked up, a corrupt one is refused and the old one keeps running."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectssft_line.cli import main
from defectssft_line.hotfolder import LEDGER, HotFolder
from defectssft_line.hotswap import ModelHolder
from defectssft_line.model import LineModel
from tests.helpers import fixed_onnx_model as export_fixed


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def jpeg_bytes(value: int = 128) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((32, 32), value, np.uint8))
    assert ok
    return buf.tobytes()


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "hot"
    d.mkdir()
    return d


def test_partial_write_waits_for_the_whole_file(folder):
    clock = Clock()
    hot = HotFolder(folder, settle_s=1.0, give_up_s=30.0, clock=clock)
    data = jpeg_bytes()
    part = folder / "part.jpg"
    part.write_bytes(data[: len(data) // 2])  # a camera half-way through writing
    assert hot.poll() == []  # first sighting
    clock.t = 5.0
    assert hot.poll() == []  # stable size but no JPEG end marker: not whole
    with open(part, "ab") as f:
        f.write(data[len(data) // 2 :])
    clock.t = 5.5
    assert hot.poll() == []  # changed: settle again
    clock.t = 6.0
    assert hot.poll() == []
    clock.t = 6.6
    assert hot.poll() == [part]


def test_ignores_temp_and_hidden_names_and_gives_up_on_stuck_files(folder):
    clock = Clock()
    hot = HotFolder(folder, settle_s=0.5, give_up_s=10.0, clock=clock)
    (folder / "x.jpg.part").write_bytes(jpeg_bytes())
    (folder / ".hidden.jpg").write_bytes(jpeg_bytes())
    (folder / "stuck.jpg").write_bytes(jpeg_bytes()[:100])
    for t in (0.0, 1.0, 5.0):
        clock.t = t
        assert hot.poll() == []
    clock.t = 11.0
    assert hot.poll() == []
    assert not (folder / "stuck.jpg").exists()
    reason = (folder / "failed" / "stuck.jpg.reason.txt").read_text()
    assert "truncated JPEG" in reason
    assert (folder / "x.jpg.part").exists() and (folder / ".hidden.jpg").exists()


def test_mark_mode_survives_restart(folder):
    (folder / "a.jpg").write_bytes(jpeg_bytes())
    clock = Clock()
    hot = HotFolder(folder, settle_s=0.0, mark=True, clock=clock)
    hot.poll()
    (ready,) = hot.poll()
    assert hot.done(ready) is None and ready.exists()
    assert json.loads((folder / LEDGER).read_text())["name"] == "a.jpg"
    again = HotFolder(folder, settle_s=0.0, mark=True, clock=clock)  # a restart
    again.poll()
    assert again.poll() == []
    (folder / "b.jpg").write_bytes(jpeg_bytes(50))
    again.poll()
    assert [p.name for p in again.poll()] == ["b.jpg"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return export_fixed(tmp_path_factory.mktemp("m") / "model.onnx", [0.0, 0.0, 0.0])


def test_watch_cli_scores_moves_and_survives_bad_files(folder, model_path, tmp_path, capsys):
    cv2.imwrite(str(folder / "good1.png"), np.full((30, 30), 90, np.uint8))
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff junk that is no image \xff\xd9")
    (folder / "empty.png").write_bytes(b"")
    data = jpeg_bytes()
    slow = folder / "slow.jpg"
    slow.write_bytes(data[:200])

    def finish_later() -> None:  # the camera finishes writing while the runtime watches
        time.sleep(0.6)
        with open(slow, "ab") as f:
            f.write(data[200:])

    writer = threading.Thread(target=finish_later)
    writer.start()
    out = tmp_path / "results.jsonl"
    args = [
        "run",
        "--model",
        str(model_path),
        "--watch",
        str(folder),
        "--settle",
        "0.2",
        "--poll",
        "0.05",
        "--idle-exit",
        "1.5",
        "--give-up",
        "30",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    writer.join()
    rows = {r["file"].split("/")[-1]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["good1.png"]["verdict"] == "NG" and rows["slow.jpg"]["verdict"] == "NG"
    assert (
        rows["bad.jpg"]["verdict"] == "ERROR" and "not a readable image" in rows["bad.jpg"]["error"]
    )
    assert "empty.png" not in rows and (folder / "empty.png").exists()  # maybe still being written
    assert sorted(p.name for p in (folder / "processed").iterdir()) == ["good1.png", "slow.jpg"]
    assert sorted(p.name for p in (folder / "failed").iterdir()) == [
        "bad.jpg",
        "bad.jpg.reason.txt",
    ]
    # a restart scores nothing twice; a same-named new file is kept apart, not overwritten;
    # the empty file that never grew is set aside after --give-up seconds
    cv2.imwrite(str(folder / "good1.png"), np.full((30, 30), 10, np.uint8))
    assert main([*args, "--give-up", "0.5"]) == 0
    assert sorted(p.name for p in (folder / "processed").iterdir()) == [
        "good1-1.png",
        "good1.png",
        "slow.jpg",
    ]
    assert len(out.read_text().splitlines()) == 4
    assert "empty file" in (folder / "failed" / "empty.png.reason.txt").read_text()
    assert main(["run", "--model", str(model_path), "--watch", str(tmp_path / "nope")]) == 2
    assert "watch folder not found" in capsys.readouterr().err


def _replace(src_bytes: bytes, dest: Path) -> None:
    tmp = dest.with_name(".incoming.tmp")
    tmp.write_bytes(src_bytes)
    os.replace(tmp, dest)


def test_hot_swap_good_then_corrupt_model(tmp_path):
    live = tmp_path / "production.onnx"
    export_fixed(live, [0.0, 0.0, 0.0], version="v0001")
    v2 = export_fixed(tmp_path / "v2.onnx", [5.0, 0.0, 0.0], version="v0002").read_bytes()
    logs: list[str] = []
    holder = ModelHolder(live, LineModel.load, poll_s=0.0, log=logs.append)
    image = np.full((32, 32, 3), 100, np.uint8)
    assert holder.current().classify([image])[0].verdict == "NG"

    _replace(v2, live)
    model = holder.current()
    assert model.version == "v0002" and holder.swaps == 1
    assert model.classify([image])[0].verdict == "OK"
    assert any("v0001 -> v0002" in m for m in logs)

    _replace(v2[: len(v2) // 3], live)  # a corrupt (truncated) new model
    assert holder.current().version == "v0002"  # the old one keeps running
    assert holder.current().classify([image])[0].verdict == "OK"
    assert any("rejected" in m for m in logs)
    n_logs = len(logs)
    holder.current()
    assert len(logs) == n_logs  # the same bad file is reported once, not on every poll

    export_fixed(tmp_path / "v3.onnx", [0.0, 0.0, 0.0], version="v0003")
    _replace((tmp_path / "v3.onnx").read_bytes(), live)
    assert holder.current().version == "v0003" and holder.swaps == 2
