"""NEU-DET few-label benchmark: supervised-only vs semi-supervised at the same number of steps.

k labeled images per class (k=5, k=10) from a fixed train pool, the rest of the pool unlabeled,
a fixed test split of 660 images (110 per class). Mean +- std over seeds, wall time per run.

    .venv/bin/python benchmarks/ssl_neu.py --quick      # ~5 min: k=5, 1 seed, 150 steps at 64 px
    .venv/bin/python benchmarks/ssl_neu.py              # k=5,10 x 3 seeds x {supervised, freematch_da}, ~4-5 h
    .venv/bin/python benchmarks/ssl_neu.py --ks 5 --seeds 0 --size 64 --steps 200 \
        --methods supervised fixmatch fixmatch_da freematch --name explore_b   # method choice

Defaults: 128 px, 1000 steps (the training default) of 12 labeled + 36 unlabeled, lite0 ImageNet
weights, 1 torch thread. Tables before session 4 used 400 steps and ssl.ema_momentum 0.999
(``--steps 400 --set ssl.ema_momentum=0.999`` repeats them).

Writes benchmarks/results/ssl_neu[_quick].json after every run (partial results survive).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    apply_sets,
    mean_std,
    neu_split,
    run_one,
    variant_overrides,
    write_results,
)
from defectssft.metrics import classification_metrics  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="k=5, one seed, 150 steps at 64 px")
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["supervised", "freematch_da"],
        help="variants from benchmarks/common.py VARIANTS",
    )
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--set", nargs="*", default=[], help="extra section.key=value for every run")
    ap.add_argument("--batch", type=int, default=12, help="labeled images per step")
    ap.add_argument("--mu", type=int, default=3, help="unlabeled images per labeled image")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine 2 threads ran 7x slower)",
    )
    ap.add_argument("--name", default=None, help="results file name (default ssl_neu[_quick])")
    args = ap.parse_args(argv)
    if args.quick:
        args.ks, args.seeds, args.steps, args.size = [5], [0], 150, 64
    return args


def overrides(method: str, args: argparse.Namespace, seed: int) -> dict:
    o: dict = {
        "input": {"height": args.size, "width": args.size},
        "ssl": {"mu": args.mu},
        "train": {
            "steps": args.steps,
            "seed": seed,
            "batch_size": args.batch,
            "eval_every": args.steps,
            "checkpoint_every": 10**9,
            "log_every": 50,
            "num_workers": 1,
            "threads": args.threads,
            "warmup_steps": max(1, args.steps // 15),
        },
    }
    return variant_overrides(method, apply_sets(o, args.set))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    name = args.name or ("ssl_neu_quick" if args.quick else "ssl_neu")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ssl_neu_") as tmp:
        for k in args.ks:
            for seed in args.seeds:
                data = neu_split(k, seed)
                for method in args.methods:
                    run_dir = Path(tmp) / f"k{k}_s{seed}_{method}"
                    # No in-loop validation: the final weights are scored once, on the test split.
                    r = run_one(
                        dataclasses.replace(data, val=[]),
                        overrides(method, args, seed),
                        run_dir,
                        test_items=data.test,
                    )
                    m = classification_metrics(r["probs"], r["labels"], None)
                    row = {
                        "k": k,
                        "seed": seed,
                        "method": method,
                        "accuracy": m["accuracy"],
                        "macro_f1": m["macro_f1"],
                        "wall_s": r["wall_s"],
                        "steps": r["steps"],
                        "confusion": confusion(r["probs"], r["labels"], len(data.classes)),
                        "history": r["history"],
                    }
                    runs.append(row)
                    print(
                        f"k={k} seed={seed} {method:10s} acc={row['accuracy']:.4f} "
                        f"wall={row['wall_s']:.0f}s",
                        flush=True,
                    )
                    write_results(
                        name, {"args": vars(args), "runs": runs, "summary": summarize(runs)}
                    )
    summary = summarize(runs)
    print(
        f"\n{'k':>3} {'method':12s} {'accuracy mean ± std':>22s} {'runs':>5s} {'wall s/run':>10s}"
    )
    for row in summary:
        print(
            f"{row['k']:>3} {row['method']:12s} {100 * row['acc_mean']:>13.2f} ± {100 * row['acc_std']:5.2f} "
            f"{row['n']:>5d} {row['wall_mean']:>10.0f}"
        )
    out = write_results(name, {"args": vars(args), "runs": runs, "summary": summary})
    print(f"wrote {out}")
    return 0


def confusion(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> list[list[int]]:
    """Test confusion matrix, rows = true class, columns = predicted (class order of neu_files)."""
    m = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(m, (labels.astype(int), probs.argmax(1)), 1)
    return m.tolist()


def summarize(runs: list[dict]) -> list[dict]:
    out = []
    for k in sorted({r["k"] for r in runs}):
        for method in dict.fromkeys(r["method"] for r in runs):
            accs = [r["accuracy"] for r in runs if r["k"] == k and r["method"] == method]
            walls = [r["wall_s"] for r in runs if r["k"] == k and r["method"] == method]
            if accs:
                m, s = mean_std(accs)
                out.append(
                    {
                        "k": k,
                        "method": method,
                        "acc_mean": m,
                        "acc_std": s,
                        "n": len(accs),
                        "wall_mean": mean_std(walls)[0],
                    }
                )
    return out


if __name__ == "__main__":
    sys.exit(main())
