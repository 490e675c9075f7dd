"""`defectssft train --promote-if-better`: the nightly path from training to the line's model file."""

from __future__ import annotations

import json
from pathlib import Path

from defectssft.cli import main as cli_main
from defectssft.export import read_metadata
from defectssft.project import Project
from tests.helpers import cli_sets, tiny_project


def _project_with_test_split(root: Path) -> Project:
    return tiny_project(root, unlabeled=6, test_fraction=0.25, seed=500)


def test_train_promote_if_better_publishes_first_model_then_compares(tmp_path, capsys):
    p = _project_with_test_split(tmp_path)
    args = ["train", str(p.root), "--promote-if-better", *cli_sets(2)]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "model v0001" in out and "promoted: v0001 is the first production model" in out
    production = p.root / "exports" / "production.onnx"
    assert p.production_model() == "v0001"
    assert read_metadata(production)["model_version"] == "v0001"

    assert cli_main([*args, "--json-progress"]) == 0
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    promotion = [e for e in events if e["event"] == "promotion"]
    assert len(promotion) == 1 and promotion[0]["version"] == "v0002"
    if promotion[0]["promoted"]:
        assert p.production_model() == "v0002"
    else:  # refused: yesterday's model and file stay
        assert "v0001 stays production" in promotion[0]["reason"]
        assert p.production_model() == "v0001"
        assert read_metadata(production)["model_version"] == "v0001"


def test_promote_if_better_without_test_split_keeps_the_model(tmp_path, capsys):
    p = _project_with_test_split(tmp_path)
    p._con().execute("UPDATE images SET split='train' WHERE split='test'")
    assert cli_main(["train", str(p.root), "--promote-if-better", *cli_sets(2)]) == 2
    captured = capsys.readouterr()
    assert "model v0001" in captured.out
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert p.production_model() is None and (p.root / "models" / "v0001" / "model.pt").is_file()
