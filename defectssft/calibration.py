"""Calibration: a model version's operating point (NG threshold and UNSURE band) from all the
evidence it has, the rule docs/ARCHITECTURE.md ("Calibration") explains in one paragraph.

Evidence: the validation split's scores, the out-of-fold scores of the labeled images
(``defectssft.evidence``, when training cross-fitted) and a bounded sample of the unlabeled
stream scored by the version itself (mostly good parts: it says what the review band will
cost). The rule:

* **NG threshold** = the lowest evidence defect score (the (k+1)-th lowest when ``max_escape``
  allows k escapes) moved ``margin`` **down in logit space** (``log(s / (1 - s))``), so it is a
  margin in odds, not a rounding hair: a defect that scores a bit lower than any seen so far is
  still rejected, and the torch → ONNX difference cannot flip the defect it was set on.
* **UNSURE band** = ``[unsure_low, ng)``: the parts of the stream that score just below the NG
  threshold, as many as the project's review rate allows (``decision.review_rate``, default
  2 %); those go to review instead of passing. ``unsure_high = ng`` (parts at or above the
  threshold stay NG). With an anomaly head (``novelty``), the stream parts its rule sends to
  review whatever their score (novel, below ``ng``) count against the same rate first: the band
  holds the rest, so band + novel parts stay within the target.
* No defect in the evidence: said, and the NG threshold falls back to the stream's
  ``FALLBACK_QUANTILE`` (its top 5 % rejected, escapes unknown); without a stream, a margin
  above the highest OK evidence score; without any evidence, 0.5.

Pure numpy: the evaluation scores the images, this only decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from defectssft_line.decision import Prediction, Thresholds, verdict
from defectssft_line.novelty import NoveltyRule, apply_novelty

# Project settings (``Project.get_setting``), with their defaults:
SETTING_REVIEW_RATE = "decision.review_rate"  # share of the stream the UNSURE band may hold
SETTING_MARGIN = "decision.margin_logit"  # NG margin below the lowest evidence defect, in logits
SETTING_STREAM_SAMPLE = "decision.stream_sample"  # unlabeled images scored to size the band
DEFAULT_REVIEW_RATE = 0.02
DEFAULT_MARGIN_LOGIT = 1.0  # chosen by benchmarks/decisions.py (BENCHMARKS.md, "Decisions")
DEFAULT_STREAM_SAMPLE = 512
FALLBACK_QUANTILE = 0.95  # no defect in the evidence: the stream's top 5 % are NG
# Scores are clipped to [_LOW, 1 - _HIGH] before the logit. The line compares float32 scores,
# which resolve 6e-8 near 1: a defect scored 1.0 is "saturated", and a margin measured from
# logit(1 - 1e-9) would leave a threshold only exact 1.0 reaches. Near 0 they keep their
# precision (the score is a sum of small probabilities), so the low end is clipped far lower.
_LOW, _HIGH = 1e-30, 1e-6


class CalibrationError(ValueError):
    """A setting outside its range (one line, user-fixable)."""


def logit(s: float | np.ndarray) -> Any:
    s = np.clip(np.asarray(s, dtype=np.float64), _LOW, 1.0 - _HIGH)
    return np.log(s) - np.log1p(-s)


def sigmoid(x: float | np.ndarray) -> Any:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@dataclass
class Source:
    """Scores of one kind of evidence; ``is_defect`` is None for the unlabeled stream."""

    name: str  # "val", "oof", "stream"
    scores: np.ndarray
    is_defect: np.ndarray | None = None
    anomaly: np.ndarray | None = None  # the stream's anomaly scores (NaN: unknown)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).ravel()
        if self.anomaly is not None:
            self.anomaly = np.asarray(self.anomaly, dtype=np.float64).ravel()
            if self.anomaly.shape != self.scores.shape:
                raise ValueError(f"{self.name}: scores and anomaly scores differ in length")
        if self.is_defect is not None:
            self.is_defect = np.asarray(self.is_defect, dtype=bool).ravel()
            if self.is_defect.shape != self.scores.shape:
                raise ValueError(f"{self.name}: scores and labels differ in length")
        if not np.all(np.isfinite(self.scores)):
            raise ValueError(f"{self.name}: scores contain NaN or infinity")


@dataclass
class OperatingPoint:
    """The calibrated thresholds, where they came from and what they predict for the stream."""

    threshold: float
    unsure_low: float
    unsure_high: float
    chosen_on: str  # "val", "oof", "val+oof", "stream-quantile", "ok-evidence", "default"
    margin_logit: float
    review_rate: float  # the target
    anchor: float | None = None  # the evidence defect score the margin is measured from
    evidence: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.threshold, self.unsure_low, self.unsure_high)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_settings(review_rate: float, margin_logit: float) -> None:
    if not 0.0 <= review_rate < 0.5:
        raise CalibrationError(f"review rate must be in [0, 0.5), got {review_rate}")
    if not 0.0 <= margin_logit <= 10.0:
        raise CalibrationError(f"logit margin must be in [0, 10], got {margin_logit}")


def sent_to_review(anomaly: np.ndarray | None, novelty: NoveltyRule | None) -> np.ndarray | None:
    """Per part, whether the novelty rule makes it UNSURE when the classifier passes it
    (``novelty.apply_novelty`` on an OK verdict; NaN anomaly scores: unknown, no)."""
    if anomaly is None or novelty is None:
        return None
    ok = Prediction("OK", "", 0.0, ())
    return np.asarray(
        [bool(np.isfinite(a)) and apply_novelty(ok, float(a), novelty, "ok").verdict == "UNSURE"
         for a in anomaly],
        dtype=bool,
    )  # fmt: skip


def _band_low(
    population: np.ndarray,
    ng: float,
    review_rate: float,
    margin: float,
    novel: np.ndarray | None = None,
) -> float:
    """The lower UNSURE edge: the ``review_rate`` share of ``population`` just below ``ng``,
    less the parts below ``ng`` that ``novel`` already sends to review (no band when they fill
    the share).

    Too few parts for one review (or none below ng): a band one margin wide in logits."""
    n_band = int(math.floor(review_rate * population.size + 1e-9))
    under = population < ng
    if novel is not None:
        taken = int(np.sum(novel & under))
        if taken and taken >= n_band:
            return ng
        n_band -= taken
        under &= ~novel
    below = np.sort(population[under])
    if review_rate <= 0.0:
        return ng
    if n_band == 0 or below.size == 0:
        return float(sigmoid(logit(ng) - max(margin, 0.5)))
    return float(below[max(0, below.size - n_band)])


def calibrate(
    sources: Sequence[Source],
    review_rate: float = DEFAULT_REVIEW_RATE,
    margin_logit: float = DEFAULT_MARGIN_LOGIT,
    max_escape: float = 0.0,
    stream_cap: float | None = None,
    novelty: NoveltyRule | None = None,
) -> OperatingPoint:
    """The operating point from the evidence (module docstring: the rule). ``novelty``: the
    anomaly rule of the file that ships, applied to the stream's ``anomaly`` scores.

    ``stream_cap`` (a quantile, e.g. 0.95; off by default, a candidate ``benchmarks/decisions.py``
    measures): the NG threshold is never above that quantile of the stream, so a few evidence
    defects that all score high cannot put it above every part the stream calls suspicious."""
    check_settings(review_rate, margin_logit)
    if not 0.0 <= max_escape < 1.0:
        raise CalibrationError(f"max escape must be in [0, 1), got {max_escape}")
    labeled = [s for s in sources if s.is_defect is not None and s.scores.size]
    streams = [s for s in sources if s.is_defect is None]
    stream = np.concatenate([s.scores for s in streams] or [np.zeros(0)])
    novel = None
    if novelty is not None and any(s.anomaly is not None for s in streams):
        novel = np.concatenate(
            [
                sent_to_review(
                    s.anomaly if s.anomaly is not None else np.full(s.scores.size, np.nan),
                    novelty,
                )
                for s in streams
            ]
        )
    defects = np.concatenate([s.scores[s.is_defect] for s in labeled] or [np.zeros(0)])
    goods = np.concatenate([s.scores[~s.is_defect] for s in labeled] or [np.zeros(0)])
    evidence: dict[str, int] = {}
    for s in sources:
        if s.is_defect is None:
            evidence["stream"] = evidence.get("stream", 0) + int(s.scores.size)
        else:
            evidence[f"{s.name}_defective"] = int(s.is_defect.sum())
            evidence[f"{s.name}_good"] = int((~s.is_defect).sum())
    notes: list[str] = []
    anchor = None
    if defects.size:
        ordered = np.sort(defects)
        allowed = int(np.floor(max_escape * ordered.size + 1e-9))
        anchor = float(ordered[allowed])
        ng = float(sigmoid(logit(anchor) - margin_logit))
        chosen = "+".join(s.name for s in labeled if s.is_defect.any())
    elif stream.size:
        ng = float(np.quantile(stream, FALLBACK_QUANTILE))
        chosen = "stream-quantile"
        notes.append(
            f"no defective parts in the evidence ({_names(labeled)}): NG threshold = the "
            f"unlabeled stream's {100 * FALLBACK_QUANTILE:.0f}th percentile (its top "
            f"{100 * (1 - FALLBACK_QUANTILE):.0f} % rejected); escapes unknown, label defects"
        )
    elif goods.size:
        ng = float(sigmoid(logit(goods.max()) + margin_logit))
        chosen = "ok-evidence"
        notes.append(
            "no defective parts and no unlabeled stream: NG threshold one margin above the "
            "highest OK score; escapes unknown, label defects"
        )
    else:
        ng = 0.5
        chosen = "default"
        notes.append("no evidence at all (no val, out-of-fold or stream scores): threshold 0.5")
    if stream_cap is not None and stream.size and defects.size:
        cap = float(np.quantile(stream, stream_cap))
        if cap < ng:
            ng = cap
            chosen += f", capped at the stream's {100 * stream_cap:g}th percentile"
    # Round-off: the threshold must stay a valid probability strictly inside (0, 1].
    ng = min(max(ng, 0.0), 1.0)
    population = stream if stream.size else goods
    if population.size:
        low = _band_low(population, ng, review_rate, margin_logit, novel if stream.size else None)
    elif review_rate > 0:
        low = float(sigmoid(logit(ng) - max(margin_logit, 0.5)))
    else:
        low = ng
    low = min(low, ng)
    predicted: dict[str, float | None] = {"stream_review_rate": None, "stream_ng_rate": None}
    if stream.size:  # the line's verdicts of the stream at this point, novelty included
        t = Thresholds(ng, low, ng)
        said = [verdict(float(x), t) for x in stream]
        if novel is not None:
            said = ["UNSURE" if v == "OK" and n else v for v, n in zip(said, novel, strict=True)]
            taken = int(np.sum(novel & (stream < ng)))
            if taken:
                rest = "none is left: no band" if low == ng else "the band holds the rest"
                notes.append(
                    f"the anomaly head sends {taken} of {stream.size} stream parts to review "
                    f"(novel) within the {100 * review_rate:g} % review rate; {rest}"
                )
        predicted["stream_review_rate"] = said.count("UNSURE") / stream.size
        predicted["stream_ng_rate"] = said.count("NG") / stream.size
    elif review_rate > 0:
        notes.append("no unlabeled stream scored: the UNSURE band is sized on the OK evidence")
    return OperatingPoint(
        threshold=ng,
        unsure_low=low,
        unsure_high=ng,
        chosen_on=chosen,
        margin_logit=margin_logit,
        review_rate=review_rate,
        anchor=anchor,
        evidence=evidence,
        predicted=predicted,
        notes=notes,
    )


def _names(sources: Sequence[Source]) -> str:
    return ", ".join(s.name for s in sources) or "no labeled evidence"


def project_settings(project) -> tuple[float, float, int]:
    """(review rate, logit margin, stream sample size) of a project, checked (one line)."""
    try:
        rate = float(project.get_setting(SETTING_REVIEW_RATE, DEFAULT_REVIEW_RATE))
        margin = float(project.get_setting(SETTING_MARGIN, DEFAULT_MARGIN_LOGIT))
        sample = int(project.get_setting(SETTING_STREAM_SAMPLE, DEFAULT_STREAM_SAMPLE))
    except (TypeError, ValueError) as e:
        raise CalibrationError(f"a decision.* project setting is not a number ({e})") from None
    check_settings(rate, margin)
    if sample < 0:
        raise CalibrationError(f"{SETTING_STREAM_SAMPLE} must be >= 0, got {sample}")
    return rate, margin, sample


def stream_sample(ids: Sequence[int], size: int, seed: int = 0) -> list[int]:
    """Positions of at most ``size`` unlabeled images, the same ones on every call."""
    n = len(ids)
    if n <= size:
        return list(range(n))
    order = np.argsort(np.asarray(ids))  # by image id, so the sample does not depend on order
    pick = np.random.default_rng(seed).permutation(n)[:size]
    return sorted(int(order[i]) for i in pick)
