"""INT8 with an exact re-check: the speed of the INT8 graph, the verdicts of the fp32 one.

An INT8 graph's scores differ from fp32's by up to a few logits per part. A part far from every
verdict edge keeps its verdict whatever that error; only a part close to an edge can flip. So an
INT8 export (``defectssft export --int8``, unless ``--no-recheck``) carries both graphs in one
file, behind one ``If`` node on a boolean input ``exact`` (default false: the INT8 graph), and a
margin in its metadata (``recheck``): ``logit``, how far (in logits of the defect score, or of
the top probability and the top-two gap for a model without an OK class) the INT8 error reached
on the export's images, times a safety factor; ``anomaly``, the same for the anomaly score
(score units). The line runs every part through the INT8 graph and runs again, with
``exact=true``, only the parts whose INT8 outputs lie within that margin of an edge: the UNSURE
band's two edges, and the anomaly head's threshold. Their outputs are then the fp32 graph's.

A part can still flip only if its INT8 error is larger than the margin, i.e. larger than any
seen at export times the safety factor. Such files have ``format_version`` 2: a runtime that
predates the re-check refuses them instead of running the INT8 graph alone.

numpy only (the session is passed in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from defectssft_line.decision import Thresholds

RECHECK_INPUT = "exact"  # the graph's boolean input: true runs the fp32 graph
RECHECK_FORMAT_VERSION = 2  # metadata format_version of a file with the re-check
SAFETY = 1.5  # margin = SAFETY x the largest INT8 error seen on the export's images
# INT8 alone takes 0.75-0.8 of fp32's time, a re-checked part one fp32 run more (BENCHMARKS.md,
# "INT8 fidelity"): with more than this share re-checked, INT8 is no faster than fp32.
NO_GAIN_SHARE = 0.2
_TINY = 1e-12
_FLOOR = 1e-45  # the smallest float32 probability (a zero reads as this)


class RecheckError(ValueError):
    """A ``recheck`` metadata entry that is malformed (one line naming the field)."""


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _TINY, 1.0 - _TINY)
    return np.log(p) - np.log1p(-p)


def _edge_logits(edges: list[float]) -> list[float]:
    """The logits of the edges a score can cross (0 and 1 cannot be crossed)."""
    return [float(_logit(np.array(e))) for e in edges if 0.0 < e < 1.0]


def decision_quantities(probs: np.ndarray, ok_index: int | None) -> np.ndarray:
    """[N, k] the quantities a verdict is decided on, in logits: with an OK class the defect
    score's logit; without one the top probability's logit and the gap (in log probability)
    between the two most likely classes (the verdict and the class). From the log
    probabilities, each side summed on its own: ``1 - p`` in float32 is 0 or 1 for a confident
    part, which would make a logit of 17 read as 28."""
    p = np.maximum(np.asarray(probs, np.float64), _FLOOR)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {p.shape}")
    if ok_index is not None:
        rest = (
            np.delete(p, ok_index, axis=1).sum(axis=1)
            if p.shape[1] > 1
            else np.full(len(p), _FLOOR)
        )
        return (np.log(rest) - np.log(p[:, ok_index]))[:, None]
    order = np.argsort(-p, axis=1)
    rows = np.arange(len(p))
    top = p[rows, order[:, 0]]
    if p.shape[1] == 1:
        return np.stack([np.full(len(p), np.inf), np.full(len(p), np.inf)], axis=1)
    second = p[rows, order[:, 1]]
    rest = p.sum(axis=1) - top
    return np.stack(
        [np.log(top) - np.log(np.maximum(rest, _FLOOR)), np.log(top) - np.log(second)], axis=1
    )


@dataclass(frozen=True)
class RecheckRule:
    """Which parts the fp32 graph decides: those within ``logit`` of a verdict edge, or within
    ``anomaly`` of the anomaly head's threshold."""

    logit: float
    anomaly: float | None = None

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> RecheckRule | None:
        """The rule of a model's metadata; None for a file without the re-check. RecheckError
        for a malformed entry."""
        entry = meta.get("recheck")
        if entry is None:
            return None
        if not isinstance(entry, dict):
            raise RecheckError(f"recheck must be an object, got {entry!r}")
        out: dict[str, float | None] = {}
        for key in ("logit", "anomaly"):
            v = entry.get(key)
            if v is None and key == "anomaly":
                out[key] = None
                continue
            if (
                not isinstance(v, (int, float))
                or isinstance(v, bool)
                or not math.isfinite(v)
                or v < 0
            ):
                raise RecheckError(f"recheck.{key} must be a number >= 0, got {v!r}")
            out[key] = float(v)
        return cls(float(out["logit"] or 0.0), out["anomaly"])

    def as_dict(self) -> dict[str, float | None]:
        return {"logit": self.logit, "anomaly": self.anomaly}

    def near(
        self,
        probs: np.ndarray,
        classes: list[str],
        ok_class: str | None,
        thresholds: Thresholds,
        anomaly_scores: np.ndarray | None = None,
        anomaly_threshold: float | None = None,
    ) -> np.ndarray:
        """[N] bool: the parts whose verdict the INT8 error could change (``decision.decide``'s
        edges and, with the anomaly head, its threshold)."""
        ok = classes.index(ok_class) if ok_class in classes else None
        q = decision_quantities(probs, ok)
        if ok is not None:
            edges = _edge_logits([thresholds.unsure_low, thresholds.unsure_high])
            dist = np.full(len(q), np.inf)
            for e in edges:
                dist = np.minimum(dist, np.abs(q[:, 0] - e))
        else:
            edges = _edge_logits([1.0 - thresholds.unsure_high])
            dist = np.abs(q[:, 1])  # the class
            for e in edges:
                dist = np.minimum(dist, np.abs(q[:, 0] - e))
        mask = dist < self.logit
        if anomaly_scores is not None and anomaly_threshold is not None and self.anomaly:
            a = np.asarray(anomaly_scores, np.float64).reshape(-1)
            mask |= np.abs(a - float(anomaly_threshold)) < self.anomaly
        return mask


def fit_margin(
    fast: np.ndarray,
    exact: np.ndarray,
    ok_index: int | None,
    fast_anomaly: np.ndarray | None = None,
    exact_anomaly: np.ndarray | None = None,
    safety: float = SAFETY,
) -> tuple[RecheckRule, dict[str, float]]:
    """The rule from the INT8 (``fast``) and fp32 (``exact``) probabilities of the same images: ``safety`` x the largest difference of each decision quantity (and of the
    anomaly score); with what was measured."""
    qf = decision_quantities(fast, ok_index)
    qe = decision_quantities(exact, ok_index)
    with np.errstate(invalid="ignore"):
        d = np.abs(qf - qe)
    d = d[np.isfinite(d)]
    worst = float(d.max()) if d.size else 0.0
    said = {"max_logit_diff": worst, "n": float(len(qf))}
    anomaly = None
    if fast_anomaly is not None and exact_anomaly is not None:
        da = np.abs(np.asarray(fast_anomaly, np.float64) - np.asarray(exact_anomaly, np.float64))
        worst_a = float(da.max()) if da.size else 0.0
        said["max_anomaly_diff"] = worst_a
        anomaly = safety * worst_a
    return RecheckRule(safety * worst, anomaly), said


def run_rechecked(
    session: Any,
    batch: np.ndarray,
    names: list[str],
    rule: RecheckRule,
    classes: list[str],
    ok_class: str | None,
    thresholds: Thresholds,
    anomaly_threshold: float | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """``session.run(names)`` on ``batch`` through the INT8 graph, then the parts ``rule.near``
    picks again through the fp32 graph, their rows replaced. ``names`` start with ``probs``,
    ``defect_score`` (and ``anomaly_score`` when ``anomaly_threshold`` is given). Returns the
    outputs and the [N] bool mask of the re-checked parts."""
    outs = [np.array(o) for o in session.run(names, {"image": batch})]
    anomaly = outs[2] if anomaly_threshold is not None else None
    mask = rule.near(outs[0], classes, ok_class, thresholds, anomaly, anomaly_threshold)
    if mask.any():
        exact = session.run(names, {"image": batch[mask], RECHECK_INPUT: np.array(True)})
        for o, e in zip(outs, exact, strict=True):
            o[mask] = e
    return outs, mask
