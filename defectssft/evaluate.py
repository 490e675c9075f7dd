"""Evaluate a model version on the project's frozen test split and store the metrics.

Images go through the shared preprocessing (``defectssft_line.preprocess``) and the same
``InspectionModel`` graph that is exported, so evaluation scores what the line will score.

The operating threshold (what export writes into the ONNX file and promotion compares) is,
first match wins: the model file's own threshold; the threshold for the target escape rate
chosen on the **validation** split (so the test escape rate is not tuned on itself); the same
chosen on the test split when val has no defective images; 0.5.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectssft import metrics as M
from defectssft.errors import DefectssftError

DEFAULT_MAX_ESCAPE = 0.005


class EvaluationError(DefectssftError):
    """Evaluation impossible as asked (no test images, bad target)."""


@dataclass
class Evaluation:
    """Metrics of one model on one split, plus what the report needs."""

    metrics: dict[str, Any]
    probs: np.ndarray
    labels: np.ndarray
    image_ids: list[int]
    paths: list[Path]
    report: Path | None = None
    names: list[str] | None = None  # original file names, for the report


def split_hash(image_ids: list[int], labels: list[int]) -> str:
    """Identifies the exact test set (ids and labels): metrics compare only on equal hashes."""
    digest = hashlib.sha256()
    for i, c in sorted(zip(image_ids, labels, strict=True)):
        digest.update(f"{i}:{c}\n".encode())
    return digest.hexdigest()


def predict_paths(wrapper, paths: list[Path], spec, batch_size: int = 32) -> np.ndarray:
    """probs [N, C] for image files, through the shared preprocessing and the export graph."""
    from defectssft.inspection import load_images, run_torch

    inp = spec.input
    if inp.roi is not None or inp.tiles is not None:  # region of interest / tiles
        from defectssft.tiling import score_paths

        return score_paths(wrapper, paths, spec, batch_size)[0]
    chunks = []
    for i in range(0, len(paths), batch_size):
        images = load_images(paths[i : i + batch_size], inp.height, inp.width, inp.bit_depth)
        chunks.append(run_torch(wrapper, images, batch_size))
    if not chunks:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(chunks)


def _choose_threshold(
    meta: dict[str, Any],
    val_choice: M.ThresholdChoice | None,
    test_choice: M.ThresholdChoice | None,
) -> tuple[float, str]:
    """The operating threshold (``decision.resolve_thresholds``: the model's own, else the one
    chosen on val, else on test, else 0.5) and where it came from."""
    from defectssft_line.decision import resolve_thresholds

    chosen, source = (val_choice, "val") if val_choice is not None else (test_choice, "test")
    if chosen is None:
        source = "default"
    own = meta.get("thresholds")
    if (own or {}).get("ng") is not None:
        source = "model"
    threshold = resolve_thresholds(own, chosen.threshold if chosen is not None else None).ng
    return threshold, source


def _inspection(
    meta: dict[str, Any],
    probs: np.ndarray,
    labels: np.ndarray,
    ok_index: int,
    val: tuple[np.ndarray, np.ndarray] | None,
    max_escape: float,
) -> tuple[dict, dict]:
    scores = M.defect_scores(probs, ok_index)
    is_defect = labels != ok_index
    test_choice = (
        M.threshold_for_max_escape(scores, is_defect, max_escape) if is_defect.any() else None
    )
    val_choice = None
    if val is not None:
        v_scores = M.defect_scores(val[0], ok_index)
        v_defect = val[1] != ok_index
        if v_defect.any():
            val_choice = M.threshold_for_max_escape(v_scores, v_defect, max_escape)
    threshold, source = _choose_threshold(meta, val_choice, test_choice)
    insp = M.inspection_report(scores, is_defect, threshold, max_escape)
    op = {
        "threshold": threshold,
        "chosen_on": source,
        "escape_rate": insp["escape_rate"],
        "overkill_rate": insp["overkill_rate"],
    }
    if val_choice is not None:
        op["val_choice"] = val_choice.as_dict()
    return insp, op


def evaluate_loaded(
    model,
    meta: dict[str, Any],
    test: list[tuple[Path, int]],
    test_ids: list[int],
    val: list[tuple[Path, int]] | None = None,
    max_escape: float = DEFAULT_MAX_ESCAPE,
) -> Evaluation:
    """Metrics of a loaded model on labeled images (pure computation, no project writes)."""
    from defectssft.inspection import ModelSpec, inspection_model

    if not 0.0 <= max_escape < 1.0:
        raise EvaluationError(f"--max-escape must be in [0, 1), got {max_escape}")
    spec = ModelSpec.from_meta(meta)
    classes = list(meta["classes"])
    wrapper = inspection_model(model, spec)
    paths = [p for p, _ in test]
    labels = np.asarray([c for _, c in test], dtype=np.int64)
    probs = predict_paths(wrapper, paths, spec)
    out: dict[str, Any] = {
        "version": meta.get("version", ""),
        "backbone": meta.get("model_name", ""),
        "classes": classes,
        "ok_class": meta.get("ok_class"),
        "split": "test",
        "test_hash": split_hash(test_ids, labels.tolist()),
        "evaluated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "max_escape": max_escape,
        **M.classification_report(labels, probs, classes),
    }
    out["error_rate"] = 1.0 - out["accuracy"]
    ok = meta.get("ok_class")
    if ok in classes:
        val_arrays = None
        if val:
            v_probs = predict_paths(wrapper, [p for p, _ in val], spec)
            val_arrays = (v_probs, np.asarray([c for _, c in val], dtype=np.int64))
        out["inspection"], out["operating_point"] = _inspection(
            meta, probs, labels, classes.index(ok), val_arrays, max_escape
        )
    else:
        # Every class is a defect: the verdict is always NG, what matters is the class.
        out["operating_point"] = {"error_rate": out["error_rate"], "chosen_on": "none"}
    return Evaluation(out, probs, labels, list(test_ids), paths)


def evaluate_project_model(
    project,
    version: str | None = None,
    max_escape: float = DEFAULT_MAX_ESCAPE,
    report: bool = True,
    store: bool = True,
) -> Evaluation:
    """Evaluate a model version (default: production, else newest) on the frozen test split.

    Stores the metrics under ``metrics["test"]`` of the version and, with ``report``, writes
    ``models/vNNNN/eval/report.md``.
    """
    from defectssft.modeling import load_model_file

    record = project.get_model(version)
    data = project.training_data()
    if not data.test:
        raise EvaluationError(
            f"{project.root}: the test split is empty; label more images (at least 3 per class) "
            "so that a test split can be drawn"
        )
    model, meta = load_model_file(Path(record["path"]) / "model.pt")
    meta["version"] = meta.get("version") or record["version"]
    # A class renamed since the model was trained keeps its output: evaluate under today's name.
    current = project.current_class_names(meta["classes"])
    if meta.get("ok_class") in meta["classes"]:
        meta["ok_class"] = current[list(meta["classes"]).index(meta["ok_class"])]
    meta["classes"] = current
    if list(meta["classes"]) != data.classes:
        raise EvaluationError(
            f"model {record['version']} has classes {meta['classes']} but the project has "
            f"{data.classes}; retrain it"
        )
    ev = evaluate_loaded(model, meta, data.test, data.test_ids, data.val, max_escape)
    ev.metrics["project"] = project.name
    ev.names = [project.get_image(i).original_name or "" for i in ev.image_ids]
    ev.metrics["data_hash"] = meta.get("data_hash", "")
    if report:
        ev.report = write_evaluation_report(Path(record["path"]) / "eval", ev)
        ev.metrics["report"] = str(ev.report)
    if store:
        project.update_model_metrics(record["version"], {"test": ev.metrics})
        project.save_predictions(
            record["version"], zip(ev.image_ids, ev.probs.tolist(), strict=True)
        )
    return ev


def write_evaluation_report(folder: Path, ev: Evaluation) -> Path:
    from defectssft.report import Item, write_report

    classes = ev.metrics["classes"]
    ok = ev.metrics.get("ok_class")
    scores = is_defect = None
    if ok in classes:
        scores = M.defect_scores(ev.probs, classes.index(ok))
        is_defect = ev.labels != classes.index(ok)
    names = ev.names or [p.name for p in ev.paths]
    items = [
        Item(
            image_id,
            path,
            classes[int(t)],
            classes[int(np.argmax(p))],
            float(np.max(p)),
            None if scores is None else float(scores[k]),
            names[k] or path.name,
        )
        for k, (image_id, path, t, p) in enumerate(
            zip(ev.image_ids, ev.paths, ev.labels, ev.probs, strict=True)
        )
    ]
    return write_report(folder, ev.metrics, items, scores, is_defect)


def comparison_table(project) -> str:
    """One line per evaluated model version, so runs can be compared at a glance."""
    head = f"{'version':<8} {'status':<10} {'accuracy':>8} {'escape':>8} {'overkill':>8} {'thresh':>7} test split"
    lines = [head]
    for m in project.models():
        t = m["metrics"].get("test")
        if not t:
            lines.append(f"{m['version']:<8} {m['status']:<10} {'(not evaluated)':>8}")
            continue
        op = t.get("operating_point", {})

        def pct(x):
            return f"{100 * x:7.2f}%" if isinstance(x, int | float) else f"{'-':>8}"

        thr = op.get("threshold")
        lines.append(
            f"{m['version']:<8} {m['status']:<10} {pct(t['accuracy'])} {pct(op.get('escape_rate'))} "
            f"{pct(op.get('overkill_rate'))} {thr if thr is None else f'{thr:7.4f}'!s:>7} "
            f"{t['test_hash'][:12]}"
        )
    return "\n".join(lines)
