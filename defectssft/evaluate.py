"""Evaluate a model version on the project's frozen test split, calibrate its operating point
and store both.

Images go through the shared preprocessing (``defectssft_line.preprocess``) and the same
``InspectionModel`` graph that is exported, so evaluation scores what the line will score.

The operating point (NG threshold and UNSURE band, what export writes into the ONNX file) is
calibrated by ``defectssft.calibration`` from the evidence the version has: the validation
split, the out-of-fold scores training wrote (``models/vNNNN/oof.npz``) and a bounded sample of
the unlabeled stream; never from the test split, which stays an honest check. A model file with
thresholds of its own keeps them. Every rate is reported with its count and a 95 % exact
interval, with a one-line warning when the split is too small to support it; the verdicts
(OK / NG / UNSURE) are those of ``defectssft_line.decision``, the line's own rule.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectssft import calibration as C
from defectssft import metrics as M
from defectssft.errors import DefectssftError

DEFAULT_MAX_ESCAPE = 0.0
VERDICTS = ("OK", "NG", "UNSURE")
STREAM_REJECT_WARNING = 0.20  # a stream (mostly good parts) rejected beyond this gets a warning
# Out-of-fold evidence whose AUROC is below this barely separates defects from good parts: a
# threshold set on it is close to a guess (BENCHMARKS.md, "Decisions": fold models of --quick
# runs at 0.36-0.78), said in one warning.
WEAK_OOF_AUROC = 0.7


class EvaluationError(DefectssftError):
    """Evaluation impossible as asked (no images to evaluate on, bad target)."""


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
    verdicts: list[str] = field(default_factory=list)  # the line's verdict per test image
    # every probability computed (test, val, stream sample): image id -> probs, to store
    scored: dict[int, list[float]] = field(default_factory=dict)
    # anomaly scores of a version with a head: image id -> score (test images), to store
    anomaly: dict[int, float] = field(default_factory=dict)


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
        return np.zeros((0, len(spec.classes)), np.float32)
    return np.concatenate(chunks)


def _probs_for(
    wrapper, spec, items: list[tuple[int, Path]], cache: dict[int, list[float]]
) -> np.ndarray:
    """probs of ``(image id, path)`` items; ids in ``cache`` (this version's stored
    predictions) are not scored again. Fills ``cache`` with the new ones."""
    n_classes = len(spec.classes)
    todo = [(i, p) for i, p in items if len(cache.get(i) or ()) != n_classes]
    if todo:
        fresh = predict_paths(wrapper, [p for _, p in todo], spec)
        for (i, _), row in zip(todo, fresh.tolist(), strict=True):
            cache[i] = row
    if not items:
        return np.zeros((0, n_classes), np.float32)
    return np.asarray([cache[i] for i, _ in items], dtype=np.float64)


def head_scores(
    model_dir: Path,
    wrapper,
    spec,
    items: list[tuple[int, Path]],
    known: dict[int, float],
    batch_size: int = 16,
) -> dict[int, float]:
    """Anomaly scores (``defectssft.anomaly``'s torch graph, as exported; a tiled model's the
    maximum over the part's tiles, as the line pools them) of ``(image id, path)`` items the
    version's head has not scored yet (not in ``known``, which is filled). Empty for a version
    without a head."""
    from defectssft.anomaly import image_scorer, load_anomaly

    todo = [(i, p) for i, p in items if i not in known]
    if not todo:
        return known
    head = load_anomaly(model_dir)
    if head is None:
        return known
    score = image_scorer(head, wrapper, spec)
    for k in range(0, len(todo), batch_size):
        chunk = todo[k : k + batch_size]
        scores = score([Path(p) for _, p in chunk])
        known.update({int(i): float(a) for (i, _), a in zip(chunk, scores, strict=True)})
    return known


def verdict_counts(
    labels: np.ndarray, verdicts: list[str], classes: list[str]
) -> dict[str, dict[str, int]]:
    """Line verdicts by true class: ``{class: {"OK": n, "NG": n, "UNSURE": n}}``."""
    out = {c: dict.fromkeys(VERDICTS, 0) for c in classes}
    for y, v in zip(labels.tolist(), verdicts, strict=True):
        out[classes[int(y)]][v] += 1
    return out


def decision_claims(is_defect: np.ndarray, verdicts: list[str]) -> dict[str, Any]:
    """Escapes (defective parts passed), overkill (good parts rejected) and UNSURE, each as a
    count with its 95 % interval (``metrics.rate_claim``)."""
    v = np.asarray(verdicts, dtype=object)
    d = np.asarray(is_defect, dtype=bool)
    n_def, n_good = int(d.sum()), int((~d).sum())
    escapes = int(np.sum(d & (v == "OK"))) if v.size else 0
    overkill = int(np.sum(~d & (v == "NG"))) if v.size else 0
    unsure = int(np.sum(v == "UNSURE")) if v.size else 0
    return {
        "escapes": M.rate_claim(escapes, n_def),
        "overkill": M.rate_claim(overkill, n_good),
        "unsure": M.rate_claim(unsure, n_def + n_good),
        # 0 with no parts (as metrics.escape_overkill, what older readers expect); the claims
        # above say n = 0, which is what a reader that cares looks at.
        "escape_rate": escapes / n_def if n_def else 0.0,
        "overkill_rate": overkill / n_good if n_good else 0.0,
        "unsure_rate": unsure / (n_def + n_good) if n_def + n_good else 0.0,
    }


def stream_prediction(verdicts: list[str], classifier: list[str]) -> dict[str, Any]:
    """What the line does to the scored stream sample at the applied thresholds, from its
    verdicts (novelty rule included): the UNSURE share (``stream_review_rate``: the band plus
    novel parts), the NG share, and how many parts the novelty rule changed."""
    n = len(verdicts)
    return {
        "stream_review_rate": verdicts.count("UNSURE") / n if n else None,
        "stream_ng_rate": verdicts.count("NG") / n if n else None,
        "stream_novel": int(sum(a != b for a, b in zip(verdicts, classifier, strict=True))),
        "stream_n": n,
        "stream_unsure": verdicts.count("UNSURE"),
        "stream_ng": verdicts.count("NG"),
    }


def stream_text(op: dict[str, Any]) -> str | None:
    """An operating point's stream forecast in words, each rate with its count and exact 95 %
    interval (what ``evaluate`` prints and the report says); None without one."""
    pred = op.get("predicted") or {}
    if pred.get("stream_review_rate") is None:
        return None
    n = int(pred.get("stream_n") or (op.get("evidence") or {}).get("stream", 0))
    if not n:
        return None
    unsure = int(pred.get("stream_unsure", round(pred["stream_review_rate"] * n)))
    ng = int(pred.get("stream_ng", round(pred["stream_ng_rate"] * n)))
    target = op.get("review_rate")
    text = f"unlabeled stream ({n} scored): " + M.format_rate(
        "to review (UNSURE)", M.rate_claim(unsure, n)
    )
    text += "" if target is None else f" (target {100 * target:.2f} %)"
    text += "; " + M.format_rate("rejected (NG)", M.rate_claim(ng, n))
    if pred.get("stream_novel"):
        text += f"; {pred['stream_novel']} of these verdicts are the anomaly head's (novel parts)"
    return text


def claim_warnings(claims: dict[str, Any], where: str) -> list[str]:
    out = []
    for name, what in (("escapes", "defective"), ("overkill", "good")):
        w = M.support_warning(name, claims[name], f"{what} {where} parts")
        if w:
            out.append(w)
    return out


def _calibrate(
    meta: dict[str, Any],
    ok_index: int,
    val: tuple[np.ndarray, np.ndarray] | None,
    oof,
    stream: np.ndarray | None,
    max_escape: float,
    review_rate: float,
    margin_logit: float,
    stream_anomaly: np.ndarray | None = None,
    novelty: Any = None,
) -> dict[str, Any]:
    """The stored operating point: the calibrated one, or the model file's own thresholds.
    ``stream_anomaly`` (NaN: unknown) and ``novelty``: the anomaly head's share of the review
    rate (``calibration.calibrate``)."""
    sources = []
    if val is not None and len(val[1]):
        sources.append(C.Source("val", M.defect_scores(val[0], ok_index), val[1] != ok_index))
    if oof is not None and len(oof):
        sources.append(
            C.Source("oof", M.defect_scores(oof.probs, ok_index), oof.labels != ok_index)
        )
    if stream is not None and len(stream):
        scores = M.defect_scores(stream, ok_index)
        sources.append(C.Source("stream", scores, anomaly=stream_anomaly))
    point = C.calibrate(sources, review_rate, margin_logit, max_escape, novelty=novelty).as_dict()
    own = meta.get("thresholds") or {}
    if own.get("ng") is not None:
        from defectssft_line.decision import resolve_thresholds

        t = resolve_thresholds(own)
        return {
            "threshold": t.ng,
            "unsure_low": t.unsure_low,
            "unsure_high": t.unsure_high,
            "chosen_on": "model",
            "calibrated": point,
        }
    return point


def evaluate_loaded(
    model,
    meta: dict[str, Any],
    test: list[tuple[Path, int]],
    test_ids: list[int],
    val: list[tuple[Path, int]] | None = None,
    max_escape: float = DEFAULT_MAX_ESCAPE,
    *,
    val_ids: list[int] | None = None,
    stream: list[tuple[int, Path]] | None = None,
    oof=None,
    review_rate: float = C.DEFAULT_REVIEW_RATE,
    margin_logit: float = C.DEFAULT_MARGIN_LOGIT,
    chosen_point: dict[str, float] | None = None,
    cache: dict[int, list[float]] | None = None,
    model_dir: Path | None = None,
    anomaly: dict[int, float] | None = None,
    novelty: Any = "head",
) -> Evaluation:
    """Metrics of a loaded model on labeled images (pure computation, no project writes).

    ``val`` / ``oof`` (``evidence.Evidence``) / ``stream`` (unlabeled ``(id, path)``) are the
    calibration evidence; ``chosen_point`` an operating point set explicitly for the version
    (``Project.set_operating_point``), which the line uses instead of the calibrated one, so
    the verdicts here are computed with it. ``model_dir``: the version's folder; when it holds
    an anomaly head the verdicts apply its novelty rule, as the line does (``anomaly``: the
    anomaly scores already stored, image id -> score; the test images' are added).
    ``novelty``: the rule to apply (``verdicts.shipped_novelty``: the file that ships), None
    for none; by default (``"head"``) the one of the head in ``model_dir``.
    """
    from defectssft.inspection import ModelSpec, inspection_model
    from defectssft.verdicts import line_verdicts, version_novelty
    from defectssft_line.decision import resolve_thresholds

    if not 0.0 <= max_escape < 1.0:
        raise EvaluationError(f"--max-escape must be in [0, 1), got {max_escape}")
    try:
        C.check_settings(review_rate, margin_logit)
    except C.CalibrationError as e:
        raise EvaluationError(str(e)) from None
    spec = ModelSpec.from_meta(meta)
    classes = list(meta["classes"])
    if len(classes) < 2:
        raise EvaluationError(
            f"the model has one class ({', '.join(classes)}): there is nothing to decide between; "
            "add a defect class, label some parts and train again"
        )
    cache = {} if cache is None else cache
    anomaly = {} if anomaly is None else anomaly
    if isinstance(novelty, str):
        novelty = version_novelty(model_dir) if model_dir is not None else None
    wrapper = inspection_model(model, spec)
    paths = [p for p, _ in test]
    labels = np.asarray([c for _, c in test], dtype=np.int64)
    probs = _probs_for(wrapper, spec, list(zip(test_ids, paths, strict=True)), cache)
    n = len(labels)
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
    out["accuracy_claim"] = M.rate_claim(int(np.trace(np.asarray(out["confusion_matrix"]))), n)
    if n == 0:
        out["accuracy"] = None
    out["error_rate"] = None if n == 0 else 1.0 - out["accuracy"]
    warnings: list[str] = []
    if n == 0:
        warnings.append(
            "warning: the test split is empty: no claim on labeled parts the model never saw "
            "(the operating point is calibrated from the other evidence)"
        )
    ok = meta.get("ok_class")
    verdicts: list[str] = []
    if ok in classes:
        ok_index = classes.index(ok)
        val_arrays = None
        if val:
            ids = val_ids or [-(k + 1) for k in range(len(val))]  # no ids: never cached
            v_probs = _probs_for(
                wrapper, spec, [(i, p) for i, (p, _) in zip(ids, val, strict=True)], cache
            )
            val_arrays = (v_probs, np.asarray([c for _, c in val], dtype=np.int64))
        s_probs = _probs_for(wrapper, spec, list(stream or []), cache) if stream else None
        if oof is not None and oof.probs.shape[1:] != (len(classes),):
            warnings.append("warning: out-of-fold evidence has another class count: not used")
            oof = None
        test_anomaly = s_novel = None
        if novelty is not None:  # val and the stream sample too: the app's rates use them
            items = list(zip(test_ids, paths, strict=True))
            if val:
                items += [(i, p) for i, (p, _) in zip(val_ids or [], val, strict=False)]
            known = head_scores(model_dir, wrapper, spec, items + list(stream or []), anomaly)
            test_anomaly = [known.get(i) for i in test_ids]
            s_novel = np.asarray([known.get(i, np.nan) for i, _ in stream or []], np.float64)
        point = _calibrate(
            meta, ok_index, val_arrays, oof, s_probs, max_escape, review_rate, margin_logit,
            s_novel, novelty,
        )  # fmt: skip
        applied = resolve_thresholds(
            meta.get("thresholds"), chosen_point or {**point, "ng": point["threshold"]}
        )
        verdicts = line_verdicts(probs, classes, ok, applied, test_anomaly, novelty)
        if s_probs is not None and len(s_probs):
            s_ids = [i for i, _ in stream or []]
            s_anomaly = [anomaly.get(i) for i in s_ids] if novelty is not None else None
            s_verdicts = line_verdicts(s_probs, classes, ok, applied, s_anomaly, novelty)
            point["predicted"] = {
                **(point.get("predicted") or {}),
                **stream_prediction(s_verdicts, line_verdicts(s_probs, classes, ok, applied)),
            }
        is_defect = labels != ok_index
        scores = M.defect_scores(probs, ok_index) if n else np.zeros(0)
        claims = decision_claims(is_defect, verdicts)
        insp = {
            "n_defective": int(is_defect.sum()),
            "n_good": int((~is_defect).sum()),
            "roc_auc": M.roc_auc(scores, is_defect),
            "average_precision": M.average_precision(scores, is_defect),
            "max_escape": max_escape,
        }
        point.update(claims)
        point["applied"] = {
            **applied.as_dict(),
            "source": "chosen" if chosen_point else point["chosen_on"],
        }
        out["inspection"], out["operating_point"] = insp, point
        out["verdicts"] = verdict_counts(labels, verdicts, classes)
        if novelty is not None:
            classifier = line_verdicts(probs, classes, ok, applied)
            out["novelty"] = {
                "threshold": novelty.threshold,
                "on_novel": novelty.on_novel,
                "changed": int(sum(a != b for a, b in zip(classifier, verdicts, strict=True))),
                "note": "an OK part the anomaly head finds novel is "
                f"{novelty.on_novel}, as on the line",
            }
        warnings += [f"note: {t}" for t in point.get("notes", [])]
        stream_ng = (point.get("predicted") or {}).get("stream_ng_rate")
        if stream_ng is not None and stream_ng > STREAM_REJECT_WARNING:
            warnings.append(
                f"warning: this operating point rejects {100 * stream_ng:.0f} % of the unlabeled "
                "stream: the model does not separate its evidence defects from the good parts"
            )
        warnings += claim_warnings(claims, "test") if n else []
        if oof is not None and len(oof):
            o_scores = M.defect_scores(oof.probs, ok_index)
            o_verdicts = line_verdicts(oof.probs, classes, ok, applied)
            o_defect = oof.labels != ok_index
            out["oof"] = {
                "n": len(oof),
                "n_defective": int(o_defect.sum()),
                "n_good": int((~o_defect).sum()),
                "roc_auc": M.roc_auc(o_scores, o_defect),
                **decision_claims(o_defect, o_verdicts),
                "note": "scored by fold models that did not train on them; the NG threshold "
                "was calibrated on these scores, so its escapes here are not an independent test",
            }
            auc = out["oof"]["roc_auc"]
            if auc is not None and auc < WEAK_OOF_AUROC and "oof" in str(point.get("chosen_on")):
                warnings.append(
                    f"warning: out of fold the model barely separates defects from good parts "
                    f"(AUROC {auc:.2f} on {out['oof']['n_defective']} defective + "
                    f"{out['oof']['n_good']} good): the NG threshold set on these scores is close "
                    "to a guess; label more parts or train longer"
                )
    else:
        # Every class is a defect: the verdict is always NG, what matters is the class.
        errors = n - int(np.trace(np.asarray(out["confusion_matrix"])))
        out["operating_point"] = {
            "error_rate": out["error_rate"],
            "errors": M.rate_claim(errors, n),
            "chosen_on": "none",
            "note": "no OK class: every part is NG with its class; no threshold to calibrate",
        }
        if n:
            w = M.support_warning("errors", out["operating_point"]["errors"], "test parts")
            if w:
                warnings.append(w)
    out["warnings"] = warnings
    ev = Evaluation(out, probs, labels, list(test_ids), paths, verdicts=verdicts)
    ev.scored = cache
    scored_here = {*test_ids, *(val_ids or []), *(i for i, _ in stream or [])}
    ev.anomaly = {i: a for i, a in anomaly.items() if i in scored_here} if novelty else {}
    return ev


def evaluate_project_model(
    project,
    version: str | None = None,
    max_escape: float = DEFAULT_MAX_ESCAPE,
    report: bool = True,
    store: bool = True,
) -> Evaluation:
    """Evaluate a model version (default: production, else newest) on the frozen test split and
    calibrate its operating point (``defectssft.calibration``, the project's ``decision.*``
    settings).

    Stores the metrics under ``metrics["test"]`` of the version (the operating point under
    ``metrics["test"]["operating_point"]``, which export writes), the probabilities it computed
    (test, val and the stream sample) as the version's predictions and, with ``report``,
    writes ``models/vNNNN/eval/report.md``.
    """
    from defectssft.evidence import load_oof
    from defectssft.metrics import operating_point
    from defectssft.modeling import load_model_file
    from defectssft.splits import MIN_HOLDOUT_LABELS
    from defectssft.verdicts import anomaly_scores, shipped_novelty, store_anomaly_scores

    record = project.get_model(version)
    data = project.training_data()
    try:
        review_rate, margin, sample = C.project_settings(project)
    except C.CalibrationError as e:
        raise EvaluationError(str(e)) from None
    folder = Path(record["path"])
    oof = load_oof(folder)
    if not (data.test or data.val or data.unlabeled or oof is not None):
        raise EvaluationError(
            f"{project.root}: the test split is empty and there is no other evidence (val, "
            "out-of-fold, unlabeled stream); train with cross-fitting (the default with few "
            "labels), import unlabeled images, or label a class up to "
            f"{int(project.get_setting('split.min_labels', MIN_HOLDOUT_LABELS))} images so "
            "that a test split is drawn"
        )
    model, meta = load_model_file(folder / "model.pt")
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
    picked = C.stream_sample(data.unlabeled_ids, sample)
    stream = [(data.unlabeled_ids[i], Path(data.unlabeled[i])) for i in picked]
    chosen = (record.get("metrics") or {}).get("operating_point")
    chosen_point = operating_point({"operating_point": chosen}) if chosen else None
    cache = project.predictions(record["version"])
    anomaly = anomaly_scores(folder)
    ev = evaluate_loaded(
        model,
        meta,
        data.test,
        data.test_ids,
        data.val,
        max_escape,
        val_ids=data.val_ids,
        stream=stream,
        oof=oof,
        review_rate=review_rate,
        margin_logit=margin,
        chosen_point=chosen_point,
        cache=cache,
        model_dir=folder,
        anomaly=anomaly,
        novelty=shipped_novelty(project, record["version"]).rule,
    )
    ev.metrics["project"] = project.name
    ev.names = [project.get_image(i).original_name or "" for i in ev.image_ids]
    ev.metrics["data_hash"] = meta.get("data_hash", "")
    if report:
        ev.report = write_evaluation_report(folder / "eval", ev)
        ev.metrics["report"] = str(ev.report)
    if store:
        project.update_model_metrics(record["version"], {"test": ev.metrics})
        project.save_predictions(
            record["version"], [(i, p) for i, p in ev.scored.items() if i >= 0]
        )
        store_anomaly_scores(folder, {i: a for i, a in ev.anomaly.items() if i >= 0})
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
    verdicts = ev.verdicts or [None] * len(ev.paths)
    items = [
        Item(
            image_id,
            path,
            classes[int(t)],
            classes[int(np.argmax(p))],
            float(np.max(p)),
            None if scores is None else float(scores[k]),
            names[k] or path.name,
            verdicts[k],
        )
        for k, (image_id, path, t, p) in enumerate(
            zip(ev.image_ids, ev.paths, ev.labels, ev.probs, strict=True)
        )
    ]
    return write_report(folder, ev.metrics, items, scores, is_defect)


def _count(claim: dict[str, Any] | None) -> str:
    return "-" if not claim else f"{claim['k']}/{claim['n']}"


def comparison_table(project) -> str:
    """One line per evaluated model version, so runs can be compared at a glance (counts, not
    rates: 0/3 and 0/300 escapes are different claims)."""
    head = (
        f"{'version':<8} {'status':<10} {'accuracy':>9} {'escapes':>8} {'overkill':>8} "
        f"{'unsure':>8} {'NG at':>8} test split"
    )
    lines = [head]
    for m in project.models():
        t = m["metrics"].get("test")
        if not t:
            lines.append(f"{m['version']:<8} {m['status']:<10} {'(not evaluated)':>9}")
            continue
        op = t.get("operating_point", {})
        acc = t.get("accuracy_claim")
        thr = op.get("threshold")
        lines.append(
            f"{m['version']:<8} {m['status']:<10} {_count(acc):>9} {_count(op.get('escapes')):>8} "
            f"{_count(op.get('overkill')):>8} {_count(op.get('unsure')):>8} "
            f"{'-' if thr is None else f'{thr:.4g}':>8} {t['test_hash'][:12]}"
        )
    return "\n".join(lines)
