"""Novel defects: a good-part feature model beside the classifier, in the same exported graph.

A PatchCore-style memory bank (the choice and its measurements: BENCHMARKS.md, "Open set"):
mid-level patch features of the model's own backbone (two stages, each 3x3 average-pooled so a
patch sees its neighbours, the coarser one upsampled to the finer grid and concatenated) from
good parts, subsampled by a greedy k-center coreset to a bounded bank. A part's anomaly map is
each patch's distance to its nearest bank feature, smoothed by a small Gaussian (``smooth``, in
patch cells, as PatchCore smooths its map) so one stray patch does not make the score; its
anomaly score is the map's maximum.

A head can also combine feature-level scores of the version's own classifier (``SCORES``: kNN
and class-conditional Mahalanobis on the pooled penultimate features, the energy of the
logits, clipped as ReAct does), each normalised on the held-out parts and combined by their
maximum (``ScoreHead``).
Which scores a fit uses: ``default_scores`` (with an OK class the bank alone; without one the
bank and the energy), or ``--scores``.

* ``fit_project_anomaly`` fits it for a model version (``defectssft fit-anomaly`` and the last
  step of ``defectssft train``): OK-labeled train images plus unlabeled images the classifier
  calls OK with confidence (a project without an OK class: every labeled train image, so the
  score means "unlike every known class"; the stream is left out, as it holds the novel classes
  too); the threshold is calibrated on held-out good parts (the validation split's, else a
  held-back part of the fit images) and stored with the bank.
* ``models/vNNNN/anomaly.npz`` (the bank and the feature scores' arrays, read with
  ``allow_pickle=False``) and ``anomaly.json`` (everything else) hold it; ``load_anomaly``
  reads them (format 1 and 2 heads are the bank alone).
* A tiled model's head (``_fit_tiled``) is the patch bank of its good parts' tiles; a part's
  score is the maximum over its tiles and its map the tiles' maps stitched
  (``defectssft_line.tiles``), everywhere a part is scored (``image_scorer``, the line).
* ``AnomalyInspectionModel`` is the graph export writes when a version has the head: the
  classifier's outputs unchanged plus ``anomaly_score`` [N] and, with the bank, ``anomaly_map``
  [N, h, w] (nearest-neighbour distance as MatMul + ReduceMin: pure ONNX ops). The verdict rule
  on the score is the line's (``defectssft_line.novelty``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectssft.errors import DefectssftError
from defectssft.fsutil import atomic_path
from defectssft_line.novelty import ON_NOVEL_CHOICES, NoveltyRule

BANK_FILE = "anomaly.npz"
META_FILE = "anomaly.json"
ANOMALY_FORMAT = "defectssft-anomaly"
ANOMALY_FORMAT_VERSION = 5  # 2: the ``smooth`` key (none: unsmoothed); 3: ``scores``, ``norms``;
# 4: ``peak`` (the coarse-to-fine peak, with ``peak_bank`` in the npz; none: no peak output);
# 5: ``energy_clip``/``energy_w``/``energy_b`` in the npz (ReAct; none: the plain energy)
# The novelty scores a head can combine (each normalised on the held-out parts, the maximum):
# the patch bank on good parts (PatchCore), kNN on the pooled penultimate features (cosine),
# class-conditional Mahalanobis on them (a shared covariance), the classifier's energy.
SCORES = ("patchcore", "knn", "mahalanobis", "energy")
DEFAULT_SCORES_NO_OK = ("patchcore", "energy")
# The energy reads logits of the pooled features clipped at this percentile of the fit images'
# (ReAct, Sun et al. 2021, its default; 0: plain energy). BENCHMARKS.md, "Open set".
DEFAULT_ENERGY_CLIP = 90.0
FEATURE_INDICES = (2, 3)  # timm feature stages: stride 8 and 16 (mid-level, as PatchCore)
DEFAULT_BANK_MB = 20.0
DEFAULT_CORESET_RATIO = 0.01  # of all fit patches; the nearest-neighbour search costs M * D
DEFAULT_MIN_BANK = 512
DEFAULT_SMOOTH = 1.0  # sigma of the map's Gaussian in patch cells (8 px at input scale)
MAX_SMOOTH = 8.0
DEFAULT_MAX_FIT_IMAGES = 400
DEFAULT_NOVEL_RATE = 0.01  # fraction of held-out good parts allowed above the threshold
# Largest |anomaly_score(onnxruntime) - anomaly_score(torch)| accepted, relative to the threshold.
MAX_SCORE_DIFF = {"fp32": 5e-3, "fp16": 2e-2, "int8": 0.1}
CONFIDENT_OK = 0.05  # an unlabeled image joins the fit when its defect score is below this
MIN_HELD_OUT = 5
MAX_FIT_PATCHES = 200_000  # patches the coreset is chosen from (a random subset beyond)
DEFAULT_MAX_SCORED = 5000  # unlabeled images scored for the app's "novel" filter
# A tiled model's head reads at most this many tiles for its fit, and again to score held-out
# and unlabeled parts (lite0 at 128 px: at most ~27 ms a tile on one core, BENCHMARKS.md "Open set")
MAX_TILED_TILES = 20_000
OUTPUT_NAMES = ("probs", "logits", "defect_score", "anomaly_score", "anomaly_map", "anomaly_peak")
# The peak's coarse-to-fine refinement (``PeakHead``): finer backbone stages (stride 4), a
# window of ``PEAK_WINDOW`` coarse patches around the coarse map's maximum, at most this many
# random patches of each fit image for its bank (the bank a coreset of them, as the coarse one).
# Off by default (``DEFAULT_PEAK_WINDOW``): on the suite it did not point better by more than
# the noise of 20 parts, and it costs (BENCHMARKS.md, "Open set"); ``--peak-window 3`` fits it.
PEAK_INDICES = (1, 2)
PEAK_WINDOW = 3
DEFAULT_PEAK_WINDOW = 0
MAX_PEAK_WINDOW = 9
PEAK_PATCHES_PER_IMAGE = 512
# Mirrored copies of the fit images whose patches also enter the bank: "h" left-right, "v" up-down,
# "hv" both at once. A fit choice (BENCHMARKS.md, "Open set"); the bank keeps the rows the
# un-mirrored patches would give, so the exported graph costs the same.
FIT_FLIPS = {"none": (), "h": ("h",), "v": ("v",), "hv": ("h", "v", "hv")}
DEFAULT_FIT_FLIPS = "none"


class AnomalyError(DefectssftError):
    """Nothing to fit on, a backbone without intermediate features, or an unreadable head."""


# --------------------------------------------------------------------------- the network


def _intermediates(backbone: nn.Module, x: torch.Tensor, indices: Sequence[int]):
    if not hasattr(backbone, "forward_intermediates"):
        raise AnomalyError(
            f"backbone {type(backbone).__name__} has no intermediate features "
            "(timm forward_intermediates); the anomaly head needs one that does"
        )
    return backbone.forward_intermediates(x, indices=list(indices))


def patch_features(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stage feature maps -> [N, D, h, w] patch features on the finest stage's grid."""
    size = maps[0].shape[-2:]
    out = []
    for m in maps:
        m = F.avg_pool2d(m.float(), kernel_size=3, stride=1, padding=1)
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        out.append(m)
    return torch.cat(out, dim=1)


def flip_images(images: np.ndarray, flip: str) -> np.ndarray:
    """uint8 NHWC ``images`` mirrored: ``h`` left-right, ``v`` up-down, ``hv`` both."""
    if flip not in ("h", "v", "hv"):
        raise AnomalyError(f"unknown flip {flip!r}: h, v or hv")
    out = images[:, :, ::-1] if "h" in flip else images
    return np.ascontiguousarray(out[:, ::-1] if "v" in flip else out)


def gaussian_taps(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of ``sigma`` (radius ``ceil(3 sigma)``); [1.] for sigma <= 0."""
    if sigma <= 0:
        return np.ones(1, np.float32)
    r = max(1, math.ceil(3 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).astype(np.float32)


class AnomalyHead(nn.Module):
    """Patch features [N, D, h, w] -> (anomaly score [N], anomaly map [N, h, w]).

    The bank is a buffer (it saves and exports with the graph); the squared distance to the
    nearest bank row is ``|f|^2 + min_b(|b|^2 - 2 f.b)``: one MatMul against ``-2 b`` plus the
    row bias ``|b|^2`` (onnxruntime fuses them) and a ReduceMin are all that touch the
    [patches, bank] matrix; ``|f|^2`` is added after the minimum.
    Features and bank are centred on the bank's mean first: the terms are then small and
    their float32 cancellation (torch and onnxruntime sum in different orders) stays small too.
    The distance map is then smoothed by a separable Gaussian of ``smooth`` patch cells (two
    fixed convolutions over an edge-padded map, pure ONNX ops) before its maximum is taken."""

    def __init__(self, bank: torch.Tensor | np.ndarray, smooth: float = 0.0) -> None:
        super().__init__()
        taps = torch.as_tensor(gaussian_taps(smooth))
        self.radius = (len(taps) - 1) // 2
        self.register_buffer("taps_x", taps.view(1, 1, 1, -1))
        self.register_buffer("taps_y", taps.view(1, 1, -1, 1))
        bank64 = np.asarray(bank, dtype=np.float64)
        centre = bank64.mean(axis=0)
        bank = torch.as_tensor((bank64 - centre).astype(np.float32))
        self.register_buffer("centre", torch.as_tensor(centre.astype(np.float32)).view(1, -1))
        self.register_buffer("bank_t_m2", (-2.0 * bank).t().contiguous())
        self.register_buffer("bank_sq", (bank * bank).sum(dim=1))

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, d, h, w = feats.shape
        f = feats.permute(0, 2, 3, 1).reshape(-1, d) - self.centre
        d2 = (f * f).sum(dim=1) + (f @ self.bank_t_m2 + self.bank_sq).min(dim=1).values
        nearest = d2.clamp_min(0.0).sqrt()
        amap = nearest.reshape(n, h, w)
        if self.radius:
            r = self.radius
            m = F.pad(amap.unsqueeze(1), (r, r, r, r), mode="replicate")
            amap = F.conv2d(F.conv2d(m, self.taps_x), self.taps_y).squeeze(1)
        return amap.flatten(1).max(dim=1).values, amap


class PeakHead(nn.Module):
    """Where the coarse map points, refined: coarse map [N, h, w] + finer patch features
    [N, D, H, W] -> the peak (x, y) in input pixels [N, 2].

    Around the coarse map's maximum (ArgMax), a window of ``window`` x ``window`` coarse patches
    on the fine grid (moved inside the grid at its edges) is gathered (GatherElements), each of
    its fine patches' distance to the nearest row of a bank of good parts' fine features taken
    (the coarse head's Gemm + ReduceMin, on the window only) and smoothed as the coarse map
    (``smooth`` fine cells, edge-padded window), and the maximum placed within its cell by a
    parabola through its neighbours (sub-cell: a crack is thinner than a patch).
    Pure ONNX ops; the sizes are fixed at construction (the graph's input size is fixed)."""

    def __init__(
        self,
        bank: torch.Tensor | np.ndarray,
        coarse_size: Sequence[int],
        fine_size: Sequence[int],
        input_size: Sequence[int],
        window: int = PEAK_WINDOW,
        smooth: float = DEFAULT_SMOOTH,
    ) -> None:
        super().__init__()
        taps = torch.as_tensor(gaussian_taps(smooth))
        self.radius = (len(taps) - 1) // 2
        self.register_buffer("taps_x", taps.view(1, 1, 1, -1))
        self.register_buffer("taps_y", taps.view(1, 1, -1, 1))
        (h, w), (gh, gw), (ih, iw) = (tuple(int(v) for v in s) for s in
                                      (coarse_size, fine_size, input_size))  # fmt: skip
        self.coarse = (h, w)
        self.fine = (gh, gw)
        self.cell = (ih / gh, iw / gw)  # input pixels per fine patch (y, x)
        self.k = (min(gh, max(1, round(window * gh / h))), min(gw, max(1, round(window * gw / w))))
        oy, ox = torch.meshgrid(torch.arange(self.k[0]), torch.arange(self.k[1]), indexing="ij")
        self.register_buffer("off", (oy * gw + ox).reshape(1, -1))
        bank64 = np.asarray(bank, dtype=np.float64)
        centre = bank64.mean(axis=0)
        bank = torch.as_tensor((bank64 - centre).astype(np.float32))
        self.register_buffer("centre", torch.as_tensor(centre.astype(np.float32)).view(1, 1, -1))
        self.register_buffer("bank_t_m2", (-2.0 * bank).t().contiguous())
        self.register_buffer("bank_sq", (bank * bank).sum(dim=1))

    def window_start(self, amap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's top-left fine cell (y, x) [N] each, for coarse maps [N, h, w]."""
        (h, w), (gh, gw), (k0, k1) = self.coarse, self.fine, self.k
        idx = amap.flatten(1).argmax(dim=1)
        cy = torch.div(idx, w, rounding_mode="floor")
        cx = idx - cy * w
        # the fine cell under the coarse cell's centre, the window centred on it
        fy = torch.div((2 * cy + 1) * gh, 2 * h, rounding_mode="floor") - k0 // 2
        fx = torch.div((2 * cx + 1) * gw, 2 * w, rounding_mode="floor") - k1 // 2
        return fy.clamp(0, gh - k0), fx.clamp(0, gw - k1)

    def window_distances(self, fine: torch.Tensor, sy: torch.Tensor, sx: torch.Tensor):
        """Each window patch's nearest-bank distance [N, k0, k1]."""
        n, d = fine.shape[:2]
        flat = (sy * self.fine[1] + sx).unsqueeze(1) + self.off  # [N, k0 * k1]
        g = fine.flatten(2).gather(2, flat.unsqueeze(1).expand(n, d, flat.shape[1]))
        f = g.transpose(1, 2) - self.centre  # [N, k0 * k1, D]
        d2 = (f * f).sum(dim=2) + (f @ self.bank_t_m2 + self.bank_sq).min(dim=2).values
        win = d2.clamp_min(0.0).sqrt().reshape(n, 1, self.k[0], self.k[1])
        if self.radius:
            r = self.radius
            win = F.pad(win, (r, r, r, r), mode="replicate")
            win = F.conv2d(F.conv2d(win, self.taps_x), self.taps_y)
        return win.squeeze(1)

    @staticmethod
    def _vertex(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, inside: torch.Tensor):
        """The parabola through (-1, a), (0, b), (1, c): its vertex in [-0.5, 0.5] (0 where
        the maximum is at the window's edge or the three are not a peak)."""
        den = a - 2 * b + c
        ok = inside & (den < 0)
        off = 0.5 * (a - c) / torch.where(ok, den, torch.ones_like(den))
        return torch.where(ok, off.clamp(-0.5, 0.5), torch.zeros_like(off))

    def forward(self, amap: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        sy, sx = self.window_start(amap)
        win = self.window_distances(fine.float(), sy, sx)
        k0, k1 = self.k
        j = win.flatten(1).argmax(dim=1)
        jy = torch.div(j, k1, rounding_mode="floor")
        jx = j - jy * k1
        flat = win.flatten(1)

        def at(dy: int, dx: int) -> torch.Tensor:
            y = (jy + dy).clamp(0, k0 - 1)
            x = (jx + dx).clamp(0, k1 - 1)
            return flat.gather(1, (y * k1 + x).unsqueeze(1)).squeeze(1)

        peak = at(0, 0)
        oy = self._vertex(at(-1, 0), peak, at(1, 0), (jy > 0) & (jy < k0 - 1))
        ox = self._vertex(at(0, -1), peak, at(0, 1), (jx > 0) & (jx < k1 - 1))
        y = ((sy + jy).float() + 0.5 + oy) * self.cell[0]
        x = ((sx + jx).float() + 0.5 + ox) * self.cell[1]
        return torch.stack([x, y], dim=1)


class ScoreHead(nn.Module):
    """The novelty score of a head: its ``scores`` (``SCORES``), each as ``(s - offset) / scale``
    (``norms``; none: raw), combined by their maximum; the patch map in the same units.

    Inputs: patch features [N, D, h, w] (for ``patchcore``), the pooled penultimate features
    [N, P] (``knn``, ``mahalanobis``) and the logits [N, C] (``energy``). ``knn`` is one MatMul
    against the normalised fit features (1 - the best cosine); ``mahalanobis`` one MatMul into
    the whitened space of the shared covariance and one against the whitened class means (as
    the bank's nearest neighbour); ``energy`` is ``-logsumexp(logits)``, or with the head's
    ``energy_w``/``energy_b``/``energy_clip`` arrays (ReAct) ``-logsumexp(min(pooled, clip) W^T
    + b)``: the classifier's own layer on clipped features. Pure ONNX ops."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.scores = tuple(model.scores)
        self.patch = AnomalyHead(model.bank, model.smooth) if "patchcore" in self.scores else None
        if "knn" in self.scores:
            k = np.asarray(model.arrays["knn_bank"], np.float64)
            k = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
            self.register_buffer("knn_t", torch.as_tensor(k.T.astype(np.float32)).contiguous())
        if "mahalanobis" in self.scores:
            a = model.arrays
            w = torch.as_tensor(np.asarray(a["maha_whiten"], np.float32))
            means = torch.as_tensor(np.asarray(a["maha_means"], np.float32))  # whitened
            self.register_buffer("maha_centre", torch.as_tensor(
                np.asarray(a["maha_centre"], np.float32)).view(1, -1))  # fmt: skip
            self.register_buffer("maha_w", w.contiguous())
            self.register_buffer("maha_means_m2", (-2.0 * means).t().contiguous())
            self.register_buffer("maha_means_sq", (means * means).sum(dim=1))
        self.react = "energy" in self.scores and "energy_clip" in model.arrays
        if self.react:
            a = model.arrays
            self.register_buffer("energy_clip", torch.as_tensor(
                np.asarray(a["energy_clip"], np.float32).reshape(1, 1)))  # fmt: skip
            self.register_buffer("energy_wt", torch.as_tensor(
                np.asarray(a["energy_w"], np.float32)).t().contiguous())  # fmt: skip
            self.register_buffer("energy_b", torch.as_tensor(np.asarray(a["energy_b"], np.float32)))
        norms = [model.norms.get(n, [0.0, 1.0]) for n in self.scores]
        self.normalise = bool(model.norms)
        self.register_buffer("offsets", torch.tensor([float(o) for o, _ in norms]))
        self.register_buffer("inv_scales", torch.tensor([1.0 / float(c) for _, c in norms]))

    @property
    def needs_pooled(self) -> bool:
        return any(n in self.scores for n in ("knn", "mahalanobis", "energy"))

    def components(self, feats, pooled, logits) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Each score's raw values [N] (in ``scores`` order) and the raw patch map or None."""
        out, amap = [], None
        for name in self.scores:
            if name == "patchcore":
                s, amap = self.patch(feats)
            elif name == "knn":
                f = pooled.float()
                f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
                s = 1.0 - (f @ self.knn_t).max(dim=1).values
            elif name == "mahalanobis":
                z = (pooled.float() - self.maha_centre) @ self.maha_w
                d2 = (z * z).sum(dim=1) + (z @ self.maha_means_m2 + self.maha_means_sq).min(
                    dim=1
                ).values
                s = d2.clamp_min(0.0).sqrt()
            elif self.react:  # energy of the clipped features (ReAct)
                z = torch.minimum(pooled.float(), self.energy_clip) @ self.energy_wt
                s = -torch.logsumexp(z + self.energy_b, dim=1)
            else:  # energy
                s = -torch.logsumexp(logits.float(), dim=1)
            out.append(s)
        return out, amap

    def forward(self, feats, pooled, logits) -> tuple[torch.Tensor, torch.Tensor | None]:
        parts, amap = self.components(feats, pooled, logits)
        if self.normalise:
            parts = [(p - self.offsets[i]) * self.inv_scales[i] for i, p in enumerate(parts)]
            if amap is not None:
                i = self.scores.index("patchcore")
                amap = (amap - self.offsets[i]) * self.inv_scales[i]
        score = parts[0] if len(parts) == 1 else torch.stack(parts, dim=1).max(dim=1).values
        return score, amap


class AnomalyInspectionModel(nn.Module):
    """The classifier (``InspectionModel``) plus the anomaly head, in one pass of the backbone.

    Outputs ``OUTPUT_NAMES`` (``anomaly_peak`` for a head with a ``PeakHead``, from the stages
    ``peak_indices``); probs/logits/defect_score are the classifier's (a test checks they equal
    ``InspectionModel``'s)."""

    output_names = OUTPUT_NAMES

    def __init__(
        self,
        inspection: nn.Module,
        head: ScoreHead,
        indices: Sequence[int],
        peak: PeakHead | None = None,
        peak_indices: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.inspection = inspection
        self.anomaly_head = head  # its ONNX nodes are named /anomaly_head/... (int8_excluded)
        self.indices = tuple(int(i) for i in indices)
        self.peak_indices = tuple(int(i) for i in peak_indices)
        self.with_map = True
        self.anomaly_peak = peak  # its ONNX nodes: /anomaly_peak/... (int8_excluded)
        self.with_peak = peak is not None
        self.threshold = 0.0

    def forward(self, image: torch.Tensor):
        ins = self.inspection
        bb = ins.backbone
        head = self.anomaly_head
        peak = self.with_map and self.with_peak and self.anomaly_peak is not None
        wanted = sorted(set(self.indices) | (set(self.peak_indices) if peak else set()))
        final, maps = _intermediates(bb, ins.normalise(image), wanted)
        inter = [maps[wanted.index(i)] for i in self.indices]
        pooled = None
        if head.needs_pooled:  # the same math as forward_head, the pooled features kept
            pooled = bb.forward_head(final, pre_logits=True)
            logits = bb.get_classifier()(pooled).to(torch.float32)
        else:
            logits = bb.forward_head(final).to(torch.float32)
        probs, score = ins.probs_and_score(logits)  # as InspectionModel.forward
        feats = patch_features(inter) if head.patch is not None else None
        a_score, a_map = head(feats, pooled, logits)
        if not self.with_map or a_map is None:
            return probs, logits, score, a_score
        if not peak:
            return probs, logits, score, a_score, a_map
        fine = patch_features([maps[wanted.index(i)] for i in self.peak_indices])
        return probs, logits, score, a_score, a_map, self.anomaly_peak(a_map, fine)


@torch.inference_mode()
def extract_patches(
    inspection: nn.Module,
    images: np.ndarray,
    indices: Sequence[int] = FEATURE_INDICES,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """(patch features [N, h, w, D] float32, defect scores [N]) of uint8 NHWC images."""
    feats, scores = [], []
    bb = inspection.backbone
    for i in range(0, len(images), batch_size):
        x = inspection.normalise(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))
        final, inter = _intermediates(bb, x, indices)
        probs = torch.softmax(bb.forward_head(final).float(), dim=1).numpy()
        feats.append(patch_features(inter).permute(0, 2, 3, 1).numpy())
        scores.append(_defect_scores(probs, inspection.ok_index))
    return np.concatenate(feats), np.concatenate(scores)


@dataclass
class Features:
    """What the fit needs of images: patch features [N, h, w, D] (None unless asked), pooled
    penultimate features [N, P], logits [N, C] and the classifier's defect scores [N]."""

    patches: np.ndarray | None
    pooled: np.ndarray
    logits: np.ndarray
    defect: np.ndarray
    fine: np.ndarray | None = None  # [N, P, D2]: P random fine patches of each image (the peak)
    fine_grid: tuple[int, ...] = ()  # [H, W] of the fine features
    mirrored: np.ndarray | None = None  # [N, Q, D]: patches of each image's mirrored copies

    def take(self, keep: np.ndarray) -> Features:
        p = None if self.patches is None else self.patches[keep]
        fine = None if self.fine is None else self.fine[keep]
        mirrored = None if self.mirrored is None else self.mirrored[keep]
        return Features(p, self.pooled[keep], self.logits[keep], self.defect[keep], fine,
                        self.fine_grid, mirrored)  # fmt: skip

    @staticmethod
    def cat(parts: Sequence[Features]) -> Features:
        p = None if parts[0].patches is None else np.concatenate([f.patches for f in parts])
        extra = {}
        for k in ("fine", "mirrored"):
            if all(getattr(f, k) is not None for f in parts):
                extra[k] = np.concatenate([getattr(f, k) for f in parts])
        return Features(p, *(np.concatenate([getattr(f, k) for f in parts])
                             for k in ("pooled", "logits", "defect")),
                        fine_grid=parts[0].fine_grid, **extra)  # fmt: skip

    def __len__(self) -> int:
        return len(self.pooled)


@torch.inference_mode()
def extract_features(
    inspection: nn.Module,
    images: np.ndarray,
    indices: Sequence[int] = FEATURE_INDICES,
    patches: bool = True,
    batch_size: int = 16,
    peak_indices: Sequence[int] = (),
    seed: int = 0,
    flips: Sequence[str] = (),
    mirrored_per_image: int = 0,
) -> Features:
    """One backbone pass over uint8 NHWC images: ``Features`` (with ``peak_indices``: also
    ``PEAK_PATCHES_PER_IMAGE`` random fine patches of each image, for the peak's bank; with
    ``flips``: also the patches of each image mirrored so, ``mirrored_per_image`` random ones
    of all its copies' if that is fewer)."""
    bb = inspection.backbone
    out: dict[str, list[np.ndarray]] = {"p": [], "pooled": [], "logits": [], "defect": []}
    wanted = sorted(set(indices) | set(peak_indices))
    fine: list[np.ndarray] = []
    mirrored: list[np.ndarray] = []
    grid: tuple[int, ...] = ()
    rng = np.random.default_rng(seed)
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        if flips and patches:
            copies = []
            for f in flips:
                m = flip_images(batch, f)
                _, inter = _intermediates(bb, inspection.normalise(torch.from_numpy(m)), indices)
                copies.append(patch_features(inter).flatten(2).transpose(1, 2).numpy())
            c = np.concatenate(copies, axis=1)  # [n, copies * h * w, D]
            k = min(mirrored_per_image, c.shape[1]) if mirrored_per_image else c.shape[1]
            mirrored += [r[np.sort(rng.permutation(len(r))[:k])] for r in c]
        x = inspection.normalise(torch.from_numpy(np.ascontiguousarray(batch)))
        final, maps = _intermediates(bb, x, wanted)
        inter = [maps[wanted.index(j)] for j in indices]
        if peak_indices:
            f = patch_features([maps[wanted.index(j)] for j in peak_indices])
            grid = tuple(int(v) for v in f.shape[-2:])
            f = f.flatten(2).transpose(1, 2).numpy()  # [n, H * W, D2]
            k = min(PEAK_PATCHES_PER_IMAGE, f.shape[1])
            fine += [r[np.sort(rng.permutation(len(r))[:k])] for r in f]
        pooled = bb.forward_head(final, pre_logits=True).float()
        logits = bb.get_classifier()(pooled).float()
        if patches:
            out["p"].append(patch_features(inter).permute(0, 2, 3, 1).numpy())
        out["pooled"].append(pooled.numpy())
        out["logits"].append(logits.numpy())
        probs = torch.softmax(logits, dim=1).numpy()
        out["defect"].append(_defect_scores(probs, inspection.ok_index))
    return Features(
        np.concatenate(out["p"]) if patches else None,
        *(np.concatenate(out[k]) for k in ("pooled", "logits", "defect")),
        np.stack(fine) if fine else None,
        grid,
        np.stack(mirrored) if mirrored else None,
    )


def _defect_scores(probs: np.ndarray, ok_index: int | None) -> np.ndarray:
    from defectssft_line.decision import defect_scores

    return defect_scores(probs, ok_index).astype(np.float32)


# --------------------------------------------------------------------------- fitting


def greedy_coreset(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Indices of ``k`` rows of ``x`` chosen by k-center greedy (PatchCore's coreset): each next
    row is the one farthest from all chosen so far, so the bank covers the whole feature cloud."""
    n = len(x)
    if k >= n:
        return np.arange(n)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    sq = (t * t).sum(1)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]
    dist = (sq - 2 * t @ t[chosen[0]] + sq[chosen[0]]).clamp_min(0)
    for _ in range(k - 1):
        j = int(torch.argmax(dist))
        chosen.append(j)
        dist = torch.minimum(dist, (sq - 2 * t @ t[j] + sq[j]).clamp_min(0))
    return np.asarray(chosen)


def bank_rows(n_patches: int, dim: int, bank_mb: float, ratio: float, min_bank: int) -> int:
    """How many patches the bank keeps: ``ratio`` of them (at least ``min_bank``), at most what
    ``bank_mb`` megabytes of float32 hold."""
    budget = max(1, int(bank_mb * 1e6 // (4 * dim)))
    want = max(min_bank, int(math.ceil(ratio * n_patches)))
    return int(min(n_patches, want, budget))


def nearest_distances(
    feats: np.ndarray, bank: np.ndarray, max_floats: int = 16_000_000, smooth: float = 0.0
) -> np.ndarray:
    """Per-patch nearest-bank distance maps [N, h, w] of features [N, h, w, D] (the head's math,
    smoothed by ``smooth`` patch cells), a few images at a time so the distance matrix stays
    under ``max_floats`` values."""
    head = AnomalyHead(bank, smooth)
    n, h, w = feats.shape[:3]
    step = max(1, max_floats // max(1, h * w * len(bank)))
    out = []
    with torch.inference_mode():
        for i in range(0, n, step):
            chunk = torch.from_numpy(np.ascontiguousarray(feats[i : i + step]))
            out.append(head(chunk.permute(0, 3, 1, 2))[1].numpy())
    return np.concatenate(out) if out else np.zeros((0, h, w), np.float32)


def ledoit_wolf(centred: np.ndarray) -> np.ndarray:
    """The Ledoit-Wolf shrunk covariance of centred rows [n, d] (a well-conditioned estimate
    when n is far below d, as for a few dozen images of 1,280 pooled features)."""
    x = np.asarray(centred, np.float64)
    n, d = x.shape
    emp = x.T @ x / n
    mu = float(np.trace(emp)) / d
    x2 = x**2
    beta = (float(np.sum(x2.T @ x2)) / n - float(np.sum(emp**2))) / (d * n)
    delta = (float(np.sum(emp**2)) - 2 * mu * float(np.trace(emp)) + d * mu**2) / d
    shrink = 0.0 if delta <= 0 else min(max(beta, 0.0), delta) / delta
    return (1 - shrink) * emp + shrink * max(mu, 1e-12) * np.eye(d)


def fit_mahalanobis(pooled: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    """Class-conditional Gaussians with one shared covariance (Lee et al. 2018) on pooled
    features, as the head's arrays: the centre, the whitening ``W`` (``W W^T`` = the inverse
    covariance) and the class means in the whitened space."""
    x = np.asarray(pooled, np.float64)
    classes = np.asarray(classes)
    labels = np.unique(classes)
    centre = x.mean(axis=0)
    means = np.stack([x[classes == c].mean(axis=0) for c in labels])
    resid = x - means[np.searchsorted(labels, classes)]
    whiten = np.linalg.cholesky(np.linalg.inv(ledoit_wolf(resid)))
    return {
        "maha_centre": centre.astype(np.float32),
        "maha_whiten": whiten.astype(np.float32),
        "maha_means": ((means - centre) @ whiten).astype(np.float32),
    }


def fit_energy_clip(
    pooled: np.ndarray, classifier: nn.Module, percentile: float
) -> dict[str, np.ndarray]:
    """ReAct's arrays for the energy: the clip at ``percentile`` of the fit images' pooled
    features (all units together) and the classifier's weight [C, P] and bias [C]."""
    w = classifier.weight.detach().float().numpy()
    b = classifier.bias.detach().float().numpy() if classifier.bias is not None else None
    clip = float(np.percentile(np.asarray(pooled, np.float64), percentile))
    return {
        "energy_clip": np.array([clip], np.float32),
        "energy_w": w.astype(np.float32),
        "energy_b": (np.zeros(len(w)) if b is None else b).astype(np.float32),
    }


def score_norms(raw: dict[str, np.ndarray], q: float = 0.95) -> dict[str, list[float]]:
    """Each score's ``[offset, scale]`` on held-out parts: its median, and the distance from
    the median to its ``q`` quantile, so the scores share one unit before their maximum."""
    out = {}
    for name, v in raw.items():
        v = np.asarray(v, np.float64)
        med, hi = float(np.median(v)), float(np.quantile(v, q))
        # a floor for held-out parts that all score alike (then any unit is arbitrary)
        out[name] = [med, max(hi - med, 0.05 * abs(med), 1e-3)]
    return out


def score_scale(threshold: float, normalised: bool) -> float:
    """What a score difference is measured against (the export check, the threshold's margin):
    the threshold, and for a head of normalised scores at least their unit (held-out spread)."""
    return max(abs(threshold), 1.0 if normalised else 1e-6)


def calibrate_threshold(
    scores: np.ndarray, novel_rate: float = DEFAULT_NOVEL_RATE, normalised: bool = False
) -> float:
    """The anomaly threshold: the ``1 - novel_rate`` quantile of held-out good parts' scores
    (with fewer than ``1 / novel_rate`` parts, their maximum), plus a margin of the fp32 export
    check's bound (``MAX_SCORE_DIFF``) of ``score_scale``: a file that passes the check cannot
    make those parts novel on the line where torch and the app pass them."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    q = float(np.quantile(s, 1.0 - novel_rate, method="higher"))
    q += MAX_SCORE_DIFF["fp32"] * score_scale(q, normalised)
    return float(np.nextafter(np.float32(q), np.float32(np.inf)))


@dataclass
class AnomalyModel:
    """A fitted head: the bank and what the export and the line need to use it."""

    bank: np.ndarray  # [M, D] float32 (patchcore; [0, 0] for a head without it)
    threshold: float
    indices: list[int] = field(default_factory=lambda: list(FEATURE_INDICES))
    map_size: list[int] = field(default_factory=list)  # [h, w] of anomaly_map
    method: str = "patchcore"
    smooth: float = 0.0  # the map's Gaussian sigma in patch cells (fits set DEFAULT_SMOOTH)
    features: str = "model"  # the version's own (fine-tuned) backbone
    on_novel: str = "UNSURE"
    scores: list[str] = field(default_factory=lambda: ["patchcore"])
    norms: dict[str, list[float]] = field(default_factory=dict)  # score -> [offset, scale]
    # knn_bank, maha_*, energy_* (ReAct), peak_bank
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # The peak (``PeakHead``): {"indices", "window", "grid": [H, W], "input": [h, w]}; {}: none
    peak: dict[str, Any] = field(default_factory=dict)
    fit_flips: str = "none"  # the mirrored copies the bank was also fit on (FIT_FLIPS)
    calibrated_on: str = ""
    n_fit_images: int = 0
    n_fit_patches: int = 0
    n_held_out: int = 0
    held_out_max: float = 0.0
    subsampled: str = ""
    version: str = ""
    created: str = ""
    test: dict[str, Any] = field(default_factory=dict)  # evaluate_on_test, not stored in the file

    @property
    def bank_mb(self) -> float:
        """Megabytes of every array the head carries (the patch bank and the feature scores')."""
        return (self.bank.nbytes + sum(a.nbytes for a in self.arrays.values())) / 1e6

    @property
    def has_map(self) -> bool:
        return "patchcore" in self.scores

    @property
    def format_version(self) -> int:
        """The oldest format that holds this head (so older readers read what they can)."""
        if "energy_clip" in self.arrays:
            return ANOMALY_FORMAT_VERSION  # read as the plain energy, its threshold would be wrong
        return 4 if self.has_peak else 3

    @property
    def has_peak(self) -> bool:
        """Whether the head refines its map's peak (``anomaly_peak``; heads before format 4:
        no)."""
        return self.has_map and bool(self.peak) and "peak_bank" in self.arrays

    def info(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("bank", "test", "arrays"):
            d.pop(k)
        d.update(
            format=ANOMALY_FORMAT,
            format_version=self.format_version,
            bank_rows=int(self.bank.shape[0]),
            bank_dim=int(self.bank.shape[1]),
            bank_mb=round(self.bank_mb, 3),
        )
        return d

    def onnx_metadata(self, with_map: bool) -> dict[str, Any]:
        """The ``anomaly`` entry of the ONNX metadata (``defectssft_line.metadata`` checks it)."""
        meta: dict[str, Any] = {
            "threshold": float(self.threshold),
            "on_novel": self.on_novel,
            "method": self.method,
            "features": self.features,
            "calibrated_on": self.calibrated_on,
            "map": list(self.map_size) if with_map and self.has_map else None,
        }
        if self.scores != ["patchcore"]:
            meta["scores"] = list(self.scores)
        if with_map and self.has_peak:
            meta["peak"] = True  # the graph has anomaly_peak [N, 2] (x, y in input pixels)
        return meta

    def distances(self, feats: np.ndarray) -> np.ndarray:
        """The patch bank's (smoothed) raw distance maps [N, h, w] of patch features."""
        return nearest_distances(feats, self.bank, smooth=self.smooth)

    def head(self) -> ScoreHead:
        return ScoreHead(self)

    def wrap(self, inspection: nn.Module) -> AnomalyInspectionModel:
        peak, peak_indices = None, ()
        if self.has_peak:
            pk = self.peak
            peak = PeakHead(self.arrays["peak_bank"], self.map_size, pk["grid"], pk["input"],
                            pk["window"], self.smooth)  # fmt: skip
            peak_indices = tuple(pk["indices"])
        graph = AnomalyInspectionModel(inspection, self.head(), self.indices, peak, peak_indices)
        graph = graph.eval()
        graph.threshold = float(self.threshold)
        graph.with_map = self.has_map
        return graph

    def score_images(self, inspection: nn.Module, images: np.ndarray):
        """(anomaly scores [N], maps [N, h, w] or None) of uint8 NHWC images: the exported graph
        in torch."""
        return torch_anomaly(self.wrap(inspection), images)

    def save(self, model_dir: str | Path) -> None:
        """``anomaly.npz`` then ``anomaly.json``, each atomically (the JSON marks it complete)."""
        model_dir = Path(model_dir)
        arrays = {k: np.asarray(v, np.float32) for k, v in self.arrays.items()}
        with atomic_path(model_dir / BANK_FILE) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, bank=self.bank.astype(np.float32), **arrays)
        with atomic_path(model_dir / META_FILE) as tmp:
            tmp.write_text(json.dumps(self.info(), indent=1), encoding="utf-8")


def has_anomaly(model_dir: str | Path) -> bool:
    return (Path(model_dir) / META_FILE).is_file()


def load_anomaly(model_dir: str | Path) -> AnomalyModel | None:
    """The head stored with a version, None if it has none; AnomalyError if it is unreadable.

    No pickle: ``np.load(allow_pickle=False)`` and JSON."""
    model_dir = Path(model_dir)
    if not has_anomaly(model_dir):
        return None
    try:
        info = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
        if info.get("format") != ANOMALY_FORMAT:
            raise ValueError("not a defectssft anomaly head")
        if int(info.get("format_version", 0)) > ANOMALY_FORMAT_VERSION:
            raise ValueError("written by a newer defectssft")
        with np.load(model_dir / BANK_FILE, allow_pickle=False) as z:
            bank = np.asarray(z["bank"], dtype=np.float32)
            arrays = {
                k: np.asarray(z[k], np.float32)
                for k in z.files
                if k in ARRAY_SHAPES or k in OPTIONAL_ARRAYS
            }
        scores = info.get("scores", ["patchcore"])
        if (
            not isinstance(scores, list)
            or not scores
            or any(n not in SCORES for n in scores)
            or len(set(scores)) != len(scores)
        ):
            raise ValueError(f"scores {scores!r} (each one of {', '.join(SCORES)}, once)")
        _check_norms(info.get("norms", {}), scores)
        _check_arrays(arrays, scores)
        if "patchcore" in scores and (bank.ndim != 2 or bank.shape[0] < 1):
            raise ValueError(f"bank of shape {bank.shape}")
        if bank.shape[1] != int(info.get("bank_dim", bank.shape[1])):
            raise ValueError("bank does not match its description")
        _check_peak(info.get("peak", {}), arrays)
        if info.get("fit_flips", "none") not in FIT_FLIPS:
            raise ValueError(f"fit_flips {info['fit_flips']!r} (one of {', '.join(FIT_FLIPS)})")
        smooth = info.get("smooth", 0.0)
        if (
            not isinstance(smooth, (int, float))
            or isinstance(smooth, bool)
            or not 0 <= smooth <= MAX_SMOOTH
        ):
            raise ValueError(f"smooth {smooth!r} is not a number from 0 to {MAX_SMOOTH:g}")
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise AnomalyError(
            f"{model_dir}: unreadable anomaly head ({e}); fit it again with "
            "`defectssft fit-anomaly`"
        ) from e
    keys = {f for f in AnomalyModel.__dataclass_fields__ if f not in ("bank", "arrays")}
    return AnomalyModel(bank=bank, arrays=arrays, **{k: v for k, v in info.items() if k in keys})


OPTIONAL_ARRAYS = ("peak_bank", "energy_clip", "energy_w", "energy_b")
# The feature scores' arrays in anomaly.npz: name -> (score that needs it, dimensions)
ARRAY_SHAPES = {
    "knn_bank": ("knn", 2),
    "maha_centre": ("mahalanobis", 1),
    "maha_whiten": ("mahalanobis", 2),
    "maha_means": ("mahalanobis", 2),
}


def _check_peak(peak: Any, arrays: dict[str, np.ndarray]) -> None:
    if not isinstance(peak, dict):
        raise ValueError(f"peak {peak!r} is not an object")
    if not peak:
        arrays.pop("peak_bank", None)
        return

    def ints(v: Any, n: int, lo: int) -> bool:
        return (
            isinstance(v, list)
            and len(v) == n
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in v)
        )

    w, idx = peak.get("window"), peak.get("indices")
    if not isinstance(idx, list) or not idx or not ints(idx, len(idx), 0):
        raise ValueError(f"peak.indices {idx!r}")
    if not (ints([w], 1, 1) and w <= MAX_PEAK_WINDOW):
        raise ValueError(f"peak.window {w!r} (1 to {MAX_PEAK_WINDOW})")
    for key in ("grid", "input"):
        if not ints(peak.get(key), 2, 1):
            raise ValueError(f"peak.{key} {peak.get(key)!r} (two sizes)")
    b = arrays.get("peak_bank")
    if b is None or b.ndim != 2 or b.size == 0 or not np.all(np.isfinite(b)):
        raise ValueError("peak_bank missing or malformed for the peak")


def _check_norms(norms: Any, scores: list[str]) -> None:
    if not isinstance(norms, dict) or (norms and set(norms) != set(scores)):
        raise ValueError(f"norms {norms!r} do not match the scores {scores}")
    for name, v in norms.items():
        ok = isinstance(v, list) and len(v) == 2
        ok = ok and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
        if not ok or v[1] <= 0:
            raise ValueError(f"norms.{name} must be [offset, scale > 0], got {v!r}")


def _check_arrays(arrays: dict[str, np.ndarray], scores: list[str]) -> None:
    for key, (score, ndim) in ARRAY_SHAPES.items():
        if score not in scores:
            continue
        a = arrays.get(key)
        if a is None or a.ndim != ndim or a.size == 0 or not np.all(np.isfinite(a)):
            raise ValueError(f"{key} missing or malformed for the {score} score")
    react = [k for k in ("energy_clip", "energy_w", "energy_b") if k in arrays]
    if react and ("energy" not in scores or len(react) != 3):
        raise ValueError("the energy's clip arrays are incomplete or without the energy score")
    if react:
        w, b, c = arrays["energy_w"], arrays["energy_b"], arrays["energy_clip"]
        if w.ndim != 2 or b.shape != (w.shape[0],) or c.shape != (1,):
            raise ValueError("the energy's clip arrays do not match each other")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b)) and np.isfinite(c[0])):
            raise ValueError("the energy's clip arrays are not finite")
    if "mahalanobis" in scores:
        d = arrays["maha_centre"].shape[0]
        if arrays["maha_whiten"].shape != (d, d) or arrays["maha_means"].shape[1] != d:
            raise ValueError("the Mahalanobis arrays do not match each other")


def image_scorer(
    model: AnomalyModel, inspection: nn.Module, spec: Any
) -> Callable[[list[Path]], np.ndarray]:
    """Anomaly scores [N] of project image files as the line computes them: the model input
    (``load_images``), or for a tiled model the maximum over the part's tiles
    (``defectssft.tiling.score_image``)."""
    from defectssft.inspection import load_images

    inp = spec.input
    if inp.tiles is None:
        return lambda paths: model.score_images(
            inspection, load_images(paths, inp.height, inp.width, inp.bit_depth, inp.roi)
        )[0]
    from defectssft.tiling import score_image
    from defectssft_line.preprocess import ImageDecodeError

    graph = model.wrap(inspection)
    graph.with_map = False

    def score(paths: list[Path]) -> np.ndarray:
        try:
            got = [score_image(inspection, p, spec, graph=graph).anomaly for p in paths]
        except ImageDecodeError as e:
            raise AnomalyError(f"cannot read project image: {e}") from e
        return np.asarray(got, np.float32)

    return score


def evaluate_on_test(
    project,
    score: Callable[[list[Path]], np.ndarray],
    threshold: float,
    ok_index: int | None,
    batch: int = 32,
) -> dict[str, Any]:
    """The head on the frozen test split (never fitted or calibrated on): novel rate of the test
    parts per class and, with an OK class and defective test parts, the anomaly score's AUROC
    separating defective from good parts (``score``: ``image_scorer``'s)."""
    from defectssft.metrics import roc_auc

    data = project.training_data()
    if not data.test:
        return {}
    scores = []
    for i in range(0, len(data.test), batch):
        scores.append(score([Path(p) for p, _ in data.test[i : i + batch]]))
    s = np.concatenate(scores)
    cls = np.array([c for _, c in data.test])
    novel = s >= threshold
    out: dict[str, Any] = {
        "n": int(len(s)),
        "novel_rate": {data.classes[c]: float(novel[cls == c].mean()) for c in np.unique(cls)},
    }
    if ok_index is not None:
        out["auroc_defective_vs_ok"] = roc_auc(s, (cls != ok_index).astype(int))
    return out


def score_unlabeled(
    project,
    model_dir: Path,
    score: Callable[[list[Path]], np.ndarray],
    max_images: int = DEFAULT_MAX_SCORED,
    batch: int = 32,
) -> int:
    """Score the project's unlabeled images (the newest ``max_images``) with the head
    (``image_scorer``'s ``score``) and store them for the app's "novel" filter
    (``defectssft.novel_scores``); returns how many."""
    from defectssft.novel_scores import save_scores

    data = project.training_data()
    pairs = list(zip(data.unlabeled_ids, data.unlabeled, strict=True))[-max_images:]
    ids, scores = [], []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        scores.append(score([Path(p) for _, p in chunk]))
        ids += [int(j) for j, _ in chunk]
    save_scores(model_dir, ids, np.concatenate(scores) if scores else np.zeros(0, np.float32))
    return len(ids)


@dataclass
class FitPlan:
    """Which project images a fit uses, and why (printed by the CLI)."""

    fit: list[Path]
    held_out: list[Path]
    unlabeled_candidates: list[Path]
    calibrated_on: str
    fit_classes: list[int] = field(default_factory=list)  # the class index of each fit image


def plan_fit(project, max_images: int = DEFAULT_MAX_FIT_IMAGES, seed: int = 0) -> FitPlan:
    """The good parts to fit on and to calibrate on (module doc); AnomalyError if none."""
    data = project.training_data()
    ok = data.classes.index(data.ok_class) if data.ok_class in data.classes else None
    rng = np.random.default_rng(seed)
    if ok is not None:
        fit = [(Path(p), c) for p, c in data.labeled if c == ok]
        held = [Path(p) for p, c in data.val if c == ok]
        what = "validation OK images"
    else:
        fit = [(Path(p), c) for p, c in data.labeled]
        held = [Path(p) for p, _ in data.val]
        what = "validation images"
    # Without an OK class the stream holds the novel classes too, and the confident calls let
    # them into the fit (BENCHMARKS.md, "Open set"): the labeled images only.
    unlabeled = [Path(p) for p in data.unlabeled] if ok is not None else []
    fit, unlabeled = (
        [ps[i] for i in sorted(rng.permutation(len(ps))[:max_images])]
        if len(ps) > max_images
        else ps
        for ps in (fit, unlabeled)
    )
    if not fit and not unlabeled:
        raise AnomalyError(
            f"{project.root}: no good parts to fit the anomaly model on (no OK-labeled and no "
            "unlabeled images); import unlabeled production images or label some OK"
            if ok is not None
            else f"{project.root}: no labeled training images to fit the anomaly model on"
        )
    return FitPlan([p for p, _ in fit], held, unlabeled, what, [int(c) for _, c in fit])


def default_scores(ok_index: int | None) -> list[str]:
    """The head's scores by default (BENCHMARKS.md, "Open set"): with an OK class the patch
    bank of good parts; without one ``DEFAULT_SCORES_NO_OK`` (the bank of the labeled images
    and the classifier's energy, each normalised, their maximum): "unlike every known class"."""
    return ["patchcore"] if ok_index is not None else list(DEFAULT_SCORES_NO_OK)


def parse_scores(text: str | Sequence[str] | None, ok_index: int | None) -> list[str]:
    """``"auto"``/None -> ``default_scores``; else a comma list of ``SCORES`` (AnomalyError)."""
    if text is None or text == "auto":
        return default_scores(ok_index)
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    bad = [n for n in names if n not in SCORES]
    if bad or not names or len(set(names)) != len(names):
        raise AnomalyError(
            f"anomaly scores must be 'auto' or a comma list of {', '.join(SCORES)} (each once), "
            f"got {text!r}"
        )
    return names


def raw_scores(model: AnomalyModel, feats: Features) -> dict[str, np.ndarray]:
    """Each of the head's scores, before normalisation, of images' ``Features``."""
    head = ScoreHead(replace(model, norms={}))
    pooled, logits = torch.from_numpy(feats.pooled), torch.from_numpy(feats.logits)
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for name in model.scores:
            if name == "patchcore":
                d = nearest_distances(feats.patches, model.bank, smooth=model.smooth)
                out[name] = d.reshape(len(d), -1).max(1)
        head.scores = tuple(n for n in model.scores if n != "patchcore")
        parts, _ = head.components(None, pooled, logits)
    for name, v in zip(head.scores, parts, strict=True):
        out[name] = v.numpy()
    return out


def combine(model: AnomalyModel, raw: dict[str, np.ndarray]) -> np.ndarray:
    """The head's score from ``raw_scores``: each normalised by ``norms``, their maximum."""
    parts = []
    for name in model.scores:
        off, scale = model.norms.get(name, [0.0, 1.0])
        parts.append((np.asarray(raw[name], np.float64) - off) / scale)
    return np.max(parts, axis=0).astype(np.float32)


def fit_project_anomaly(
    project,
    version: str | None = None,
    *,
    bank_mb: float = DEFAULT_BANK_MB,
    coreset_ratio: float = DEFAULT_CORESET_RATIO,
    min_bank: int = DEFAULT_MIN_BANK,
    max_images: int = DEFAULT_MAX_FIT_IMAGES,
    novel_rate: float = DEFAULT_NOVEL_RATE,
    on_novel: str = "UNSURE",
    smooth: float = DEFAULT_SMOOTH,
    scores: str | Sequence[str] | None = None,
    peak_window: int = DEFAULT_PEAK_WINDOW,
    fit_flips: str = DEFAULT_FIT_FLIPS,
    energy_clip: float = DEFAULT_ENERGY_CLIP,
    seed: int = 0,
    say: Callable[[str], None] = lambda _msg: None,
) -> AnomalyModel:
    """Fit, calibrate and store the anomaly head of a version (default: production, else newest).

    ``scores``: which novelty scores the head combines (``parse_scores``; None: by project).
    ``peak_window``: the peak's refinement window in coarse patches (``PeakHead``; 0: none).
    ``fit_flips``: mirrored copies of the fit images whose patches the bank's coreset also
    chooses from (``FIT_FLIPS``; the bank keeps the rows of the fit images alone).
    ``energy_clip``: the percentile of the fit images' pooled features the energy clips them
    at (``fit_energy_clip``; 0: the plain energy of the logits)."""
    from defectssft.inspection import load_images, load_inspection

    if on_novel not in ON_NOVEL_CHOICES:
        raise AnomalyError(f"on_novel must be one of {', '.join(ON_NOVEL_CHOICES)}, got {on_novel}")
    if bank_mb <= 0:
        raise AnomalyError(f"the bank budget must be > 0 MB, got {bank_mb}")
    if not 0 <= smooth <= MAX_SMOOTH:
        raise AnomalyError(f"the map's smoothing must be 0 to {MAX_SMOOTH:g} patches, got {smooth}")
    if not 0 <= peak_window <= MAX_PEAK_WINDOW:
        raise AnomalyError(
            f"the peak's window must be 0 to {MAX_PEAK_WINDOW} patches, got {peak_window}"
        )
    if not 0 <= energy_clip <= 100:
        raise AnomalyError(f"the energy's clip must be a percentile 0 to 100, got {energy_clip}")
    if fit_flips not in FIT_FLIPS:
        raise AnomalyError(f"fit flips must be one of {', '.join(FIT_FLIPS)}, got {fit_flips!r}")
    record = project.get_model(version)
    model_dir = Path(record["path"])
    inspection, spec = load_inspection(model_dir / "model.pt")
    if spec.input.tiles is not None:
        names = parse_tiled_scores(scores, peak_window, fit_flips)
    else:
        names = parse_scores(scores, spec.ok_index)
    plan = plan_fit(project, max_images, seed)
    h, w, depth, roi = spec.input.height, spec.input.width, spec.input.bit_depth, spec.input.roi
    if spec.input.tiles is not None:
        return _fit_tiled(
            project, record, inspection, spec, plan, bank_mb=bank_mb,
            coreset_ratio=coreset_ratio, min_bank=min_bank, novel_rate=novel_rate,
            on_novel=on_novel, smooth=smooth, seed=seed, say=say,
        )  # fmt: skip
    want_patches = "patchcore" in names
    peak_indices = PEAK_INDICES if want_patches and peak_window else ()
    flips = FIT_FLIPS[fit_flips] if want_patches else ()
    # The mirrored patches stay within MAX_FIT_PATCHES in all: a random share of each image's.
    per_image = MAX_FIT_PATCHES // max(1, len(plan.fit) + len(plan.unlabeled_candidates))
    try:
        load = lambda paths: load_images(paths, h, w, depth, roi)  # noqa: E731

        def features(paths: list[Path], peak: Sequence[int] = (), fit: bool = False) -> Features:
            images = load(paths)
            return extract_features(
                inspection, images, patches=want_patches, peak_indices=peak, seed=seed,
                flips=flips if fit else (), mirrored_per_image=max(1, per_image),
            )  # fmt: skip

        parts = []
        if plan.fit:
            parts.append(
                (features(plan.fit, peak_indices, True), np.asarray(plan.fit_classes, int))
            )
        n_unl = 0
        if plan.unlabeled_candidates:
            fu = features(plan.unlabeled_candidates, peak_indices, True)
            # With an OK class: the confident OK calls; without one, the confident calls of any
            # known class (the defect score is then 1 - the top probability), with that class.
            keep = fu.defect < CONFIDENT_OK
            n_unl = int(keep.sum())
            if n_unl:
                parts.append((fu.take(keep), fu.logits[keep].argmax(axis=1)))
    except DefectssftError as e:
        raise AnomalyError(str(e)) from e
    if not parts:
        raise AnomalyError(
            f"{project.root}: no good parts to fit the anomaly model on (the classifier calls "
            "none of the unlabeled images OK with confidence); label some OK images"
        )
    feats = Features.cat([f for f, _ in parts])
    classes = np.concatenate([c for _, c in parts])
    rng = np.random.default_rng(seed)
    held: Features | None = None
    calibrated_on = plan.calibrated_on
    if len(plan.held_out) >= MIN_HELD_OUT:
        held = features(plan.held_out)
        calibrated_on = f"{len(plan.held_out)} {plan.calibrated_on}"
    elif len(feats) >= 2:
        n_hold = max(1, len(feats) // 5)
        order = rng.permutation(len(feats))
        held, feats = feats.take(order[:n_hold]), feats.take(order[n_hold:])
        classes = classes[order[n_hold:]]
        calibrated_on = (
            f"{n_hold} fit images held back (fewer than {MIN_HELD_OUT} {plan.calibrated_on})"
        )
    n_img = len(feats)
    bank = np.zeros((0, 0), np.float32)
    note, n_patches, map_size = "", 0, []
    if want_patches:
        _, gh, gw, dim = feats.patches.shape
        map_size = [int(gh), int(gw)]
        patches = feats.patches.reshape(-1, dim)
        n_patches = len(patches)
        rows = bank_rows(min(n_patches, MAX_FIT_PATCHES), dim, bank_mb, coreset_ratio, min_bank)
        n_mirrored = 0
        if feats.mirrored is not None:  # the rows stay those of the fit images alone
            n_mirrored = feats.mirrored.shape[0] * feats.mirrored.shape[1]
            patches = np.concatenate([patches, feats.mirrored.reshape(-1, dim)])
        n_pool = len(patches)
        if n_pool > MAX_FIT_PATCHES:  # bounds the coreset's time: a random subset first
            patches = patches[np.sort(rng.permutation(n_pool)[:MAX_FIT_PATCHES])]
        budget_rows = max(1, int(bank_mb * 1e6 // (4 * dim)))
        if rows < len(patches):
            mirrored = f" (+ {n_mirrored} of mirrored copies, {fit_flips})" if n_mirrored else ""
            note = f"coreset of {rows} from {len(patches)} patches" + (
                f" (the {bank_mb:g} MB budget holds {budget_rows})" if rows == budget_rows else ""
            )
            if n_pool > len(patches):
                note += f", chosen from a random {len(patches)} of {n_patches}{mirrored}"
            else:
                note += mirrored
            say(f"anomaly bank: {note}")
        bank = patches[greedy_coreset(patches, rows, seed)].astype(np.float32)
    arrays: dict[str, np.ndarray] = {}
    peak: dict[str, Any] = {}
    left_mb = bank_mb - bank.nbytes / 1e6  # the peak's bank takes what the coarse one left
    if peak_indices and feats.fine is not None and left_mb * 1e6 < 4 * 64 * feats.fine.shape[-1]:
        say(f"anomaly peak: not refined (the {bank_mb:g} MB budget is taken by the patch bank)")
    elif peak_indices and feats.fine is not None:
        fine = feats.fine.reshape(-1, feats.fine.shape[-1])
        if len(fine) > MAX_FIT_PATCHES:
            fine = fine[np.sort(rng.permutation(len(fine))[:MAX_FIT_PATCHES])]
        rows = bank_rows(len(fine), fine.shape[1], left_mb, coreset_ratio, min_bank)
        arrays["peak_bank"] = fine[greedy_coreset(fine, rows, seed)].astype(np.float32)
        peak = {"indices": list(peak_indices), "window": int(peak_window),
                "grid": list(feats.fine_grid), "input": [int(h), int(w)]}  # fmt: skip
    if "knn" in names:
        arrays["knn_bank"] = feats.pooled.astype(np.float32)
    if "mahalanobis" in names:
        arrays.update(fit_mahalanobis(feats.pooled, classes))
    if "energy" in names and energy_clip > 0:
        arrays.update(fit_energy_clip(feats.pooled, inspection.backbone.get_classifier(),
                                      energy_clip))  # fmt: skip
    model = AnomalyModel(
        bank=bank,
        threshold=0.0,
        map_size=map_size,
        smooth=float(smooth),
        on_novel=on_novel,
        scores=names,
        arrays=arrays,
        peak=peak,
        fit_flips=fit_flips if want_patches else "none",
        calibrated_on=calibrated_on,
        n_fit_images=int(n_img),
        n_fit_patches=int(n_patches),
        subsampled=note,
        version=str(record["version"]),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if model.bank_mb > bank_mb:
        raise AnomalyError(
            f"the head's arrays take {model.bank_mb:.1f} MB, over the {bank_mb:g} MB budget; "
            "raise --bank-mb or choose other --scores"
        )
    n_held = 0 if held is None else len(held)
    if held is None:  # a single fit image: nothing held out; calibrated on the fit image
        held = feats
        calibrated_on = "the single fit image (nothing to hold out)"
        say("anomaly threshold: only one good image, calibrated on the fit image itself")
    raw = raw_scores(model, held)
    if names != ["patchcore"]:  # the patch bank alone keeps its distance units (format 2)
        model.norms = score_norms(raw)
    held_scores = combine(model, raw)
    model.threshold = calibrate_threshold(held_scores, novel_rate, bool(model.norms))
    model.held_out_max = float(held_scores.max())
    model.n_held_out = int(n_held)
    model.calibrated_on = calibrated_on
    model.save(model_dir)
    score = image_scorer(model, inspection, spec)
    n_scored = score_unlabeled(project, model_dir, score)
    test = evaluate_on_test(project, score, model.threshold, spec.ok_index)
    return _store_summary(project, record, model, n_unl, n_scored, test)


def _store_summary(project, record, model: AnomalyModel, n_unl: int, n_scored: int,
                   test: dict[str, Any]) -> AnomalyModel:  # fmt: skip
    """The fit's summary in the version's metrics (``anomaly``), and the model."""
    summary = {
        k: v for k, v in model.info().items() if k not in ("indices", "format", "format_version")
    }
    summary["fit_unlabeled"] = n_unl
    summary["scored_unlabeled"] = n_scored
    summary["test"] = test
    model.test = test
    project.update_model_metrics(record["version"], {"anomaly": summary})
    return model


def parse_tiled_scores(scores: Any, peak_window: int, fit_flips: str) -> list[str]:
    """A tiled model's head: the patch bank of its tiles alone (the classifier's feature scores
    and the energy are per tile, not per part; the map is stitched at the tiles' resolution, so
    there is no refined peak). AnomalyError, one line, for any other choice."""
    if scores not in (None, "auto") and parse_scores(scores, 0) != ["patchcore"]:
        raise AnomalyError(
            "a tiled model's anomaly head is the patch bank alone: use --scores auto or patchcore"
        )
    if peak_window:
        raise AnomalyError("a tiled model's anomaly head has no refined peak: use --peak-window 0")
    if fit_flips != "none":
        raise AnomalyError("a tiled model's anomaly head is fit on unmirrored tiles: use "
                           "--fit-flips none")  # fmt: skip
    return ["patchcore"]


def _tiled_patches(
    inspection: nn.Module, spec: Any, path: Path, keep: int, rng: np.random.Generator
) -> tuple[np.ndarray, float, tuple[int, int], int]:
    """(at most ``keep`` random patch features [k, D] of all the part's tiles, the part's pooled
    defect score, the tile's patch grid, the number of tiles) of one image file, a batch of
    tiles at a time."""
    from defectssft.tiling import roi_of, tiles_of
    from defectssft_line import tiles as T
    from defectssft_line.preprocess import ImageDecodeError, read_image

    tiling = tiles_of(spec)
    try:
        source = T.tile_source(read_image(path), tiling, spec.input.bit_depth, roi_of(spec),
                               str(path))  # fmt: skip
    except ImageDecodeError as e:
        raise AnomalyError(f"cannot read project image: {e}") from e
    rows, defect, grid = [], [], (0, 0)
    for _, tiles in T.iter_tile_batches(source, tiling):
        f = extract_features(inspection, tiles)
        grid = (int(f.patches.shape[1]), int(f.patches.shape[2]))
        flat = f.patches.reshape(-1, f.patches.shape[-1])
        rows.append(flat[rng.permutation(len(flat))[:keep]])  # bounded per batch, then per part
        defect.append(f.defect)
    pooled = np.concatenate(rows)
    pooled = pooled[np.sort(rng.permutation(len(pooled))[:keep])]
    scores = np.concatenate(defect)
    part = T.pool(np.zeros((len(scores), 1), np.float32), scores, tiling)[1]
    return pooled, float(part), grid, len(scores)


def _fit_tiled(
    project,
    record: dict[str, Any],
    inspection: nn.Module,
    spec: Any,
    plan: FitPlan,
    *,
    bank_mb: float,
    coreset_ratio: float,
    min_bank: int,
    novel_rate: float,
    on_novel: str,
    smooth: float,
    seed: int,
    say: Callable[[str], None],
) -> AnomalyModel:
    """``fit_project_anomaly`` for a tiled model: the patch bank of the good parts' tiles (a
    random share of each part's patches, within ``MAX_FIT_PATCHES`` in all), the part's score
    the maximum over its tiles (``defectssft_line.tiles``), calibrated on held-out good parts
    scored so, as the line scores them."""
    rng = np.random.default_rng(seed)
    model_dir = Path(record["path"])
    # the labeled good parts first, then the stream's, each in random order, while the tile
    # budget lasts; each part gives the same share of the MAX_FIT_PATCHES patches
    queue = [(p, False) for p in rng.permutation(np.array(plan.fit, dtype=object))] + [
        (p, True) for p in rng.permutation(np.array(plan.unlabeled_candidates, dtype=object))
    ]
    accepted: list[tuple[Path, np.ndarray]] = []
    grid, n_unl, used, read, keep = (0, 0), 0, 0, 0, MAX_FIT_PATCHES
    for path, from_stream in queue:
        if used >= MAX_TILED_TILES:
            break
        rows, defect, g, n = _tiled_patches(inspection, spec, Path(path), keep, rng)
        if read == 0:  # the first part's grid sizes the share of the others
            keep = max(1, MAX_FIT_PATCHES // min(len(queue), max(1, MAX_TILED_TILES // n)))
            rows = rows[np.sort(rng.permutation(len(rows))[:keep])]
        used, read = used + n, read + 1
        if not from_stream or defect < CONFIDENT_OK:  # the stream's: called OK with confidence
            accepted.append((Path(path), rows))
            grid, n_unl = g, n_unl + from_stream
    per_part = max(1, used // max(1, read))
    if read < len(queue):
        say(f"anomaly fit: {read} of {len(queue)} good-part candidates read ({used:,} tiles: "
            f"the budget is {MAX_TILED_TILES:,})")  # fmt: skip
    if not accepted:
        raise AnomalyError(
            f"{project.root}: no good parts to fit the anomaly model on (the classifier calls "
            "none of the unlabeled images OK with confidence); label some OK images"
        )
    held_paths, calibrated_on = list(plan.held_out), plan.calibrated_on
    most = max(MIN_HELD_OUT, MAX_TILED_TILES // per_part)  # parts the budget scores
    if len(held_paths) > most:
        held_paths = [held_paths[i] for i in sorted(rng.permutation(len(held_paths))[:most])]
    if len(held_paths) >= MIN_HELD_OUT:
        calibrated_on = f"{len(held_paths)} {plan.calibrated_on}"
    elif len(accepted) >= 2:  # as for untiled models: a fifth of the fit parts held back
        n_hold = max(1, len(accepted) // 5)
        order = rng.permutation(len(accepted))
        held_paths = [accepted[i][0] for i in sorted(order[:n_hold])]
        accepted = [accepted[i] for i in sorted(order[n_hold:])]
        calibrated_on = (
            f"{n_hold} fit images held back (fewer than {MIN_HELD_OUT} {plan.calibrated_on})"
        )
    else:
        held_paths = []
    parts = [rows for _, rows in accepted]
    patches = np.concatenate(parts)
    n_patches, dim = patches.shape
    if n_patches > MAX_FIT_PATCHES:
        patches = patches[np.sort(rng.permutation(n_patches)[:MAX_FIT_PATCHES])]
    rows = bank_rows(len(patches), dim, bank_mb, coreset_ratio, min_bank)
    note = ""
    if rows < len(patches):
        note = f"coreset of {rows} from {len(patches)} patches of {len(parts)} parts' tiles"
        say(f"anomaly bank: {note}")
    model = AnomalyModel(
        bank=patches[greedy_coreset(patches, rows, seed)].astype(np.float32),
        threshold=0.0,
        map_size=list(grid),
        smooth=float(smooth),
        on_novel=on_novel,
        scores=["patchcore"],
        calibrated_on=calibrated_on,
        n_fit_images=len(parts),
        n_fit_patches=int(n_patches),
        subsampled=note,
        version=str(record["version"]),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    score = image_scorer(model, inspection, spec)
    if held_paths:
        held_scores = score(held_paths)
    else:  # a single fit image: nothing held out; calibrated on the fit image
        held_scores = score([accepted[0][0]])
        calibrated_on = "the single fit image (nothing to hold out)"
        say("anomaly threshold: only one good image, calibrated on the fit image itself")
    model.threshold = calibrate_threshold(held_scores, novel_rate)
    model.held_out_max = float(held_scores.max())
    model.n_held_out = len(held_paths)
    model.calibrated_on = calibrated_on
    model.save(model_dir)
    n_scored = score_unlabeled(project, model_dir, score, max_images=min(DEFAULT_MAX_SCORED, most))
    test = evaluate_on_test(project, score, model.threshold, spec.ok_index)
    return _store_summary(project, record, model, n_unl, n_scored, test)


# --------------------------------------------------------------------------- export


def export_graph(
    inspection: nn.Module, anomaly: AnomalyModel | None, with_map: bool, metadata: dict[str, Any]
) -> AnomalyInspectionModel | None:
    """The graph to export for a version with a head (None without one); adds the ``anomaly``
    metadata entry (``defectssft_line.novelty`` reads and checks it)."""
    if anomaly is None:
        return None
    with_map = with_map and anomaly.has_map  # a head of feature scores only has no map
    metadata["anomaly"] = anomaly.onnx_metadata(with_map)
    graph = anomaly.wrap(inspection)
    graph.with_map = with_map
    graph.with_peak = with_map and anomaly.has_peak
    graph.output_names = OUTPUT_NAMES[: 4 + with_map + graph.with_peak]
    return graph


HEAD_SCOPES = ("/anomaly_head/", "/anomaly_peak/")  # the head's ONNX node names begin so


def int8_excluded(model) -> list[str]:
    """The anomaly head's ONNX nodes, kept in float by the INT8 export: quantizing its Adds and
    smoothing convolutions puts Quantize/Dequantize pairs on the [patches, bank] distance matrix,
    which costs time and moves the score (BENCHMARKS.md, "Open set"). The classifier's path to
    the logits that the energy reads stays as the export quantizes it: keeping its last
    convolution and pooling in float too did not move the score less (measured there)."""
    return [n.name for n in model.graph.node if n.name.startswith(HEAD_SCOPES)]


def torch_outputs(
    graph: AnomalyInspectionModel, images: np.ndarray, batch_size: int = 16
) -> list[np.ndarray]:
    """The torch graph's anomaly outputs on uint8 NHWC images: [scores [N]] + [maps [N, h, w]]
    (with the map) + [peaks [N, 2]] (with the peak), as the exported graph's."""
    got: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out = graph(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))
            got.append([o.numpy() for o in out[3:]])
    return [np.concatenate(parts) for parts in zip(*got, strict=True)]


def torch_anomaly(graph: AnomalyInspectionModel, images: np.ndarray, batch_size: int = 16):
    """(anomaly scores [N], maps [N, h, w]) of the torch graph on uint8 NHWC images."""
    out = torch_outputs(graph, images, batch_size)
    return out[0], (out[1] if len(out) > 1 else None)


def check_export(
    path: str | Path, graph: AnomalyInspectionModel, images: np.ndarray, precision: str
) -> dict[str, Any]:
    """Compare the written file's anomaly outputs with torch's on ``images``; ExportError if
    they differ by more than ``MAX_SCORE_DIFF`` (relative to the threshold)."""
    from defectssft.export import ExportError, ort_session

    names = list(graph.output_names[3:])
    ref = torch_outputs(graph, images) if len(images) else [np.zeros(0, np.float32)]
    ref_scores, ref_maps = ref[0], (ref[1] if len(ref) > 1 else None)
    session = ort_session(path)
    got = [session.run(names, {"image": images[i : i + 16]}) for i in range(0, len(images), 16)]
    scores = np.concatenate([g[0] for g in got]) if got else np.zeros(0, np.float32)
    thr = graph.threshold
    scale = score_scale(thr, graph.anomaly_head.normalise)
    diff = float(np.max(np.abs(scores - ref_scores))) / scale if len(images) else 0.0
    if not np.all(np.isfinite(scores)):
        raise ExportError(f"the exported {precision} graph produces NaN/inf anomaly scores")
    if len(names) > 1 and len(images):
        amaps = np.concatenate([g[1] for g in got])
        if amaps.shape != ref_maps.shape:
            raise ExportError(
                f"exported anomaly_map has shape {amaps.shape}, torch {ref_maps.shape}"
            )
        diff = max(diff, float(np.max(np.abs(amaps - ref_maps))) / scale)
    peak_agreement = None
    if "anomaly_peak" in names and len(images):
        peaks = np.concatenate([g[2] for g in got])
        if peaks.shape != (len(images), 2) or not np.all(np.isfinite(peaks)):
            raise ExportError(f"the exported {precision} graph's anomaly_peak is malformed")
        # the peak is an argmax: a near tie may move it by a cell (more after INT8); said
        cell = max(graph.anomaly_peak.cell)
        peak_agreement = float(np.mean(np.max(np.abs(peaks - ref[2]), axis=1) <= cell))
    bound = MAX_SCORE_DIFF[precision]
    if diff > bound:
        raise ExportError(
            f"export check failed: the exported anomaly score differs from torch by {diff:.2e} "
            f"of its threshold (limit {bound:g}) on {len(images)} project images; export "
            "fp32 or without the head (--no-anomaly)"
        )
    rule, pairs = NoveltyRule(thr), zip(scores, ref_scores, strict=True)
    agree = [rule.is_novel(a) == rule.is_novel(b) for a, b in pairs]
    same = float(np.mean(agree)) if agree else 1.0
    return {"max_rel_diff": diff, "novel_agreement": same, "threshold": thr, "map": len(names) > 1,
            "peak_agreement": peak_agreement}  # fmt: skip


# --------------------------------------------------------------------------- the app's map


@dataclass
class AnomalyView:
    """One image's anomaly score and its map as the app draws it (``novelty.heat_weights``,
    with a ring at the refined peak: ``novelty.mark_peak``)."""

    score: float
    threshold: float
    heat: np.ndarray  # HxW in [0, 1] at the image's own size, zero where the map is low
    peak: tuple[float, float] | None = None  # the refined peak (x, y) in the image's pixels


def anomaly_view(
    model_dir: str | Path, image_path: str | Path, bit_depth: int | None = None
) -> AnomalyView:
    """The anomaly map of ``image_path`` under the version in ``model_dir`` (torch; call from a
    worker thread), computed on what the line scores: the model's region of interest, resized
    to the input or, for a tiled model, its tiles' maps stitched (``defectssft_line.tiles``);
    drawn over that region of the image. AnomalyError when the version has no head (fit one
    with fit-anomaly)."""
    from defectssft.inspection import load_inspection
    from defectssft.tiling import paste_heat, roi_of, score_image
    from defectssft_line.novelty import heat_weights, mark_peak
    from defectssft_line.preprocess import prepare, read_image

    model_dir = Path(model_dir)
    head = load_anomaly(model_dir)
    if head is None:
        raise AnomalyError(
            f"model {model_dir.name} has no anomaly head; fit one with "
            f"`defectssft fit-anomaly PROJECT --model {model_dir.name}`"
        )
    inspection, spec = load_inspection(model_dir / "model.pt", default_bit_depth=bit_depth)
    raw = read_image(image_path)
    roi = roi_of(spec)
    bx, by, bw, bh = roi.bbox if roi is not None else (0, 0, raw.shape[1], raw.shape[0])
    graph = head.wrap(inspection)
    inp = spec.input
    peak = amap = None
    if inp.tiles is not None:
        graph.with_peak = False  # tiled heads have none
        t = score_image(inspection, image_path, spec, graph=graph, raw=raw)
        score, amap = float(t.anomaly), t.anomaly_map
    else:
        rgb = prepare(raw, inp.height, inp.width, inp.bit_depth, roi)
        out = torch_outputs(graph, rgb[None])
        score = float(out[0][0])
        amap = out[1][0] if len(out) > 1 else None
        peak = out[2][0] if len(out) > 2 else None
    if amap is None:  # a head of feature scores only: no map to draw
        return AnomalyView(score, float(head.threshold), np.zeros(raw.shape[:2], np.float32))
    heat = heat_weights(amap, head.threshold, bh, bw)
    shown = None
    if peak is not None:
        size = (inp.height, inp.width)
        heat = mark_peak(heat, peak, size, amap, head.threshold)
        shown = (bx + float(peak[0]) * bw / size[1], by + float(peak[1]) * bh / size[0])
    if (bx, by, bw, bh) != (0, 0, raw.shape[1], raw.shape[0]):
        heat = paste_heat(heat, (bx, by, bw, bh), raw.shape)
    return AnomalyView(score, float(head.threshold), heat, shown)
