"""Classification and OK/NG inspection metrics, pure numpy.

Conventions used everywhere in defectssft:

* a *defect score* is ``1 - p(OK)`` when the project has an OK class (else ``1 - max prob``),
  ``defectssft_line.decision.defect_scores`` (re-exported here);
* a part is rejected (NG) when ``score >= threshold`` (``defectssft_line.decision.verdict``);
* **escape rate** = defective parts passed as OK / defective parts (the costly error);
* **overkill rate** = good parts rejected / good parts (the expensive-but-safe error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from defectssft_line.decision import defect_scores  # noqa: F401 - the one definition, re-exported


@dataclass(frozen=True)
class ThresholdChoice:
    """A reject threshold and the escape/overkill rates it gives on the scored parts."""

    threshold: float
    escape_rate: float
    overkill_rate: float

    def as_dict(self) -> dict:
        return asdict(self)


def _binary_inputs(scores, is_defect) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    d = np.asarray(is_defect, dtype=bool).ravel()
    if s.shape != d.shape:
        raise ValueError(f"scores ({s.size}) and labels ({d.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    return s, d


def operating_point(metrics: Mapping[str, Any] | None) -> dict[str, float] | None:
    """The operating point stored with a model version's metrics: ``{"ng", "unsure_low",
    "unsure_high"}`` (the band edges may be absent), or None when it has none.

    First match wins: ``metrics["operating_point"]``, the one chosen explicitly for the version
    (``Project.set_operating_point``: the app's operating-point panel or the CLI), then
    ``metrics["test"]["operating_point"]``, the one ``defectssft evaluate`` chose (its
    ``threshold`` is the NG threshold).
    """
    metrics = metrics or {}
    chosen = metrics.get("operating_point") or {}
    if chosen.get("ng") is None:
        chosen = (metrics.get("test") or {}).get("operating_point") or {}
        if chosen.get("threshold") is None:
            return None
        chosen = {**chosen, "ng": chosen["threshold"]}
    return {
        k: float(chosen[k])
        for k in ("ng", "unsure_low", "unsure_high")
        if chosen.get(k) is not None
    }


def operating_threshold(metrics: Mapping[str, Any] | None) -> float | None:
    """The NG threshold of the stored operating point (``operating_point``), None without one."""
    point = operating_point(metrics)
    return None if point is None else point["ng"]


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] counts; rows are the true class, columns the prediction."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in length")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} has a class index outside 0..{num_classes - 1}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_prf(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": cm.sum(axis=1).astype(np.int64),
    }


def accuracy(cm: np.ndarray) -> float:
    total = float(np.sum(cm))
    return float(np.trace(cm)) / total if total else 0.0


def escape_overkill(scores, is_defect, threshold: float) -> tuple[float, float]:
    """(escape rate, overkill rate) when parts with ``score >= threshold`` are rejected.

    A rate whose denominator is empty (no defective / no good parts) is 0.
    """
    from defectssft_line.decision import Thresholds, verdict

    s, d = _binary_inputs(scores, is_defect)
    t = Thresholds(threshold, threshold, threshold)
    rejected = np.asarray([verdict(float(x), t) == "NG" for x in s], dtype=bool)
    escape = float(np.sum(d & ~rejected)) / max(int(d.sum()), 1)
    overkill = float(np.sum(~d & rejected)) / max(int((~d).sum()), 1)
    return escape, overkill


def threshold_for_max_escape(scores, is_defect, max_escape: float) -> ThresholdChoice:
    """The highest reject threshold whose escape rate is <= ``max_escape``.

    The highest such threshold rejects the fewest good parts, so it has the least overkill for
    the allowed escapes. With ``k = floor(max_escape * n_defective)`` allowed escapes, the
    threshold is the (k+1)-th lowest defect score: at most k defective parts score below it.
    """
    if not 0.0 <= max_escape < 1.0:
        raise ValueError(f"max_escape must be in [0, 1), got {max_escape}")
    s, d = _binary_inputs(scores, is_defect)
    defect_sorted = np.sort(s[d])
    if defect_sorted.size == 0:
        raise ValueError("no defective parts among the scored images: escape rate is undefined")
    allowed = int(np.floor(max_escape * defect_sorted.size + 1e-9))
    threshold = float(defect_sorted[allowed])
    escape, overkill = escape_overkill(s, d, threshold)
    return ThresholdChoice(threshold, escape, overkill)


def roc_curve(scores, is_defect) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), starting at (0, 0).

    Positive = defective. One point per distinct score, thresholds descending.
    """
    s, d = _binary_inputs(scores, is_defect)
    order = np.argsort(-s, kind="mergesort")
    s, d = s[order], d[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.array([], int)
    tps = np.cumsum(d)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = int(d.sum()), int((~d).sum())
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.r_[0.0, np.zeros(len(tps))]
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.r_[0.0, np.zeros(len(fps))]
    thresholds = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thresholds


def roc_auc(scores, is_defect) -> float | None:
    """Area under the ROC curve (ties count half); None when one of the classes is absent."""
    s, d = _binary_inputs(scores, is_defect)
    if d.all() or not d.any():
        return None
    fpr, tpr, _ = roc_curve(s, d)
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def average_precision(scores, is_defect) -> float | None:
    """Average precision = sum over thresholds of (recall step) * precision; None without defects."""
    s, d = _binary_inputs(scores, is_defect)
    if not d.any():
        return None
    order = np.argsort(-s, kind="mergesort")
    s, d = s[order], d[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(d)[distinct].astype(np.float64)
    precision = tps / (distinct + 1)
    recall = tps / d.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_report(y_true, probs, classes: list[str]) -> dict:
    """Accuracy, per-class P/R/F1 and the confusion matrix of argmax predictions."""
    p = np.asarray(probs, dtype=np.float64)
    y_pred = p.argmax(axis=1) if p.size else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    prf = per_class_prf(cm)
    per_class = {
        name: {k: (int(v[i]) if k == "support" else float(v[i])) for k, v in prf.items()}
        for i, name in enumerate(classes)
    }
    return {
        "n": int(cm.sum()),
        "accuracy": accuracy(cm),
        "macro_f1": float(np.mean(prf["f1"])) if len(classes) else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, ok_index: int | None
) -> dict[str, float]:
    """The training loop's validation numbers: accuracy, balanced accuracy (mean recall over the
    classes present), macro-F1 over all classes (as ``classification_report``), NLL and, with an
    OK class, the defect AUROC (NaN when only one kind of part is present)."""
    p = np.asarray(probs)
    y = np.asarray(labels, dtype=np.int64)
    cm = confusion_matrix(y, p.argmax(1), p.shape[1])
    prf = per_class_prf(cm)
    present = prf["support"] > 0
    out = {
        "accuracy": accuracy(cm),
        "balanced_accuracy": float(np.mean(prf["recall"][present])) if present.any() else math.nan,
        "macro_f1": float(np.mean(prf["f1"])) if len(y) else math.nan,
        "nll": float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean()),
    }
    if ok_index is not None:
        scores = defect_scores(p, ok_index)
        auroc = roc_auc(scores, y != ok_index) if np.isfinite(scores).all() else None
        out["auroc"] = math.nan if auroc is None else auroc
    return out


def inspection_report(scores, is_defect, threshold: float, max_escape: float) -> dict:
    """OK/NG metrics: AUC, AP, escape/overkill at ``threshold`` and at the max-escape threshold."""
    s, d = _binary_inputs(scores, is_defect)
    escape, overkill = escape_overkill(s, d, threshold)
    out: dict = {
        "n_defective": int(d.sum()),
        "n_good": int((~d).sum()),
        "roc_auc": roc_auc(s, d),
        "average_precision": average_precision(s, d),
        "threshold": float(threshold),
        "escape_rate": escape,
        "overkill_rate": overkill,
        "max_escape": float(max_escape),
        "threshold_for_max_escape": None,
    }
    if d.any():
        out["threshold_for_max_escape"] = threshold_for_max_escape(s, d, max_escape).as_dict()
    return out


def _check_rate(k: int, n: int, confidence: float) -> None:
    """The interval functions' shared guard: ``0 <= k <= n`` and a confidence in (0, 1)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate ``k / n`` (e.g. 2 escapes in 150 defective parts).

    Unlike ``p +- z * sqrt(p(1-p)/n)`` it stays inside [0, 1] and is not zero-width at ``k = 0``:
    0 escapes in 30 parts gives (0, 11.4 %) at 95 %, which is what 30 parts can tell. Returns
    (low, high); ``n = 0`` gives (0, 1), nothing is known.
    """
    from statistics import NormalDist

    _check_rate(k, n, confidence)
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


# --------------------------------------------------------------------------- honest evidence

CONFIDENCE = 0.95
# A claim whose 95 % interval is wider than this (in rate) gets a one-line warning: the split
# cannot tell, e.g., 0 % from 30 % escapes.
MAX_SUPPORTED_WIDTH = 0.30


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact for the n of a test split)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    lg = math.lgamma
    terms = [lg(n + 1) - lg(i + 1) - lg(n - i + 1) + i * lp + (n - i) * lq for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _bisect(f, target: float) -> float:
    """The p in [0, 1] where the decreasing function ``f(p)`` crosses ``target``."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval of a rate ``k / n``: it holds the true rate in at least
    ``confidence`` of repeated samples, whatever the rate (Wilson's can fall short near 0 with
    small n). 0 escapes in 3 defective parts gives (0, 70.8 %) at 95 %. ``n = 0``: (0, 1)."""
    _check_rate(k, n, confidence)
    if n == 0:
        return 0.0, 1.0
    a = (1.0 - confidence) / 2.0
    # lower: P(X >= k | p) = a, i.e. 1 - cdf(k - 1) = a; upper: cdf(k) = a.
    low = 0.0 if k == 0 else _bisect(lambda p: _binom_cdf(k - 1, n, p), 1.0 - a)
    high = 1.0 if k == n else _bisect(lambda p: _binom_cdf(k, n, p), a)
    return low, high


def rate_claim(k: int, n: int, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """A rate as the product reports it: count, denominator, rate and its exact interval."""
    low, high = clopper_pearson(k, n, confidence)
    return {
        "k": int(k),
        "n": int(n),
        "rate": None if n == 0 else k / n,
        "low": low,
        "high": high,
        "confidence": confidence,
    }


def format_rate(name: str, claim: Mapping[str, Any]) -> str:
    """``escapes 0 / 3, ≤ 70.8 % at 95 %`` or ``overkill 2 / 40 = 5.0 % [0.6, 16.9] at 95 %``."""
    k, n = claim["k"], claim["n"]
    conf = f"{100 * claim.get('confidence', CONFIDENCE):.0f} %"
    if n == 0:
        return f"{name} 0 / 0 (no parts: unknown)"
    if k == 0:
        return f"{name} 0 / {n}, ≤ {100 * claim['high']:.1f} % at {conf}"
    return (
        f"{name} {k} / {n} = {100 * k / n:.1f} % "
        f"[{100 * claim['low']:.1f}, {100 * claim['high']:.1f}] at {conf}"
    )


def support_warning(name: str, claim: Mapping[str, Any], what: str) -> str | None:
    """A one-line warning when ``claim``'s interval is too wide to support a number, else None."""
    n = claim["n"]
    if n and claim["high"] - claim["low"] <= MAX_SUPPORTED_WIDTH:
        return None
    if n == 0:
        return f"warning: no {what}: {name} unknown"
    return (
        f"warning: {n} {what} cannot tell {name} of {100 * claim['low']:.0f} % from "
        f"{100 * claim['high']:.0f} % (95 %); label more to support the claim"
    )


def mcnemar_exact(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that the challenger is better: of the ``b + c`` parts the
    two models disagree on, the challenger is right on ``b`` and the champion on ``c``; p is the
    chance of ``b`` or more under "either is equally likely to be right" (binomial, 1/2)."""
    if b < 0 or c < 0:
        raise ValueError("disagreement counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    return 1.0 - _binom_cdf(b - 1, n, 0.5)


def fisher_exact_greater(a: int, b: int, c: int, d: int) -> float:
    """One-sided Fisher exact p-value that rows and columns of ``[[a, b], [c, d]]`` are
    associated positively (``a`` large): here defective parts rejected ``a``, passed ``b``; good
    parts rejected ``c``, passed ``d``. p ≤ 0.05: the model rejects defects more often than good
    parts beyond what chance would do on these counts."""
    if min(a, b, c, d) < 0:
        raise ValueError("counts must be >= 0")
    r1, r2, c1 = a + b, c + d, a + c
    n = r1 + r2
    hi = min(r1, c1)
    more_extreme = sum(math.comb(r1, x) * math.comb(r2, c1 - x) for x in range(a, hi + 1))
    return more_extreme / math.comb(n, c1)
