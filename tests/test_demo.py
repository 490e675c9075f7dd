"""`defectssft demo --tiny` end to end: project, training, evaluation, promotion, line runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectssft.cli import main

pytestmark = pytest.mark.slow  # the whole demo workflow: `make test-fast` skips these


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
    assert (
        main(
            [
                "demo",
                "--workdir",
                str(tmp_path / "x"),
                "--tiny",
                "--samples",
                str(tmp_path / "nowhere"),
            ]
        )
        == 2
    )
    assert "samples not found" in capsys.readouterr().err


def test_demo_kolektor_tiny_ok_ng(tmp_path, capsys):
    """--data kolektor: an OK class, OK/NG metrics in the report, OK/NG verdicts on the line."""
    import yaml

    from defectssft.project import Project
    from defectssft_line.model import LineModel

    workdir = tmp_path / "okng"
    assert main(["demo", "--data", "kolektor", "--workdir", str(workdir), "--tiny"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "Where things are"):
        assert step in out
    assert "64x32 px" in out and "OK/NG: NG threshold" in out and "not what the model can do" in out
    summary = json.loads((workdir / "demo-summary.json").read_text())
    assert summary["data"] == "kolektor" and summary["ok_class"] == "good"

    project = Project.open(summary["project"])
    assert project.ok_class == "good"
    status = project.status()
    assert status["production_model"] == summary["model_version"]
    assert status["labeled"] == 7 and status["unlabeled"] == 4  # 4 good + 3 defective labeled
    data = project.training_data(assign=False)
    assert sorted(c for _, c in data.test) == [0, 1]  # one good, one defective
    assert sorted(c for _, c in data.val) == [0, 1]  # so the threshold is calibrated on val
    record = project.get_model(summary["model_version"])
    cfg = yaml.safe_load((Path(record["path"]) / "config.yaml").read_text())
    assert cfg["train"]["optimizer"] == "sgd"  # `auto` resolved for an OK-class project

    test = record["metrics"]["test"]
    assert test["inspection"]["n_defective"] == 1 and test["inspection"]["n_good"] == 1
    assert test["operating_point"]["chosen_on"] == "val"
    report = Path(summary["report"]).read_text()
    assert (
        "ROC AUC" in report and "escapes" in report and "overkill" in report and "at 95 %" in report
    )

    line = LineModel.load(summary["onnx"])
    assert line.ok_class == "good" and (line.height, line.width) == (64, 32)
    assert abs(line.thresholds.ng - summary["threshold"]) < 1e-6  # the calibrated threshold

    rows = [json.loads(x) for x in Path(summary["line_results"]).read_text().splitlines()]
    held = sorted(p.name for p in (workdir / "line-input").iterdir())
    assert sorted(Path(r["file"]).name for r in rows) == held and len(held) == 5
    assert {r["verdict"] for r in rows} <= {"OK", "NG"}  # no UNSURE band by default
    assert all((r["verdict"] == "OK") == (r["class"] == "good") for r in rows)
    for r in rows:
        assert f"{Path(r['file']).name:<26} {r['verdict']:<7} score" in out
    assert sum(summary["line_verdicts"].values()) == 5
    assert summary["line_correct"] + summary["line_escapes"] + summary["line_overkill"] == 5

    assert (
        main(
            [
                "demo",
                "--data",
                "kolektor",
                "--workdir",
                str(tmp_path / "x"),
                "--tiny",
                "--samples",
                str(tmp_path / "nowhere"),
            ]
        )
        == 2
    )
    assert "samples not found" in capsys.readouterr().err
