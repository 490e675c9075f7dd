"""KolektorSDD benchmark: 10 NG + 30 OK labeled, the rest of the train pool unlabeled, fixed
held-out test (40 % of the images, stratified). Reports AUROC, AP and the overkill at zero
escapes (the share of good parts rejected when the threshold lets no defect through).

    .venv/bin/python benchmarks/ssl_kolektor.py --quick   # one seed, 256x96, 150 steps (~25 min on 1 core)
    .venv/bin/python benchmarks/ssl_kolektor.py           # 3 seeds, 320x128, 300 steps

Writes benchmarks/results/ssl_kolektor[_quick].json after every run.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    apply_sets,
    kolektor_items,
    mean_std,
    run_one,
    variant_overrides,
    write_results,
)
from defectssft.metrics import average_precision, defect_scores, roc_auc, threshold_for_max_escape  # noqa: E402
from defectssft.training.data import TrainData  # noqa: E402


def split(
    seed: int, n_ng: int = 10, n_ok: int = 30, test_fraction: float = 0.4
) -> tuple[TrainData, list]:
    """Fixed stratified test split (independent of ``seed``); labeled drawn from the pool by seed."""
    items = kolektor_items()
    test, pool = [], {0: [], 1: []}
    for cls in (0, 1):
        members = [it for it in items if it[1] == cls]
        random.Random(f"kolektor-test-{cls}").shuffle(members)
        n_test = round(len(members) * test_fraction)
        test += members[:n_test]
        pool[cls] = members[n_test:]
        random.Random(f"kolektor-lab-{cls}-{seed}").shuffle(pool[cls])
    labeled = pool[1][:n_ng] + pool[0][:n_ok]
    rest = pool[1][n_ng:] + pool[0][n_ok:]
    data = TrainData(
        classes=["ok", "defect"],
        labeled=labeled,
        unlabeled=[p for p, _ in rest],
        val=[],
        test=test,
        ok_class="ok",
        bit_depth=8,
        unlabeled_truth=[c for _, c in rest],
    )
    return data, test


def binary_metrics(score: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC, AP and overkill at zero escapes of defect scores (label 1 = defective)."""
    is_defect = labels == 1
    zero_escape = threshold_for_max_escape(score, is_defect, 0.0)
    return {
        "auroc": roc_auc(score, is_defect),
        "ap": average_precision(score, is_defect),
        "overkill_at_zero_escape": zero_escape.overkill_rate,
    }


def hardest_defects(
    score: np.ndarray, labels: np.ndarray, paths: list[str], n: int = 3
) -> list[dict]:
    """The ``n`` lowest-scored defective test images: the ones that set the overkill at zero escapes.

    ``good_above`` counts the good parts scored at or above each one (what a threshold that passes
    no defect must reject because of it)."""
    good = score[labels == 0]
    rows = [
        {
            "image": "/".join(Path(paths[i]).parts[-2:]),
            "score": float(f"{score[i]:.4g}"),
            "good_above": int((good >= score[i]).sum()),
        }
        for i in np.flatnonzero(labels == 1)
    ]
    return sorted(rows, key=lambda r: r["score"])[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 150 steps at 256x96")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["supervised", "freematch", "freematch_da"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="extra section.key=value for every run")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.height, args.width = [0], 150, 256, 96
    torch.set_num_threads(args.threads)
    name = args.name or ("ssl_kolektor_quick" if args.quick else "ssl_kolektor")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ssl_kolektor_") as tmp:
        for seed in args.seeds:
            data, test = split(seed)
            for method in args.methods:
                base = {
                    "input": {"height": args.height, "width": args.width},
                    "augment": {"vflip": True, "hflip": True},
                    "train": {
                        "steps": args.steps,
                        "seed": seed,
                        "eval_every": 10**9,
                        "checkpoint_every": 10**9,
                        "log_every": 50,
                        "num_workers": 1,
                        "threads": args.threads,
                        "warmup_steps": max(1, args.steps // 15),
                    },
                }
                apply_sets(base, args.set)
                r = run_one(
                    data, variant_overrides(method, base), Path(tmp) / f"s{seed}_{method}", test
                )
                score = defect_scores(r["probs"], 0)
                m = binary_metrics(score, r["labels"])
                row = {
                    "seed": seed,
                    "method": method,
                    **m,
                    "wall_s": r["wall_s"],
                    "steps": r["steps"],
                    "hardest_defects": hardest_defects(score, r["labels"], [p for p, _ in test]),
                    "history": r["history"],
                }
                runs.append(row)
                print(
                    f"seed={seed} {method:12s} AUROC={m['auroc']:.4f} AP={m['ap']:.4f} "
                    f"overkill@0esc={m['overkill_at_zero_escape']:.3f} wall={r['wall_s']:.0f}s",
                    flush=True,
                )
                write_results(name, {"args": vars(args), "runs": runs})
    print(f"\n{'method':12s} {'AUROC':>15s} {'AP':>15s} {'overkill@0':>15s} {'wall s':>7s}")
    summary = []
    for method in args.methods:
        rows = [r for r in runs if r["method"] == method]
        s = {
            key: mean_std([r[key] for r in rows])
            for key in ("auroc", "ap", "overkill_at_zero_escape", "wall_s")
        }
        summary.append({"method": method, **{k: {"mean": v[0], "std": v[1]} for k, v in s.items()}})
        print(
            f"{method:12s} "
            + " ".join(
                f"{s[k][0]:>8.4f}±{s[k][1]:.3f}" for k in ("auroc", "ap", "overkill_at_zero_escape")
            )
            + f" {s['wall_s'][0]:>7.0f}"
        )
    out = write_results(name, {"args": vars(args), "runs": runs, "summary": summary})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
