"""The decision checks of an export: a model is evaluated (calibrated) before it is exported, and
the exported file must give **the same verdict** as torch on every val/test image and a sample of
the unlabeled stream.

``export.export_onnx`` already compares probabilities within a tolerance; that cannot see a part
whose score sits a hair from a threshold, where a tolerated difference of 1e-5 turns an NG into
an escape. Here each image's verdict (``defectssft_line.decision.decide``, on the graph's own
``defect_score`` output, as the line runs it) is compared. A flip is one of two things:

* **a part on a threshold edge** (torch's and the file's scores within ``MAX_FLIP_LOGIT`` logits
  of each other, an fp32/fp16 round-off): the UNSURE band is widened just past both scores of
  every such part (``BAND_PAD_LOGIT`` beyond), so it goes to review in torch and on the line
  alike; the file carries the widened band, the export says which images moved it and the new
  band, and ``export_project_model`` stores it as the version's operating point (the app and the
  next export follow);
* **a file that moves scores** (any flip farther apart, typically INT8): the export fails in one
  line naming the image and both scores, and the file is never written.

With the anomaly head in the file, the verdicts compared are the line's
(``decision.decide_part``: the classifier's, then the novelty rule on torch's and the file's
anomaly scores). A part that flips only through the novelty rule (its anomaly score on the head's
threshold) cannot be absorbed by the UNSURE band: the export says which images and both anomaly
scores, and records them (``novel_flips``), without refusing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectssft.calibration import logit, sigmoid
from defectssft.errors import DefectssftError
from defectssft.fsutil import atomic_path
from defectssft_line.decision import Thresholds, decide, decide_part
from defectssft_line.novelty import NoveltyRule

STREAM_CHECK = 64  # unlabeled images added to the val/test images the verdicts are checked on
# A flip whose two scores are at most this many logits apart is a part on a threshold edge: the
# UNSURE band widens over it. Farther apart, the file moves scores: the export is refused.
MAX_FLIP_LOGIT = 0.5
BAND_PAD_LOGIT = 0.1  # a widened band edge sits this far (logits) beyond the flipped scores
MAX_WIDENINGS = 3  # rounds of widen-and-check again (a new edge may catch another part)


@dataclass(frozen=True)
class Flip:
    image_id: int
    name: str
    reference: str  # torch's verdict
    exported: str
    score_reference: float
    score_exported: float

    @property
    def logit_distance(self) -> float:
        return float(abs(logit(self.score_reference) - logit(self.score_exported)))

    def said(self) -> str:
        return (
            f"'{self.name}' (id {self.image_id}): torch {self.reference} "
            f"(score {self.score_reference:.6g}) vs {self.exported} (score {self.score_exported:.6g})"
        )


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


@dataclass(frozen=True)
class NovelFlip:
    """A part whose line verdict differs between torch and the file through the novelty rule."""

    image_id: int
    name: str
    reference: str
    exported: str
    anomaly_reference: float
    anomaly_exported: float

    def said(self) -> str:
        return (
            f"'{self.name}' (id {self.image_id}): torch {self.reference} (anomaly "
            f"{self.anomaly_reference:.6g}) vs {self.exported} (anomaly {self.anomaly_exported:.6g})"
        )


def novelty_flips(
    ids: list[int],
    names: list[str],
    reference: tuple[np.ndarray, np.ndarray, np.ndarray],
    exported: tuple[np.ndarray, np.ndarray, np.ndarray],
    classes: list[str],
    ok: str | None,
    thresholds: Thresholds,
    rule: NoveltyRule,
) -> list[NovelFlip]:
    """Images whose ``decide_part`` verdict differs between ``reference`` and ``exported``
    (probs, scores, anomaly scores) while their classifier verdict does not."""
    out = []
    for k in range(len(ids)):
        ref = [x[k] for x in reference]
        got = [x[k] for x in exported]
        plain = [decide(p, float(s), classes, ok, thresholds).verdict for p, s, _ in (ref, got)]
        if plain[0] != plain[1]:
            continue  # a classifier flip: find_flips' business
        a = decide_part(ref[0], float(ref[1]), classes, ok, thresholds, float(ref[2]), rule)
        b = decide_part(got[0], float(got[1]), classes, ok, thresholds, float(got[2]), rule)
        if a.verdict != b.verdict:
            out.append(
                NovelFlip(ids[k], names[k], a.verdict, b.verdict, float(ref[2]), float(got[2]))
            )
    return out


def widen_band(
    flips: list[Flip], thresholds: Thresholds, pad: float = BAND_PAD_LOGIT
) -> Thresholds:
    """The UNSURE band grown just past both scores of each flipped part, so each is UNSURE in
    torch and in the file: an edge a part straddles moves ``pad`` logits beyond its farther
    score (``unsure_low`` down, ``unsure_high`` up); ``ng`` stays."""
    low, high = thresholds.unsure_low, thresholds.unsure_high
    for f in flips:
        a, b = sorted((f.score_reference, f.score_exported))
        if a < thresholds.unsure_low <= b:
            low = min(low, float(sigmoid(logit(a) - pad)))
        if a < thresholds.unsure_high <= b:
            high = max(high, min(1.0, float(sigmoid(logit(b) + pad))))
    return Thresholds(thresholds.ng, min(low, thresholds.ng), max(high, thresholds.ng))


def _band(t: Thresholds) -> str:
    return f"[{t.unsure_low:.6g}, {t.unsure_high:.6g})"


def _file_outputs(
    path: Path,
    images: np.ndarray,
    thresholds: Thresholds,
    with_anomaly: bool,
    opened: tuple[Any, dict[str, Any]],
) -> tuple[list[np.ndarray], np.ndarray]:
    """(probs, defect scores[, anomaly scores]) of the exported file as the line computes them
    at ``thresholds`` (``export.line_outputs``: an INT8 file with the re-check runs the parts
    near an edge through its fp32 graph), and the mask of those parts. ``opened``: the file's
    (session, metadata), opened once for every widening round."""
    from defectssft.export import line_outputs

    session, meta = opened
    names = ["probs", "defect_score"]
    if with_anomaly and "anomaly_score" in {o.name for o in session.get_outputs()}:
        names.append("anomaly_score")
    return line_outputs(path, images, names, thresholds, session=session, meta=meta)


def check_verdicts(
    project,
    model,
    meta: dict[str, Any],
    exported: Path,
    thresholds: Thresholds,
    precision: str,
    max_flip_logit: float = MAX_FLIP_LOGIT,
    anomaly: Any = None,
) -> dict[str, Any]:
    """Compare torch's and the exported file's verdicts on the project's val/test images and a
    stream sample (module docstring: what a flip does). Returns the check, with ``thresholds``
    (the band widened over edge flips, else the given ones) and, when it moved, ``widened``;
    raises ExportError naming the first image that flips beyond ``max_flip_logit``.
    ``anomaly``: the head written into the file (``defectssft.anomaly.AnomalyModel``), whose
    novelty rule the verdicts then include (``novel_flips``)."""
    from defectssft.export import ExportError, ort_session, read_metadata
    from defectssft.inspection import ModelSpec, inspection_model, load_images, predict_arrays

    spec = ModelSpec.from_meta(meta)
    ids, paths, names = verdict_images(project)
    if not ids:
        return {"n": 0, "flips": 0, "thresholds": thresholds}
    inp = spec.input
    images = load_images(paths, inp.height, inp.width, inp.bit_depth, inp.roi)
    reference = predict_arrays(inspection_model(model, spec), images)
    classes, ok = list(spec.classes), spec.ok_class
    ok = ok if ok in classes else None
    t = thresholds
    moved: dict[int, Flip] = {}
    opened = (ort_session(exported), read_metadata(exported))
    rechecked = "recheck" in opened[1]
    for round_ in range(MAX_WIDENINGS + 1):
        if round_ == 0 or rechecked:  # which parts the fp32 graph decides depends on the band
            outs, again = _file_outputs(exported, images, t, anomaly is not None, opened)
            mine = (outs[0], outs[1])
        flips = find_flips(ids, names, reference, mine, classes, ok, t)
        if not flips:
            break
        far = [f for f in flips if f.logit_distance > max_flip_logit or ok is None]
        if far or round_ == MAX_WIDENINGS:
            f = max(far or flips, key=lambda x: x.logit_distance)
            if ok is None:
                why = "no OK class: no UNSURE band to widen"
            elif far:
                why = (
                    f"{f.logit_distance:.2g} logits apart, more than the {max_flip_logit:g} an "
                    "UNSURE band may absorb (--max-flip-logit)"
                )
            else:
                why = f"still flipping after widening the UNSURE band {MAX_WIDENINGS} times"
            raise ExportError(
                f"export refused: the {precision} file changes {len(flips)} verdict(s) of "
                f"{len(ids)} project images against torch, e.g. {f.said()}, {why}, at NG "
                f"{t.unsure_high:.6g} / UNSURE from {t.unsure_low:.6g}; export fp32, or "
                "evaluate with a wider --margin"
            )
        moved.update({f.image_id: f for f in flips})
        t = widen_band(flips, t)
    diff = float(np.max(np.abs(reference[1] - mine[1]))) if len(ids) else 0.0
    out: dict[str, Any] = {"n": len(ids), "flips": 0, "max_score_diff": diff, "thresholds": t}
    if rechecked:
        data = project.training_data()
        stream = list(range(len(data.val_ids) + len(data.test_ids), len(ids)))
        out["rechecked"] = {"n": int(again.sum()), "stream": int(again[stream].sum()),
                            "stream_n": len(stream)}  # fmt: skip
    file_anomaly = outs[2] if len(outs) > 2 else None
    if file_anomaly is not None:
        from defectssft.anomaly import torch_anomaly

        graph = anomaly.wrap(inspection_model(model, spec))
        graph.with_map = False
        torch_scores, _ = torch_anomaly(graph, images)
        rule = NoveltyRule(float(anomaly.threshold), str(anomaly.on_novel))
        novel = novelty_flips(
            ids, names, (*reference, torch_scores), (*mine, file_anomaly), classes, ok, t, rule
        )
        out["novel_flips"] = [
            {"image_id": f.image_id, "name": f.name, "torch": f.reference,
             "exported": f.exported, "anomaly_torch": f.anomaly_reference,
             "anomaly_exported": f.anomaly_exported}
            for f in novel
        ]  # fmt: skip
        if novel:
            out["novel_said"] = (
                f"warning: {len(novel)} image(s) sit on the anomaly head's threshold "
                f"({rule.threshold:.6g}) and get another verdict from the {precision} file than "
                f"from torch ({'; '.join(f.said() for f in novel[:3])}"
                f"{f'; and {len(novel) - 3} more' if len(novel) > 3 else ''}); the UNSURE band "
                "cannot absorb that: such parts are decided by the file's last digits"
            )
    if moved:
        before = verdicts_of(*reference, classes, ok, thresholds).count("UNSURE")
        after = verdicts_of(*reference, classes, ok, t).count("UNSURE")
        out["widened"] = {
            "from": thresholds.as_dict(),
            "to": t.as_dict(),
            "flips": [
                {
                    "image_id": f.image_id,
                    "name": f.name,
                    "torch": f.reference,
                    "exported": f.exported,
                    "score_torch": f.score_reference,
                    "score_exported": f.score_exported,
                }
                for f in moved.values()
            ],  # fmt: skip
            "unsure_checked": [before, after],
            "said": (
                f"{len(moved)} image(s) on a threshold edge flipped between torch and the "
                f"{precision} file ({'; '.join(f.said() for f in list(moved.values())[:3])}"
                f"{f'; and {len(moved) - 3} more' if len(moved) > 3 else ''}): UNSURE band "
                f"widened from {_band(thresholds)} to {_band(t)} so they go to review in both "
                f"(UNSURE on the {len(ids)} checked images: {before} -> {after})"
            ),
        }
    return out


def checked_export(
    proj,
    model,
    meta: dict[str, Any],
    out_path: Path,
    thresholds: Thresholds,
    precision: str,
    max_flip_logit: float = MAX_FLIP_LOGIT,
    **export_kwargs: Any,
):
    """``export.export_onnx`` to a temporary file, the verdict check, then the rename: a file
    that flips a verdict beyond ``max_flip_logit`` never replaces anything; one whose edge flips
    widened the UNSURE band carries the widened band in its metadata."""
    from defectssft.export import export_onnx, output_path, rewrite_thresholds

    out_path = output_path(out_path)
    with atomic_path(out_path) as staged:
        result = export_onnx(
            model, meta, staged, precision=precision, thresholds=thresholds, **export_kwargs
        )
        check = check_verdicts(
            proj, model, meta, staged, thresholds, precision, max_flip_logit,
            anomaly=export_kwargs.get("anomaly"),
        )  # fmt: skip
        final = check.pop("thresholds")
        if "widened" in check:
            result.metadata = rewrite_thresholds(staged, final)
            result.notes.append(check["widened"]["said"])
        if "novel_said" in check:
            result.notes.append(check["novel_said"])
        result.verdict_check = check
    result.path = str(out_path)
    result.size_bytes = out_path.stat().st_size
    return result
