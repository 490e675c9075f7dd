"""Issue #14 items 4-7: non-UTF-8 names, the line's pixel limit, the hot folder's busy loop and
zero-byte files, and the smaller one-line errors."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from defectssft.check import check_project
from defectssft.cli import main as cli_main
from defectssft.ingest import HotFolder, IngestError, import_paths
from defectssft.project import Project
from defectssft_line import preprocess
from defectssft_line.cli import main as line_main
from defectssft_line.imageheader import header_size
from defectssft_line.names import safe_text
from tests.conftest import noise_image, write_image
from tests.helpers import add_bytes, huge_png

REPO = Path(__file__).resolve().parents[1]
LATIN1 = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name from a Windows share: not valid UTF-8


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def png_bytes(value: int = 0, h: int = 20, w: int = 24) -> bytes:
    ok, buf = cv2.imencode(".png", noise_image(h, w, seed=value))
    assert ok
    return buf.tobytes()


# ----------------------------------------------------------------------- 4. non-UTF-8 names


def test_safe_text_keeps_valid_names_and_escapes_bad_bytes():
    assert safe_text("Prüfteil_ä.png") == "Prüfteil_ä.png"
    assert safe_text(LATIN1) == "caf\\xe9.png"
    assert safe_text("\ud800x") == "\\ud800x"
    assert safe_text("two\nlines\r.png") == "two\\x0alines\\x0d.png"
    safe_text(LATIN1).encode("utf-8")


def test_import_of_a_non_utf8_name_stores_the_whole_batch(project: Project, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(["a.png", LATIN1, "z.png"]):
        (src / name).write_bytes(png_bytes(i))
    assert cli_main(["import", str(project.root), str(src)]) == 0
    assert "imported 3 images" in capsys.readouterr().out
    names = sorted(r.original_name for r in project.query_images())
    assert names == ["a.png", "caf\\xe9.png", "z.png"]
    assert check_project(project).ok
    (src / LATIN1).write_bytes(b"not an image")
    os.utime(src / LATIN1)
    summary = import_paths(project, [src / LATIN1])
    assert summary.quarantined == 1 and summary.problems[0][0].endswith("caf\\xe9.png")
    assert cli_main(["status", str(project.root), "--quarantine"]) == 0


def test_watch_ingests_a_non_utf8_name_and_every_file_after_it(project: Project, tmp_path):
    hot = tmp_path / "hot"
    hot.mkdir()
    for i, name in enumerate([LATIN1, "later1.png", "later2.png"]):
        (hot / name).write_bytes(png_bytes(10 + i))
    clock = Clock()
    folder = HotFolder(project, hot, settle=1.0, clock=clock)
    assert folder.scan_once() == []
    clock.t = 2.0
    results = folder.scan_once()
    assert sorted(r.status for _, r in results) == ["added"] * 3 and folder.errors == 0
    clock.t = 4.0
    assert folder.scan_once() == []  # remembered as seen: never ingested twice


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_line_output_with_a_non_utf8_name_survives_restarts(fmt, tmp_path):
    from tests.helpers import fixed_onnx_model as export_fixed

    model = export_fixed(tmp_path / "m.onnx", [0.0, 0.0, 0.0])
    src = tmp_path / "in"
    src.mkdir()
    (src / LATIN1).write_bytes(png_bytes(1))
    (src / "ok.png").write_bytes(png_bytes(2))
    out = tmp_path / f"out.{fmt}"
    args = ["run", "--model", str(model), "--input", str(src), "--format", fmt, "--output"]
    assert line_main([*args, str(out)]) == 0
    assert line_main([*args, str(out)]) == 0  # the restart appends to the same file
    text = out.read_text(encoding="utf-8")
    if fmt == "csv":
        import csv

        rows = list(csv.DictReader(text.splitlines()))
    else:
        rows = [json.loads(line) for line in text.splitlines()]
    names = sorted(Path(r["file"]).name for r in rows)
    assert names == ["caf\\xe9.png", "caf\\xe9.png", "ok.png", "ok.png"]
    assert {r["verdict"] for r in rows} == {"NG"}


def test_line_watch_fails_a_bad_file_with_a_non_utf8_name(tmp_path):
    from tests.helpers import fixed_onnx_model as export_fixed

    model = export_fixed(tmp_path / "m.onnx", [0.0, 0.0, 0.0])
    hot = tmp_path / "hot"
    hot.mkdir()
    (hot / LATIN1).write_bytes(b"\x89PNG\r\n\x1a\n garbage IEND")
    out = tmp_path / "out.csv"
    rc = line_main(
        [
            "run",
            "--model",
            str(model),
            "--watch",
            str(hot),
            "--settle",
            "0",
            "--poll",
            "0.01",
            "--max-files",
            "1",
            "--format",
            "csv",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    assert (hot / "failed" / LATIN1).exists()
    reason = (hot / "failed" / (LATIN1 + ".reason.txt")).read_text(encoding="utf-8")
    assert "caf\\xe9.png" in reason


# ----------------------------------------------------------------------- 5. pixel limit


def test_header_size_of_every_format(tmp_path):
    for ext in (".png", ".jpg", ".bmp", ".tif"):
        for h, w, ch in ((7, 300, 1), (301, 5, 3), (64, 48, 3)):
            ok, buf = cv2.imencode(ext, noise_image(h, w, channels=ch))
            assert ok
            assert header_size(buf.tobytes()) == (w, h), (ext, h, w)
    assert header_size(huge_png()) == (20000, 20000)
    assert header_size(b"\xff\xd8\xff") is None and header_size(b"BM") is None
    assert header_size(b"II*\x00\xff\xff\xff\xff") is None


def test_line_refuses_a_huge_header_before_decoding(tmp_path, monkeypatch, capsys):
    from tests.helpers import fixed_onnx_model as export_fixed

    model = export_fixed(tmp_path / "m.onnx", [0.0, 0.0, 0.0])
    (tmp_path / "bomb.png").write_bytes(huge_png())
    real = cv2.imdecode

    def imdecode(buf, flags):
        assert len(buf) > 2000, "the 20,000 x 20,000 header must not be decoded"
        return real(buf, flags)

    monkeypatch.setattr(preprocess.cv2, "imdecode", imdecode)
    rc = line_main(["run", "--model", str(model), "--input", str(tmp_path / "bomb.png")])
    rec = json.loads(capsys.readouterr().out.splitlines()[0])
    assert rc == 1 and rec["verdict"] == "ERROR"
    assert "image too large (20000x20000 px, limit 200,000,000 pixels)" in rec["error"]


def test_max_pixels_flag_and_model_metadata(tmp_path, capsys):
    from tests.helpers import fixed_onnx_model as export_fixed
    from tests.helpers import with_metadata

    model = export_fixed(tmp_path / "m.onnx", [0.0, 0.0, 0.0])
    write_image(tmp_path / "img" / "big.png", noise_image(100, 100))
    args = ["run", "--model", str(model), "--input", str(tmp_path / "img")]
    assert line_main([*args, "--max-pixels", "9999"]) == 1
    assert "limit 9,999 pixels" in capsys.readouterr().out
    assert line_main([*args, "--max-pixels", "10000"]) == 0
    capsys.readouterr()
    limited = with_metadata(
        model,
        tmp_path / "limited.onnx",
        lambda m: {**m, "input": {**m["input"], "max_pixels": 5000}},
    )
    assert line_main(["run", "--model", str(limited), "--input", str(tmp_path / "img")]) == 1
    assert "limit 5,000 pixels" in capsys.readouterr().out


# ----------------------------------------------------------------------- 6. watch busy loop


def test_watch_reads_a_truncated_file_once_until_its_grace_ends(project: Project, tmp_path):
    hot = tmp_path / "hot"
    hot.mkdir()
    data = png_bytes(3)
    (hot / "cut.png").write_bytes(data[: len(data) // 2])
    (hot / "empty.png").write_bytes(b"")
    clock = Clock()
    folder = HotFolder(project, hot, settle=0.5, clock=clock)
    reads = {"n": 0}
    real_read = Path.read_bytes

    def counting_read(self):  # type: ignore[no-untyped-def]
        if self.parent == hot:
            reads["n"] += 1
        return real_read(self)

    Path.read_bytes = counting_read  # type: ignore[method-assign]
    try:
        folder.scan_once()
        clock.t = 1.0
        for _ in range(200):  # what file events of our own reads used to trigger
            assert folder.scan_once() == []
        assert reads["n"] == 2  # each file read once at this size
        clock.t = 1.0 + folder.grace
        results = {p.name: r for p, r in folder.scan_once()}
    finally:
        Path.read_bytes = real_read  # type: ignore[method-assign]
    assert results["cut.png"].status == "quarantined"
    assert "truncated PNG" in results["cut.png"].reason
    assert results["empty.png"].status == "quarantined"
    assert "empty file (0 bytes)" in results["empty.png"].reason


def test_reading_a_file_does_not_wake_the_watch_loop():
    import threading

    from watchdog.events import (
        FileClosedEvent,
        FileClosedNoWriteEvent,
        FileCreatedEvent,
        FileModifiedEvent,
        FileMovedEvent,
        FileOpenedEvent,
    )

    from defectssft.ingest import _wake_handler

    wake = threading.Event()
    handler = _wake_handler(wake)
    for quiet in (FileOpenedEvent("/h/a.png"), FileClosedNoWriteEvent("/h/a.png")):
        handler.dispatch(quiet)
        assert not wake.is_set()
    for change in (
        FileCreatedEvent("/h/a.png"),
        FileModifiedEvent("/h/a.png"),
        FileClosedEvent("/h/a.png"),
        FileMovedEvent("/h/a.tmp", "/h/a.png"),
    ):
        handler.dispatch(change)
        assert wake.is_set()
        wake.clear()


def test_a_file_that_fails_is_reported_once_and_the_rest_go_on(
    project: Project, tmp_path, monkeypatch, caplog
):
    hot = tmp_path / "hot"
    hot.mkdir()
    (hot / "a.png").write_bytes(png_bytes(20))
    (hot / "b.png").write_bytes(png_bytes(21))
    real = project.add_prepared

    def flaky(prep, **kw):  # type: ignore[no-untyped-def]
        if prep.name == "a.png":
            raise RuntimeError("database on fire")
        return real(prep, **kw)

    monkeypatch.setattr(project, "add_prepared", flaky)
    clock = Clock()
    folder = HotFolder(project, hot, settle=0.5, clock=clock)
    folder.scan_once()
    clock.t = 1.0
    with caplog.at_level("ERROR"):
        results = folder.scan_once()
        for _ in range(50):
            folder.scan_once()
    assert [p.name for p, _ in results] == ["b.png"]
    assert folder.errors == 1 and caplog.text.count("database on fire") == 1


# ----------------------------------------------------------------------- 7. smaller ones


def test_jpeg_with_trailing_padding_is_stored(project: Project, tmp_path, capfd):
    ok, buf = cv2.imencode(".jpg", noise_image(40, 40, channels=3))
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(buf.tobytes() + b"\0" * 300)
    res = project.add_image(padded)
    assert res.status == "added", res.reason
    assert preprocess.decode_image(padded.read_bytes()).shape == (40, 40, 3)
    cut = buf.tobytes()[: len(buf) // 2]
    assert "truncated JPEG" in (preprocess.check_complete(cut) or "")
    capfd.readouterr()
    (tmp_path / "bad.bmp").write_bytes(b"BM" + b"\0" * 60)
    assert project.add_image(tmp_path / "bad.bmp").status == "quarantined"
    assert "imdecode_" not in capfd.readouterr().err


def test_same_bytes_under_two_labels_is_reported_as_a_conflict(project: Project, tmp_path, capsys):
    data = png_bytes(30)
    for label in ("scratch", "dent"):
        (tmp_path / "src" / label).mkdir(parents=True)
        (tmp_path / "src" / label / "x.png").write_bytes(data)
    rc = cli_main(["import", str(project.root), str(tmp_path / "src"), "--label-from", "folder"])
    out = capsys.readouterr().out
    assert rc == 0 and "label conflict" in out and "'dent'" in out and "'scratch'" in out
    summary = import_paths(project, [tmp_path / "src"], label_from="folder")
    assert len(summary.conflicts) == 1


def test_invalid_folder_label_stops_the_batch_before_anything_is_stored(
    project: Project, tmp_path, capsys
):
    for i, label in enumerate(["scratch", "bad label!", "dent"]):
        (tmp_path / "src" / label).mkdir(parents=True)
        (tmp_path / "src" / label / f"{i}.png").write_bytes(png_bytes(40 + i))
    with pytest.raises(IngestError, match="nothing was imported"):
        import_paths(project, [tmp_path / "src"], label_from="folder")
    assert project.count_images() == 0
    # The CLI's import plans first: the unusable folder name maps to a valid new class, said in
    # its output, and the whole batch is imported (`--dry-run` shows the mapping beforehand).
    assert (
        cli_main(["import", str(project.root), str(tmp_path / "src"), "--label-from", "folder"])
        == 0
    )
    out = capsys.readouterr().out
    assert "new classes: bad_label" in out
    assert project.count_images() == 3 and "bad_label" in project.class_names()


def test_export_to_an_existing_folder_is_refused_before_exporting(tmp_path, capsys):
    from tests.helpers import add_model, make_project

    project = make_project(tmp_path, per_class=2, unlabeled=0)
    add_model(project)
    rc = cli_main(["export", str(project.root), "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "is a folder" in err and "\n" not in err
    assert not list(project.models_dir.rglob("*.onnx"))


def test_status_into_a_closed_pipe_is_quiet(project: Project):
    read, write = os.pipe()
    os.close(read)  # `| head` that has already gone
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "deploy")])}
    proc = subprocess.run(
        [sys.executable, "-m", "defectssft", "status", str(project.root)],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=120,
    )
    os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert proc.returncode == 0


def test_capture_from_a_file_that_is_not_a_video_is_an_error(project: Project, tmp_path, capsys):
    (tmp_path / "notavideo.jpg").write_bytes(b"hello")
    rc = cli_main(["capture", str(project.root), "--source", str(tmp_path / "notavideo.jpg")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err
    assert project.count_images() == 0


def test_no_labels_error_names_real_commands_and_leaves_no_run_folder(project: Project, capsys):
    from defectssft.training.data import DataError, TrainData

    with pytest.raises(DataError) as e:
        TrainData(classes=["ok", "dent"], labeled=[]).check(need_unlabeled=False)
    assert "defectssft label" not in str(e.value) and "defectssft-gui" in str(e.value)
    add_bytes(project, png_bytes(50), "u.png")
    assert cli_main(["train", str(project.root), "--set", "model.name=test_resnet"]) == 2
    assert "no labeled training images" in capsys.readouterr().err
    assert list(project.runs_dir.iterdir()) == []


def test_a_header_beyond_opencvs_own_limits_is_a_one_line_error(project: Project, tmp_path):
    """Found by the fuzz suite: OpenCV raises (not returns None) for a width over 2^20."""
    ok, buf = cv2.imencode(".bmp", noise_image(1, 4))
    data = bytearray(buf.tobytes())
    data[18:22] = struct.pack("<i", 0x01000001)
    with pytest.raises(preprocess.ImageDecodeError, match="not a readable image"):
        preprocess.decode_image(bytes(data), "wide.bmp", max_pixels=200_000_000)
    res = add_bytes(project, bytes(data), "wide.bmp")
    assert res.status == "quarantined" and "\n" not in res.reason
