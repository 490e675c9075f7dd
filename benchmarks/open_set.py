"""Open set: how well the anomaly head (``defectssft.anomaly``) finds defects nobody labeled.

1. KolektorSDD with OK labels only: image AUROC of the anomaly score on the fixed test split of
   ``ssl_kolektor.py`` (153 parts, 20 defective); fit on the pool's good parts (80 %, the other
   20 % calibrate the threshold, whose escape/overkill on test is reported). Methods on the same
   features: PatchCore (the product's head: layers 2+3, coreset), PaDiM (per-position Gaussians),
   kNN on the penultimate (pooled) features. Features: frozen ImageNet lite0, and (``--finetune
   STEPS``) the backbone after supervised fine-tuning on 10 NG + 30 OK labels (the anchor
   classifier), which is what the product's head uses.
2. Where: on the defective test parts, with masks from the YOLO-seg polygons: pointing accuracy
   (the map's maximum inside the defect; also within 16 px of it) and pixel AUROC (all test parts),
   the anomaly map against Grad-CAM of the fine-tuned classifier (needs ``--finetune``).
3. Cost: onnxruntime latency (batch 1, 1 thread, median) of the exported graph with and without
   the head, fp32 and INT8, at the benchmark's input size. With the head: the graph's own scores on the
   calibration parts give its own threshold, compared with the fitted (torch) one on test.
4. NEU-DET leave-one-class-out (``--neu``): fit on k labeled images of each of 5 classes, AUROC of
   the anomaly score separating the 6th class's test images from the known classes' test images.

    python benchmarks/open_set.py --quick                 # 256x96, frozen only, ~5 min
    python benchmarks/open_set.py --finetune 150 --neu    # + fine-tuned features, Grad-CAM, NEU
    python benchmarks/open_set.py --neu --skip-kolektor   # NEU-DET leave-one-class-out only
    python benchmarks/open_set.py --quick --max-fit 160 --ratios 0.01 --no-baselines --neu
                                  # the suite the head's defaults are chosen on (--smooth,
                                  # --min-bank, --layers: one change at a time)

Results: BENCHMARKS.md ("Open set"), JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, neu_split, write_results  # noqa: E402
from ssl_kolektor import split as kolektor_split  # noqa: E402

from defectssft.anomaly import (  # noqa: E402
    DEFAULT_MIN_BANK,
    DEFAULT_SMOOTH,
    FEATURE_INDICES,
    AnomalyModel,
    bank_rows,
    calibrate_threshold,
    extract_patches,
    greedy_coreset,
    nearest_distances,
)
from defectssft.inspection import InspectionModel, load_images  # noqa: E402
from defectssft.metrics import roc_auc  # noqa: E402
from defectssft.modeling import build_model, create_backbone, default_normalization  # noqa: E402

MODEL = "tf_efficientnet_lite0"


# --------------------------------------------------------------------------- features


def frozen_model(num_classes: int = 2) -> InspectionModel:
    mean, std = default_normalization(MODEL, "imagenet")
    bb = build_model(MODEL, num_classes, weights="imagenet").eval()
    return InspectionModel(bb, mean, std, ok_index=0).eval()


def finetuned_model(data, steps: int, h: int, w: int, run_dir: Path) -> InspectionModel:
    """Supervised lite0 on the split's labeled images (10 NG + 30 OK), the ssl_kolektor recipe."""
    from defectssft.training.config import resolve_config
    from defectssft.training.loop import train

    cfg = resolve_config(
        overrides={
            "model": {"name": MODEL, "weights": "imagenet"},
            "input": {"height": h, "width": w},
            "ssl": {"method": "supervised"},
            "augment": {"vflip": True, "hflip": True},
            "train": {
                "steps": steps,
                "optimizer": "sgd",
                "eval_every": 10**9,
                "checkpoint_every": 10**9,
                "log_every": 50,
                "num_workers": 1,
                "threads": 1,
                "warmup_steps": max(1, steps // 15),
            },
        }
    )
    data.unlabeled, data.unlabeled_truth = [], []
    result = train(cfg, data, run_dir, handle_signals=False)
    bb = create_backbone(MODEL, 2)
    bb.load_state_dict(result.weights)
    return InspectionModel(bb.eval(), result.mean, result.std, ok_index=0).eval()


@torch.inference_mode()
def pooled(ins: InspectionModel, images: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(images), 16):
        x = ins.normalise(torch.from_numpy(images[i : i + 16]))
        out.append(ins.backbone.forward_head(ins.backbone.forward_features(x), pre_logits=True))
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- methods


def patchcore(fit_f: np.ndarray, test_f: np.ndarray, ratio: float, min_bank: int, smooth: float):
    patches = fit_f.reshape(-1, fit_f.shape[-1])
    rows = bank_rows(len(patches), patches.shape[1], 20.0, ratio, min_bank)
    bank = patches[greedy_coreset(patches, rows)]
    return bank, nearest_distances(test_f, bank, smooth=smooth)


def padim(fit_f: np.ndarray, test_f: np.ndarray, dims: int = 100, seed: int = 0) -> np.ndarray:
    """Per-position Gaussian (random ``dims`` of the channels, as PaDiM), Mahalanobis map."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(fit_f.shape[-1])[: min(dims, fit_f.shape[-1])])
    f, t = fit_f[..., idx].astype(np.float64), test_f[..., idx].astype(np.float64)
    mean = f.mean(axis=0)  # [h, w, d]
    centred = f - mean
    cov = np.einsum("nhwi,nhwj->hwij", centred, centred) / max(1, len(f) - 1)
    cov += 0.01 * np.eye(len(idx))
    inv = np.linalg.inv(cov)
    dt = t - mean
    return np.sqrt(np.einsum("nhwi,hwij,nhwj->nhw", dt, inv, dt)).astype(np.float32)


def knn_pooled(fit_p: np.ndarray, test_p: np.ndarray) -> np.ndarray:
    d2 = (test_p**2).sum(1)[:, None] - 2 * test_p @ fit_p.T + (fit_p**2).sum(1)[None]
    return np.sqrt(np.clip(d2.min(1), 0, None))


# --------------------------------------------------------------------------- where


def kolektor_mask(image_path: str) -> np.ndarray:
    """The defect mask (image size, bool) from the YOLO-seg polygons of a KolektorSDD image."""
    p = Path(image_path)
    img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
    h, w = img.shape
    mask = np.zeros((h, w), np.uint8)
    label = p.parents[2] / "labels" / p.parent.name / (p.stem + ".txt")
    for line in label.read_text().splitlines():
        vals = [float(v) for v in line.split()[1:]]
        if len(vals) >= 6:
            pts = np.array(vals, np.float32).reshape(-1, 2) * [w, h]
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def where_metrics(maps, masks, labels, threshold: float, scale: int = 4, tol: int = 16) -> dict:
    """Pointing accuracy (strict and within ``tol`` px) on defective parts, pixel AUROC over all
    parts; maps drawn as the app/overlay draws them (``heat_weights``'s resize + blur, before
    its cut-off), at 1/``scale`` of the image size for the pixel AUROC."""
    hits = near = n = 0
    pix_s, pix_y = [], []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    for amap, mask, y in zip(maps, masks, labels, strict=True):
        h, w = mask.shape
        m = cv2.resize(np.asarray(amap, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        m = cv2.GaussianBlur(m, (0, 0), max(1.0, 0.02 * max(h, w)))
        if y:
            n += 1
            yy, xx = np.unravel_index(int(np.argmax(m)), m.shape)
            hits += bool(mask[yy, xx])
            near += bool(cv2.dilate(mask.astype(np.uint8), kernel)[yy, xx])
        small = (w // scale, h // scale)
        pix_s.append(cv2.resize(m, small, interpolation=cv2.INTER_AREA).ravel())
        pix_y.append(
            cv2.resize(mask.astype(np.uint8), small, interpolation=cv2.INTER_NEAREST).ravel()
        )
    return {
        "pointing": hits / n if n else None,
        "pointing_16px": near / n if n else None,
        "pixel_auroc": roc_auc(np.concatenate(pix_s), np.concatenate(pix_y)),
        "n_defective": n,
    }


def grad_cam_maps(ins: InspectionModel, images: np.ndarray, class_index: int = 1) -> list:
    """Grad-CAM (``defectssft.explain``'s computation) of the defect class, on the final grid."""
    out = []
    bb = ins.backbone
    for img in images:
        x = ins.normalise(torch.from_numpy(img[None]))
        feats = bb.forward_features(x).detach().requires_grad_(True)
        logits = bb.forward_head(feats)
        bb.zero_grad(set_to_none=True)
        logits[0, class_index].backward()
        weights = feats.grad[0].mean(dim=(1, 2))
        cam = torch.relu((weights[:, None, None] * feats[0]).sum(0)).detach().numpy()
        out.append(cam / cam.max() if cam.max() > 0 else cam)
    return out


# --------------------------------------------------------------------------- cost


def graph_scores(session, images: np.ndarray) -> np.ndarray:
    got = [session.run(["anomaly_score"], {"image": images[i : i + 16]})[0]
           for i in range(0, len(images), 16)]  # fmt: skip
    return np.concatenate(got)


def exported_threshold(sess, head: AnomalyModel, cal: np.ndarray, test: np.ndarray, labels) -> dict:
    """The exported graph's own anomaly scores: AUROC on test, and escape/overkill under the
    fitted (torch) threshold against one recalibrated on the graph's scores of the same
    calibration parts."""
    own = calibrate_threshold(graph_scores(sess, cal))
    scores = graph_scores(sess, test)
    return {
        "auroc": roc_auc(scores, labels),
        "fitted_threshold": head.threshold,
        "own_threshold": own,
        "with_fitted": binary(scores, labels, head.threshold),
        "with_own": binary(scores, labels, own),
    }


def latency(
    ins: InspectionModel, head: AnomalyModel, images: np.ndarray, iters: int, cal=None, labels=None
) -> dict:
    """Median batch-1 latency (ms, 1 thread) of the exported graph without/with the head; the
    four graphs are timed in turn, one run each per round, so load changes hit them alike.
    With ``cal`` images and test ``labels``: each head graph's threshold check
    (``exported_threshold``; ``images`` are the test parts)."""
    from defectssft.export import ExportError, export_onnx, ort_session

    h, w = images.shape[1:3]
    mean, std = list(ins.mean), list(ins.std)
    meta = {"model_name": MODEL, "classes": ["ok", "defect"], "ok_class": "ok", "mean": mean,
            "std": std, "input": {"height": h, "width": w, "bit_depth": 8}}  # fmt: skip
    out: dict = {}
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "int8"):
            for with_head in (False, True):
                path = Path(tmp) / f"{precision}_{with_head}.onnx"
                key = f"{precision}_{'head' if with_head else 'plain'}"
                try:
                    res = export_onnx(
                        ins.backbone, meta, path, check_images=images[:8],
                        calib_images=images[:32], precision=precision,
                        anomaly=head if with_head else None, max_int8_drop=1.0,
                    )  # fmt: skip
                except ExportError as e:  # e.g. INT8 moves the anomaly score too far
                    out[key] = {"refused": str(e)}
                    continue
                sessions[key] = ort_session(path, threads=1)
                out[key] = {"mb": res.size_bytes / 1e6}
                if res.anomaly is not None:
                    out[key]["check"] = res.anomaly
                    if cal is not None:
                        out[key]["threshold"] = exported_threshold(
                            sessions[key], head, cal, images, labels
                        )
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for i in range(iters + 5):
            x = images[i % len(images) : i % len(images) + 1]
            for key, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, {"image": x})
                if i >= 5:  # warm-up
                    times[key].append((time.perf_counter() - t0) * 1000)
        for key, t in times.items():
            out[key]["median_ms"] = float(np.median(t))
        for precision in ("fp32", "int8"):
            plain, with_head = out[f"{precision}_plain"], out[f"{precision}_head"]
            if "median_ms" in plain and "median_ms" in with_head:
                out[f"{precision}_extra"] = with_head["median_ms"] / plain["median_ms"] - 1
    return out


# --------------------------------------------------------------------------- runs


def binary(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    flagged = scores >= threshold
    return {
        "auroc": roc_auc(scores, labels),
        "escape": float(np.mean(~flagged[labels == 1])),
        "overkill": float(np.mean(flagged[labels == 0])),
    }


def kolektor(args, log) -> dict:
    h, w = args.height, args.width
    data, test = kolektor_split(0)
    pool_ok = [p for p, c in data.labeled if c == 0] + [
        p for p, c in zip(data.unlabeled, data.unlabeled_truth, strict=True) if c == 0
    ]
    rng = np.random.default_rng(0)
    pool_ok = [pool_ok[i] for i in rng.permutation(len(pool_ok))]
    n_cal = len(pool_ok) // 5
    cal, fit = pool_ok[:n_cal], pool_ok[n_cal:]
    if args.quick:
        fit = fit[: args.max_fit]
    test_paths = [p for p, _ in test]
    labels = np.array([c for _, c in test])
    log(f"kolektor: fit {len(fit)} good, calibrate {len(cal)} good, test {len(test)} "
        f"({int(labels.sum())} defective) at {h}x{w}")  # fmt: skip
    t0 = time.time()
    imgs = {
        k: load_images(v, h, w, 8) for k, v in (("fit", fit), ("cal", cal), ("test", test_paths))
    }
    masks = [kolektor_mask(p) if c else np.zeros(cv2.imread(p, 0).shape, bool) for p, c in test]
    log(f"  images loaded in {time.time() - t0:.0f} s")
    backbones = {"frozen": frozen_model()}
    if args.finetune:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            backbones["finetuned"] = finetuned_model(kolektor_split(0)[0], args.finetune, h, w,
                                                     Path(tmp) / "run")  # fmt: skip
        log(f"  fine-tuned {args.finetune} steps in {time.time() - t0:.0f} s")
    results: dict = {"fit": len(fit), "calibrate": len(cal), "test": len(test),
                     "test_defective": int(labels.sum()), "size": [h, w], "smooth": args.smooth,
                     "min_bank": args.min_bank, "layers": args.layers, "runs": {}}  # fmt: skip
    head_for_cost = None
    for name, ins in backbones.items():
        t0 = time.time()
        feats = {k: extract_patches(ins, v, args.layers)[0] for k, v in imgs.items()}
        t_feat = time.time() - t0
        for ratio in args.ratios:
            t0 = time.time()
            bank, test_maps = patchcore(
                feats["fit"], feats["test"], ratio, args.min_bank, args.smooth
            )
            cal_scores = nearest_distances(feats["cal"], bank, smooth=args.smooth)
            cal_scores = cal_scores.reshape(len(cal), -1).max(1)
            thr = calibrate_threshold(cal_scores)
            scores = test_maps.reshape(len(test), -1).max(1)
            key = f"{name}/patchcore_{ratio:g}"
            results["runs"][key] = {
                **binary(scores, labels, thr),
                "bank_rows": int(len(bank)),
                "bank_mb": bank.nbytes / 1e6,
                "fit_s": time.time() - t0 + t_feat,
                "where": where_metrics(test_maps, masks, labels, thr),
            }
            log(f"  {key}: {results['runs'][key]}")
            if ratio == 0.01 and (head_for_cost is None or name == "finetuned"):
                head_for_cost = (
                    ins,
                    AnomalyModel(
                        bank=bank,
                        threshold=thr,
                        map_size=list(test_maps.shape[1:]),
                        smooth=args.smooth,
                        indices=list(args.layers),
                    ),
                )  # noqa: E501
        if args.no_baselines:
            continue
        pm = padim(feats["fit"], feats["test"])
        pc = padim(feats["fit"], feats["cal"]).reshape(len(cal), -1).max(1)
        ps = pm.reshape(len(test), -1).max(1)
        results["runs"][f"{name}/padim"] = {
            **binary(ps, labels, calibrate_threshold(pc)),
            "where": where_metrics(pm, masks, labels, 0.0),
        }
        log(f"  {name}/padim: {results['runs'][f'{name}/padim']}")
        fp, tp, cp = (pooled(ins, imgs[k]) for k in ("fit", "test", "cal"))
        ks = knn_pooled(fp, tp)
        results["runs"][f"{name}/knn_penultimate"] = binary(
            ks, labels, calibrate_threshold(knn_pooled(fp, cp))
        )  # noqa: E501
        log(f"  {name}/knn_penultimate: {results['runs'][f'{name}/knn_penultimate']}")
        if name == "finetuned":
            probs = torch.softmax(
                torch.cat([ins(torch.from_numpy(imgs["test"][i : i + 16]))[1].detach()
                           for i in range(0, len(test), 16)]), 1)[:, 1].numpy()  # fmt: skip
            cams = grad_cam_maps(ins, imgs["test"])
            results["runs"]["finetuned/classifier_gradcam"] = {
                "auroc": roc_auc(probs, labels),
                "where": where_metrics(cams, masks, labels, 0.0),
            }
            log(
                f"  finetuned/classifier_gradcam: {results['runs']['finetuned/classifier_gradcam']}"
            )
    if not args.no_cost and head_for_cost is not None:
        ins, head = head_for_cost
        results["cost"] = latency(ins, head, imgs["test"], args.iters, imgs["cal"], labels)
        results["cost"]["features"] = "finetuned" if ins is backbones.get("finetuned") else "frozen"
        log(f"  cost: {results['cost']}")
    return results


def confident_calls(lab_p: np.ndarray, lab_cls: np.ndarray, unl_p: np.ndarray, k: int = 5):
    """Unlabeled images a stand-in classifier calls a known class with confidence: all ``k``
    nearest labeled images (cosine, pooled features) are of one class. Returns a bool mask."""
    a = lab_p / np.linalg.norm(lab_p, axis=1, keepdims=True)
    b = unl_p / np.linalg.norm(unl_p, axis=1, keepdims=True)
    nearest = np.argsort(-(b @ a.T), axis=1)[:, :k]
    votes = lab_cls[nearest]
    return np.all(votes == votes[:, :1], axis=1)


def neu_loco(args, log) -> dict:
    """Leave one class out on NEU-DET: fit on k labeled images of each of 5 classes (frozen
    features, no OK class: all of them), AUROC held-out class vs known classes' test images.
    ``--neu-unlabeled N``: as the product's fit, also on the unlabeled images (N of each of the
    6 classes' stream, the held-out class's included) that a classifier calls a known class
    with confidence (here a stand-in: ``confident_calls`` on frozen pooled features)."""
    size = 128
    data = neu_split(k=args.neu_k, seed=0)
    ins = frozen_model()
    lab_imgs = load_images([p for p, _ in data.labeled], size, size, 8)
    lab_cls = np.array([c for _, c in data.labeled])
    test_items = data.test[::2] if args.quick else data.test
    test_imgs = load_images([p for p, _ in test_items], size, size, 8)
    test_cls = np.array([c for _, c in test_items])
    lab_f, _ = extract_patches(ins, lab_imgs, args.layers)
    test_f, _ = extract_patches(ins, test_imgs, args.layers)
    lab_p, test_p = pooled(ins, lab_imgs), pooled(ins, test_imgs)
    unl = [
        (p, c)
        for c in range(len(data.classes))
        for p in [q for q, t in zip(data.unlabeled, data.unlabeled_truth, strict=True) if t == c][
            : args.neu_unlabeled
        ]
    ]
    unl_f = unl_p = None
    unl_cls = np.array([c for _, c in unl], dtype=int)
    if unl:
        unl_imgs = load_images([p for p, _ in unl], size, size, 8)
        unl_f, _ = extract_patches(ins, unl_imgs, args.layers)
        unl_p = pooled(ins, unl_imgs)
    folds = {}
    for held, cname in enumerate(data.classes):
        known = lab_cls != held
        fit_f = lab_f[known]
        added = {}
        if unl_f is not None:
            keep = confident_calls(lab_p[known], lab_cls[known], unl_p)
            fit_f = np.concatenate([fit_f, unl_f[keep]])
            added = {"fit_unlabeled": int(keep.sum()),
                     "of_held_out_class": int((keep & (unl_cls == held)).sum())}  # fmt: skip
        _, maps = patchcore(fit_f, test_f, 0.01, args.min_bank, args.smooth)
        novel = (test_cls == held).astype(int)
        folds[cname] = {
            **added,
            "patchcore": roc_auc(maps.reshape(len(test_f), -1).max(1), novel),
            "knn_penultimate": roc_auc(knn_pooled(lab_p[known], test_p), novel),
        }
        log(f"  neu held out {cname}: {folds[cname]}")
    mean = {
        m: float(np.mean([f[m] for f in folds.values()])) for m in ("patchcore", "knn_penultimate")
    }
    return {"k": args.neu_k, "unlabeled_per_class": args.neu_unlabeled, "test": len(test_items),
            "folds": folds, "mean": mean, "smooth": args.smooth, "min_bank": args.min_bank,
            "layers": args.layers}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="frozen features, 120 fit images, 50 timings"
    )
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument(
        "--finetune",
        type=int,
        default=0,
        metavar="STEPS",
        help="also fine-tune lite0 supervised on 10 NG + 30 OK (features + Grad-CAM)",
    )
    ap.add_argument("--max-fit", type=int, default=120, help="--quick: fit images")
    ap.add_argument("--no-baselines", action="store_true", help="PatchCore only (no PaDiM, no kNN)")
    ap.add_argument("--iters", type=int, default=200, help="latency timings per graph")
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=[0.01, 0.1],
        help="PatchCore coreset ratios (the product: 0.01)",
    )
    ap.add_argument(
        "--smooth",
        type=float,
        default=DEFAULT_SMOOTH,
        help=f"PatchCore map's Gaussian sigma in patches (the product: {DEFAULT_SMOOTH:g})",
    )
    ap.add_argument(
        "--min-bank",
        type=int,
        default=DEFAULT_MIN_BANK,
        help=f"PatchCore's smallest bank (the product: {DEFAULT_MIN_BANK})",
    )
    ap.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=list(FEATURE_INDICES),
        help="backbone stages of the patch features (the product: 2 3, strides 8 and 16)",
    )
    ap.add_argument("--neu", action="store_true", help="also NEU-DET leave-one-class-out")
    ap.add_argument("--neu-k", type=int, default=10)
    ap.add_argument(
        "--neu-unlabeled",
        type=int,
        default=0,
        metavar="N",
        help="also fit on confident calls among N unlabeled images of each class",
    )
    ap.add_argument("--skip-kolektor", action="store_true", help="with --neu: NEU-DET only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)  # fmt: skip
    if args.quick:
        args.iters = min(args.iters, 50)
    torch.set_num_threads(args.threads)
    if not (DATASETS / "kolektorsdd").is_dir():
        raise SystemExit(f"no KolektorSDD under {DATASETS}")

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.time()
    payload = {} if args.skip_kolektor else {"kolektor": kolektor(args, log)}
    if args.neu:
        payload["neu_loco"] = neu_loco(args, log)
    payload["wall_s"] = time.time() - t0
    name = args.name or ("open_set_quick" if args.quick else "open_set")
    log(f"written {write_results(name, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
