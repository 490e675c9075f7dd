"""`defectssft demo --tiny` end to end: project, training, evaluation, promotion, line runtime."""

from __future__ import annotations

import json
from pathlib import Path

from defectssft.cli import main


def test_demo_tiny_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--tiny"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "Where things are"):
        assert step in out
    summary = json.loads((workdir / "demo-summary.json").read_text())
    assert Path(summary["report"]).is_file()
    assert Path(summary["onnx"]).is_file()
    rows = [json.loads(line) for line in Path(summary["line_results"]).read_text().splitlines()]
    assert summary["line_total"] == len(rows) == 12  # 2 held-back images per NEU class
    assert all(r["verdict"] in ("NG", "UNSURE") for r in rows)  # NEU has no OK class

    from defectssft.project import Project

    project = Project.open(summary["project"])
    status = project.status()
    assert status["production_model"] == summary["model_version"]
    assert status["labeled"] == 30 and status["unlabeled"] == 18

    # a second run refuses to overwrite without --force, then replaces its own folder
    assert main(["demo", "--workdir", str(workdir), "--tiny"]) == 2
    assert "already exists" in capsys.readouterr().err
    other = tmp_path / "not-a-demo"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    assert main(["demo", "--workdir", str(other), "--tiny", "--force"]) == 2
    assert "not a demo folder" in capsys.readouterr().err
    assert (other / "precious.txt").exists()
    assert main(["demo", "--workdir", str(tmp_path / "x"), "--tiny",
                 "--samples", str(tmp_path / "nowhere")]) == 2
    assert "samples not found" in capsys.readouterr().err
