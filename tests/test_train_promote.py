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


def test_train_promote_if_better_needs_evidence_then_compares(tmp_path, capsys):
    p = _project_with_test_split(tmp_path)
    args = ["train", str(p.root), "--promote-if-better", *cli_sets(2)]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    # 2 defective + 2 good test parts cannot show that a first model beats chance
    assert "model v0001" in out and "not promoted: v0001 not promoted, nothing is production" in out
    assert "Fisher exact p =" in out or "nothing shows it beats chance" in out
    production = p.root / "exports" / "production.onnx"
    assert p.production_model() is None and not production.exists()
    assert cli_main(["promote", str(p.root), "v0001", "--force"]) == 0
    assert "forced; overrides" in capsys.readouterr().out
    assert read_metadata(production)["model_version"] == "v0001"

    assert cli_main([*args, "--json-progress"]) == 0
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    promotion = [e for e in events if e["event"] == "promotion"]
    assert len(promotion) == 1 and promotion[0]["version"] == "v0002"
    # 4 test parts are never enough paired evidence: yesterday's model and file stay
    assert not promotion[0]["promoted"] and "v0001 stays production" in promotion[0]["reason"]
    assert p.production_model() == "v0001"
    assert read_metadata(production)["model_version"] == "v0001"


def test_promote_if_better_without_test_split_keeps_the_model(tmp_path, capsys):
    p = _project_with_test_split(tmp_path)
    p._con().execute("UPDATE images SET split='train' WHERE split='test'")
    assert cli_main(["train", str(p.root), "--promote-if-better", *cli_sets(2)]) == 0
    captured = capsys.readouterr()
    assert "model v0001" in captured.out
    assert "not promoted" in captured.out and "0 defective and 0 good" in captured.out
    assert p.production_model() is None and (p.root / "models" / "v0001" / "model.pt").is_file()
