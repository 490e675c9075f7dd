"""No code runs from a data file: every loader refuses a hostile pickle with one line.

Each hostile file holds an object whose ``__reduce__`` would create a marker file; the tests
assert the marker never appears and the user gets a one-line error (CLI exit status 2).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from defectssft.cli import main as cli_main
from defectssft.errors import DefectssftError, ModelFileError
from defectssft.modeling import load_model_file, read_model_meta, read_state_dict
from defectssft.safeload import load_checkpoint, plain_rng_state, rng_state_from_plain
from tests.helpers import cfg, cli_sets, tiny_data_at, tiny_project


class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch '{self.marker}'",))


def _hostile_torch(path: Path, marker: Path, **extra) -> Path:
    torch.save({"model": {}, "classes": ["ok", "dent"], "evil": _Payload(marker), **extra}, path)
    return path


def _hostile_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"evil": _Payload(marker)}))
    return path


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The hostile file is real: an unsafe load creates the marker (so the tests below mean it)."""
    marker = tmp_path / "pwned"
    torch.load(_hostile_torch(tmp_path / "x.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("maker", [_hostile_torch, _hostile_pickle])
def test_hostile_checkpoint_is_refused_without_running(tmp_path, maker):
    marker = tmp_path / "pwned"
    path = maker(tmp_path / "last.pt", marker)
    with pytest.raises(ModelFileError) as e:
        load_checkpoint(path, ("classes",))
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("named", [True, False])
def test_resume_from_a_hostile_last_pt_runs_no_code(tmp_path, capsys, named):
    """A run folder dropped into PROJECT/runs/ with a hostile last.pt: `train --resume [RUN]`."""
    p = tiny_project(tmp_path)
    run = p.root / "runs" / "20990101-000000-fixmatch"
    run.mkdir(parents=True)
    assert cli_main(["train", str(p.root), "--print-config", *cli_sets(2)]) == 0
    (run / "config.yaml").write_text(capsys.readouterr().out)
    marker = tmp_path / "pwned"
    _hostile_torch(run / "last.pt", marker)
    args = ["train", str(p.root), "--resume"] + ([run.name] if named else [])
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "refused" in err and "\n" not in err
    assert not marker.exists()


def test_hostile_best_pt_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = _hostile_torch(tmp_path / "best.pt", marker, weights={})
    with pytest.raises(DefectssftError, match="refused"):
        load_checkpoint(path, ("weights",))
    assert not marker.exists()


def test_checkpoint_that_is_not_a_dict_is_a_one_line_error(tmp_path):
    torch.save([1, 2, 3], tmp_path / "last.pt")
    with pytest.raises(ModelFileError, match="not a defectssft training checkpoint"):
        load_checkpoint(tmp_path / "last.pt", ("classes",))
    torch.save({"x": 1}, tmp_path / "best.pt")
    with pytest.raises(ModelFileError, match=r"no weights"):
        load_checkpoint(tmp_path / "best.pt", ("weights",))


@pytest.mark.parametrize("maker", [_hostile_torch, _hostile_pickle])
def test_hostile_model_pt_and_pth_are_refused(tmp_path, maker):
    marker = tmp_path / "pwned"
    model = maker(tmp_path / "model.pt", marker)
    for load in (read_model_meta, load_model_file):
        with pytest.raises(ModelFileError) as e:
            load(model)
        assert "\n" not in str(e.value)
    weights = maker(tmp_path / "weights.pth", marker)
    with pytest.raises(ModelFileError) as e:
        read_state_dict(weights)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_hostile_file_as_onnx_model_is_refused_by_the_line(tmp_path, capsys):
    from defectssft_line.cli import main as line_main
    from defectssft_line.model import LineModel, LineModelError

    marker = tmp_path / "pwned"
    for maker in (_hostile_torch, _hostile_pickle):
        path = maker(tmp_path / "model.onnx", marker)
        with pytest.raises(LineModelError) as e:
            LineModel.load(path)
        assert "\n" not in str(e.value)
        img = tmp_path / "a.png"
        img.write_bytes(b"")
        assert line_main(["run", "--model", str(path), "--input", str(img)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
    assert not marker.exists()


def test_checkpoints_hold_only_safe_types_and_resume_restores_the_rng(tmp_path):
    """What training writes loads with weights_only=True, RNG states included."""
    import random

    import numpy as np

    from defectssft.training.loop import rng_state, set_rng_state, train

    data = tiny_data_at(tmp_path / "imgs")
    cfg2 = cfg(train={"steps": 2, "eval_every": 2, "checkpoint": "best"})  # writes best.pt
    train(cfg2, data, tmp_path / "run", handle_signals=False)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ck["step"] == 2 and best["weights"]
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(rng_state_from_plain(plain_rng_state(state)))
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    set_rng_state(rng_state_from_plain(ck["rng"][0]))  # the stored form restores too
