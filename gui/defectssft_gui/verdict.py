"""The line's verdict (OK / NG / UNSURE) of a model version, for the app to show (no Qt here).

The app never has its own rule: ``line_verdicts`` is the ONE place that calls the line runtime's
decision (thresholds resolved as ``defectssft export`` writes them into the ONNX file, then
``defectssft_line.model.decide`` per image), so the window shows what the line would do.
Everything else in this module only fetches inputs for it.

Loading the rule's modules imports torch (``defectssft.export``: seconds on a loaded machine), so
the window loads them on a worker thread (``load_rule``) after the grid is shown; until then
``VerdictCache.get`` answers None (no verdict yet) instead of freezing the window.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from defectssft.errors import DefectssftError
from defectssft.project import Project

VERDICTS = ("OK", "NG", "UNSURE")
RULE_MODULES = ("defectssft.export", "defectssft_line.model")


def rule_loaded() -> bool:
    """True once the modules ``line_verdicts`` calls are imported."""
    return all(m in sys.modules for m in RULE_MODULES)


def load_rule() -> None:
    """Import the line's rule (run it on a worker thread: it imports torch)."""
    import defectssft.export  # noqa: F401
    import defectssft_line.model  # noqa: F401


def line_verdicts(
    probs: Sequence[Sequence[float]],
    classes: list[str],
    ok_class: str | None,
    meta: dict[str, Any],
    metrics: dict[str, Any] | None,
) -> list[str]:
    """The line's verdict for each row of ``probs`` (the adapter over the line's own rule)."""
    from defectssft.export import resolve_thresholds
    from defectssft.metrics import defect_scores
    from defectssft_line.model import Thresholds, decide

    p = np.asarray(probs, dtype=np.float64).reshape(-1, len(classes))
    if not len(p):
        return []
    thr = Thresholds(**resolve_thresholds(meta, metrics))
    ok = ok_class if ok_class in classes else None
    scores = defect_scores(p, classes.index(ok) if ok is not None else None)
    return [
        decide(row, float(s), classes, ok, thr).verdict for row, s in zip(p, scores, strict=True)
    ]


def version_verdicts(project: Project, version: str | None) -> dict[int, str]:
    """image id -> verdict for every image ``version`` has predictions of ({} without)."""
    if not version:
        return {}
    from defectssft.queries import model_classes

    try:
        record = project.get_model(version)
    except DefectssftError:
        return {}
    preds = project.predictions(version)
    if not preds:
        return {}
    classes = model_classes(project, version)
    meta = record.get("meta") or {}
    ids = [i for i, p in preds.items() if len(p) == len(classes)]
    try:
        verdicts = line_verdicts(
            [preds[i] for i in ids], classes, project.ok_class, meta, record.get("metrics")
        )
    except DefectssftError:
        return {}  # thresholds the line would refuse too: no verdict rather than a wrong one
    return dict(zip(ids, verdicts, strict=True))


def verdict_mismatch(label: str | None, verdict: str | None, ok_class: str | None) -> str | None:
    """How a verdict disagrees with a human label: ``escape`` (a labeled defect the line
    passes), ``overkill`` (a labeled OK part it rejects), ``unsure``, or None (agrees / unknown)."""
    if label is None or verdict is None or ok_class is None:
        return None
    if verdict == "UNSURE":
        return "unsure"
    if label == ok_class and verdict == "NG":
        return "overkill"
    if label != ok_class and verdict == "OK":
        return "escape"
    return None


def shown_version(project: Project) -> str | None:
    """The model whose suggestions the grid shows: the current model (production, else newest)
    once it has predictions; until then the newest older version that has some, so a freshly
    trained model does not blank every suggestion before its own predictions are in."""
    from defectssft.queries import current_model

    current = current_model(project)
    if current is None:
        return None
    con = project._con()
    if con.execute(
        "SELECT 1 FROM predictions WHERE model_version=? LIMIT 1", (current,)
    ).fetchone():
        return current
    row = con.execute(
        "SELECT p.model_version FROM predictions p JOIN models m ON m.version = p.model_version "
        "WHERE m.version < ? ORDER BY m.version DESC LIMIT 1",
        (current,),
    ).fetchone()
    return row[0] if row else current


class VerdictCache:
    """Verdicts of one version's predictions, made per image when first asked and kept.

    A grid shows a few dozen images at a time: asking the line's rule for those on demand keeps a
    refresh of 20,000 rows as fast as before. Make a new one when the predictions change.
    """

    def __init__(self, project: Project, version: str | None) -> None:
        from defectssft.queries import model_classes

        self.project, self.version = project, version
        self._known: dict[int, str | None] = {}
        self.meta: dict[str, Any] = {}
        self.metrics: dict[str, Any] | None = None
        self.classes: list[str] = []
        self.ok_class = project.ok_class
        if version:
            try:
                record = project.get_model(version)
                self.meta, self.metrics = record.get("meta") or {}, record.get("metrics")
                self.classes = model_classes(project, version)
            except DefectssftError:
                self.version = None

    def get(self, image_id: int | None) -> str | None:
        if image_id is None or not self.version or not rule_loaded():
            return None
        if image_id not in self._known:
            row = (
                self.project._con()
                .execute(
                    "SELECT probs FROM predictions WHERE model_version=? AND image_id=?",
                    (self.version, image_id),
                )
                .fetchone()
            )
            verdict = None
            if row is not None:
                import json

                probs = json.loads(row[0])
                if len(probs) == len(self.classes):
                    try:
                        verdict = line_verdicts(
                            [probs], self.classes, self.ok_class, self.meta, self.metrics
                        )[0]
                    except DefectssftError:
                        verdict = None
            self._known[image_id] = verdict
        return self._known[image_id]

    def mismatch(self, image_id: int | None, label: str | None) -> str | None:
        return verdict_mismatch(label, self.get(image_id), self.ok_class)


VERDICT_FILTERS = {
    "verdict:wrong": "line verdict ≠ label",
    "verdict:escape": "line passes a labeled defect",
    "verdict:overkill": "line rejects a labeled OK",
    "verdict:unsure": "line verdict UNSURE",
}


def verdict_rows(project: Project, spec: str, sort: str, version: str | None) -> list[Any]:
    """Grid rows (``queries.Row``) for a ``verdict:`` filter: images whose line verdict
    disagrees with their label (``wrong``: escape or overkill; ``escape``; ``overkill``) or is
    UNSURE (``unsure``). Runs on the query thread (it computes every image's verdict)."""
    from defectssft import queries

    if spec not in VERDICT_FILTERS:
        raise queries.QueryError(f"unknown filter {spec!r}")
    kind = spec.partition(":")[2]
    verdicts = version_verdicts(project, version)
    ok = project.ok_class
    rows = []
    for r in queries.fetch_rows(project, "all", sort, version):
        v = verdicts.get(r.image_id) if r.image_id is not None else None
        if kind == "unsure":
            keep = v == "UNSURE"
        else:
            m = verdict_mismatch(r.label, v, ok)
            keep = m in ("escape", "overkill") if kind == "wrong" else m == kind
        if keep:
            rows.append(r)
    return rows
