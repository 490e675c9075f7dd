"""The operating point an operator chooses for a model version: the score sets to decide on and
what a candidate NG threshold + UNSURE band would do to them.

For a version, ``load_operating_data`` gathers the defect scores of

* the labeled **val** and **test** images (the version's stored predictions: ``defectssft
  evaluate`` stores the test split's, *Predict all images* / ``defectssft thresholds --score``
  the rest),
* its **out-of-fold** evidence (``models/vNNNN/oof.npz``, ``defectssft.evidence``) when
  training cross-fitted: labeled images scored by a model that did not train on them; an image
  that is also in val/test counts once, with its out-of-fold score,
* the **unlabeled stream** (the version's stored predictions of unlabeled images).

``rates`` then says, for a candidate ``Thresholds``, the escapes (labeled defects passed),
overkill (labeled OK parts rejected) and UNSURE rate of each labeled part, and the stream's
predicted review rate (NG + UNSURE share) and UNSURE share, each as ``k / n`` with a 95 % Wilson
interval. The counts are those of the line's verdicts (``defectssft_line.decision.decide_part``):
the score against the thresholds and, for a version whose shipped file has an anomaly head
(``verdicts.shipped_novelty``), the novelty rule on the val, test and stream parts' stored
anomaly scores, so a novel part the classifier passes counts as UNSURE (or NG) wherever the
lines are dragged. Out-of-fold scores are the fold models' (the head never scored them out of
fold): their verdicts are the classifier's, as in ``evaluate``. Torch-free and Qt-free (the
app's operating-point panel and ``defectssft thresholds`` are thin layers over it).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectssft.errors import DefectssftError
from defectssft.evidence import load_oof
from defectssft.metrics import operating_point, wilson_interval
from defectssft.project import Project
from defectssft_line.decision import Thresholds, decide_part, defect_scores, verdict
from defectssft_line.novelty import NoveltyRule

PARTS = ("val", "test", "oof")
PART_NAMES = {"val": "val", "test": "test", "oof": "out-of-fold", "all": "all labeled"}
# Below this many parts a rate's interval is wide enough to say so (the 95 % Wilson upper bound
# at 0 of 10 is 28 %).
FEW = 10
# Display range of the histogram in logit space (scores 1e-7 .. 1 - 1e-7).
LOGIT_LIMIT = 16.0


class OperatingError(DefectssftError):
    """No operating point to choose (no OK class, no model), one line."""


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` parts, with its 95 % Wilson interval (``n = 0``: nothing is known)."""

    k: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def text(self) -> str:
        """``k/n = p % [low–high %]``, or ``—`` without parts."""
        if not self.n:
            return "—"
        low, high = self.interval
        return f"{self.k}/{self.n} = {100 * self.k / self.n:.1f} % [{100 * low:.1f}–{100 * high:.1f} %]"

    def as_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {"k": self.k, "n": self.n, "rate": self.rate, "low": low, "high": high}


@dataclass(frozen=True)
class NovelPart:
    """A part the anomaly head finds novel: its verdict is ``decide_part``'s, which the score's
    place among the thresholds alone does not give."""

    probs: tuple[float, ...]
    score: float
    anomaly: float


@dataclass(frozen=True)
class LabeledScores:
    """Sorted defect scores of labeled OK parts and of labeled defective parts, and those of
    them the anomaly head finds novel (also in ``ok`` / ``defect``)."""

    ok: np.ndarray
    defect: np.ndarray
    novel_ok: tuple[NovelPart, ...] = ()
    novel_defect: tuple[NovelPart, ...] = ()

    def __len__(self) -> int:
        return int(self.ok.size + self.defect.size)


def _sorted(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(values, dtype=np.float64).ravel())


@dataclass
class OperatingData:
    """A version's score sets (see the module docstring) and its thresholds today."""

    version: str
    classes: list[str]
    ok_class: str
    parts: dict[str, LabeledScores]  # "val", "test", "oof": those that have scores
    labeled: LabeledScores  # their union, each image once
    stream: np.ndarray  # sorted defect scores of the unlabeled images
    current: Thresholds  # what the line applies now (the next export writes)
    saved: dict[str, Any] | None  # the operating point set explicitly (panel / CLI), if any
    model_own: dict[str, Any] | None  # thresholds written into model.pt, which win over it
    source: str  # where ``current`` comes from, in words
    missing: dict[str, int] = field(default_factory=dict)  # images without a prediction
    notes: list[str] = field(default_factory=list)
    # the novelty rule of the file that ships (verdicts.shipped_novelty) and where it comes from
    novelty: NoveltyRule | None = None
    novelty_source: str = ""
    stream_novel: tuple[NovelPart, ...] = ()  # stream parts the head finds novel


def load_operating_data(project: Project, version: str | None = None) -> OperatingData:
    """The score sets of ``version`` (None: production, else newest). OperatingError without
    an OK class (every part is NG there: there is no threshold to choose)."""
    from defectssft.queries import model_classes
    from defectssft.verdicts import anomaly_scores, shipped_novelty, version_thresholds

    record = project.get_model(version)
    version = record["version"]
    classes = model_classes(project, version)
    ok = project.ok_class
    if ok is None or ok not in classes:
        raise OperatingError(
            f"{project.root}: the project has no OK class, so every part is NG and there is no "
            "NG threshold to choose (set one with `defectssft classes PROJECT set NAME --ok`)"
        )
    if len(classes) < 2:
        raise OperatingError(f"model {version} has one class only: retrain it with a defect class")
    ok_index = classes.index(ok)
    data = project.training_data(assign=False)
    overview = {r.image_id: r for r in project.image_overview(version)}

    shipped = shipped_novelty(project, version)
    rule = shipped.rule
    anomaly = anomaly_scores(record["path"]) if rule is not None else {}
    novel: dict[int, NovelPart] = {}  # val, test and stream images the head finds novel

    def scores_of(ids: Sequence[int]) -> tuple[dict[int, float], int]:
        have = [i for i in ids if overview[i].probs is not None]
        have = [i for i in have if len(overview[i].probs) == len(classes)]  # type: ignore[arg-type]
        if not have:
            return {}, len(ids)
        probs = np.asarray([overview[i].probs for i in have], dtype=np.float64)
        scores = dict(zip(have, defect_scores(probs, ok_index).tolist(), strict=True))
        for i, row in zip(have, probs.tolist(), strict=True):
            if rule is not None and i in anomaly and rule.is_novel(anomaly[i]):
                novel[i] = NovelPart(tuple(row), scores[i], anomaly[i])
        return scores, len(ids) - len(have)

    labels = {i: r.label for i, r in overview.items()}
    by_part: dict[str, dict[int, float]] = {}
    missing: dict[str, int] = {}
    for part, ids in (("val", data.val_ids), ("test", data.test_ids)):
        by_part[part], missing[part] = scores_of(ids)
    notes: list[str] = []
    try:
        oof = load_oof(Path(record["path"]))
    except DefectssftError as e:
        oof, notes = None, [f"{e}; out-of-fold evidence left out"]
    if oof is not None and oof.probs.ndim == 2 and oof.probs.shape[1] == len(classes):
        s = defect_scores(np.asarray(oof.probs, dtype=np.float64), ok_index)
        by_part["oof"] = {
            int(i): float(v)
            for i, v in zip(oof.image_ids.tolist(), s.tolist(), strict=True)
            if labels.get(int(i)) is not None  # an image since unlabeled or removed is left out
        }
    elif oof is not None:
        notes.append(
            f"{version}/oof.npz has {oof.probs.shape[-1]} classes, the model "
            f"{len(classes)}; out-of-fold evidence left out"
        )
    stream, missing["stream"] = scores_of(data.unlabeled_ids)

    def split(scores: Mapping[int, float], with_novel: set[int]) -> LabeledScores:
        ok_s = [v for i, v in scores.items() if labels.get(i) == ok]
        bad = [v for i, v in scores.items() if labels.get(i) not in (None, ok)]
        new_ok = tuple(novel[i] for i in scores if i in with_novel and labels.get(i) == ok)
        new_bad = tuple(
            novel[i] for i in scores if i in with_novel and labels.get(i) not in (None, ok)
        )
        return LabeledScores(_sorted(ok_s), _sorted(bad), new_ok, new_bad)

    # out-of-fold scores are the fold models': the head's rule is not applied to them
    scored_here = {p: set(by_part.get(p, {})) & set(novel) for p in ("val", "test")}
    parts = {p: split(by_part[p], scored_here.get(p, set())) for p in PARTS if by_part.get(p)}
    union: dict[int, float] = {}
    for p in ("val", "test", "oof"):  # later wins: an image's out-of-fold score is the honest one
        union.update(by_part.get(p, {}))
    labeled = split(union, (scored_here["val"] | scored_here["test"]) - set(by_part.get("oof", {})))
    meta, metrics = record.get("meta") or {}, record.get("metrics") or {}
    current = version_thresholds(meta, metrics)
    own, saved = meta.get("thresholds") or None, metrics.get("operating_point") or None
    own = own if own and own.get("ng") is not None else None
    saved = saved if saved and saved.get("ng") is not None else None
    out = OperatingData(
        version,
        classes,
        ok,
        parts,
        labeled,
        _sorted(list(stream.values())),
        current,
        saved,
        own,
        source_text(own, saved, metrics),
        {k: v for k, v in missing.items() if v},
        notes,
        rule,
        shipped.source,
        tuple(novel[i] for i in stream if i in novel),
    )
    out.notes.extend(evidence_notes(out))
    if shipped.note:
        out.notes.append(shipped.note)
    return out


def source_text(
    own: Mapping[str, Any] | None, saved: Mapping[str, Any] | None, metrics: Mapping[str, Any]
) -> str:
    """Where a version's thresholds come from, in words (the order of ``resolve_thresholds``)."""
    if own is not None:
        return "the model file's own thresholds"
    if saved is not None:
        at = str(saved.get("set_at", ""))[:16].replace("T", " ")
        return f"saved by {saved.get('source', 'operator')} {at}".strip()
    if operating_point(metrics) is not None:
        evaluated = (metrics.get("test") or {}).get("operating_point") or {}
        return f"chosen by `defectssft evaluate` (on {evaluated.get('chosen_on', '?')})"
    return "the default 0.5 (never evaluated)"


def unscored_ids(project: Project, version: str) -> list[int]:
    """Val, test and unlabeled images without a usable prediction of ``version``."""
    from defectssft.queries import model_classes

    n = len(model_classes(project, version))
    data = project.training_data(assign=False)
    have = {
        r.image_id
        for r in project.image_overview(version)
        if r.probs is not None and len(r.probs) == n
    }
    ids = [*data.val_ids, *data.test_ids, *data.unlabeled_ids]
    return [i for i in ids if i not in have]


def score_unscored(
    project: Project,
    version: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, object]:
    """Score (and store) the val, test and unlabeled images ``version`` has no prediction of,
    through the one inference path (``defectssft.predict``; imports torch when called)."""
    from defectssft.predict import predict_images

    version = project.get_model(version)["version"]
    ids = unscored_ids(project, version)
    return predict_images(
        project, version, progress=progress, should_stop=should_stop, image_ids=ids
    )


def evidence_notes(data: OperatingData) -> list[str]:
    """One line per thing the evidence cannot tell (too few parts, predictions missing)."""
    notes = []
    n_def, n_ok = data.labeled.defect.size, data.labeled.ok.size
    if not n_def:
        notes.append(
            "no labeled defective part has a score: escapes cannot be measured (label defects, "
            "then score val/test)"
        )
    elif n_def < FEW:
        high = wilson_interval(0, n_def)[1]
        notes.append(
            f"only {n_def} labeled defective part(s) scored: even 0 escapes only says "
            f"<= {100 * high:.0f} % at 95 %"
        )
    if n_ok and n_ok < FEW:
        notes.append(f"only {n_ok} labeled OK part(s) scored: overkill is known only roughly")
    if not data.stream.size:
        notes.append(
            "no unlabeled image has a prediction of this version: the review rate is unknown "
            "(score them: Model → Predict unlabeled, or `defectssft thresholds PROJECT --score`)"
        )
    for part in ("val", "test", "stream"):
        if data.missing.get(part):
            notes.append(
                f"{data.missing[part]} {part} image(s) have no prediction of {data.version} "
                "(`defectssft thresholds PROJECT --score` scores them)"
            )
    if data.model_own is not None:
        notes.append(
            f"model.pt of {data.version} carries its own thresholds (ng {data.model_own['ng']}), "
            "which the line uses before a saved operating point"
        )
    return notes


def candidate(
    ng: float, unsure_low: float | None = None, unsure_high: float | None = None
) -> Thresholds:
    """The line's thresholds for a choice (no band edge: no band on that side); ThresholdError
    (one line) when out of order or outside [0, 1]."""
    return Thresholds(
        float(ng),
        float(ng if unsure_low is None else unsure_low),
        float(ng if unsure_high is None else unsure_high),
    )


def verdict_counts(scores: np.ndarray, thresholds: Thresholds) -> tuple[int, int, int]:
    """(OK, UNSURE, NG) among sorted ``scores`` by ``decision.verdict``. The verdict only grows
    with the score (OK < UNSURE < NG), so two bisections asking it O(log n) times count all."""
    n = int(scores.size)

    def first(pred: Callable[[str], bool]) -> int:
        return bisect.bisect_left(
            range(n), True, key=lambda i: pred(verdict(float(scores[i]), thresholds))
        )

    n_ok = first(lambda v: v != "OK")
    n_below_ng = first(lambda v: v == "NG")
    return n_ok, n_below_ng - n_ok, n - n_below_ng


@dataclass(frozen=True)
class PartRates:
    """What a candidate does to one labeled part."""

    n_ok: int
    n_defect: int
    escapes: Rate  # labeled defects the line passes (OK)
    overkill: Rate  # labeled OK parts the line rejects (NG)
    unsure: Rate  # labeled parts sent to review

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_ok": self.n_ok,
            "n_defect": self.n_defect,
            "escapes": self.escapes.as_dict(),
            "overkill": self.overkill.as_dict(),
            "unsure": self.unsure.as_dict(),
        }


@dataclass(frozen=True)
class StreamRates:
    """What a candidate does to the unlabeled stream (predicted, no labels)."""

    n: int
    review: Rate  # NG + UNSURE: parts that leave the line for a person
    unsure: Rate
    ng: Rate

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "review": self.review.as_dict(),
            "unsure": self.unsure.as_dict(),
            "ng": self.ng.as_dict(),
        }


@dataclass(frozen=True)
class RatesTable:
    thresholds: Thresholds
    parts: dict[str, PartRates]  # "val", "test", "oof" that have scores, and "all"
    stream: StreamRates

    def as_dict(self) -> dict[str, Any]:
        return {
            "thresholds": self.thresholds.as_dict(),
            "parts": {k: v.as_dict() for k, v in self.parts.items()},
            "stream": self.stream.as_dict(),
        }


def line_counts(
    scores: np.ndarray,
    novel: Sequence[NovelPart],
    thresholds: Thresholds,
    data: OperatingData | None = None,
) -> tuple[int, int, int]:
    """(OK, UNSURE, NG) of the line's verdicts (``decision.decide_part``) among sorted
    ``scores``: ``verdict_counts`` by the score, then each of the ``novel`` parts (some of
    ``scores``) moved from its classifier verdict to the one with ``data.novelty``."""
    n_ok, n_unsure, n_ng = verdict_counts(scores, thresholds)
    if not novel or data is None or data.novelty is None:
        return n_ok, n_unsure, n_ng
    counts = {"OK": n_ok, "UNSURE": n_unsure, "NG": n_ng}
    for part in novel:
        probs = np.asarray(part.probs, dtype=np.float64)
        args = (probs, part.score, data.classes, data.ok_class, thresholds)
        counts[decide_part(*args).verdict] -= 1
        counts[decide_part(*args, part.anomaly, data.novelty).verdict] += 1
    return counts["OK"], counts["UNSURE"], counts["NG"]


def part_rates(
    scores: LabeledScores, thresholds: Thresholds, data: OperatingData | None = None
) -> PartRates:
    ok_ok, ok_unsure, ok_ng = line_counts(scores.ok, scores.novel_ok, thresholds, data)
    d_ok, d_unsure, _ = line_counts(scores.defect, scores.novel_defect, thresholds, data)
    n_ok, n_def = int(scores.ok.size), int(scores.defect.size)
    return PartRates(
        n_ok,
        n_def,
        Rate(d_ok, n_def),
        Rate(ok_ng, n_ok),
        Rate(ok_unsure + d_unsure, n_ok + n_def),
    )


def rates(data: OperatingData, thresholds: Thresholds) -> RatesTable:
    """Escapes, overkill and UNSURE of each labeled part and of all of them, and the stream's
    review and UNSURE share, for ``thresholds``: the line's verdicts, novelty rule included."""
    parts = {p: part_rates(s, thresholds, data) for p, s in data.parts.items()}
    parts["all"] = part_rates(data.labeled, thresholds, data)
    _, s_unsure, s_ng = line_counts(data.stream, data.stream_novel, thresholds, data)
    n = int(data.stream.size)
    stream = StreamRates(n, Rate(s_unsure + s_ng, n), Rate(s_unsure, n), Rate(s_ng, n))
    return RatesTable(thresholds, parts, stream)


# ----------------------------------------------------------------------------- histogram


def to_logit(scores: np.ndarray | float) -> np.ndarray:
    """Scores on the histogram's axis: log(s / (1 - s)), clipped to +-LOGIT_LIMIT."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 1e-300, 1.0)
    with np.errstate(divide="ignore"):
        x = np.log(s) - np.log1p(-np.minimum(s, 1.0 - 1e-16))
    return np.clip(x, -LOGIT_LIMIT, LOGIT_LIMIT)


def from_logit(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@dataclass(frozen=True)
class Histogram:
    """Counts per bin of the labeled OK, the labeled defective and the stream's scores; bins are
    even in logit space (``edges`` in logit, ``score_edges`` the same in score). ``novel``: the
    parts among them (any kind) the anomaly head finds novel, whose verdict the lines alone do
    not set (a novel part below the UNSURE band is UNSURE, or NG, all the same)."""

    edges: np.ndarray
    ok: np.ndarray
    defect: np.ndarray
    stream: np.ndarray
    novel: np.ndarray | None = None

    @property
    def score_edges(self) -> np.ndarray:
        return from_logit(self.edges)

    def as_dict(self) -> dict[str, Any]:
        return {
            "score_edges": self.score_edges.tolist(),
            "ok": self.ok.tolist(),
            "defect": self.defect.tolist(),
            "stream": self.stream.tolist(),
            "novel": (np.zeros_like(self.ok) if self.novel is None else self.novel).tolist(),
        }


def histogram(data: OperatingData, bins: int = 60) -> Histogram:
    """Histogram of the labeled OK / defective scores (all parts) and the stream's, over the
    range the scores span (in logit space, where a confident OK at 1e-6 and one at 1e-3 differ)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    sets = [to_logit(a) for a in (data.labeled.ok, data.labeled.defect, data.stream)]
    values = np.concatenate([s for s in sets if s.size]) if any(s.size for s in sets) else None
    if values is None:
        lo, hi = -6.0, 6.0
    else:
        lo, hi = float(values.min()), float(values.max())
        pad = max(0.5, 0.05 * (hi - lo))
        lo, hi = max(-LOGIT_LIMIT, lo - pad), min(LOGIT_LIMIT, hi + pad)
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(s, bins=edges)[0].astype(np.int64) for s in sets]
    novel = [
        *data.labeled.novel_ok,
        *data.labeled.novel_defect,
        *data.stream_novel,
    ]
    n_counts = np.histogram(to_logit(np.asarray([p.score for p in novel])), bins=edges)[0]
    return Histogram(edges, *counts, n_counts.astype(np.int64))


# ----------------------------------------------------------------------------- text


def table_text(table: RatesTable) -> str:
    """The rates as a plain-text table (the CLI's)."""
    t = table.thresholds
    lines = [
        f"NG threshold {t.ng:.6g}, UNSURE band [{t.unsure_low:.6g}, {t.unsure_high:.6g})"
        + ("  (no band)" if t.unsure_low == t.unsure_high else ""),
        f"  {'part':<12} {'OK':>4} {'def.':>4}  {'escapes (defect passed)':<27} "
        f"{'overkill (OK rejected)':<27} UNSURE (to review)",
    ]
    for name, r in table.parts.items():
        lines.append(
            f"  {PART_NAMES[name]:<12} {r.n_ok:>4} {r.n_defect:>4}  {r.escapes.text():<27} "
            f"{r.overkill.text():<27} {r.unsure.text()}"
        )
    s = table.stream
    lines.append(
        f"  stream ({s.n} unlabeled, predicted): review (NG + UNSURE) {s.review.text()}, "
        f"UNSURE {s.unsure.text()}"
    )
    lines.append("  (k/n = rate [95 % Wilson interval])")
    return "\n".join(lines)


def novelty_text(data: OperatingData) -> str:
    """One line: the novelty rule the rates include, where it comes from, and how many parts it
    concerns (empty without a rule and without a reason to say so)."""
    rule = data.novelty
    if rule is None:
        if data.novelty_source and data.novelty_source != "no anomaly head":
            return f"anomaly head: not applied (the file that ships: {data.novelty_source})"
        return ""
    n_lab = len(data.labeled.novel_ok) + len(data.labeled.novel_defect)
    return (
        f"novelty rule of {data.novelty_source}: anomaly score >= {rule.threshold:.4g} is novel, "
        f"a novel part the classifier passes is {rule.on_novel}; novel: {n_lab} labeled and "
        f"{len(data.stream_novel)} stream part(s), counted so in the rates"
    )
