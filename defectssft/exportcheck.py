"""The decision checks of an export: a model is evaluated (calibrated) before it is exported, and
the exported file must give **the same verdict** as torch on every val/test image and a sample of
the unlabeled stream.

``export.export_onnx`` already compares probabilities within a tolerance; that cannot see a part
whose score sits a hair from a threshold, where a tolerated difference of 1e-5 turns an NG into
an escape. Here each image's verdict (``defectssft_line.decision.decide``, on the graph's own
``defect_score`` output, as the line runs it) is compared: a flip fails the export with the image
named, and the file is never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectssft.errors import DefectssftError
from defectssft.fsutil import atomic_path
from defectssft_line.decision import Thresholds, decide

STREAM_CHECK = 64  # unlabeled images added to the val/test images the verdicts are checked on


@dataclass(frozen=True)
class Flip:
    image_id: int
    name: str
    reference: str  # torch's verdict
    exported: str
    score_reference: float
    score_exported: float


def ensure_evaluated(project, version: str, explicit_threshold: bool) -> str | None:
    """Evaluate (and so calibrate) a version that never was, before it is exported; returns what
    was done, in one line, or None. A version with thresholds of its own, an operating point set
    for it, or an explicit ``--threshold`` needs none. Raises the evaluation's one-line error
    when it cannot be evaluated (``export`` then refuses: it never writes an unchosen 0.5)."""
    from defectssft.evaluate import EvaluationError, evaluate_project_model
    from defectssft.metrics import operating_point
    from defectssft.modeling import load_model_file

    record = project.get_model(version)
    if explicit_threshold or operating_point(record.get("metrics")) is not None:
        return None
    _, meta = load_model_file(Path(record["path"]) / "model.pt")
    if (meta.get("thresholds") or {}).get("ng") is not None:
        return None
    try:
        evaluate_project_model(project, record["version"], report=False)
    except EvaluationError as e:
        raise DefectssftError(
            f"{record['version']} was never evaluated and cannot be ({e}); "
            "export it with an explicit --threshold"
        ) from None
    return (
        f"{record['version']} was never evaluated: evaluated it first (operating point calibrated)"
    )


def verdict_images(
    project, max_stream: int = STREAM_CHECK
) -> tuple[list[int], list[Path], list[str]]:
    """(ids, paths, names) of every val and test image and up to ``max_stream`` stream images."""
    from defectssft.calibration import stream_sample

    data = project.training_data()
    ids = list(data.val_ids) + list(data.test_ids)
    paths = [Path(p) for p, _ in data.val] + [Path(p) for p, _ in data.test]
    for i in stream_sample(data.unlabeled_ids, max_stream):
        ids.append(data.unlabeled_ids[i])
        paths.append(Path(data.unlabeled[i]))
    names = [project.get_image(i).original_name or p.name for i, p in zip(ids, paths, strict=True)]
    return ids, paths, names


def verdicts_of(
    probs: np.ndarray, scores: np.ndarray, classes: list[str], ok: str | None, t: Thresholds
) -> list[str]:
    ok = ok if ok in classes else None
    return [decide(p, float(s), classes, ok, t).verdict for p, s in zip(probs, scores, strict=True)]


def find_flips(
    ids: list[int],
    names: list[str],
    reference: tuple[np.ndarray, np.ndarray],
    exported: tuple[np.ndarray, np.ndarray],
    classes: list[str],
    ok: str | None,
    thresholds: Thresholds,
) -> list[Flip]:
    """Images whose verdict differs between ``reference`` and ``exported`` (probs, scores)."""
    a = verdicts_of(*reference, classes, ok, thresholds)
    b = verdicts_of(*exported, classes, ok, thresholds)
    return [
        Flip(ids[k], names[k], a[k], b[k], float(reference[1][k]), float(exported[1][k]))
        for k in range(len(ids))
        if a[k] != b[k]
    ]


def _run_exported(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from defectssft.export import ort_session

    session = ort_session(path)
    probs, scores = [], []
    for i in range(0, len(images), 16):
        p, s = session.run(["probs", "defect_score"], {"image": images[i : i + 16]})
        probs.append(p)
        scores.append(s)
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
    return np.concatenate(probs), np.concatenate(scores)


def check_verdicts(
    project, model, meta: dict[str, Any], exported: Path, thresholds: Thresholds, precision: str
) -> dict[str, Any]:
    """Compare torch's and the exported file's verdicts on the project's val/test images and a
    stream sample; raises ExportError naming the first image that flips."""
    from defectssft.export import ExportError
    from defectssft.inspection import ModelSpec, inspection_model, load_images, predict_arrays

    spec = ModelSpec.from_meta(meta)
    ids, paths, names = verdict_images(project)
    if not ids:
        return {"n": 0, "flips": 0}
    inp = spec.input
    images = load_images(paths, inp.height, inp.width, inp.bit_depth, inp.roi)
    reference = predict_arrays(inspection_model(model, spec), images)
    mine = _run_exported(exported, images)
    classes, ok = list(spec.classes), spec.ok_class
    flips = find_flips(ids, names, reference, mine, classes, ok, thresholds)
    if flips:
        f = flips[0]
        raise ExportError(
            f"export refused: the {precision} file changes {len(flips)} verdict(s) of "
            f"{len(ids)} project images against torch, e.g. '{f.name}' (id {f.image_id}): "
            f"torch {f.reference} (score {f.score_reference:.6g}) vs {f.exported} "
            f"(score {f.score_exported:.6g}) at NG {thresholds.unsure_high:.6g} / UNSURE from "
            f"{thresholds.unsure_low:.6g}; evaluate with a wider --margin, or export fp32"
        )
    diff = float(np.max(np.abs(reference[1] - mine[1]))) if len(ids) else 0.0
    return {"n": len(ids), "flips": 0, "max_score_diff": diff}


def checked_export(
    proj,
    model,
    meta: dict[str, Any],
    out_path: Path,
    thresholds: Thresholds,
    precision: str,
    **export_kwargs: Any,
):
    """``export.export_onnx`` to a temporary file, the verdict check, then the rename: a file
    that flips a verdict never replaces anything."""
    from defectssft.export import export_onnx, output_path

    out_path = output_path(out_path)
    with atomic_path(out_path) as staged:
        result = export_onnx(
            model, meta, staged, precision=precision, thresholds=thresholds, **export_kwargs
        )
        result.verdict_check = check_verdicts(proj, model, meta, staged, thresholds, precision)
    result.path = str(out_path)
    result.size_bytes = out_path.stat().st_size
    return result
