"""benchmarks/decisions.py: which case projects ``--reuse`` keeps, resumes or rebuilds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def decisions():
    spec = importlib.util.spec_from_file_location("decisions", ROOT / "benchmarks" / "decisions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["decisions"] = module
    spec.loader.exec_module(module)
    return module


def test_a_stopped_training_is_resumed_and_a_finished_one_kept(decisions, tmp_path: Path):
    project = tmp_path / "project"
    assert not decisions._resumable(project)  # nothing there: the case is built
    run = project / "runs" / "20261201-203317-freematch"
    (run / "folds" / "freematch-1of4").mkdir(parents=True)
    assert not decisions._resumable(project)  # a run folder with nothing to resume
    (run / "folds" / "freematch-1of4" / "last.pt").write_bytes(b"")
    assert decisions._resumable(project)  # stopped while cross-fitting
    (run / "last.pt").write_bytes(b"")
    assert decisions._resumable(project)  # stopped in the main run
    (run / "done.json").write_text("{}")
    assert not decisions._resumable(project)  # finished
    (run / "done.json").unlink()
    (project / "models" / "v0001").mkdir(parents=True)
    (project / "models" / "v0001" / "model.pt").write_bytes(b"")
    assert decisions._trained(project)
    assert not decisions._resumable(project)  # trained: reused as it is, not resumed
