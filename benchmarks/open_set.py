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
   the anomaly map against Grad-CAM of the fine-tuned classifier (needs ``--finetune``);
   ``--peak-window N``: also the coarse-to-fine peak's pointing (``anomaly_peak``), on
   KolektorSDD and on NEU-DET's boxes (the held-out class's test images, with ``--neu``).
3. Cost: onnxruntime latency (batch 1, 1 thread, median) of the exported graph with and without
   the head, fp32 and INT8, at the benchmark's input size. With the head: the graph's own scores on the
   calibration parts give its own threshold, compared with the fitted (torch) one on test.
4. NEU-DET leave-one-class-out (``--neu``): fit on k labeled images of each of 5 classes, AUROC of
   the anomaly score separating the 6th class's test images from the known classes' test images.
   ``--neu-finetune STEPS``: the version trained per fold on the 5 known classes first, and every
   candidate novelty score on it (``candidates``: the patch bank, kNN and Mahalanobis on pooled
   features, energy / max softmax / max logit, maxima of normalised scores). ``--candidates``
   does the same on KolektorSDD; ``--cost-scores LIST`` times a head of those scores.
5. ELPV with OK labels only (``--elpv``): per cell type, image AUROC of the bank fit on good
   cells, good against defective (1.0) test cells; a third data set for the head's choices.

    python benchmarks/open_set.py --quick                 # 256x96, frozen only, ~5 min
    python benchmarks/open_set.py --finetune 150 --neu    # + fine-tuned features, Grad-CAM, NEU
    python benchmarks/open_set.py --neu --skip-kolektor   # NEU-DET leave-one-class-out only
    python benchmarks/open_set.py --quick --max-fit 160 --ratios 0.01 --no-baselines --neu
                                  # the suite the head's defaults are chosen on (--smooth,
                                  # --min-bank, --layers: one change at a time)
    python benchmarks/open_set.py --skip-kolektor --quick --neu-finetune 300 --neu-unlabeled 40
    python benchmarks/open_set.py --skip-kolektor --quick --neu-finetune 300 --neu-ssl
                                  # the fold versions semi-supervised, the novel class unlabeled
    python benchmarks/open_set.py --quick --max-fit 160 --ratios 0.01 --no-baselines --neu \
        --no-cost --peak-window 3       # where: the refined peak on the suite
    python benchmarks/open_set.py --max-fit 160 --tiled 128   # the tiled head at native
                                  # resolution: KolektorSDD and the small-defect stress set
    python benchmarks/open_set.py --quick --max-fit 160 --ratios 0.01 --no-baselines --neu \
        --elpv --no-cost --model tf_efficientnet_lite2   # the suite on a larger backbone

Results: BENCHMARKS.md ("Open set"), JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, neu_split, write_results  # noqa: E402
from default_path import OK, elpv_pool  # noqa: E402
from ssl_kolektor import split as kolektor_split  # noqa: E402

from defectssft.anomaly import (  # noqa: E402
    DEFAULT_ENERGY_CLIP,
    DEFAULT_MIN_BANK,
    DEFAULT_PEAK_WINDOW,
    DEFAULT_SMOOTH,
    FEATURE_INDICES,
    FIT_FLIPS,
    PEAK_INDICES,
    AnomalyModel,
    ScoreHead,
    bank_rows,
    calibrate_threshold,
    extract_patches,
    fit_energy_clip,
    flip_images,
    greedy_coreset,
    nearest_distances,
    patch_features,
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


def patchcore(
    fit_f: np.ndarray,
    test_f: np.ndarray,
    ratio: float,
    min_bank: int,
    smooth: float,
    extra: np.ndarray | None = None,
):
    """(bank, test maps). ``extra``: more patches (the mirrored fit images') the coreset also
    chooses from; the bank keeps the rows ``fit_f`` alone would give, as the product does."""
    patches = fit_f.reshape(-1, fit_f.shape[-1])
    rows = bank_rows(len(patches), patches.shape[1], 20.0, ratio, min_bank)
    if extra is not None:
        patches = np.concatenate([patches, extra.reshape(-1, patches.shape[1])])
    bank = patches[greedy_coreset(patches, rows)]
    return bank, nearest_distances(test_f, bank, smooth=smooth)


def mirrored_patches(
    ins: InspectionModel, images: np.ndarray, flips: str, layers
) -> np.ndarray | None:
    """Patch features of ``images`` mirrored as ``FIT_FLIPS[flips]`` says (``none``: None)."""
    out = [extract_patches(ins, flip_images(images, f), layers)[0] for f in FIT_FLIPS[flips]]
    return np.concatenate(out) if out else None


def with_peak(ins, head: AnomalyModel, fit_imgs: np.ndarray, window: int) -> AnomalyModel:
    """``head`` with the product's coarse-to-fine peak (``PeakHead``), its bank fitted as
    ``fit_project_anomaly`` fits it (random fine patches of each fit image, a coreset in
    what the coarse bank leaves of 20 MB)."""
    from defectssft.anomaly import extract_features

    f = extract_features(ins, fit_imgs, head.indices, patches=False, peak_indices=PEAK_INDICES)
    fine = f.fine.reshape(-1, f.fine.shape[-1])
    rows = bank_rows(len(fine), fine.shape[1], 20.0 - head.bank.nbytes / 1e6, 0.01,
                     DEFAULT_MIN_BANK)  # fmt: skip
    h, w = fit_imgs.shape[1:3]
    return replace(
        head,
        arrays={**head.arrays, "peak_bank": fine[greedy_coreset(fine, rows)]},
        peak={
            "indices": list(PEAK_INDICES),
            "window": window,
            "grid": list(f.fine_grid),
            "input": [int(h), int(w)],
        },  # fmt: skip
    )


def peaks_of(ins, head: AnomalyModel, images: np.ndarray) -> np.ndarray:
    """The torch graph's ``anomaly_peak`` [N, 2] of images (the exported graph's, checked)."""
    from defectssft.anomaly import torch_outputs

    return torch_outputs(head.wrap(ins), images)[2]


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


# --------------------------------------------------------------------------- feature-level scores


@torch.inference_mode()
def forward_all(ins: InspectionModel, images: np.ndarray, layers, batch: int = 16):
    """One backbone pass: (patch features [N, h, w, D], pooled penultimate [N, P], logits [N, C])."""
    bb = ins.backbone
    feats, pools, logits = [], [], []
    for i in range(0, len(images), batch):
        x = ins.normalise(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])))
        final, inter = bb.forward_intermediates(x, indices=list(layers))
        p = bb.forward_head(final, pre_logits=True).float()
        feats.append(patch_features(inter).permute(0, 2, 3, 1).numpy())
        pools.append(p.numpy())
        logits.append(bb.get_classifier()(p).float().numpy())
    return np.concatenate(feats), np.concatenate(pools), np.concatenate(logits)


def ledoit_wolf(xc: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of centred rows ``xc`` [n, d] (sklearn's formula)."""
    n, d = xc.shape
    emp = xc.T @ xc / n
    mu = np.trace(emp) / d
    x2 = xc**2
    beta_ = float(np.sum(x2.T @ x2))
    delta_ = float(np.sum(emp**2))
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * np.trace(emp) + d * mu**2) / d
    shrink = 0.0 if beta == 0 else min(beta, delta) / delta
    return (1 - shrink) * emp + shrink * mu * np.eye(d)


def mahalanobis_fit(x: np.ndarray, cls: np.ndarray):
    """Class means and the shared (tied) covariance's inverse (Lee et al. 2018), shrunk."""
    x = x.astype(np.float64)
    classes = np.unique(cls)
    means = np.stack([x[cls == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, cls)]
    return means, np.linalg.inv(ledoit_wolf(centred))


def mahalanobis_score(fit, x: np.ndarray) -> np.ndarray:
    """Squared distance to the nearest class mean under the shared covariance."""
    means, prec = fit
    x = x.astype(np.float64)
    xp = x @ prec
    d2 = (xp * x).sum(1)[:, None] - 2 * xp @ means.T + ((means @ prec) * means).sum(1)[None]
    return d2.min(1).astype(np.float32)


def knn_cosine(fit_p: np.ndarray, x: np.ndarray, k: int = 1) -> np.ndarray:
    """1 - cosine similarity to the k-th nearest fit feature (Sun et al. 2022)."""
    a = fit_p / np.linalg.norm(fit_p, axis=1, keepdims=True)
    b = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = np.sort(b @ a.T, axis=1)[:, ::-1]
    return (1 - sims[:, min(k, sims.shape[1]) - 1]).astype(np.float32)


def energy(logits: np.ndarray) -> np.ndarray:
    m = logits.max(1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(logits - m).sum(1)))


def msp(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return 1 - (e / e.sum(1, keepdims=True)).max(1)


def normalised(cal: np.ndarray, s: np.ndarray, q: float = 0.95) -> np.ndarray:
    """Score in units of its calibration spread: (s - median) / (q-quantile - median)."""
    med, hi = np.quantile(cal, 0.5), np.quantile(cal, q)
    return (s - med) / max(hi - med, 1e-12)


COMBOS = {
    "max(patchcore, mahalanobis)": ("patchcore", "mahalanobis"),
    "max(patchcore, knn)": ("patchcore", "knn_cosine"),
    "max(mahalanobis, energy)": ("mahalanobis", "energy"),
    "max(patchcore, mahalanobis, energy)": ("patchcore", "mahalanobis", "energy"),
    "max(knn, energy)": ("knn_cosine", "energy"),
    "max(patchcore, energy)": ("patchcore", "energy"),
    "max(patchcore, energy_react)": ("patchcore", "energy_react"),
}


def react_energy(layer: torch.nn.Module, fit_pooled: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """The product's energy with ReAct (``fit_energy_clip`` at ``DEFAULT_ENERGY_CLIP``, the
    ``ScoreHead``) of pooled features, the clip fitted on ``fit_pooled``."""
    arrays = fit_energy_clip(fit_pooled, layer, DEFAULT_ENERGY_CLIP)
    head = ScoreHead(AnomalyModel(bank=np.zeros((0, 0), np.float32), threshold=0.0,
                                  scores=["energy"], arrays=arrays))  # fmt: skip
    x = torch.from_numpy(np.asarray(pooled, np.float32))
    with torch.inference_mode():
        return head.components(None, x, None)[0][0].numpy()


def candidates(
    fit,
    fit_cls,
    cal,
    test,
    args,
    classifier: bool,
    extra: np.ndarray | None = None,
    layer: torch.nn.Module | None = None,
) -> tuple[dict, np.ndarray]:
    """Each candidate novelty score's (calibration scores, test scores), and the bank's test maps.

    ``fit``/``cal``/``test``: ``forward_all`` triples; ``fit_cls``: the fit images' classes;
    ``extra``: the mirrored fit images' patches (``mirrored_patches``), for the bank only;
    ``layer``: the classifier's last layer (with ``classifier``: the ReAct energy too)."""
    bank, maps = patchcore(fit[0], test[0], 0.01, args.min_bank, args.smooth, extra)
    cal_maps = nearest_distances(cal[0], bank, smooth=args.smooth)
    out = {"patchcore": (cal_maps.reshape(len(cal_maps), -1).max(1),
                         maps.reshape(len(maps), -1).max(1))}  # fmt: skip
    m = mahalanobis_fit(fit[1], fit_cls)
    out["mahalanobis"] = (mahalanobis_score(m, cal[1]), mahalanobis_score(m, test[1]))
    out["knn_cosine"] = (knn_cosine(fit[1], cal[1]), knn_cosine(fit[1], test[1]))
    if classifier:
        out["energy"] = (energy(cal[2]), energy(test[2]))
        out["msp"] = (msp(cal[2]), msp(test[2]))
        out["max_logit"] = (-cal[2].max(1), -test[2].max(1))
        if layer is not None:
            out["energy_react"] = tuple(react_energy(layer, fit[1], x[1]) for x in (cal, test))
    for name, parts in COMBOS.items():
        if all(p in out for p in parts):
            out[name] = (
                np.max([normalised(out[p][0], out[p][0]) for p in parts], axis=0),
                np.max([normalised(out[p][0], out[p][1]) for p in parts], axis=0),
            )
    return out, maps


def feature_head(ins, bank_head: AnomalyModel, scores: str, fit: np.ndarray, cal: np.ndarray):
    """A head of ``scores`` (comma list) as the product fits it (one class: the fit parts),
    the patch bank taken from ``bank_head``, normalised and thresholded on ``cal``."""
    from defectssft.anomaly import (
        combine,
        extract_features,
        fit_mahalanobis,
        parse_scores,
        raw_scores,
        score_norms,
    )

    names = parse_scores(scores, 0)
    ff = extract_features(ins, fit, bank_head.indices, patches=False)
    arrays = {}
    if "knn" in names:
        arrays["knn_bank"] = ff.pooled
    if "mahalanobis" in names:
        arrays.update(fit_mahalanobis(ff.pooled, np.zeros(len(ff), int)))
    head = AnomalyModel(bank=bank_head.bank, threshold=0.0, indices=bank_head.indices,
                        map_size=bank_head.map_size, smooth=bank_head.smooth, scores=names,
                        arrays=arrays)  # fmt: skip
    raw = raw_scores(head, extract_features(ins, cal, head.indices, patches=head.has_map))
    head.norms = score_norms(raw)
    head.threshold = calibrate_threshold(combine(head, raw))
    return head


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


def neu_box_mask(image_path: str) -> np.ndarray:
    """The union of a NEU-DET image's defect boxes (Pascal VOC annotations), image size, bool."""
    import xml.etree.ElementTree as ET

    p = Path(image_path)
    root = ET.parse(DATASETS / "neu-det" / "annotations" / f"{p.stem}.xml").getroot()
    mask = np.zeros((int(root.find("size/height").text), int(root.find("size/width").text)), bool)
    for box in root.iter("bndbox"):
        x0, y0, x1, y1 = (int(float(box.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax"))
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def where_metrics(
    maps, masks, labels, threshold: float, scale: int = 4, tol: int = 16, peaks=None, size=None
) -> dict:
    """Pointing accuracy (strict and within ``tol`` px) on defective parts, pixel AUROC over all
    parts; maps drawn as the app/overlay draws them (``heat_weights``'s resize + blur, before
    its cut-off), at 1/``scale`` of the image size for the pixel AUROC. With ``peaks`` ([N, 2]
    x, y in input pixels of ``size`` = (height, width): the ``anomaly_peak`` the overlays mark)
    the pointing is the peak's instead of the drawn map's maximum."""
    hits = near = n = 0
    pix_s, pix_y = [], []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    for i, (amap, mask, y) in enumerate(zip(maps, masks, labels, strict=True)):
        h, w = mask.shape
        m = cv2.resize(np.asarray(amap, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        m = cv2.GaussianBlur(m, (0, 0), max(1.0, 0.02 * max(h, w)))
        if y:
            n += 1
            yy, xx = np.unravel_index(int(np.argmax(m)), m.shape)
            if peaks is not None:
                xx = int(np.clip(peaks[i][0] * w / size[1], 0, w - 1))
                yy = int(np.clip(peaks[i][1] * h / size[0], 0, h - 1))
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


def pooled_path(model) -> tuple[list[str], str | None]:
    """(the nodes from the last Conv through its activation to the global pooling that feeds
    the classifier's Gemm/MatMul, the pooled tensor's name that Gemm reads); ([], None) when
    the graph has no such path."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for pool in nodes:
        if pool.op_type not in ("GlobalAveragePool", "ReduceMean"):
            continue
        pooled, chain = pool.output[0], [pool.name]
        for _ in range(3):  # Flatten / Reshape / Squeeze between the pooling and the classifier
            nxt = consumers.get(pooled, [])
            if any(c.op_type in ("Gemm", "MatMul") for c in nxt):
                break
            shape_ops = [c for c in nxt if c.op_type in ("Flatten", "Reshape", "Squeeze")]
            if not shape_ops:
                break
            pooled = shape_ops[0].output[0]
            chain.append(shape_ops[0].name)
        if not any(c.op_type in ("Gemm", "MatMul") for c in consumers.get(pooled, [])):
            continue
        node = producer.get(pool.input[0])
        for _ in range(8):  # back through the activation to the convolution
            if node is None:
                break
            chain.append(node.name)
            if node.op_type == "Conv":
                return chain, pooled
            src = node.input[0]
            if node.op_type == "Mul":  # SiLU: x * sigmoid(x); follow x
                srcs = [i for i in node.input if i in producer]
                src = next((i for i in srcs if producer[i].op_type != "Sigmoid"), src)
            node = producer.get(src)
    return [], None


def latency(
    ins: InspectionModel, head: AnomalyModel, images: np.ndarray, iters: int, cal=None, labels=None
) -> dict:
    """Median batch-1 latency (ms, 1 thread) of the exported graph without/with the head (and,
    for a head with the peak, without the peak); the graphs are timed in turn, one run each
    per round, so load changes hit them alike. Each head graph's scores against torch's on
    every test part (``score_vs_torch``, as the export check measures it); for a head that
    reads the logits also an INT8 graph that keeps the classifier's last convolution and
    pooling (``pooled_path``) in float too (``int8_head_floatpool``).
    With ``cal`` images and test ``labels``: each head graph's threshold check
    (``exported_threshold``; ``images`` are the test parts)."""
    import defectssft.anomaly as anomaly_mod
    from defectssft.anomaly import score_scale, torch_outputs
    from defectssft.export import ExportError, export_onnx, ort_session

    h, w = images.shape[1:3]
    mean, std = list(ins.mean), list(ins.std)
    meta = {"model_name": MODEL, "classes": ["ok", "defect"], "ok_class": "ok", "mean": mean,
            "std": std, "input": {"height": h, "width": w, "bit_depth": 8}}  # fmt: skip
    out: dict = {}
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"plain": None, "head": head}
        if head.has_peak:  # the head as before the peak, timed beside it
            variants["head_nopeak"] = replace(head, peak={})
        reads_logits = any(n in head.scores for n in ("energy", "knn", "mahalanobis"))
        if reads_logits:
            variants["head_floatpool"] = head
        ref_scores = torch_outputs(head.wrap(ins), images)[0]
        scale = score_scale(head.threshold, bool(head.norms))
        head_only = anomaly_mod.int8_excluded
        for precision in ("fp32", "int8"):
            for variant, anomaly in variants.items():
                if variant == "head_floatpool" and precision != "int8":
                    continue
                path = Path(tmp) / f"{precision}_{variant}.onnx"
                key = f"{precision}_{variant}"
                if variant == "head_floatpool":  # the head and the pooled path in float
                    anomaly_mod.int8_excluded = lambda m: head_only(m) + pooled_path(m)[0]
                try:
                    res = export_onnx(
                        ins.backbone, meta, path, check_images=images[:8],
                        calib_images=images[:32], precision=precision,
                        anomaly=anomaly, max_int8_drop=1.0,
                    )  # fmt: skip
                except ExportError as e:  # e.g. INT8 moves the anomaly score too far
                    out[key] = {"refused": str(e)}
                    continue
                finally:
                    anomaly_mod.int8_excluded = head_only
                sessions[key] = ort_session(path, threads=1)
                out[key] = {"mb": res.size_bytes / 1e6}
                if res.anomaly is not None:
                    out[key]["check"] = res.anomaly
                    if cal is not None:
                        out[key]["threshold"] = exported_threshold(
                            sessions[key], anomaly, cal, images, labels
                        )
                    got = graph_scores(sessions[key], images)
                    out[key]["score_vs_torch"] = float(np.max(np.abs(got - ref_scores)) / scale)
                    if anomaly.has_peak:  # the graph's peaks against torch's, every test part
                        got = np.concatenate(
                            [
                                sessions[key].run(["anomaly_peak"], {"image": images[i : i + 16]})[
                                    0
                                ]
                                for i in range(0, len(images), 16)
                            ]
                        )
                        ref = peaks_of(ins, anomaly, images)
                        cell = max(h / anomaly.peak["grid"][0], w / anomaly.peak["grid"][1])
                        err = np.max(np.abs(got - ref), axis=1)
                        out[key]["peak_vs_torch"] = {
                            "within_one_cell": float(np.mean(err <= cell)),
                            "max_px": float(err.max()),
                        }  # fmt: skip
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
            plain = out[f"{precision}_plain"]
            for variant in variants:
                v = out.get(f"{precision}_{variant}", {})
                if variant != "plain" and "median_ms" in plain and "median_ms" in v:
                    suffix = "" if variant == "head" else variant[4:]
                    out[f"{precision}_extra{suffix}"] = v["median_ms"] / plain["median_ms"] - 1
    return out


# --------------------------------------------------------------------------- runs


def binary(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    flagged = scores >= threshold
    return {
        "auroc": roc_auc(scores, labels),
        "escape": float(np.mean(~flagged[labels == 1])),
        "overkill": float(np.mean(flagged[labels == 0])),
    }


def kolektor_ok_only() -> tuple[list, list, list]:
    """KolektorSDD with OK labels only: (the fixed test split, 40 calibration good parts, the
    other good parts of the pool to fit on), shuffled with seed 0."""
    data, test = kolektor_split(0)
    pool_ok = [p for p, c in data.labeled if c == 0] + [
        p for p, c in zip(data.unlabeled, data.unlabeled_truth, strict=True) if c == 0
    ]
    rng = np.random.default_rng(0)
    pool_ok = [pool_ok[i] for i in rng.permutation(len(pool_ok))]
    n_cal = len(pool_ok) // 5
    return test, pool_ok[:n_cal], pool_ok[n_cal:]


def kolektor(args, log) -> dict:
    h, w = args.height, args.width
    test, cal, fit = kolektor_ok_only()
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
        for ratio, flips in [(r, f) for r in args.ratios for f in args.fit_flips]:
            t0 = time.time()
            extra = mirrored_patches(ins, imgs["fit"], flips, args.layers)
            bank, test_maps = patchcore(
                feats["fit"], feats["test"], ratio, args.min_bank, args.smooth, extra
            )
            cal_scores = nearest_distances(feats["cal"], bank, smooth=args.smooth)
            cal_scores = cal_scores.reshape(len(cal), -1).max(1)
            thr = calibrate_threshold(cal_scores)
            scores = test_maps.reshape(len(test), -1).max(1)
            key = f"{name}/patchcore_{ratio:g}" + ("" if flips == "none" else f"+flips_{flips}")
            results["runs"][key] = {
                **binary(scores, labels, thr),
                "bank_rows": int(len(bank)),
                "bank_mb": bank.nbytes / 1e6,
                "fit_s": time.time() - t0 + t_feat,
                "where": where_metrics(test_maps, masks, labels, thr),
            }
            log(f"  {key}: {results['runs'][key]}")
            head = AnomalyModel(bank=bank, threshold=thr, map_size=list(test_maps.shape[1:]),
                                smooth=args.smooth, indices=list(args.layers))  # fmt: skip
            if flips != "none":
                continue
            if ratio == 0.01 and args.peak_window:
                t0 = time.time()
                head = with_peak(ins, head, imgs["fit"], args.peak_window)
                peaks = peaks_of(ins, head, imgs["test"])
                results["runs"][f"{key}+peak"] = {
                    "peak_window": args.peak_window,
                    "peak_bank_rows": int(len(head.arrays["peak_bank"])),
                    "fit_s": time.time() - t0,
                    "where": where_metrics(test_maps, masks, labels, thr, peaks=peaks, size=(h, w)),
                }
                log(f"  {key}+peak: {results['runs'][f'{key}+peak']}")
            if ratio == 0.01 and (head_for_cost is None or name == "finetuned"):
                head_for_cost = (ins, head)
        if args.candidates:
            fa = {k: forward_all(ins, v, args.layers) for k, v in imgs.items()}
            clf = name == "finetuned"
            cands, _ = candidates(fa["fit"], np.zeros(len(fit), int), fa["cal"], fa["test"], args,
                                  classifier=clf)  # fmt: skip
            if clf:
                cands["p_defect"] = tuple(
                    torch.softmax(torch.from_numpy(fa[k][2]), 1)[:, 1].numpy()
                    for k in ("cal", "test")
                )
            results["runs"][f"{name}/candidates"] = {k: roc_auc(v[1], labels)
                                                     for k, v in cands.items()}  # fmt: skip
            log(f"  {name}/candidates: {results['runs'][f'{name}/candidates']}")
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
        if args.cost_scores:
            head = feature_head(ins, head, args.cost_scores, imgs["fit"], imgs["cal"])
        results["cost"] = latency(ins, head, imgs["test"], args.iters, imgs["cal"], labels)
        results["cost"]["features"] = "finetuned" if ins is backbones.get("finetuned") else "frozen"
        log(f"  cost: {results['cost']}")
    return results


def tiled_head(ins: InspectionModel, fit: list, cal: list, test: list, tile: int,
               smooth: float) -> dict:  # fmt: skip
    """The product's head of a tiled model (``defectssft.anomaly._fit_tiled``'s rules) on
    frozen features: native-resolution ``tile`` x ``tile`` tiles (overlap 0.25), a random share
    of each fit part's patches (``MAX_FIT_PATCHES`` in all), the 1 % coreset; a part's score
    the maximum over its tiles, its map the tiles' maps stitched (``defectssft_line.tiles``)."""
    from defectssft.anomaly import DEFAULT_CORESET_RATIO, MAX_FIT_PATCHES
    from defectssft_line import tiles as T
    from defectssft_line.preprocess import read_image

    spec = T.TileSpec(tile, tile, overlap=0.25)
    rng = np.random.default_rng(0)
    keep = max(1, MAX_FIT_PATCHES // len(fit))
    t0 = time.time()
    rows, n_tiles = [], 0
    for path in fit:
        src = T.tile_source(read_image(path), spec, 8)
        got = []
        for _, tiles in T.iter_tile_batches(src, spec):
            f = extract_patches(ins, tiles, FEATURE_INDICES)[0]
            flat = f.reshape(-1, f.shape[-1])
            got.append(flat[rng.permutation(len(flat))[:keep]])
            n_tiles += len(tiles)
        got = np.concatenate(got)
        rows.append(got[np.sort(rng.permutation(len(got))[:keep])])
    patches = np.concatenate(rows)
    n_rows = bank_rows(len(patches), patches.shape[1], 20.0, DEFAULT_CORESET_RATIO,
                       DEFAULT_MIN_BANK)  # fmt: skip
    bank = patches[greedy_coreset(patches, n_rows)]
    fit_s = time.time() - t0

    def part(path: str):
        src, size = T.sized_source(read_image(path), spec, 8)
        scores, maps, pos = [], [], []
        for where, tiles in T.iter_tile_batches(src, spec):
            m = nearest_distances(extract_patches(ins, tiles, FEATURE_INDICES)[0], bank,
                                  smooth=smooth)  # fmt: skip
            maps.append(m)
            scores.append(m.reshape(len(m), -1).max(1))
            pos += where
        return float(np.concatenate(scores).max()), T.stitch(np.concatenate(maps), pos,
                                                             src.shape[:2], spec, size)  # fmt: skip

    t1 = time.time()
    cal_scores = np.array([part(p)[0] for p in cal])
    got = [part(p) for p in test]
    return {
        "scores": np.array([g[0] for g in got]),
        "maps": [g[1] for g in got],
        "threshold": calibrate_threshold(cal_scores),
        "bank_rows": int(len(bank)),
        "fit_tiles": n_tiles,
        "fit_s": fit_s,
        "score_s_per_part": (time.time() - t1) / (len(cal) + len(test)),
    }


def tiled(args, log) -> dict:
    """``--tiled TILE``: the tiled head (``tiled_head``) with OK labels only, frozen features, on
    KolektorSDD (the split of ``kolektor``: fit 160, calibrate 40, test 153) with pointing, and
    on the small-defect stress set of ``tiles_accuracy.py`` (2,000 x 2,000 mosaics with 3-10 px
    defects: fit on its 30 labeled good parts, calibrate on its 16 unlabeled good ones, test 20
    good + 20 defective)."""
    from tiles_accuracy import stress_split

    ins = frozen_model()
    out: dict = {"tile": args.tiled, "overlap": 0.25, "features": "frozen"}
    test, cal, fit = kolektor_ok_only()
    fit = fit[: args.max_fit]
    labels = np.array([c for _, c in test])
    r = tiled_head(ins, fit, cal, [p for p, _ in test], args.tiled, args.smooth)
    masks = [kolektor_mask(p) if c else np.zeros(cv2.imread(p, 0).shape, bool) for p, c in test]
    out["kolektor"] = {
        **binary(r["scores"], labels, r["threshold"]),
        **{k: v for k, v in r.items() if k not in ("scores", "maps")},
        "where": where_metrics(r["maps"], masks, labels, r["threshold"]),
    }
    log(f"  kolektor, tiles {args.tiled}: {out['kolektor']}")
    if args.skip_stress:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        sdata, stest = stress_split(Path(tmp), 0)
        good_fit = [p for p, c in sdata.labeled if c == 0]
        good_cal = [p for p, c in zip(sdata.unlabeled, sdata.unlabeled_truth, strict=True)
                    if c == 0]  # fmt: skip
        slabels = np.array([c for _, c in stest])
        r = tiled_head(ins, good_fit, good_cal, [p for p, _ in stest], args.tiled, args.smooth)
    out["stress"] = {
        **binary(r["scores"], slabels, r["threshold"]),
        **{k: v for k, v in r.items() if k not in ("scores", "maps")},
        "test": len(stest),
    }
    log(f"  stress, tiles {args.tiled}: {out['stress']}")
    return out


def elpv(args, log) -> dict:
    """ELPV with OK labels only, per cell type: fit the bank on good cells (PROB 0.0), its
    threshold on other good cells, AUROC of good against defective (1.0) test cells; frozen
    features at the input size the product proposes for 300 x 300 cells (160 x 160)."""
    out: dict = {"size": [160, 160]}
    ins = frozen_model()
    for kind in ("mono", "poly"):
        pool, _ = elpv_pool(DATASETS / "elpv", kind)
        good, bad = [str(p) for p in pool[OK]], [str(p) for p in pool["defect"]]
        rng = np.random.default_rng(0)
        good = [good[i] for i in rng.permutation(len(good))]
        bad = [bad[i] for i in rng.permutation(len(bad))][: args.elpv_test]
        n_fit = args.max_fit if args.quick else 400
        fit, cal = good[:n_fit], good[n_fit : n_fit + 40]
        test_good = good[n_fit + 40 : n_fit + 40 + args.elpv_test]
        paths = test_good + bad
        labels = np.array([0] * len(test_good) + [1] * len(bad))
        imgs = {k: load_images(v, 160, 160, 8) for k, v in (("fit", fit), ("cal", cal))}
        imgs["test"] = load_images(paths, 160, 160, 8)
        feats = {k: extract_patches(ins, v, args.layers)[0] for k, v in imgs.items()}
        runs = {}
        for flips in args.fit_flips:
            extra = mirrored_patches(ins, imgs["fit"], flips, args.layers)
            bank, test_maps = patchcore(feats["fit"], feats["test"], 0.01, args.min_bank,
                                        args.smooth, extra)  # fmt: skip
            cal_s = nearest_distances(feats["cal"], bank, smooth=args.smooth)
            thr = calibrate_threshold(cal_s.reshape(len(cal), -1).max(1))
            runs[f"patchcore+flips_{flips}"] = {
                **binary(test_maps.reshape(len(paths), -1).max(1), labels, thr),
                "bank_rows": int(len(bank)),
            }
        out[kind] = {"fit": len(fit), "calibrate": len(cal), "test_good": len(test_good),
                     "test_defective": len(bad), "runs": runs}  # fmt: skip
        log(f"  elpv {kind}: {out[kind]}")
    return out


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
    masks = [neu_box_mask(p) for p, _ in test_items]
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
        bank, maps = patchcore(fit_f, test_f, 0.01, args.min_bank, args.smooth)
        novel = (test_cls == held).astype(int)
        flipped = {}
        for flips in args.fit_flips:
            if flips != "none":
                extra = mirrored_patches(ins, lab_imgs[known], flips, args.layers)
                _, m = patchcore(lab_f[known], test_f, 0.01, args.min_bank, args.smooth, extra)
                flipped[f"patchcore+flips_{flips}"] = roc_auc(m.reshape(len(test_f), -1).max(1),
                                                              novel)  # fmt: skip
        folds[cname] = {
            **added,
            **flipped,
            "patchcore": roc_auc(maps.reshape(len(test_f), -1).max(1), novel),
            "knn_penultimate": roc_auc(knn_pooled(lab_p[known], test_p), novel),
        }
        # Where: the held-out (novel) class's test images, inside their defect boxes
        t = np.flatnonzero(novel)
        boxes = [masks[i] for i in t]
        ones = np.ones(len(t), int)
        folds[cname]["pointing_map"] = where_metrics(maps[t], boxes, ones, 0.0)
        if args.peak_window:
            head = AnomalyModel(bank=bank, threshold=0.0, map_size=list(maps.shape[1:]),
                                smooth=args.smooth, indices=list(args.layers))  # fmt: skip
            head = with_peak(ins, head, lab_imgs[known], args.peak_window)
            peaks = peaks_of(ins, head, test_imgs[t])
            folds[cname]["pointing_peak"] = where_metrics(
                maps[t], boxes, ones, 0.0, peaks=peaks, size=(size, size)
            )
        log(f"  neu held out {cname}: {folds[cname]}")
    mean = {
        m: float(np.mean([f[m] for f in folds.values()]))
        for m in folds[data.classes[0]]
        if m.startswith(("patchcore", "knn_penultimate"))
    }
    for k in ("pointing_map", "pointing_peak"):
        for m in ("pointing", "pointing_16px"):
            if k in folds[data.classes[0]]:
                mean[f"{k}/{m}"] = float(np.mean([f[k][m] for f in folds.values()]))
    return {"k": args.neu_k, "unlabeled_per_class": args.neu_unlabeled, "test": len(test_items),
            "folds": folds, "mean": mean, "smooth": args.smooth, "min_bank": args.min_bank,
            "layers": args.layers}  # fmt: skip


def cached_model(path: Path, num_classes: int) -> InspectionModel:
    """A fold's fine-tuned version saved by ``--cache-models`` (tensors only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    bb = create_backbone(MODEL, num_classes)
    bb.load_state_dict(state["weights"])
    return InspectionModel(bb.eval(), state["mean"], state["std"], ok_index=None).eval()


def neu_finetune(
    classes, labeled, steps: int, size: int, run_dir: Path, unlabeled: list[str] | None = None
) -> InspectionModel:
    """The product's training for ``steps`` steps on one fold's known classes: supervised on
    the labels, or with ``unlabeled`` images its default semi-supervised method on them too
    (its defaults otherwise); no validation split, so the final EMA weights ship."""
    from defectssft.training.config import resolve_config
    from defectssft.training.data import TrainData
    from defectssft.training.loop import train

    cfg = resolve_config(
        overrides={
            "model": {"name": MODEL, "weights": "imagenet"},
            "input": {"height": size, "width": size},
            **({} if unlabeled else {"ssl": {"method": "supervised"}}),
            "train": {"steps": steps, "eval_every": 10**9, "checkpoint_every": 10**9,
                      "log_every": 100, "num_workers": 0, "threads": 1},
        }
    )  # fmt: skip
    data = TrainData(
        classes=list(classes), labeled=list(labeled), unlabeled=list(unlabeled or []), bit_depth=8
    )
    result = train(cfg, data, run_dir, handle_signals=False)
    bb = create_backbone(MODEL, len(classes))
    bb.load_state_dict(result.weights)
    return InspectionModel(bb.eval(), result.mean, result.std, ok_index=None).eval()


def neu_loco_finetuned(args, log) -> dict:
    """Leave one class out with a real fine-tune per fold (``--neu-finetune STEPS``): the
    version is trained on the 5 known classes' k labels; every candidate novelty score on its
    features and logits (``candidates``), fit on the k labels (with their classes), combos
    normalised on ``--neu-cal`` more images of each known class (the validation split's
    stand-in). ``--neu-unlabeled N``: also fit on the stream images (N of each of the 6
    classes) the fine-tuned classifier calls a known class with confidence (top p >= 0.95,
    the product's rule), with that class. ``--neu-ssl``: the version trained semi-supervised
    (the product's default method) with the rest of the pool unlabeled, the held-out class's
    images among them (the issue's protocol: on a line the novel defect is in the stream)."""
    size = 128
    data = neu_split(k=args.neu_k, seed=0)
    n_cls = len(data.classes)
    test_items = data.test[::2] if args.quick else data.test
    pool = {c: [p for p, t in zip(data.unlabeled, data.unlabeled_truth, strict=True) if t == c]
            for c in range(n_cls)}  # fmt: skip
    cal_items = [(p, c) for c in range(n_cls) for p in pool[c][: args.neu_cal]]
    stream_items = [(p, c) for c in range(n_cls)
                    for p in pool[c][args.neu_cal : args.neu_cal + args.neu_unlabeled]]  # fmt: skip
    items = {"lab": data.labeled, "cal": cal_items, "test": test_items, "stream": stream_items}
    imgs = {k: load_images([p for p, _ in v], size, size, 8) for k, v in items.items() if v}
    cls = {k: np.array([c for _, c in v], dtype=int) for k, v in items.items()}
    frozen = frozen_model()
    ff = {k: forward_all(frozen, v, args.layers) for k, v in imgs.items()}
    # the default backbone's cache names as they were
    model_tag = ("" if MODEL == "tf_efficientnet_lite0" else f"_{MODEL}") + (
        "_ssl" if args.neu_ssl else ""
    )
    # --neu-ssl: the pool the calibration images did not take, every class (held out too)
    ssl_pool = [p for c in range(n_cls) for p in pool[c][args.neu_cal :]] if args.neu_ssl else []
    folds: dict = {}
    dump: dict = {}
    for held, cname in enumerate(data.classes):
        t0 = time.time()
        known = [c for c in range(n_cls) if c != held]
        remap = {c: i for i, c in enumerate(known)}
        lab = [(p, remap[c]) for p, c in data.labeled if c != held]
        cached = (
            Path(args.cache_models, f"neu_{cname}_{args.neu_finetune}{model_tag}.pt")
            if args.cache_models
            else None
        )
        if cached is not None and cached.is_file():
            ins = cached_model(cached, len(known))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                ins = neu_finetune([data.classes[c] for c in known], lab, args.neu_finetune, size,
                                   Path(tmp) / "run", unlabeled=ssl_pool)  # fmt: skip
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"weights": ins.backbone.state_dict(), "mean": list(ins.mean),
                            "std": list(ins.std)}, cached)  # fmt: skip
        t_train = time.time() - t0
        fa = {k: forward_all(ins, v, args.layers) for k, v in imgs.items()}
        lab_m, cal_m = cls["lab"] != held, cls["cal"] != held
        novel = (cls["test"] == held).astype(int)
        known_test = cls["test"] != held
        pred = np.array(known)[fa["test"][2].argmax(1)]
        fold: dict = {"train_s": t_train,
                      "known_test_accuracy": float(np.mean(pred[known_test] ==
                                                           cls["test"][known_test]))}  # fmt: skip

        def sub(f, m):
            return tuple(a[m] for a in f)

        settings = {
            "finetuned": (fa, None),
            "frozen": (ff, None),
        }
        if "stream" in imgs:
            p_s = torch.softmax(torch.from_numpy(fa["stream"][2]), 1).numpy()
            keep = p_s.max(1) >= 0.95
            fold["stream_admitted"] = int(keep.sum())
            fold["stream_admitted_held_out"] = int((keep & (cls["stream"] == held)).sum())
            settings["finetuned+stream"] = (fa, (keep, p_s.argmax(1)))
        for flips in args.fit_flips:
            if flips != "none":
                for base, model in (("finetuned", ins), ("frozen", frozen)):
                    settings[f"{base}+flips_{flips}"] = (
                        fa if model is ins else ff,
                        None,
                        mirrored_patches(model, imgs["lab"][lab_m], flips, args.layers),
                    )
        for sname, (f, extra, *mirrored) in settings.items():
            fit, fit_cls = sub(f["lab"], lab_m), np.array([remap[c] for c in cls["lab"][lab_m]])
            if extra is not None:
                keep, pc = extra
                fit = tuple(
                    np.concatenate([a, b[keep]]) for a, b in zip(fit, f["stream"], strict=True)
                )
                fit_cls = np.concatenate([fit_cls, pc[keep]])
            scores, _ = candidates(fit, fit_cls, sub(f["cal"], cal_m), f["test"], args,
                                   classifier=not sname.startswith("frozen"),
                                   extra=mirrored[0] if mirrored else None,
                                   layer=ins.backbone.get_classifier())  # fmt: skip
            fold[sname] = {k: roc_auc(v[1], novel) for k, v in scores.items()}
            for k, v in scores.items():
                dump[f"{cname}|{sname}|{k}|cal"], dump[f"{cname}|{sname}|{k}|test"] = v
        dump[f"{cname}|novel"] = novel
        folds[cname] = fold
        log(f"  neu held out {cname} ({time.time() - t0:.0f} s): {fold}")
        if args.dump_scores:
            np.savez(args.dump_scores, **dump)
    mean = {
        s: {k: float(np.mean([f[s][k] for f in folds.values()])) for k in folds[data.classes[0]][s]}
        for s in folds[data.classes[0]] if isinstance(folds[data.classes[0]][s], dict)
    }  # fmt: skip
    log(f"  neu mean: {mean}")
    return {"k": args.neu_k, "steps": args.neu_finetune, "size": size,
            "training": "semi-supervised" if args.neu_ssl else "supervised",
            "unlabeled_in_training": len(ssl_pool), "cal_per_class":
            args.neu_cal, "unlabeled_per_class": args.neu_unlabeled, "test": len(test_items),
            "folds": folds, "mean": mean, "smooth": args.smooth, "min_bank": args.min_bank,
            "layers": args.layers}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    global MODEL  # --model: the backbone every function here builds
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
    ap.add_argument(
        "--candidates",
        action="store_true",
        help="KolektorSDD: also every candidate novelty score (Mahalanobis, kNN, energy, combos)",
    )
    ap.add_argument(
        "--cost-scores",
        default=None,
        metavar="LIST",
        help="time a head of these scores (fit-anomaly --scores) instead of the patch bank",
    )
    ap.add_argument(
        "--iters", type=int, default=None, help="latency timings per graph (200; --quick: 50)"
    )
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
    ap.add_argument(
        "--peak-window",
        type=int,
        default=DEFAULT_PEAK_WINDOW,
        metavar="N",
        help="the coarse-to-fine peak's window in patches (fit-anomaly --peak-window; the "
        f"product's default: {DEFAULT_PEAK_WINDOW}, none); pointing of the peak, and its cost",
    )
    ap.add_argument("--neu", action="store_true", help="also NEU-DET leave-one-class-out")
    ap.add_argument("--neu-k", type=int, default=10)
    ap.add_argument("--elpv", action="store_true", help="also ELPV with OK labels only")
    ap.add_argument("--elpv-test", type=int, default=100, help="ELPV test cells of each kind")
    ap.add_argument(
        "--neu-unlabeled",
        type=int,
        default=0,
        metavar="N",
        help="also fit on confident calls among N unlabeled images of each class",
    )
    ap.add_argument(
        "--neu-finetune",
        type=int,
        default=0,
        metavar="STEPS",
        help="NEU leave-one-class-out with the version fine-tuned per fold (every candidate score)",
    )
    ap.add_argument(
        "--neu-ssl",
        action="store_true",
        help="--neu-finetune: train each fold semi-supervised (the product's default method) "
        "with the rest of the pool unlabeled, the held-out class included",
    )
    ap.add_argument(
        "--fit-flips",
        nargs="+",
        choices=list(FIT_FLIPS),
        default=["none"],
        help="the patch bank also fit on mirrored fit images (fit-anomaly --fit-flips); "
        "each choice a row of its own",
    )
    ap.add_argument(
        "--cache-models",
        default=None,
        metavar="DIR",
        help="--neu-finetune: keep each fold's fine-tuned weights here and reuse them",
    )
    ap.add_argument("--dump-scores", default=None, help="--neu-finetune: every score to this .npz")
    ap.add_argument("--neu-cal", type=int, default=10, help="calibration images per known class")
    ap.add_argument("--skip-kolektor", action="store_true", help="with --neu: NEU-DET only")
    ap.add_argument(
        "--tiled",
        type=int,
        default=0,
        metavar="TILE",
        help="instead: the tiled head at native resolution (TILE px tiles), KolektorSDD and the "
        "small-defect stress set",
    )
    ap.add_argument("--skip-stress", action="store_true", help="--tiled: KolektorSDD only")
    ap.add_argument(
        "--model",
        default=MODEL,
        choices=[f"tf_efficientnet_lite{i}" for i in range(3)],
        help=f"the backbone, ImageNet weights offline (the product's default: {MODEL})",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)  # fmt: skip
    if args.neu_ssl and not args.neu_finetune:
        ap.error("--neu-ssl trains the fold versions: give --neu-finetune STEPS too")
    MODEL = args.model
    if args.iters is None:
        args.iters = 50 if args.quick else 200
    torch.set_num_threads(args.threads)
    if not (DATASETS / "kolektorsdd").is_dir():
        raise SystemExit(f"no KolektorSDD under {DATASETS}")

    def log(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.time()
    if args.tiled:
        payload = {"tiled": tiled(args, log), "wall_s": time.time() - t0}
        log(f"written {write_results(args.name or f'open_set_tiled{args.tiled}', payload)}")
        return 0
    payload = {} if args.skip_kolektor else {"kolektor": kolektor(args, log)}
    if args.neu:
        payload["neu_loco"] = neu_loco(args, log)
    if args.elpv:
        payload["elpv"] = elpv(args, log)
    if args.neu_finetune:
        payload["neu_loco_finetuned"] = neu_loco_finetuned(args, log)
    payload["wall_s"] = time.time() - t0
    name = args.name or ("open_set_quick" if args.quick else "open_set")
    log(f"written {write_results(name, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
