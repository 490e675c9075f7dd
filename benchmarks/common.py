"""Shared benchmark helpers: fixed dataset splits, running one training, writing results.

Benchmarks build their data lists straight from the dataset folders (no project needed) and
call ``defectssft.training.loop.train`` exactly as ``defectssft train`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from defectssft.training.config import parse_set, resolve_config
from defectssft.training.data import TrainData
from defectssft.training.loop import train

# The data sets beside the repository (../shared/datasets); DEFECTSSFT_DATASETS points elsewhere.
DATASETS = Path(
    os.environ.get(
        "DEFECTSSFT_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
)
RESULTS = Path(__file__).resolve().parent / "results"


def neu_files(root: Path = DATASETS / "neu-det") -> dict[str, list[Path]]:
    """NEU-DET images by class (class = filename prefix before ``_N.jpg``), sorted."""
    by_class: dict[str, list[Path]] = defaultdict(list)
    seen: set[str] = set()
    for p in sorted((root / "images").glob("*.jpg")):
        m = re.match(r"(.+)_\d+\.jpg$", p.name)
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if m and digest not in seen:  # one byte-identical pair (patches_101/105): keep one
            seen.add(digest)
            by_class[m.group(1)].append(p)
    if not by_class:
        raise SystemExit(f"no NEU-DET images under {root}/images")
    return dict(sorted(by_class.items()))


def neu_split(k: int, seed: int, test_per_class: int = 110) -> TrainData:
    """Fixed test split (``test_per_class`` per class, split seed 0, independent of ``seed``);
    ``k`` labeled per class drawn from the remaining pool with ``seed``; the rest unlabeled."""
    files = neu_files()
    classes = list(files)
    labeled, unlabeled, truth, test = [], [], [], []
    for idx, c in enumerate(classes):
        paths = list(files[c])
        random.Random(f"neu-test-{c}").shuffle(paths)
        test += [(str(p), idx) for p in paths[:test_per_class]]
        pool = paths[test_per_class:]
        random.Random(f"neu-lab-{c}-{seed}").shuffle(pool)
        labeled += [(str(p), idx) for p in pool[:k]]
        unlabeled += [str(p) for p in pool[k:]]
        truth += [idx] * len(pool[k:])
    return TrainData(
        classes=classes,
        labeled=labeled,
        unlabeled=unlabeled,
        val=test,
        test=test,
        bit_depth=8,
        unlabeled_truth=truth,
    )


def kolektor_items(root: Path = DATASETS / "kolektorsdd") -> list[tuple[str, int]]:
    """(path, 1 if defective else 0) for every KolektorSDD image, sorted."""
    items, seen = [], set()
    for img in sorted((root / "images").glob("*/*.jpg")):
        # The public copy holds 16 byte-identical pairs: keep one, or a copy could sit in the
        # labeled set and its twin in the test set.
        digest = hashlib.sha256(img.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        lab = root / "labels" / img.parent.name / (img.stem + ".txt")
        defective = lab.is_file() and lab.read_text().strip() != ""
        items.append((str(img), int(defective)))
    if not items:
        raise SystemExit(f"no KolektorSDD images under {root}/images")
    return items


# Named method variants: the ssl section each one sets.
VARIANTS: dict[str, dict[str, Any]] = {
    "supervised": {"method": "supervised"},
    "fixmatch": {"method": "fixmatch", "dist_align": False},
    "fixmatch_da": {"method": "fixmatch", "dist_align": True},
    "freematch": {"method": "freematch", "dist_align": False},
    "freematch_da": {"method": "freematch", "dist_align": True},
}


def apply_sets(overrides: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """``overrides`` with ``--set section.key=value`` items on top, parsed as the train CLI does."""
    for section, values in parse_set(items).items():
        overrides.setdefault(section, {}).update(values)
    return overrides


def variant_overrides(variant: str, base: dict[str, Any]) -> dict[str, Any]:
    if variant not in VARIANTS:
        raise SystemExit(f"unknown method variant {variant!r} (choose from {', '.join(VARIANTS)})")
    out = {k: dict(v) for k, v in base.items()}
    out.setdefault("ssl", {}).update(VARIANTS[variant])
    return out


def run_one(
    data: TrainData,
    overrides: dict[str, Any],
    run_dir: Path,
    test_items: list[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """Train once; the final validation metrics, wall time, and test-set probs if asked."""
    cfg = resolve_config(overrides=overrides)
    t0 = time.time()
    result = train(cfg, data, run_dir, handle_signals=False)
    out: dict[str, Any] = {
        **result.metrics,
        "wall_s": time.time() - t0,
        "steps": result.step,
        "history": step_history(run_dir),
    }
    if test_items is not None:
        out["probs"], out["labels"] = predict_items(
            cfg, result, len(data.classes), test_items, data.bit_depth
        )
    return out


def step_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's logged step rows (losses, mask rate, threshold, pseudo-label accuracy), 4 digits."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keep = ("step", "lr", "loss_s", "loss_u", "mask", "tau", "pl_acc", "pl_acc_mask")
    return [
        {k: float(f"{r[k]:.4g}") if isinstance(r[k], float) else r[k] for k in keep if k in r}
        for r in rows
        if r.get("event") == "step"
    ]


def predict_items(
    cfg: dict[str, Any], result: Any, num_classes: int, items: list[tuple[str, int]], bit_depth: int
) -> tuple[Any, Any]:
    """Softmax probabilities of the trained weights on ``items`` (decoded like the line does)."""
    from defectssft.modeling import create_backbone
    from defectssft.training.data import eval_loader
    from defectssft.training.loop import predict

    model = create_backbone(cfg["model"]["name"], num_classes)
    model.load_state_dict(result.weights)
    size = (result.config or cfg)["input"]  # as run: an empty height/width resolved
    loader = eval_loader(items, size["height"], size["width"], bit_depth)
    return predict(model, loader, result.mean, result.std, torch.device("cpu"))


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "host": platform.node(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **payload,
    }
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(payload, indent=2))
    return out
