"""``gc`` never deletes what a concurrent import commits; ``check`` finds what is missing."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import defectssft.check as check_mod
import defectssft.project as store
from defectssft.check import check_project, collect_garbage
from defectssft.cli import main as cli_main
from defectssft.ingest import import_paths
from defectssft.project import Project


def _age(path: Path, seconds: float = 7200) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_gc_during_an_import_keeps_the_file_the_import_is_committing(
    project: Project, make_image, monkeypatch
):
    """gc runs (grace 0) after the importer wrote the file and before its row commits."""
    src = make_image("a.png")
    gc_waiting = threading.Event()
    real_lock = check_mod.store_lock

    def lock_and_signal(root, exclusive=False):  # gc is about to take the exclusive lock
        gc_waiting.set()
        return real_lock(root, exclusive)

    monkeypatch.setattr(check_mod, "store_lock", lock_and_signal)
    reports = []
    real_write = store._atomic_write

    def write_then_gc(dest: Path, data: bytes) -> None:
        real_write(dest, data)
        _age(dest)  # even a file that looks old is safe while its import holds the lock
        other = Project.open(project.root)
        t = threading.Thread(target=lambda: reports.append(collect_garbage(other, 0)))
        t.start()
        assert gc_waiting.wait(30)
        threads.append(t)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(store, "_atomic_write", write_then_gc)
    res = project.add_image(src)
    threads[0].join(30)
    assert res.status == "added" and project.get_image(res.image_id).path.is_file()
    assert reports[0].orphan_images == []
    assert check_project(project).ok


def test_gc_keeps_recent_unknown_files_and_removes_old_ones(project: Project, make_image):
    res = project.add_image(make_image("keep.png"))
    fresh = project.images_dir / "ab" / ("ab" * 32 + ".png")
    fresh.parent.mkdir(exist_ok=True)
    fresh.write_bytes(b"x")
    in_flight = project.images_dir / "ab" / ".x.png.123.tmp"
    in_flight.write_bytes(b"y")
    report = collect_garbage(project)
    assert report.removed == 0 and report.kept_recent == 2 and fresh.exists()
    assert in_flight.exists()
    _age(fresh)
    _age(in_flight)
    assert project.gc() == 2
    assert not fresh.exists() and not in_flight.exists()
    assert project.get_image(res.image_id).path.exists()


def test_gc_removes_temp_files_of_killed_model_writes_and_exports_and_says_so(
    project: Project, capsys
):
    tmp_model = project.models_dir / "v0001" / ".model.pt.abc123.tmp"
    tmp_model.parent.mkdir(parents=True)
    tmp_model.write_bytes(b"half a model")
    tmp_export = project.exports_dir / ".production.onnx.xyz.tmp"
    tmp_export.write_bytes(b"half an export")
    empty = project.models_dir / "v0002"
    empty.mkdir()
    for p in (tmp_model, tmp_export, empty):
        _age(p)
    assert cli_main(["gc", str(project.root)]) == 0
    out = capsys.readouterr().out
    assert "2 temporary file(s)" in out and "1 empty model folder(s)" in out
    assert not tmp_model.exists() and not tmp_export.exists() and not empty.exists()
    assert cli_main(["gc", str(project.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 0


def test_check_finds_missing_and_changed_files_and_reimport_restores_them(
    project: Project, make_image, tmp_path: Path, capsys
):
    folder = tmp_path / "batch"
    paths = [make_image(f"{i}.png", folder=folder) for i in range(4)]
    import_paths(project, [folder])
    assert cli_main(["check", str(project.root)]) == 0
    assert "ok" in capsys.readouterr().out
    rows = project.query_images()
    rows[0].path.unlink()
    data = bytearray(rows[1].path.read_bytes())
    data[-20] ^= 0xFF
    rows[1].path.write_bytes(bytes(data))
    assert cli_main(["status", str(project.root)]) == 0
    assert "1 image(s) have no stored file" in capsys.readouterr().out
    assert cli_main(["check", str(project.root)]) == 1
    out = capsys.readouterr().out
    assert f"ids {rows[0].id}" in out and "changed on disk" in out
    assert cli_main(["check", str(project.root), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["missing_files"] == [rows[0].id] and rep["bad_hashes"] == [rows[1].id]
    summary = import_paths(project, paths)
    assert summary.duplicates == 4
    assert rows[0].path.is_file() and check_project(project).ok


def test_check_reports_a_registered_model_without_its_file(tmp_path):
    from tests.helpers import add_model, make_project

    project = make_project(tmp_path, per_class=2, unlabeled=0)
    version = add_model(project)
    assert check_project(project).ok
    (project.models_dir / version / "model.pt").unlink()
    rep = check_project(project)
    assert not rep.ok and f"model {version}" in rep.problems[0]


def test_check_reports_a_missing_or_stale_production_export(tmp_path):
    from defectssft.promote import force_promote, production_path
    from tests.helpers import add_model, make_project

    project = make_project(tmp_path, per_class=3, unlabeled=0)
    v1 = add_model(project)
    assert force_promote(project, v1)[0]
    assert check_project(project).ok
    old = production_path(project).read_bytes()
    v2 = add_model(project, seed=1)
    assert force_promote(project, v2)[0]
    production_path(project).write_bytes(old)
    rep = check_project(project)
    assert not rep.ok and "holds model" in rep.problems[0]
    production_path(project).unlink()
    assert "production model" in check_project(project).problems[0]


def test_gc_with_no_grace_in_a_loop_during_a_cli_import_loses_nothing(
    project: Project, tmp_path: Path
):
    """The issue's reproduction, made harsher: gc --grace 0 over and over while another process
    imports. Only the store lock protects the files here."""
    import subprocess
    import sys

    from tests.conftest import noise_image, write_image

    repo = Path(__file__).resolve().parents[1]
    folder = tmp_path / "batch"
    for i in range(120):
        write_image(folder / f"{i:03d}.png", noise_image(32, 32, seed=7000 + i))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "deploy")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "defectssft", "import", str(project.root), str(folder), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rounds = 0
    while proc.poll() is None or rounds == 0:
        collect_garbage(project, grace_s=0)
        rounds += 1
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["added"] == 120
    report = check_project(project)
    assert report.ok and report.images == 120, report.problems
