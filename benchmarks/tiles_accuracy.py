"""Resize vs tiles at native resolution, on the product's default training path.

Two data sets, each with 10 NG + 30 OK labeled parts, the rest of the train pool unlabeled, and
a fixed held-out test set; AUROC, AP and the overkill at zero escapes of the part scores:

* ``kolektor``: KolektorSDD (~500 x 1,260 px parts) resized to 256 x 96 (``resize``) vs cut at
  native resolution into 128 x 128 tiles (``tiles``: the ``tiles`` preset's rule, multiple-
  instance training, max over tiles). The split is ``benchmarks/ssl_kolektor.py``'s.
* ``stress``: small defects on large parts. 2,000 x 2,000 clean surfaces, each a mosaic of
  eight 500 x 1,000 px crops of good KolektorSDD parts; a defective part gets one real defect
  (the outline of a KolektorSDD defect, cut from its image) shrunk so its long side is 3-10 px
  (``paste_defect``) and blended in at a random place. ``resize``: 2,000 x 2,000 -> 128 x 128;
  ``tiles``: native, 128 x 128 tiles.

Test parts are scored by the trained model exported to ONNX (fp32) in the line runtime
(``LineModel``: ROI, tiles, pooling by the file's own metadata), 1 thread. Training on 2 shared
CPU cores is slow: ``--quick`` runs one seed, 100 steps of 8 labeled + 8 unlabeled images (the
default recipe takes 1,000 steps of 16 + 48), and says so in the results (``args``).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/tiles_accuracy.py kolektor --quick
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/tiles_accuracy.py stress --quick

Writes benchmarks/results/tiles_<dataset>[_quick].json after every run.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import DATASETS, apply_sets, kolektor_items, write_results  # noqa: E402
from benchmarks.ssl_kolektor import binary_metrics, hardest_defects, split  # noqa: E402
from defectssft.export import export_onnx  # noqa: E402
from defectssft.inspection import InputSpec, ModelSpec, load_images  # noqa: E402
from defectssft.modeling import create_backbone  # noqa: E402
from defectssft.tiling import sample_tiles  # noqa: E402
from defectssft.training.config import load_preset, resolve_config  # noqa: E402
from defectssft.training.data import TrainData  # noqa: E402
from defectssft.training.loop import train  # noqa: E402
from defectssft.training.tiles import tiles_meta  # noqa: E402
from defectssft_line.model import LineModel  # noqa: E402
from defectssft_line.preprocess import read_image  # noqa: E402

TILES_PRESET = load_preset("tiles")  # what `defectssft train --preset tiles` runs
ARMS = {
    "kolektor": {
        "resize": {"input": {"height": 256, "width": 96}},
        "tiles": TILES_PRESET,
    },
    "stress": {
        "resize": {"input": {"height": 128, "width": 128}},
        "tiles": TILES_PRESET,
    },
}


# --------------------------------------------------------------------------- the stress set


def _defect_patches(root: Path) -> list[np.ndarray]:
    """Every KolektorSDD defect as (gray pixels, mask) cut to its outline's bounding box."""
    patches = []
    for lab in sorted((root / "labels").glob("*/*.txt")):
        lines = [line.split() for line in lab.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        img = cv2.imread(str(root / "images" / lab.parent.name / (lab.stem + ".jpg")), 0)
        h, w = img.shape
        for values in lines:  # one polygon (one defect) per line: "0 x1 y1 x2 y2 ..."
            pts = np.array(values[1 : 1 + 2 * ((len(values) - 1) // 2)], np.float64)
            pts = pts.reshape(-1, 2) * [w, h]
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [pts.round().astype(np.int32)], 255)
            x, y, bw, bh = cv2.boundingRect(mask)
            if bw > 1 and bh > 1:
                crop = img[y : y + bh, x : x + bw]
                patches.append(np.dstack([crop, mask[y : y + bh, x : x + bw]]))
    return patches


def paste_defect(part: np.ndarray, patch: np.ndarray, side: int, rng: random.Random) -> None:
    """Shrink a defect (gray, mask) so its long side is ``side`` px (its short side at least 2)
    and blend it into ``part`` at a random place: alpha = the shrunk mask's coverage, colour =
    the defect's own pixels (their mean under the mask, not the surface around them)."""
    ph, pw = patch.shape[:2]
    f = side / max(ph, pw)
    w, h = max(2, round(pw * f)), max(2, round(ph * f))
    gray, mask = patch[:, :, 0].astype(np.float32), (patch[:, :, 1] > 0).astype(np.float32)
    area = cv2.INTER_AREA
    alpha = cv2.resize(mask, (w, h), interpolation=area)
    shade = cv2.resize(gray * mask, (w, h), interpolation=area) / np.maximum(alpha, 1e-6)
    y, x = rng.randrange(0, part.shape[0] - h), rng.randrange(0, part.shape[1] - w)
    region = part[y : y + h, x : x + w].astype(np.float32)
    part[y : y + h, x : x + w] = np.clip(region * (1 - alpha) + shade * alpha, 0, 255).round()


def make_stress_set(out: Path, n_good: int, n_bad: int, seed: int = 0) -> list[tuple[str, int]]:
    """Write ``n_good`` clean and ``n_bad`` defective 2,000 x 2,000 parts (see the docstring)."""
    root = DATASETS / "kolektorsdd"
    good = [p for p, c in kolektor_items(root) if c == 0]
    patches = _defect_patches(root)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n_good + n_bad):
        tiles = []
        for _ in range(8):  # 4 across, 2 down: 500 x 1,000 crops
            img = cv2.imread(rng.choice(good), 0)
            y = rng.randrange(0, img.shape[0] - 1000 + 1)
            tiles.append(img[y : y + 1000, :500])
        part = np.vstack([np.hstack(tiles[:4]), np.hstack(tiles[4:])])
        bad = i >= n_good
        if bad:
            paste_defect(part, rng.choice(patches), rng.randint(3, 10), rng)
        path = out / f"{'ng' if bad else 'ok'}_{i:03d}.png"
        cv2.imwrite(str(path), part, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        items.append((str(path), int(bad)))
    return items


def stress_split(folder: Path, seed: int) -> tuple[TrainData, list[tuple[str, int]]]:
    """10 NG + 30 OK labeled, 20 unlabeled (4 NG), test 20 OK + 20 NG (defects of all sizes)."""
    items = make_stress_set(folder, n_good=30 + 16 + 20, n_bad=10 + 4 + 20, seed=seed)
    ok = [it for it in items if it[1] == 0]
    ng = [it for it in items if it[1] == 1]
    labeled = ng[:10] + ok[:30]
    unl = ng[10:14] + ok[30:46]
    test = ok[46:] + ng[14:]
    data = TrainData(
        classes=["ok", "defect"],
        labeled=labeled,
        unlabeled=[p for p, _ in unl],
        test=test,
        ok_class="ok",
        bit_depth=8,
        unlabeled_truth=[c for _, c in unl],
    )
    return data, test


# --------------------------------------------------------------------------- one arm


def run_arm(data: TrainData, test: list, overrides: dict, run_dir: Path) -> dict:
    cfg = resolve_config(overrides=overrides)
    t0 = time.time()
    result = train(cfg, data, run_dir, handle_signals=False)
    train_s = time.time() - t0
    model = create_backbone(cfg["model"]["name"], len(data.classes))
    model.load_state_dict(result.weights)
    inp = cfg["input"]
    spec = ModelSpec(
        cfg["model"]["name"],
        list(data.classes),
        data.ok_class,
        InputSpec(inp["height"], inp["width"], data.bit_depth, None, tiles_meta(cfg)),
        tuple(result.mean),
        tuple(result.std),
    )
    t1 = time.time()
    # scored by the exported file in the line runtime (fp32, 1 thread): what the line computes
    onnx_path = run_dir / "model.onnx"
    paths = [p for p, _ in test]
    check = (
        sample_tiles(paths[:4], spec)
        if spec.input.tiles
        else load_images(paths[:4], inp["height"], inp["width"], data.bit_depth)
    )
    export_onnx(model, spec.to_meta(), onnx_path, check_images=check)
    line = LineModel.load(onnx_path, threads=1)
    labels = np.array([c for _, c in test])
    pooled = {}
    if line.tiles is None:
        score = np.array([line.classify([read_image(p)])[0].score for p in paths])
    else:  # the same tile scores pooled both ways (the pooling is chosen by this benchmark)
        tile_scores = [line.score_tiles(read_image(p)).scores for p in paths]
        score = np.array([float(s.max()) for s in tile_scores])
        for k in (2, 3, 5):
            topk = np.array([float(np.sort(s)[-k:].mean()) for s in tile_scores])
            pooled[f"top{k}_mean"] = binary_metrics(topk, labels)
    return {
        **binary_metrics(score, labels),
        "other_pooling": pooled,
        "hardest_defects": hardest_defects(score, labels, [p for p, _ in test]),
        "train_s": round(train_s),
        "test_s": round(time.time() - t1),
        "steps": result.step,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", choices=sorted(ARMS))
    ap.add_argument(
        "--quick",
        action="store_true",
        help="seed 0, 100 steps of 8 labeled + 8 unlabeled images (not the default recipe)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=["resize", "tiles"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="extra section.key=value for every run")
    ap.add_argument("--name", help="results file name (default tiles_DATASET[_quick])")
    args = ap.parse_args(argv)
    if args.quick:  # a step costs 30 s on the shared 2-core machine with 16 + 48 images
        args.seeds, args.steps = [0], 100
        args.set = ["train.batch_size=8", "ssl.mu=1", *args.set]
    torch.set_num_threads(args.threads)
    name = args.name or f"tiles_{args.dataset}" + ("_quick" if args.quick else "")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tiles_acc_") as tmp:
        for seed in args.seeds:
            if args.dataset == "kolektor":
                data, test = split(seed)
            else:
                data, test = stress_split(Path(tmp) / f"stress_{seed}", seed)
            for arm in args.arms:
                base = copy.deepcopy(ARMS[args.dataset][arm])
                base["train"] = {
                    **base.get("train", {}),
                    **{
                        "steps": args.steps,
                        "seed": seed,
                        "eval_every": 10**9,
                        "checkpoint_every": 10**9,
                        "log_every": 25,
                        "num_workers": 1,
                        "threads": args.threads,
                        "warmup_steps": max(1, args.steps // 15),
                    },
                }
                apply_sets(base, args.set)
                r = run_arm(data, test, base, Path(tmp) / f"s{seed}_{arm}")
                runs.append({"seed": seed, "arm": arm, "config": base, **r})
                print(
                    f"{args.dataset} seed={seed} {arm:7s} AUROC={r['auroc']:.4f} AP={r['ap']:.4f} "
                    f"overkill@0esc={r['overkill_at_zero_escape']:.3f} "
                    f"train={r['train_s']}s test={r['test_s']}s",
                    flush=True,
                )
                write_results(name, {"args": vars(args), "runs": runs})
    out = write_results(name, {"args": vars(args), "runs": runs})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
