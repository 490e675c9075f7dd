"""The decision contract: defect score -> OK / NG / UNSURE, and which thresholds apply.

One torch-free module (numpy only) that the line runtime, the core (evaluation, export, the
demo) and the app all import, so the verdict rule, the threshold resolution and the format
constants of the exported model are written once. The rules are documented in
docs/ARCHITECTURE.md ("Decision contract").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# The exported model (ONNX ``metadata_props[METADATA_KEY]``) and ``model.pt`` share the format
# name; a reader refuses a format_version newer than NEWEST_FORMAT_VERSION. Files are written
# with FORMAT_VERSION, an INT8 file with the exact re-check with 2 (defectssft_line.recheck).
FORMAT = "defectssft-model"
FORMAT_VERSION = 1
NEWEST_FORMAT_VERSION = 2
METADATA_KEY = "defectssft"
DEFAULT_THRESHOLD = 0.5


class ThresholdError(ValueError):
    """Thresholds outside 0 <= unsure_low <= ng <= unsure_high <= 1 (one line, user-fixable)."""


@dataclass(frozen=True)
class Thresholds:
    """Reject at ``score >= unsure_high``, pass at ``score < unsure_low``, UNSURE in between;
    ``ng`` is the operating threshold the band surrounds (no band: all three equal)."""

    ng: float
    unsure_low: float
    unsure_high: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.unsure_low <= self.ng <= self.unsure_high <= 1.0:
            raise ThresholdError(
                f"thresholds must satisfy 0 <= unsure_low ({self.unsure_low}) <= ng ({self.ng}) "
                f"<= unsure_high ({self.unsure_high}) <= 1"
            )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def resolve_thresholds(
    model_thresholds: Mapping[str, Any] | None = None,
    operating: float | Mapping[str, Any] | None = None,
    threshold: float | None = None,
    unsure_low: float | None = None,
    unsure_high: float | None = None,
) -> Thresholds:
    """The thresholds to apply; first match wins for the NG threshold: ``threshold`` (an
    override), the model's own ``model_thresholds["ng"]``, the project's ``operating`` point
    (a number, or a mapping ``{"ng", "unsure_low", "unsure_high"}``: what ``defectssft evaluate``
    calibrated or the operator set), 0.5.

    The UNSURE band comes from the same source as the NG threshold. An overriding ``threshold``
    drops the band (no band unless ``unsure_low`` / ``unsure_high`` are given too); otherwise
    ``unsure_low`` / ``unsure_high`` override one edge of it. Raises ThresholdError for an
    impossible combination.
    """
    if isinstance(operating, Mapping):
        point: Mapping[str, Any] = operating
    else:
        point = {} if operating is None else {"ng": operating}
    base = model_thresholds or {}
    if threshold is not None:
        ng, band = float(threshold), {}
    elif base.get("ng") is not None:
        ng, band = float(base["ng"]), base
    elif point.get("ng") is not None:
        ng, band = float(point["ng"]), point
    else:
        ng, band = DEFAULT_THRESHOLD, {}
    low = unsure_low if unsure_low is not None else band.get("unsure_low")
    high = unsure_high if unsure_high is not None else band.get("unsure_high")
    return Thresholds(ng, ng if low is None else float(low), ng if high is None else float(high))


def defect_scores(probs: np.ndarray, ok_index: int | None) -> np.ndarray:
    """Per-image defect score: ``1 - p(ok)`` with an OK class, else ``1 - max prob``.

    Summed from the other classes instead: ``1 - p`` in float32 is exactly 0 for every p(defect)
    below about 6e-8, so confident OK parts would all tie; the sum keeps them distinct down to the
    smallest float32 probability. The exported graph computes the same sum
    (``defectssft.inspection.InspectionModel``)."""
    p = np.array(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {p.shape}")
    drop = p.argmax(axis=1) if ok_index is None else np.full(len(p), ok_index)
    p[np.arange(len(p)), drop] = 0.0
    return p.sum(axis=1)


def verdict(score: float, thresholds: Thresholds) -> str:
    """OK / NG / UNSURE of one defect score (a model with an OK class)."""
    if score < thresholds.unsure_low:
        return "OK"
    if score >= thresholds.unsure_high:
        return "NG"
    return "UNSURE"


@dataclass(frozen=True)
class Prediction:
    verdict: str  # OK | NG | UNSURE
    cls: str  # the OK class for OK, else the most likely defect class
    score: float  # the model's defect_score output
    probs: tuple[float, ...]
    # Models with an anomaly head (defectssft_line.novelty): its score, whether the part is
    # novel, and the map [h, w] (for overlays; not part of equality).
    anomaly_score: float | None = None
    novel: bool = False
    anomaly_map: Any = field(default=None, compare=False, repr=False)
    anomaly_peak: Any = field(default=None, compare=False, repr=False)  # [2]: x, y input px
    # decided by the fp32 graph of an INT8 file with the re-check (defectssft_line.recheck)
    rechecked: bool = field(default=False, compare=False)


def decide(
    probs: np.ndarray,
    score: float,
    classes: list[str],
    ok_class: str | None,
    thresholds: Thresholds,
) -> Prediction:
    """The verdict and class of one image from its probabilities and defect score.

    With an OK class: ``verdict(score)``; the class is the OK class for OK, else the most likely
    defect class. Without one every part is NG with its top class, UNSURE when the top
    probability is below ``1 - unsure_high``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if ok_class is not None and ok_class in classes:
        ok = classes.index(ok_class)
        defect_probs = p.copy()
        defect_probs[ok] = -1.0
        top_defect = classes[int(np.argmax(defect_probs))] if len(classes) > 1 else ok_class
        result = verdict(score, thresholds)
        cls = ok_class if result == "OK" else top_defect
    else:
        cls = classes[int(np.argmax(p))]
        result = "UNSURE" if float(p.max()) < 1.0 - thresholds.unsure_high else "NG"
    return Prediction(result, cls, float(score), tuple(float(x) for x in p))


def decide_part(
    probs: np.ndarray,
    score: float,
    classes: list[str],
    ok_class: str | None,
    thresholds: Thresholds,
    anomaly_score: float | None = None,
    novelty: Any = None,
) -> Prediction:
    """The line's verdict of one part: ``decide`` and, for a model with an anomaly head
    (``novelty`` a ``defectssft_line.novelty.NoveltyRule``) and the part's anomaly score, the
    novelty rule (``novelty.apply_novelty``: an OK part that is novel becomes UNSURE, or NG).
    What the line runtime does, for the core and the app to call on stored scores. Without the
    rule or the score the classifier's verdict stands."""
    pred = decide(probs, score, classes, ok_class, thresholds)
    if novelty is None or anomaly_score is None:
        return pred
    from defectssft_line.novelty import apply_novelty

    ok = ok_class if ok_class in classes else None
    return apply_novelty(pred, float(anomaly_score), novelty, ok)
