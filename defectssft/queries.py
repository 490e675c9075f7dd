"""What the browse grid lists: image rows of a project, filtered and sorted (no Qt here).

One read-only query (``Project.image_overview``) joins images, labels and the current model's
predictions; the defect score (``defectssft_line.decision.defect_scores``), filtering and sorting
then happen in Python, which takes a few tens of milliseconds for 20,000 images. Filters
are small strings so they can be stored, typed in tests and shown in a combo box:

``all``, ``unlabeled``, ``class:NAME``, ``pred:NAME``, ``uncertain``, ``misclassified``,
``quarantined``, ``useful`` (unlabeled images, most useful to label first) and ``novel``
(unlabeled images the version's anomaly head scored, most anomalous first: ``novel_scores``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defectssft.active import rank_for_labeling
from defectssft.errors import DefectssftError
from defectssft.project import Project
from defectssft_line.decision import defect_scores

SORTS = ("capture", "-capture", "score", "-score")
SIMPLE_FILTERS = (
    "all",
    "unlabeled",
    "uncertain",
    "misclassified",
    "quarantined",
    "useful",
    "novel",
)
DEFAULT_UNCERTAIN_MARGIN = 0.2


class QueryError(DefectssftError):
    """A filter or sort the grid does not know."""


@dataclass(slots=True)
class Row:
    """One grid cell. Quarantined files have ``image_id`` None and a ``reason``."""

    image_id: int | None
    sha256: str
    path: str
    label: str | None
    capture: str
    name: str
    pred: str | None = None
    confidence: float | None = None
    margin: float | None = None
    score: float | None = None  # defect score (defectssft_line.decision.defect_scores)
    reason: str | None = None
    anomaly: float | None = None  # anomaly score ("novel" filter; defectssft.novel_scores)

    @property
    def key(self) -> str:
        """Identity of the row's picture (thumbnail cache key)."""
        return self.sha256 or f"q:{self.path}"


def current_model(project: Project) -> str | None:
    """The model the app shows predictions of: the production model, else the newest."""
    prod = project.production_model()
    if prod:
        return prod
    versions = [m["version"] for m in project.models()]
    return max(versions) if versions else None


def model_classes(project: Project, version: str | None) -> list[str]:
    """Class names in the model's output order (from its record; else the project's).

    Names of classes renamed since the model was trained are today's names
    (``Project.current_class_names``), so filters, the OK score and suggestions keep working.
    """
    if version:
        try:
            meta = project.get_model(version).get("meta", {})
        except DefectssftError:
            meta = {}
        classes = meta.get("classes")
        if isinstance(classes, list) and classes:
            return project.current_class_names([str(c) for c in classes])
    return project.class_names()


def check_filter(spec: str, class_names: list[str]) -> str:
    if spec in SIMPLE_FILTERS:
        return spec
    kind, _, name = spec.partition(":")
    if kind in ("class", "pred") and name in class_names:
        return spec
    if kind in ("class", "pred"):
        raise QueryError(f"unknown class {name!r} in filter {spec!r}")
    raise QueryError(
        f"unknown filter {spec!r}; use one of {', '.join(SIMPLE_FILTERS)}, class:NAME or pred:NAME"
    )


def fetch_rows(
    project: Project,
    spec: str = "all",
    sort: str = "capture",
    version: str | None = None,
    uncertain_margin: float | None = None,
) -> list[Row]:
    """Rows matching filter ``spec`` in ``sort`` order, with the predictions of ``version``."""
    if sort not in SORTS:
        raise QueryError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    check_filter(spec, project.class_names())
    if spec == "quarantined":
        return _quarantine_rows(project)
    classes = model_classes(project, version)
    ok = project.ok_class
    ok_idx = classes.index(ok) if ok in classes else None
    rows = _image_rows(project, version, classes, ok_idx)
    if uncertain_margin is None:
        uncertain_margin = float(
            project.get_setting("gui.uncertain_margin", DEFAULT_UNCERTAIN_MARGIN)
        )
    rows = _apply_filter(rows, spec, uncertain_margin)
    if spec == "useful":
        return _rank_useful(project, rows, version)
    if spec == "novel":
        return _rank_novel(project, rows, version)
    return _sort(rows, sort)


def _image_rows(
    project: Project, version: str | None, classes: list[str], ok_idx: int | None
) -> list[Row]:
    overview = project.image_overview(version)
    scores = iter(_defect_scores([r.probs for r in overview if r.probs is not None], ok_idx))
    n_classes = len(classes)
    return [
        Row(
            r.image_id,
            r.sha256,
            r.path,
            r.label,
            r.capture,
            r.name,
            classes[r.pred_index]
            if r.pred_index is not None and 0 <= r.pred_index < n_classes
            else None,
            r.confidence,
            r.margin,
            next(scores) if r.probs is not None else None,
        )
        for r in overview
    ]


def _defect_scores(probs: list, ok_idx: int | None) -> list[float | None]:
    """``decision.defect_scores`` of each stored prediction (one array op when all agree)."""
    if not probs:
        return []
    if len({len(p) for p in probs}) == 1 and len(probs[0]):
        return defect_scores(np.asarray(probs, dtype=np.float64), ok_idx).tolist()
    return [float(defect_scores(np.asarray([p]), ok_idx)[0]) if len(p) else None for p in probs]


def _quarantine_rows(project: Project) -> list[Row]:
    return [
        Row(
            None,
            q["sha256"] or "",
            q["path"],
            None,
            q["time"],
            q["path"].rsplit("/", 1)[-1],
            reason=q["reason"],
        )
        for q in reversed(project.quarantined())
    ]


def _apply_filter(rows: list[Row], spec: str, uncertain_margin: float) -> list[Row]:
    kind, _, name = spec.partition(":")
    if spec == "all":
        return rows
    if spec in ("unlabeled", "useful", "novel"):
        return [r for r in rows if r.label is None]
    if kind == "class":
        return [r for r in rows if r.label == name]
    if kind == "pred":
        return [r for r in rows if r.pred == name]
    if spec == "uncertain":
        return [r for r in rows if r.margin is not None and r.margin < uncertain_margin]
    if spec == "misclassified":
        return [r for r in rows if r.label is not None and r.pred is not None and r.pred != r.label]
    raise QueryError(f"unknown filter {spec!r}")


def _sort(rows: list[Row], sort: str) -> list[Row]:
    if sort.lstrip("-") == "capture":
        rows.sort(key=lambda r: (r.capture, r.image_id or 0), reverse=sort.startswith("-"))
        return rows
    # Score: highest defect score first for "score"; images without a score always last.
    sign = -1.0 if sort == "score" else 1.0
    rows.sort(key=lambda r: (r.score is None, sign * (r.score or 0.0), r.image_id or 0))
    return rows


def _rank_useful(project: Project, rows: list[Row], version: str | None) -> list[Row]:
    preds: dict[int, list[float]] = {}
    if version:
        ids = {r.image_id for r in rows}
        preds = {i: p for i, p in project.predictions(version).items() if i in ids}
    kind = str(project.get_setting("gui.uncertainty", "margin"))
    diversity = float(project.get_setting("gui.diversity", 0.3))
    order = rank_for_labeling(
        preds, [r.image_id for r in rows if r.image_id is not None], kind=kind, diversity=diversity
    )
    by_id = {r.image_id: r for r in rows}
    return [by_id[i] for i in order]


def _rank_novel(project: Project, rows: list[Row], version: str | None) -> list[Row]:
    """Unlabeled rows the anomaly head scored, most anomalous first (none without a head)."""
    from defectssft.novel_scores import load_scores

    scores = load_scores(project.models_dir / version) if version else {}
    out = []
    for r in rows:
        if r.image_id in scores:
            r.anomaly = scores[r.image_id]
            out.append(r)
    out.sort(key=lambda r: (-(r.anomaly or 0.0), r.image_id or 0))
    return out
