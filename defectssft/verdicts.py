"""The line's verdict (OK / NG / UNSURE) of a model version's stored predictions.

The app and reports never have a rule of their own: the thresholds are resolved as
``defectssft export`` writes them into the ONNX file (the model's own, else the operating point
``defectssft evaluate`` stored, else 0.5) and each image goes through the line's decision
(``defectssft_line.decision.decide_part``): the classifier's verdict and, for a version with an
anomaly head, the novelty rule on the image's stored anomaly score (``anomaly_scores``:
the unlabeled images scored when the head was fitted, the images ``evaluate`` and *Predict all*
scored since), so an OK part the head finds novel is UNSURE here as on the line. An image
without a stored anomaly score keeps the classifier's verdict. Torch-free and Qt-free, so the
window can call it on any thread without importing the training stack.

Which novelty rule applies is read from **the file that ships** (``shipped_novelty``): the
production version's ``exports/production.onnx``, else the version's newest export the project
recorded, else (never exported) the head as ``export`` and ``promote`` write it. A file exported
with ``--no-anomaly`` has no rule, so neither have the app's verdicts; a file exported before the
head was fitted (again) has not this head, so its novel parts are unknown here (said in a note).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from defectssft import queries
from defectssft.errors import DefectssftError
from defectssft.fsutil import atomic_path
from defectssft.metrics import operating_point
from defectssft.novel_scores import load_scores
from defectssft.project import Project
from defectssft_line.decision import (
    METADATA_KEY,
    ThresholdError,
    Thresholds,
    decide_part,
    defect_scores,
    resolve_thresholds,
)
from defectssft_line.novelty import NoveltyMetadataError, NoveltyRule, validate_anomaly_metadata

# The anomaly head's description in a version folder (``defectssft.anomaly.META_FILE``, read
# here without importing torch; a test checks the two names agree).
ANOMALY_META_FILE = "anomaly.json"
# Anomaly scores of images scored after the fit (evaluate's test split, Predict all), tagged with
# the fit they belong to; the fit's own scores of unlabeled images stay in ``novel_scores``.
SCORED_FILE = "anomaly_scored.npz"

VERDICTS = ("OK", "NG", "UNSURE")
# Where a project's production model is published (``defectssft.promote.production_path``; a
# test checks the two agree).
PRODUCTION_FILE = ("exports", "production.onnx")

VERDICT_FILTERS = {
    "verdict:wrong": "line verdict ≠ label",
    "verdict:escape": "line passes a labeled defect",
    "verdict:overkill": "line rejects a labeled OK",
    "verdict:unsure": "line verdict UNSURE",
}


def version_thresholds(
    meta: Mapping[str, Any],
    metrics: Mapping[str, Any] | None,
    threshold: float | None = None,
    unsure_low: float | None = None,
    unsure_high: float | None = None,
) -> Thresholds:
    """The thresholds the line applies to a version (``model.pt`` meta + stored metrics)."""
    return resolve_thresholds(
        meta.get("thresholds"), operating_point(metrics), threshold, unsure_low, unsure_high
    )


def _head_info(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / ANOMALY_META_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _head_stamp(info: Mapping[str, Any]) -> str:
    """Which fit of the head scores belong to (a refit makes another bank, other scores)."""
    return f"{info.get('created', '')}|{info.get('bank_rows', '')}|{info.get('n_fit_patches', '')}"


def version_novelty(model_dir: str | Path) -> NoveltyRule | None:
    """The novelty rule of a version's anomaly head (what export writes into the ONNX file),
    None for a version without one (or whose description is unreadable: export refuses it)."""
    info = _head_info(model_dir)
    if info is None:
        return None
    entry = {"threshold": info.get("threshold"), "on_novel": info.get("on_novel", "UNSURE")}
    try:
        validate_anomaly_metadata(entry)
    except NoveltyMetadataError:
        return None
    return NoveltyRule.from_metadata({"anomaly": entry})


@functools.lru_cache(maxsize=32)
def _metadata_at(path: str, mtime_ns: int, size: int) -> dict[str, Any] | None:
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure: not a model file we can read
        return None
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                meta = json.loads(prop.value)
            except ValueError:
                return None
            return meta if isinstance(meta, dict) else None
    return None


def file_metadata(path: str | Path) -> dict[str, Any] | None:
    """The defectssft metadata of an exported ONNX file, None when it is missing or unreadable
    (kept per path, size and modification time: the window asks on every refresh)."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return _metadata_at(str(path), st.st_mtime_ns, st.st_size)


def shipped_export(
    project: Project, version: str, production_first: bool = True
) -> tuple[Path, dict[str, Any]] | None:
    """(path, metadata) of the file of ``version`` that ships: ``exports/production.onnx`` when
    the version is production and the file holds it, else the newest (by modification time) of
    the version's recorded exports (``metrics["export_<precision>"]``, the last of each
    precision) whose file still holds the version; None when it was never exported.
    ``production_first=False``: the newest of all of them (how it was last exported)."""
    record = project.get_model(version)
    version = record["version"]
    production = Path(project.root).joinpath(*PRODUCTION_FILE)
    if production_first and project.production_model() == version:
        meta = file_metadata(production)
        if meta is not None and meta.get("model_version") == version:
            return production, meta
    paths = [production] if project.production_model() == version else []
    for key, value in (record.get("metrics") or {}).items():
        if key.startswith("export_") and isinstance(value, dict) and value.get("path"):
            paths.append(Path(str(value["path"])))
    found = []
    for path in paths:
        try:
            found.append((path.stat().st_mtime_ns, str(path)))
        except OSError:
            continue
    for _, name in sorted(found, reverse=True):
        meta = file_metadata(name)
        if meta is not None and meta.get("model_version") == version:
            return Path(name), meta
    return None


@dataclass(frozen=True)
class ShippedNovelty:
    """The novelty rule of the file that ships (module docstring) and where it comes from."""

    rule: NoveltyRule | None
    source: str
    note: str | None = None


def publish_with_head(project: Project, version: str) -> bool:
    """Whether publishing ``version`` (``promote``) includes its anomaly head: as its newest
    export did (``--no-anomaly`` sticks, so the line gets what the app showed), and with it
    when it was never exported or that file predates the head's fit."""
    shipped = shipped_export(project, version, production_first=False)
    if shipped is None or shipped[1].get("anomaly"):
        return True
    info = _head_info(project.get_model(version)["path"])
    return info is None or _fitted_after(info, shipped[0])


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _fitted_after(info: Mapping[str, Any] | None, path: Path) -> bool:
    """Whether the head described by ``info`` was fitted after ``path`` was written."""
    try:
        created = datetime.fromisoformat(str((info or {}).get("created", "")))
        return created.timestamp() > path.stat().st_mtime
    except (ValueError, OSError):
        return False


def shown_anomaly(
    project: Project, version: str, image_path: str | Path, bit_depth: int | None = None
) -> tuple[Any, str]:
    """(``anomaly.AnomalyView``, one line saying the score against the rule of the file that
    ships) for the app's anomaly map (torch: a worker thread). The line says NOVEL only where
    the line would (``shipped_novelty``), not by the head's own threshold alone."""
    from defectssft.anomaly import anomaly_view

    record = project.get_model(version)
    view = anomaly_view(record["path"], image_path, bit_depth=bit_depth)
    shipped = shipped_novelty(project, record["version"])
    if shipped.rule is None:
        return view, (
            f"anomaly score {view.score:.4g} (head threshold {view.threshold:.4g}); not applied "
            f"on the line: {shipped.source}"
        )
    verdict = "NOVEL" if shipped.rule.is_novel(view.score) else "like the good parts"
    return (
        view,
        f"anomaly score {view.score:.4g} (threshold {shipped.rule.threshold:.4g}): {verdict}",
    )


def shipped_novelty(project: Project, version: str | None) -> ShippedNovelty:
    """The novelty rule the line applies to ``version``'s parts, from the file that ships
    (``shipped_export``): its metadata's ``anomaly`` entry. Never exported: the version's head
    (``anomaly.json``), as ``export`` and ``promote`` write it by default."""
    record = project.get_model(version)
    version = record["version"]
    folder = Path(record["path"])
    head = version_novelty(folder)
    shipped = shipped_export(project, version)
    if shipped is None:
        if head is None:
            return ShippedNovelty(None, "no anomaly head")
        return ShippedNovelty(
            head, "the version's anomaly head (never exported; export includes it)"
        )
    path, meta = shipped
    name = _shown(path, project.root)
    entry = meta.get("anomaly")
    if head is not None and _fitted_after(_head_info(folder), path):
        return ShippedNovelty(
            None,
            f"{name}, exported before the anomaly head was fitted",
            note=f"{name} was exported before {version}'s anomaly head was fitted (again): the "
            "line runs it "
            + ("with an older head" if entry else "without the head")
            + f", so novel parts are not marked here; `defectssft export` (production: `promote "
            f"{version} --force`) ships the head",
        )
    if not entry:
        return ShippedNovelty(
            None, f"{name}" + (" (exported without its anomaly head)" if head is not None else "")
        )
    try:
        validate_anomaly_metadata(entry)
        rule = NoveltyRule.from_metadata(meta)
    except NoveltyMetadataError:
        rule = None
    if (
        rule is not None
        and head is not None
        and not math.isclose(rule.threshold, head.threshold, rel_tol=1e-6)
    ):
        return ShippedNovelty(
            None,
            f"{name} (another fit of the anomaly head)",
            note=f"{name} carries another fit of the anomaly head (threshold {rule.threshold:.4g}, "
            f"the version's {head.threshold:.4g}): its novel parts are unknown here",
        )
    return ShippedNovelty(rule, name)


def anomaly_scores(model_dir: str | Path) -> dict[int, float]:
    """{image id: anomaly score} of a version's head: the unlabeled images scored when it was
    fitted (``novel_scores``) and those ``evaluate`` / *Predict all* scored since
    (``SCORED_FILE``, ignored when the head was fitted again after them)."""
    out = load_scores(model_dir)
    info = _head_info(model_dir)
    path = Path(model_dir) / SCORED_FILE
    if info is None or not path.is_file():
        return out
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, scores, stamp = z["image_ids"], z["scores"], str(z["head"])
    except (OSError, ValueError, KeyError):
        return out
    if stamp != _head_stamp(info) or ids.shape != scores.shape:
        return out
    out.update({int(i): float(a) for i, a in zip(ids, scores, strict=True)})
    return out


def store_anomaly_scores(model_dir: str | Path, scores: Mapping[int, float]) -> None:
    """Keep images' anomaly scores (``SCORED_FILE``, beside the fit's own ``novel_scores``), so
    their verdict here applies the novelty rule as the line does."""
    info = _head_info(model_dir)
    if not scores or info is None:
        return
    known = anomaly_scores(model_dir)
    fitted = load_scores(model_dir)
    known.update({int(i): float(a) for i, a in scores.items()})
    ids = sorted(i for i in known if i not in fitted or i in scores)
    with atomic_path(Path(model_dir) / SCORED_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                image_ids=np.asarray(ids, dtype=np.int64),
                scores=np.asarray([known[i] for i in ids], dtype=np.float32),
                head=np.asarray(_head_stamp(info)),
            )


def line_verdicts(
    probs: Sequence[Sequence[float]],
    classes: list[str],
    ok_class: str | None,
    thresholds: Thresholds,
    anomaly: Sequence[float | None] | None = None,
    novelty: NoveltyRule | None = None,
) -> list[str]:
    """The line's verdict for each row of ``probs``; with ``novelty`` (the version's anomaly
    rule) and ``anomaly`` (each row's anomaly score, None where unknown) the novelty rule too."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1, len(classes))
    if not len(p):
        return []
    ok = ok_class if ok_class in classes else None
    scores = defect_scores(p, classes.index(ok) if ok is not None else None)
    a = list(anomaly) if anomaly is not None else [None] * len(p)
    if len(a) != len(p):
        raise ValueError(f"{len(a)} anomaly scores for {len(p)} predictions")
    return [
        decide_part(row, float(s), classes, ok, thresholds, a_k, novelty).verdict
        for row, s, a_k in zip(p, scores, a, strict=True)
    ]


def stream_forecast(
    project: Project,
    version: str,
    thresholds: Thresholds,
    novelty: NoveltyRule | None,
) -> dict[str, int]:
    """The line's verdicts of the unlabeled images ``version`` has predictions of, at
    ``thresholds`` with ``novelty`` (a file's rule, e.g. the one just exported): ``{"n", "OK",
    "UNSURE", "NG", "novel"}`` (``novel``: verdicts the novelty rule changed)."""
    classes = queries.model_classes(project, version)
    preds = project.predictions(version)
    ids = [i for i in project.training_data(assign=False).unlabeled_ids if i in preds]
    ids = [i for i in ids if len(preds[i]) == len(classes)]
    rows = [preds[i] for i in ids]
    ok = project.ok_class
    known = anomaly_scores(project.get_model(version)["path"]) if novelty is not None else {}
    said = line_verdicts(rows, classes, ok, thresholds, [known.get(i) for i in ids], novelty)
    plain = line_verdicts(rows, classes, ok, thresholds)
    out = {"n": len(ids), **{v: said.count(v) for v in VERDICTS}}
    out["novel"] = int(sum(a != b for a, b in zip(said, plain, strict=True)))
    return out


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


class VerdictCache:
    """Verdicts of one version's predictions, made per image when first asked and kept.

    A grid shows a few dozen images at a time: deciding those on demand keeps a refresh of
    20,000 rows as fast as before. Make a new one when the predictions or the version's operating
    point change (the window does on every refresh, and refreshes when the operating-point panel
    saves one).
    """

    def __init__(self, project: Project, version: str | None) -> None:
        self.project, self.version = project, version
        self._known: dict[int, str | None] = {}
        self.classes: list[str] = []
        self.ok_class = project.ok_class
        self.thresholds: Thresholds | None = None
        self.novelty: NoveltyRule | None = None  # the version's anomaly rule, if it has a head
        self.anomaly: dict[int, float] = {}
        if version:
            try:
                record = project.get_model(version)
                self.classes = queries.model_classes(project, version)
                self.thresholds = version_thresholds(
                    record.get("meta") or {}, record.get("metrics")
                )
                self.novelty = shipped_novelty(project, version).rule
                if self.novelty is not None:
                    self.anomaly = anomaly_scores(record["path"])
            except (DefectssftError, ThresholdError):
                self.version = None  # thresholds the line would refuse too: no verdict

    def get(self, image_id: int | None) -> str | None:
        if image_id is None or not self.version or self.thresholds is None:
            return None
        if image_id not in self._known:
            probs = self.project.prediction(self.version, image_id)
            verdict = None
            if probs is not None and len(probs) == len(self.classes):
                verdict = line_verdicts(
                    [probs],
                    self.classes,
                    self.ok_class,
                    self.thresholds,
                    [self.anomaly.get(image_id)],
                    self.novelty,
                )[0]
            self._known[image_id] = verdict
        return self._known[image_id]

    def novel(self, image_id: int | None) -> bool | None:
        """Whether the version's anomaly head finds the image novel (None: no head or no
        stored anomaly score for it)."""
        if image_id is None or self.novelty is None or image_id not in self.anomaly:
            return None
        return self.novelty.is_novel(self.anomaly[image_id])

    def mismatch(self, image_id: int | None, label: str | None) -> str | None:
        return verdict_mismatch(label, self.get(image_id), self.ok_class)


def version_verdicts(project: Project, version: str | None) -> dict[int, str]:
    """image id -> verdict for every image ``version`` has predictions of ({} without)."""
    cache = VerdictCache(project, version)
    if not cache.version or cache.thresholds is None:
        return {}
    preds = project.predictions(cache.version)
    ids = [i for i, p in preds.items() if len(p) == len(cache.classes)]
    verdicts = line_verdicts(
        [preds[i] for i in ids],
        cache.classes,
        cache.ok_class,
        cache.thresholds,
        [cache.anomaly.get(i) for i in ids],
        cache.novelty,
    )
    return dict(zip(ids, verdicts, strict=True))


def verdict_rows(project: Project, spec: str, sort: str, version: str | None) -> list[queries.Row]:
    """Grid rows for a ``verdict:`` filter: images whose line verdict disagrees with their label
    (``wrong``: escape or overkill; ``escape``; ``overkill``) or is UNSURE (``unsure``)."""
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


def shown_version(project: Project) -> str | None:
    """The model whose suggestions the grid shows: the current model (production, else newest)
    once it has predictions; until then the newest older version that has some, so a freshly
    trained model does not blank every suggestion before its own predictions are in."""
    current = queries.current_model(project)
    if current is None or project.has_predictions(current):
        return current
    return project.latest_predicted_version(before=current) or current
