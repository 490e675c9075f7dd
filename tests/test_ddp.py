"""Two-process DistributedDataParallel training on the CPU (gloo), launched with torchrun.

One torchrun launch (process start-up dominates) runs both the loop (ranks must stay in sync)
and the project-level ``train_project`` (rank 0 alone writes the model version).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.test_training import TINY, _tiny_project

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.test_training import cfg, tiny_data_at
    from defectssft.training import ddp, train_project
    from defectssft.training.loop import train

    out = Path({out!r})
    info = ddp.setup("cpu")
    data = tiny_data_at(out / "imgs")
    result = train(cfg(train={{"eval_every": 2}}), data, out / "run", dist_info=info, handle_signals=False)
    torch.save({{"weights": result.weights, "world": info.world, "step": result.step}},
               out / f"rank{{info.rank}}.pt")
    version = train_project({project!r}, config_overrides=json.loads({tiny!r}), handle_signals=False)
    (out / f"version{{info.rank}}.txt").write_text(str(version))
    ddp.exit_process(0)  # as `defectssft train` does under torchrun
""")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_gloo_training(tmp_path):
    project = _tiny_project(tmp_path)
    tiny = json.dumps({**TINY, "train": {**TINY["train"], "steps": 2}})
    script = tmp_path / "ddp_train.py"
    script.write_text(
        SCRIPT.format(repo=str(REPO), out=str(tmp_path), project=str(project.root), tiny=tiny)
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "deploy")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # the loop: identical weights on both ranks, logs and checkpoint written once by rank 0
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 4
    for k, v in r0["weights"].items():
        assert torch.allclose(v.float(), r1["weights"][k].float(), atol=1e-6), k
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["event"] == "step"] == [1, 2, 3, 4]
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert len(ck["rng"]) == 2  # each rank's RNG state for an exact resume

    # the project: one run, one model version, its name known to both ranks
    assert (
        (tmp_path / "version0.txt").read_text()
        == (tmp_path / "version1.txt").read_text()
        == "v0001"
    )
    assert sorted(x.name for x in (project.root / "models").iterdir()) == ["v0001"]
    assert len(list((project.root / "runs").iterdir())) == 1
