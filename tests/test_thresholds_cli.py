"""``defectssft thresholds``: show a version's operating point and its rates, check and store a new
one, and the next ``defectssft export`` writes it (re-export without retraining)."""

from __future__ import annotations

import json

import pytest

from defectssft.cli import main
from defectssft.export import read_metadata
from defectssft.metrics import operating_point
from defectssft.operating import load_operating_data
from tests.helpers import add_model, make_project


@pytest.fixture
def scored(tmp_path):
    """A synthetic project with a tiny model that scored its val, test and unlabeled images."""
    project = make_project(tmp_path, per_class=6, unlabeled=4)
    version = add_model(project)
    assert main(["thresholds", str(project.root), "--score", "--json"]) == 0
    return project, version


def test_show_set_clear_and_export_uses_the_saved_point(scored, capsys, tmp_path):
    project, version = scored
    root = str(project.root)
    capsys.readouterr()
    data = load_operating_data(project, version)
    split = project.training_data(assign=False)
    assert len(data.labeled) == len(split.val_ids) + len(split.test_ids)  # --score covered them
    assert data.stream.size == len(split.unlabeled_ids) and not data.missing

    assert main(["thresholds", root]) == 0
    out = capsys.readouterr().out
    assert f"model {version}" in out and "all labeled" in out and "stream" in out

    assert (
        main(["thresholds", root, "--ng", "0.6", "--unsure-low", "0.4", "--unsure-high", "0.8"])
        == 0
    )
    out = capsys.readouterr().out
    assert "saved for" in out and "NG threshold 0.6, UNSURE band [0.4, 0.8)" in out
    point = operating_point(project.get_model(version)["metrics"])
    assert point == {"ng": 0.6, "unsure_low": 0.4, "unsure_high": 0.8}

    # A band edge alone changes that edge; the table follows.
    assert main(["thresholds", root, "--unsure-high", "0.9", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["rates"]["thresholds"] == {"ng": 0.6, "unsure_low": 0.4, "unsure_high": 0.9}
    assert shown["saved"]["source"] == "cli"
    assert sum(shown["histogram"]["ok"]) + sum(shown["histogram"]["defect"]) == len(data.labeled)

    # The next export writes the saved point; a second one after a change, without retraining.
    out1 = tmp_path / "a.onnx"
    capsys.readouterr()
    assert main(["export", root, "--model", version, "-o", str(out1)]) == 0
    assert read_metadata(out1)["thresholds"] == {"ng": 0.6, "unsure_low": 0.4, "unsure_high": 0.9}
    # export says what the file it wrote does to the stream: the table's counts, with intervals
    said = capsys.readouterr().out
    table = json.loads((main(["thresholds", root, "--json"]), capsys.readouterr().out)[1])["rates"][
        "stream"
    ]
    n, k_unsure = table["n"], table["unsure"]["k"]
    k_ng = table["review"]["k"] - k_unsure
    assert (
        f"predicted on the unlabeled stream ({n} scored): to review (UNSURE) {k_unsure} / {n}"
        in said
    )
    assert f"rejected (NG) {k_ng} / {n}" in said and "at 95 %" in said
    assert main(["thresholds", root, "--ng", "0.3"]) == 0  # --ng alone: no band
    out2 = tmp_path / "b.onnx"
    assert main(["export", root, "--model", version, "-o", str(out2)]) == 0
    assert read_metadata(out2)["thresholds"] == {"ng": 0.3, "unsure_low": 0.3, "unsure_high": 0.3}

    project.set_production(version)  # the line runs exports/production.onnx: say how to update it
    assert main(["thresholds", root, "--ng", "0.35"]) == 0
    assert f"promote {root} {version} --force" in capsys.readouterr().out

    assert main(["thresholds", root, "--clear"]) == 0
    assert "cleared" in capsys.readouterr().out
    assert operating_point(project.get_model(version)["metrics"]) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ng", "1.5"], "--ng must be in [0, 1], got 1.5"),
        (["--unsure-low", "-0.1"], "--unsure-low must be in [0, 1]"),
        (["--ng", "0.5", "--unsure-low", "0.6"], "thresholds must satisfy"),
        (["--ng", "0.5", "--unsure-high", "0.4"], "thresholds must satisfy"),
        (["--ng", "0.5", "--clear"], "--clear cannot be combined"),
        (["--model", "v0042"], "no model version"),
    ],
)
def test_bad_values_are_one_line_and_nothing_is_saved(scored, capsys, args, message):
    project, version = scored
    assert main(["thresholds", str(project.root), "--ng", "0.45"]) == 0
    capsys.readouterr()
    assert main(["thresholds", str(project.root), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert operating_point(project.get_model(version)["metrics"])["ng"] == 0.45


def test_not_a_number_and_no_ok_class(tmp_path, capsys):
    from defectssft.project import Project

    with pytest.raises(SystemExit):
        main(["thresholds", str(tmp_path), "--ng", "high"])
    assert "not a number: 'high'" in capsys.readouterr().err
    p = Project.create(tmp_path / "p", classes=["scratch", "dent"])
    version, _ = p.new_model_dir()
    p.register_model(version, {"classes": ["scratch", "dent"]}, {})
    assert main(["thresholds", str(p.root)]) == 2
    assert "no OK class" in capsys.readouterr().err
