"""Two-process DistributedDataParallel training on the CPU (gloo), launched with torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.test_training import _cli_sets, _tiny_project

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.test_training import cfg, tiny_data_at
    from defectssft.training import ddp
    from defectssft.training.loop import train

    out = Path({out!r})
    info = ddp.setup("cpu")
    data = tiny_data_at(out / "imgs")
    result = train(cfg(train={{"eval_every": 2}}), data, out / "run", dist_info=info, handle_signals=False)
    torch.save({{"weights": result.weights, "world": info.world, "step": result.step}},
               out / f"rank{{info.rank}}.pt")
    ddp.cleanup(info)
""")


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_gloo_run_keeps_ranks_in_sync(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(repo=str(REPO), out=str(tmp_path)))
    proc = _torchrun([str(script)], REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 4
    for k, v in r0["weights"].items():
        assert torch.allclose(v.float(), r1["weights"][k].float(), atol=1e-6), k
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["event"] == "step"] == [1, 2, 3, 4]  # rank 0 writes once
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert len(ck["rng"]) == 2  # each rank's RNG state for an exact resume


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_train_command_writes_one_model_version(tmp_path):
    p = _tiny_project(tmp_path)
    proc = _torchrun(["-m", "defectssft", "train", str(p.root), *_cli_sets(2)], REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("model v0001") == 2  # both ranks report the version rank 0 wrote
    assert sorted(x.name for x in (p.root / "models").iterdir()) == ["v0001"]
    assert len(list((p.root / "runs").iterdir())) == 1
