"""Export's decision checks: an unevaluated model is evaluated first, and an exported file that
would change a verdict against torch is refused with the image named, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defectssft import exportcheck
from defectssft.export import ExportError, export_project_model, read_metadata
from defectssft_line.decision import Thresholds
from tests.helpers import add_model, make_project


def test_find_flips_names_the_images_whose_verdict_changes():
    t = Thresholds(0.5, 0.4, 0.5)
    probs = np.asarray([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.55, 0.45, 0.0]])
    ref = (probs, np.asarray([0.1, 0.5, 0.45]))
    exported = (probs, np.asarray([0.1, 0.4999, 0.45]))  # NG -> UNSURE for the second
    flips = exportcheck.find_flips(
        [7, 8, 9], ["a.png", "b.png", "c.png"], ref, exported, ["ok", "s", "t"], "ok", t
    )
    assert [(f.image_id, f.name, f.reference, f.exported) for f in flips] == [
        (8, "b.png", "NG", "UNSURE")
    ]


def test_export_of_an_unevaluated_model_evaluates_it_first(tmp_path, capsys):
    from defectssft.cli import main

    project = make_project(tmp_path)
    version = add_model(project, seed=3)
    assert "test" not in project.get_model(version)["metrics"]
    assert main(["export", str(project.root), "--model", version]) == 0
    out = capsys.readouterr().out
    assert "was never evaluated: evaluated it first" in out
    op = project.get_model(version)["metrics"]["test"]["operating_point"]
    meta = read_metadata(Path(project.get_model(version)["path"]) / "model.onnx")
    assert meta["thresholds"] == {
        "ng": pytest.approx(op["threshold"]),
        "unsure_low": pytest.approx(op["unsure_low"]),
        "unsure_high": pytest.approx(op["unsure_high"]),
    }
    assert "verdicts: the same as torch on all" in out


def test_an_unevaluable_model_is_refused_in_one_line(tmp_path, capsys):
    from defectssft.cli import main
    from defectssft.project import Project
    from tests.helpers import CLASSES

    project = Project.create(tmp_path / "p", classes=CLASSES, ok_class="ok")
    add_model(project)
    assert main(["export", str(project.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "never evaluated and cannot be" in err and len(err.splitlines()) == 1


def test_a_verdict_flip_refuses_the_export_and_writes_nothing(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    version = add_model(project, seed=4)
    good = export_project_model(project, version)  # evaluated, checked, written
    before = Path(good.path).read_bytes()
    assert good.verdict_check["flips"] == 0 and good.verdict_check["n"] > 0

    real = exportcheck._run_exported

    def nudged(path, images):
        probs, scores = real(path, images)
        t = project.get_model(version)["metrics"]["test"]["operating_point"]
        scores = scores.copy()
        scores[0] = t["unsure_low"] - 1e-6 if scores[0] >= t["unsure_low"] else t["threshold"]
        return probs, scores

    monkeypatch.setattr(exportcheck, "_run_exported", nudged)
    with pytest.raises(ExportError, match=r"changes 1 verdict\(s\).*id \d+\): torch"):
        export_project_model(project, version)
    assert Path(good.path).read_bytes() == before  # the good file stays
    folder = Path(good.path).parent
    assert not [f for f in folder.iterdir() if f.name.endswith(".tmp")]
