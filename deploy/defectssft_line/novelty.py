"""Novel parts: the anomaly head's score and map in the verdict (torch-free, numpy + OpenCV).

A model exported with an anomaly head (``defectssft fit-anomaly``, docs in the README) has two
more outputs, ``anomaly_score`` [N] and ``anomaly_map`` [N, h, w], and an ``anomaly`` entry in its
metadata: ``{"threshold", "on_novel", "map", "method", "features", "calibrated_on"}``; with
``"peak": true`` also ``anomaly_peak`` [N, 2], the map's maximum refined on finer features (x, y
in input pixels), which the overlays mark (``mark_peak``). Models without it work as before.

The rule, written once here for the line, the core and the app: a part whose anomaly score is at
or above the threshold is **novel**. A novel part the classifier passes as OK becomes ``on_novel``
(UNSURE by default, so ``--send-unsure`` hands it back for labeling; or NG); without an OK class
a novel part (unlike every known class) becomes ``on_novel`` too. Other verdicts stand; the
record says ``novel`` either way. A model without the head decides exactly as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ON_NOVEL_CHOICES = ("UNSURE", "NG")
ANOMALY_OUTPUTS = ("anomaly_score", "anomaly_map", "anomaly_peak")


class NoveltyMetadataError(ValueError):
    """An ``anomaly`` metadata entry that breaks the schema (the message names the field)."""


def validate_anomaly_metadata(entry: Any) -> dict[str, Any] | None:
    """Check the metadata's ``anomaly`` entry (None: a model without the head)."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise NoveltyMetadataError(f"anomaly must be an object, got {entry!r}")
    thr = entry.get("threshold")
    if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not math.isfinite(thr):
        raise NoveltyMetadataError(f"anomaly.threshold must be a number, got {thr!r}")
    if thr < 0:
        raise NoveltyMetadataError(f"anomaly.threshold must be >= 0, got {thr!r}")
    on = entry.get("on_novel", "UNSURE")
    if on not in ON_NOVEL_CHOICES:
        raise NoveltyMetadataError(
            f"anomaly.on_novel must be one of {', '.join(ON_NOVEL_CHOICES)}, got {on!r}"
        )
    size = entry.get("map")
    if size is not None and (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise NoveltyMetadataError(f"anomaly.map must be [height, width] or null, got {size!r}")
    peak = entry.get("peak", False)
    if not isinstance(peak, bool):
        raise NoveltyMetadataError(f"anomaly.peak must be true or false, got {peak!r}")
    if peak and size is None:
        raise NoveltyMetadataError("anomaly.peak needs the map (anomaly.map is null)")
    return entry


@dataclass(frozen=True)
class NoveltyRule:
    """The anomaly threshold and what a novel part becomes."""

    threshold: float
    on_novel: str = "UNSURE"
    has_map: bool = False
    has_peak: bool = False

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], on_novel: str | None = None) -> NoveltyRule | None:
        """The rule of a validated model metadata dict; None for a model without the head.
        ``on_novel`` (the line's ``--on-novel``) overrides the model's own."""
        entry = meta.get("anomaly")
        if not entry:
            return None
        return cls(
            float(entry["threshold"]),
            on_novel or str(entry.get("on_novel", "UNSURE")),
            entry.get("map") is not None,
            entry.get("map") is not None and entry.get("peak") is True,
        )

    def is_novel(self, anomaly_score: float) -> bool:
        """Whether a part with this anomaly score is novel (at or above the threshold)."""
        return bool(anomaly_score >= self.threshold)

    def output_names(self) -> list[str]:
        n = 1 + self.has_map + (self.has_map and self.has_peak)
        return list(ANOMALY_OUTPUTS[:n])


def apply_novelty(pred: Any, anomaly_score: float, rule: NoveltyRule, ok_class: str | None) -> Any:
    """``pred`` (a ``decision.Prediction``) with ``anomaly_score``, ``novel`` and, for a novel
    part the classifier passed (or any part without an OK class), the verdict ``on_novel``."""
    novel = rule.is_novel(anomaly_score)
    verdict = pred.verdict
    if novel and (verdict == "OK" or ok_class is None):
        verdict = rule.on_novel
    return replace(pred, verdict=verdict, anomaly_score=float(anomaly_score), novel=novel)


def heat_weights(amap: np.ndarray, threshold: float, height: int, width: int) -> np.ndarray:
    """Per-pixel weights in [0, 1] for drawing an anomaly map over an image of ``height`` x
    ``width``: smoothed, and non-zero only in the top quarter below ``max(peak, threshold)``,
    so a good part shows (almost) nothing and a defect a spot, not a colour wash."""
    import cv2

    m = cv2.resize(np.asarray(amap, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    sigma = max(1.0, 0.02 * max(height, width))
    m = cv2.GaussianBlur(m, (0, 0), sigma)
    top = max(float(m.max()), float(threshold), 1e-12)
    lo = 0.75 * top
    return np.clip((m - lo) / (top - lo), 0.0, 1.0)


def mark_peak(
    weights: np.ndarray, peak: Any, input_size: tuple[int, int], amap: np.ndarray, threshold: float
) -> np.ndarray:
    """``weights`` (``heat_weights``) with a ring (strong outside, clear inside) at the refined
    peak (``anomaly_peak``: x, y in the model's input pixels of ``input_size`` (height, width),
    scaled to the weights' size as the map is), drawn only where the map is drawn at all (its
    maximum at least the lower cut of ``heat_weights``); unchanged without a finite peak."""
    import cv2

    p = np.asarray(peak, np.float64).reshape(-1) if peak is not None else np.zeros(0)
    if p.size != 2 or not np.all(np.isfinite(p)):
        return weights
    if float(np.max(amap)) < 0.75 * max(float(threshold), 1e-12):
        return weights
    h, w = weights.shape[:2]
    x = int(round(p[0] * w / max(1, input_size[1])))
    y = int(round(p[1] * h / max(1, input_size[0])))
    radius = max(6, round(0.03 * max(h, w)))
    t = max(2, radius // 4)
    out = np.ascontiguousarray(weights, dtype=np.float32).copy()
    # a full-strength ring with a clear ring inside it: seen on an empty background and on the
    # map's own high spot (where the weights are already 1)
    cv2.circle(out, (x, y), radius, 1.0, thickness=t, lineType=cv2.LINE_AA)
    cv2.circle(out, (x, y), radius - t, 0.0, thickness=t, lineType=cv2.LINE_AA)
    return out


def peak_in_image(
    peak: Any, input_size: tuple[int, int], image_shape: tuple[int, ...], roi: Any = None
) -> list[float] | None:
    """``anomaly_peak`` (x, y in the model's input pixels of ``input_size`` (height, width)) in
    the pixels of the decoded image of ``image_shape`` (the region of interest's box when the
    model has one, offset by its corner), as ``mark_peak`` scales it; None without a finite
    peak."""
    p = np.asarray(peak, np.float64).reshape(-1) if peak is not None else np.zeros(0)
    if p.size != 2 or not np.all(np.isfinite(p)):
        return None
    x0, y0, w, h = 0, 0, int(image_shape[1]), int(image_shape[0])
    if roi is not None:
        from defectssft_line.roi import as_roi

        x0, y0, w, h = as_roi(roi).bbox
    return [
        round(x0 + float(p[0]) * w / max(1, input_size[1]), 1),
        round(y0 + float(p[1]) * h / max(1, input_size[0]), 1),
    ]


def overlay(image_rgb: np.ndarray, weights: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """RGB uint8 image with a JET colour map drawn where ``weights`` > 0 (strength by weight)."""
    import cv2

    colours = cv2.applyColorMap((weights * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    a = (alpha * weights)[..., None]
    out = image_rgb.astype(np.float32) * (1 - a) + colours.astype(np.float32) * a
    return np.clip(out, 0, 255).astype(np.uint8)


def save_map_overlay(
    folder: Path,
    name: str,
    image: np.ndarray,
    amap: np.ndarray,
    threshold: float,
    bit_depth: int,
    peak: Any = None,
    input_size: tuple[int, int] | None = None,
    roi: Any = None,
) -> Path:
    """Write ``folder/<name stem>.anomaly.png``: the decoded image (8-bit RGB, own size; its
    region of interest ``roi`` when the model has one) with its anomaly map drawn where it is high, and a ring at ``peak`` (``anomaly_peak``, in input
    pixels of ``input_size``) when given. Written under a temporary name and renamed."""
    import cv2

    from defectssft_line.output import _atomic_write_bytes
    from defectssft_line.preprocess import crop_roi, to_rgb8

    rgb = to_rgb8(crop_roi(image, roi), bit_depth)  # what the model saw
    weights = heat_weights(amap, threshold, rgb.shape[0], rgb.shape[1])
    if peak is not None and input_size is not None:
        weights = mark_peak(weights, peak, input_size, amap, threshold)
    drawn = overlay(rgb, weights)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(drawn[..., ::-1]))
    if not ok:
        raise OSError(f"cannot encode the anomaly overlay of {name}")
    stem = Path(name).stem or "part"
    return _atomic_write_bytes(Path(folder), f"{stem}.anomaly.png", buf.tobytes())
