"""Decisions from a few labels, as a user gets them: the line runtime's verdicts at the default
operating point on held-out parts, flips between torch and the exported files, the coverage of the
intervals the product reports, and the calibration rule (margin, UNSURE band) chosen by benchmark.

Per data set and seed, in a temporary folder, with the CLIs (``benchmarks/default_path.py``'s
protocol helpers, imported): ``defectssft init`` / ``import`` (labeled + unlabeled stream) /
``train`` / ``evaluate`` / ``export`` (fp32 and ``--int8``), then ``defectssft-line run`` on the
held-out parts (never imported) with each file. Torch scores the same held-out parts (the
product's own inference path) to count verdict flips. Then, offline from what ``evaluate``
stored (val/test/stream predictions, out-of-fold evidence), the calibration candidates (logit
margin × UNSURE band on/off, and the old rule: the lowest val defect, no margin, no band) are
scored on the same held-out parts: this is how the default margin was chosen. Commands and
results: BENCHMARKS.md, "Decisions".
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy"), str(ROOT / "benchmarks")]

import default_path as dp  # noqa: E402 - H12's protocol helpers (not edited here)
from progress import save_progress  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OK = dp.OK
QUICK_SETS = ["train.steps=60", "input.height=64", "input.width=64", "train.eval_every=20"]
MARGINS = (0.0, 0.5, 1.0, 2.0)
STREAM_CAPS = (0.9, 0.95)


def neu_okng_pool(root: Path) -> dict[str, list[Path]]:
    """NEU-DET as OK/NG: ``rolled-in_scale`` is the good parts, the other five one defect class."""
    pool = dp.neu_pool(root / "neu-det")
    return {OK: pool[OK], "defect": sorted(p for c, v in pool.items() if c != OK for p in v)}


def protocol(dataset: str, seed: int, quick: bool, root: Path) -> dp.Protocol:
    """10 defective + 30 good labeled, the rest of the good parts (≤ 400) + 4 % defects as the
    unlabeled stream, held-out parts fixed per data set."""
    if dataset == "kolektor":
        pool = dp.kolektor_pool(root / "kolektorsdd")
        held = {OK: 60 if quick else 120, "defect": 16 if quick else 22}
        return dp.build_protocol("kolektor", pool, held, 10, seed, min_ok_labels=30)
    if dataset in ("elpv-mono", "elpv-poly"):
        pool, graded = dp.elpv_pool(root / "elpv", dataset.split("-")[1])
        held = {OK: 60 if quick else 150, "defect": 30 if quick else 60}
        return dp.build_protocol(
            dataset, pool, held, 10, seed, min_ok_labels=30, graded=graded,
            graded_n=10 if quick else 30,
        )  # fmt: skip
    if dataset == "neu":
        pool = neu_okng_pool(root)
        held = {OK: 50 if quick else 100, "defect": 50 if quick else 100}
        return dp.build_protocol("neu-okng", pool, held, 10, seed, min_ok_labels=30)
    raise SystemExit(f"unknown data set {dataset!r}")


# --------------------------------------------------------------------------- scoring


def torch_scores(model_pt: Path, paths: list[Path]) -> tuple[np.ndarray, np.ndarray, dict]:
    """(probs, defect scores, meta) of the torch model on image files (the product's path)."""
    import torch

    from defectssft.inspection import load_images, load_inspection, predict_arrays

    torch.set_num_threads(1)
    wrapper, spec = load_inspection(model_pt)
    inp = spec.input
    images = load_images(paths, inp.height, inp.width, inp.bit_depth)
    probs, scores = predict_arrays(wrapper, images)
    return probs, scores, {"classes": list(spec.classes), "ok_class": spec.ok_class}


def held_anomaly(project: Path, version: str, paths: list[Path]):
    """(torch anomaly scores, threshold, on_novel) of a version with an anomaly head, else None."""
    import torch

    from defectssft.anomaly import load_anomaly, torch_anomaly
    from defectssft.inspection import ModelSpec, inspection_model, load_images
    from defectssft.modeling import load_model_file

    folder = project / "models" / version
    head = load_anomaly(folder)
    if head is None:
        return None
    torch.set_num_threads(1)
    model, meta = load_model_file(folder / "model.pt")
    spec = ModelSpec.from_meta(meta)
    graph = head.wrap(inspection_model(model, spec))
    inp = spec.input
    a, _ = torch_anomaly(graph, load_images(paths, inp.height, inp.width, inp.bit_depth))
    return a.astype(np.float64), float(head.threshold), head.on_novel


def with_novelty(verdict: str, anomaly: float, threshold: float, on_novel: str) -> str:
    """The line's novelty rule (``defectssft_line.novelty``) on a classifier verdict."""
    from defectssft_line.decision import Prediction
    from defectssft_line.novelty import NoveltyRule, apply_novelty

    part = Prediction(verdict, "", 0.0, ())
    return apply_novelty(part, anomaly, NoveltyRule(threshold, on_novel), "ok").verdict


def torch_verdicts(
    score: np.ndarray, anomaly: np.ndarray | None, t: dict[str, float], novelty: dict | None
) -> tuple[list[str], list[str]]:
    """Torch's verdicts of the held-out parts: the classifier's, and the line's (with the
    novelty rule on ``anomaly`` where the version has the head)."""
    cls = [verdict_of(float(s), t) for s in score]
    if novelty is None or anomaly is None:
        return cls, cls
    final = [
        with_novelty(v, float(a), novelty["threshold"], novelty["on"])
        for v, a in zip(cls, anomaly, strict=True)
    ]
    return cls, final


def saved_flips(case: Path, t: dict[str, float], novelty: dict[str, Any] | None) -> dict[str, int]:
    """Verdict flips torch -> each exported file on the held-out parts: the line's recorded
    verdict against torch's (with the novelty rule on torch's anomaly scores where the file has
    the head; a file the export check refused is measured without it)."""
    z = np.load(case / "held_scores.npz")
    held = json.loads((case / "held_order.json").read_text())
    anomaly = z["torch_anomaly"] if "torch_anomaly" in z else None
    torch_cls, torch_v = torch_verdicts(z["torch_score"], anomaly, t, novelty)
    out: dict[str, int] = {"n": len(torch_cls)}
    for p in ("fp32", "fp16", "int8"):
        path = case / f"line-{p}.jsonl"
        if not path.exists():
            continue
        recs = [json.loads(x) for x in path.read_text().splitlines()]
        by_name = {Path(r["file"]).name: r["verdict"] for r in recs}
        reference = torch_v if any("anomaly_score" in r for r in recs) else torch_cls
        out[f"torch_vs_{p}"] = sum(a != by_name[n] for a, n in zip(reference, held, strict=True))
    return out


def escapes_detail(case: Path, t: dict[str, float], novelty: dict[str, Any] | None):
    """Why the escapes escaped, and what catching them would cost, from ``held_scores.npz``
    (torch scores; the line's verdicts equal them when no verdict flips): each escaped part's
    defect score (its logit, and how far below the UNSURE band) and anomaly score (over the
    head's threshold), and for each lever, the good held-out parts it would flag to catch every
    escape: the UNSURE band's lower edge at the lowest escape's score, or the anomaly head's
    threshold at the lowest escape's anomaly score (beside the good parts flagged now). With the
    anomaly score's held-out AUROC."""
    from defectssft import metrics as M
    from defectssft.calibration import logit

    path = case / "held_scores.npz"
    if not path.exists():
        return None
    z = np.load(path)
    names = json.loads((case / "held_order.json").read_text())
    scored, defective = z["scored"], z["defective"]
    score = z["torch_score"].astype(np.float64)
    anomaly = z["torch_anomaly"] if novelty and "torch_anomaly" in z else None
    cls, final = (np.asarray(v, dtype=object) for v in torch_verdicts(score, anomaly, t, novelty))
    good = scored & ~defective
    esc = np.flatnonzero(scored & defective & (final == "OK"))
    out: dict[str, Any] = {
        "escapes": [],
        "good_flagged_now": [int(np.sum(good & (final != "OK"))), int(good.sum())],
    }
    for i in esc:
        e = {
            "name": names[i],
            "logit": float(logit(score[i])),
            "logits_below_band": float(logit(t["unsure_low"]) - logit(score[i])),
        }
        if anomaly is not None:
            e["anomaly_over_threshold"] = float(anomaly[i] / novelty["threshold"])
        out["escapes"].append(e)
    if len(esc):
        low = float(score[esc].min())
        out["band_to_catch_all"] = {
            "good_flagged": [int(np.sum(good & ((score >= low) | (final != "OK")))),
                             int(good.sum())],
        }  # fmt: skip
        if anomaly is not None:
            a = float(anomaly[esc].min())
            out["novelty_to_catch_all"] = {
                "threshold_over_current": a / novelty["threshold"],
                "good_flagged": [int(np.sum(good & ((anomaly >= a) | (cls != "OK")))),
                                 int(good.sum())],
            }  # fmt: skip
    if anomaly is not None:
        out["anomaly_auroc"] = M.roc_auc(anomaly[scored], defective[scored])
    return out


def held_parts(case: Path) -> dict[str, list[Any]] | None:
    """Every held-out part's name, truth and scores (torch's defect and anomaly scores, the
    fp32 line's verdict), from ``held_scores.npz``: kept in the results so that another rule
    can be tried on them once the work folder is gone."""
    path = case / "held_scores.npz"
    if not path.exists():
        return None
    z = np.load(path)
    names = json.loads((case / "held_order.json").read_text())
    out: dict[str, list[Any]] = {
        "name": names,
        "defective": [bool(x) for x in z["defective"]],
        "scored": [bool(x) for x in z["scored"]],
        "torch_score": [float(x) for x in z["torch_score"]],
    }
    if "torch_anomaly" in z:
        out["torch_anomaly"] = [float(x) for x in z["torch_anomaly"]]
    line = case / "line-fp32.jsonl"
    if line.exists():
        recs = {Path(r["file"]).name: r for r in map(json.loads, line.read_text().splitlines())}
        out["fp32_verdict"] = [recs[n]["verdict"] if n in recs else None for n in names]
    return out


def split_counts(project: Path) -> dict[str, dict[str, int]]:
    """Labeled images per split and class (with few labels a class may have no val/test)."""
    from defectssft.project import Project

    data = Project.open(project).training_data()
    out: dict[str, dict[str, int]] = {}
    for name, items in (("train", data.labeled), ("val", data.val), ("test", data.test)):
        c = Counter(data.classes[int(k)] for _, k in items)
        out[name] = {cls: c[cls] for cls in data.classes}
    return out


def verdict_of(score: float, t: dict[str, float]) -> str:
    """The line's verdict of a defect score (``defectssft_line.decision.verdict``)."""
    from defectssft_line.decision import Thresholds, verdict

    return verdict(
        score, Thresholds(float(t["ng"]), float(t["unsure_low"]), float(t["unsure_high"]))
    )


def rates(defective: np.ndarray, verdicts: list[str]) -> dict[str, Any]:
    v = np.asarray(verdicts, dtype=object)
    n_d, n_g = int(defective.sum()), int((~defective).sum())
    esc = int(np.sum(defective & (v == "OK")))
    ovk = int(np.sum(~defective & (v == "NG")))
    uns = int(np.sum(v == "UNSURE"))
    return {
        "escapes": [esc, n_d],
        "overkill": [ovk, n_g],
        "unsure": [uns, n_d + n_g],
        "overkill_plus_unsure_good": [ovk + int(np.sum(~defective & (v == "UNSURE"))), n_g],
    }


def _point(ng: float, stream: np.ndarray, rate: float, margin: float) -> dict[str, float]:
    from defectssft import calibration as C

    low = C._band_low(stream, ng, rate, margin) if rate and stream.size else ng  # noqa: SLF001
    return {"ng": ng, "unsure_low": min(low, ng), "unsure_high": ng}


def candidates(
    project_dir: Path,
    version: str,
    held_scores: np.ndarray,
    held_defect: np.ndarray,
    train: tuple[np.ndarray, np.ndarray] | None = None,
):
    """Each calibration candidate's thresholds and its verdicts on the held-out parts (torch
    scores), from the evidence ``evaluate`` stored; ``train``: the shipped model's own (in-sample)
    defect scores of its labeled training images and which are defective, for the in-sample
    candidate."""
    from defectssft import calibration as C
    from defectssft import metrics as M
    from defectssft.evidence import load_oof
    from defectssft.project import Project

    p = Project.open(project_dir)
    data = p.training_data()
    preds = p.predictions(version)
    ok_index = data.classes.index(data.ok_class)
    val = [(i, c) for i, (_, c) in zip(data.val_ids, data.val, strict=True) if i in preds]
    sources = []
    if val:
        probs = np.asarray([preds[i] for i, _ in val])
        lab = np.asarray([c for _, c in val])
        sources.append(C.Source("val", M.defect_scores(probs, ok_index), lab != ok_index))
    oof = load_oof(Path(p.get_model(version)["path"]))
    if oof is not None and len(oof):
        sources.append(
            C.Source("oof", M.defect_scores(oof.probs, ok_index), oof.labels != ok_index)
        )
    stream_ids = [i for i in data.unlabeled_ids if i in preds]
    stream = np.zeros(0)
    if stream_ids:
        probs = np.asarray([preds[i] for i in stream_ids])
        stream = M.defect_scores(probs, ok_index)
        sources.append(C.Source("stream", stream))
    out = {}
    val_src = [s for s in sources if s.name == "val"]
    if val_src and val_src[0].is_defect.any():  # the rule before issue #13
        ng = float(val_src[0].scores[val_src[0].is_defect].min())
        t = {"ng": ng, "unsure_low": ng, "unsure_high": ng}
        out["old: lowest val defect, no band"] = t
    for margin, rate, cap in [
        *((m, r, None) for m in MARGINS for r in (0.0, C.DEFAULT_REVIEW_RATE)),
        *((m, C.DEFAULT_REVIEW_RATE, q) for m in (1.0, 2.0) for q in STREAM_CAPS),
    ]:
        point = C.calibrate(sources, rate, margin, stream_cap=cap)
        name = f"margin {margin:g}" + (f", band {100 * rate:g} %" if rate else ", no band")
        name += f", cap at stream q{100 * cap:g}" if cap else ""
        out[name] = {
            "ng": point.threshold,
            "unsure_low": point.unsure_low,
            "unsure_high": point.unsure_high,
            "chosen_on": point.chosen_on,
        }
    rate = C.DEFAULT_REVIEW_RATE
    for margin in (1.0, 2.0):  # the second-lowest evidence defect (one of ~10 is an outlier)
        point = C.calibrate(sources, rate, margin, max_escape=0.1)
        out[f"margin {margin:g}, band 2 %, anchor: 2nd-lowest evidence defect"] = {
            "ng": point.threshold,
            "unsure_low": point.unsure_low,
            "unsure_high": point.unsure_high,
        }
    labeled = [s for s in sources if s.is_defect is not None]
    goods = np.concatenate([s.scores[~s.is_defect] for s in labeled] or [np.zeros(0)])
    if stream.size:
        for q in (0.9, 0.95):
            ng = float(np.quantile(stream, q))
            out[f"labels ignored: stream q{100 * q:g}, band 2 %"] = _point(ng, stream, rate, 1.0)
        if goods.size:
            for margin in (1.0, 2.0):
                point = C.calibrate(labeled, 0.0, margin)  # on the evidence's own scale
                share = float(np.mean(goods < point.threshold))
                ng = float(np.quantile(stream, share))
                out[f"by rank: evidence good parts below margin {margin:g} -> stream quantile"] = (
                    _point(ng, stream, rate, margin)
                )
        if train is not None and train[1].any():
            for margin in (1.0, 2.0):
                src = [C.Source("in-sample", train[0], train[1]), C.Source("stream", stream)]
                point = C.calibrate(src, rate, margin)
                out[f"in-sample: shipped model's train defects, margin {margin:g}, band 2 %"] = {
                    "ng": point.threshold,
                    "unsure_low": point.unsure_low,
                    "unsure_high": point.unsure_high,
                }
    return {
        name: {**t, **rates(held_defect, [verdict_of(s, t) for s in held_scores])}
        for name, t in out.items()
    }


def scale(
    project_dir: Path, version: str, held_scores: np.ndarray, held_defect: np.ndarray
) -> dict[str, Any]:
    """Are the evidence and the shipped model on one score scale? Median logits of the
    out-of-fold (fold models) defective / good scores, of the shipped model's held-out defective /
    good scores and of its stream scores, and each set's AUROC."""
    from defectssft import metrics as M
    from defectssft.calibration import logit
    from defectssft.evidence import load_oof
    from defectssft.project import Project

    p = Project.open(project_dir)
    data = p.training_data()
    ok = data.classes.index(data.ok_class)
    preds = p.predictions(version)
    stream = M.defect_scores(
        np.asarray([preds[i] for i in data.unlabeled_ids if i in preds]).reshape(
            -1, len(data.classes)
        ),
        ok,
    )

    def med(x: np.ndarray) -> float | None:
        return round(float(np.median(logit(x))), 2) if x.size else None

    out: dict[str, Any] = {
        "held_auroc": M.roc_auc(held_scores, held_defect),
        "held_defective_logit": med(held_scores[held_defect]),
        "held_good_logit": med(held_scores[~held_defect]),
        "stream_logit": med(stream),
    }
    oof = load_oof(Path(p.get_model(version)["path"]))
    if oof is not None and len(oof):
        s, d = M.defect_scores(oof.probs, ok), oof.labels != ok
        out.update(
            oof_auroc=M.roc_auc(s, d),
            oof_defective_logit=med(s[d]),
            oof_good_logit=med(s[~d]),
            oof_lowest_defect_logit=round(float(logit(s[d].min())), 2) if d.any() else None,
        )
    return out


def train_scores(project_dir: Path, version: str) -> tuple[np.ndarray, np.ndarray]:
    """The shipped model's defect scores of its labeled training images (in-sample) and which
    of them are defective."""
    from defectssft.project import Project

    data = Project.open(project_dir).training_data()
    paths = [Path(q) for q, _ in data.labeled]
    _, scores, _ = torch_scores(project_dir / "models" / version / "model.pt", paths)
    ok_index = data.classes.index(data.ok_class)
    return scores.astype(np.float64), np.asarray([c != ok_index for _, c in data.labeled])


def unchecked_int8(project_dir: Path, version: str, out: Path) -> Path:
    """The INT8 file ``export --int8`` would have written without its verdict check (to count
    flips on the held-out parts when the check refused it): same calibration images, same
    thresholds, through ``export.export_onnx``."""
    from defectssft.export import _project_images, export_onnx
    from defectssft.inspection import ModelSpec, load_images
    from defectssft.modeling import load_model_file
    from defectssft.project import Project

    p = Project.open(project_dir)
    record = p.get_model(version)
    model, meta = load_model_file(Path(record["path"]) / "model.pt")
    spec = ModelSpec.from_meta(meta)
    thresholds = spec.resolve_thresholds(record.get("metrics"))
    check, labels, calib = _project_images(p, 32, 64)
    inp = spec.input
    export_onnx(
        model,
        meta,
        out,
        check_images=load_images(check, inp.height, inp.width, inp.bit_depth),
        check_labels=labels,
        calib_images=load_images(calib, inp.height, inp.width, inp.bit_depth),
        precision="int8",
        thresholds=thresholds,
        max_int8_drop=1.0,
        recheck=False,  # the INT8 graph alone: the flips the re-check and the check prevent
    )
    return out


def covers(claim: dict[str, Any] | None, k: int, n: int) -> bool | None:
    """Does the product's reported interval hold the rate measured on the held-out parts?"""
    if not claim or not claim.get("n") or not n:
        return None
    return claim["low"] - 1e-9 <= k / n <= claim["high"] + 1e-9


# --------------------------------------------------------------------------- one run


def _trained(project: Path) -> bool:
    return any((project / "models").glob("v[0-9]*/model.pt"))


def _resumable(project: Path) -> bool:
    """An untrained case project whose training a stop interrupted (``train --resume`` goes on)."""
    from defectssft.errors import DefectssftError
    from defectssft.training import find_run

    if not (project / "runs").is_dir() or _trained(project):
        return False
    try:
        find_run(project, None)
    except DefectssftError:
        return False
    return True


def run_case(
    dataset: str,
    seed: int,
    quick: bool,
    root: Path,
    work: Path,
    reuse: bool = False,
    extra_sets: Sequence[str] = (),
) -> dict[str, Any]:
    """One data set and seed end to end; with ``reuse``, a case folder whose project already
    holds a trained version skips init / import / train (the rest runs again), and one whose
    training was stopped (SIGTERM: ``last.pt`` kept) continues it with ``train --resume`` (the
    run's saved settings; a long run spread over several sittings). ``extra_sets``:
    ``section.key=value`` settings passed to ``train`` after the protocol's own (``--set``),
    recorded in the result as ``train_sets``."""
    proto = protocol(dataset, seed, quick, root)
    case = work / f"{dataset}-s{seed}"
    project = case / "project"
    reused = reuse and _trained(project)
    resumed = reuse and _resumable(project)
    if not reused and not resumed:
        shutil.rmtree(case, ignore_errors=True)
        case.mkdir(parents=True)
        dirs = dp.stage(proto, case)
    run = dp.Runner(case / "commands.log", threads=1)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"dataset": dataset, "seed": seed, "protocol": proto.notes}
    sets = [a for s in (QUICK_SETS if quick else []) for a in ("--set", s)]
    if seed:
        sets += ["--set", f"train.seed={seed}"]
    sets += [a for s in extra_sets for a in ("--set", s)]
    out["train_sets"] = list(extra_sets)
    if not reused:
        if resumed:
            _, train_text = run("defectssft", "train", project, "--resume")
        else:
            classes = ",".join(proto.classes)
            run("defectssft", "init", project, "--classes", classes, "--ok-class", OK)
            run("defectssft", "import", project, dirs["labeled"], "--label-from", "folder")
            run("defectssft", "import", project, dirs["stream"])
            _, train_text = run("defectssft", "train", project, *sets)
        (case / "train_said.txt").write_text("\n".join(dp._train_said(train_text)))  # noqa: SLF001
    out["reused_training"] = reused
    out["resumed_training"] = resumed
    said = case / "train_said.txt"
    out["train_said"] = said.read_text().splitlines() if said.exists() else []
    out["splits"] = split_counts(project)
    version = dp._newest_version(project)  # noqa: SLF001
    _, ev_text = run("defectssft", "evaluate", project, "--model", version, "--no-report")
    out["evaluate_printed"] = ev_text.strip().split("\n\n")[0]
    files = {}
    for precision, flag in (("fp32", []), ("int8", ["--int8"])):
        target = case / f"{precision}.onnx"
        rc, text = run(
            "defectssft", "export", project, "--model", version, "-o", target, *flag, check=False
        )
        out[f"export_{precision}"] = {"rc": rc, "said": text.strip().splitlines()[-4:]}
        if rc == 0:
            files[precision] = target
    if "int8" not in files:  # refused: measure what the line would have got anyway
        try:
            files["int8"] = unchecked_int8(project, version, case / "int8-unchecked.onnx")
            out["export_int8"]["unchecked_file_measured"] = True
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            out["export_int8"]["unchecked_error"] = str(e)
    held = [p for p in proto.held if not p.grade]
    graded = [p for p in proto.held if p.grade]
    held_paths = [case / "held" / dp._held_name(p) for p in proto.held]  # noqa: SLF001
    probs, scores, _ = torch_scores(project / "models" / version / "model.pt", held_paths)
    from defectssft.project import Project

    test = Project.open(project).get_model(version)["metrics"]["test"]
    op = test["operating_point"]
    t = op.get("applied") or {
        "ng": op["threshold"],
        "unsure_low": op["unsure_low"],
        "unsure_high": op["unsure_high"],
    }
    out["thresholds"] = {k: t[k] for k in ("ng", "unsure_low", "unsure_high")}
    out["calibration"] = {
        k: op.get(k) for k in ("chosen_on", "anchor", "evidence", "predicted", "notes")
    }
    novelty = held_anomaly(project, version, held_paths)
    out["novelty_rule"] = None if novelty is None else {"threshold": novelty[1], "on": novelty[2]}
    torch_cls, torch_v = torch_verdicts(
        scores, None if novelty is None else novelty[0], t, out["novelty_rule"]
    )
    line: dict[str, list[str]] = {}
    line_cls: dict[str, list[str]] = {}
    saved: dict[str, np.ndarray] = {"torch_score": scores.astype(np.float64)}
    if novelty is not None:
        saved["torch_anomaly"] = novelty[0]
    for precision, path in files.items():
        res = case / f"line-{precision}.jsonl"
        run(
            "defectssft-line", "run", "--model", path, "--input", case / "held",
            "--format", "jsonl", "--output", res, "--threads", "1",
        )  # fmt: skip
        recs = {Path(r["file"]).name: r for r in map(json.loads, res.read_text().splitlines())}
        line[precision] = [recs[p.name]["verdict"] for p in held_paths]
        line_cls[precision] = [verdict_of(float(recs[p.name]["score"]), t) for p in held_paths]
        saved[f"{precision}_score"] = np.asarray([recs[p.name]["score"] for p in held_paths])
        if novelty is not None:
            saved[f"{precision}_anomaly"] = np.asarray(
                [recs[p.name].get("anomaly_score", np.nan) for p in held_paths], dtype=np.float64
            )
    n_scored = len(held)
    defective = np.asarray([p.defective for p in proto.held])
    scored = np.asarray([not p.grade for p in proto.held])
    np.savez(case / "held_scores.npz", defective=defective, scored=scored, **saved)
    (case / "held_order.json").write_text(json.dumps([p.name for p in held_paths]))
    reference = line.get("fp32", torch_v)
    out["line"] = rates(defective[scored], [v for v, s in zip(reference, scored, strict=True) if s])
    out["line"]["n"] = n_scored
    ref_cls = line_cls.get("fp32", torch_cls)
    out["line_classifier"] = rates(
        defective[scored], [v for v, s in zip(ref_cls, scored, strict=True) if s]
    )
    out["novelty_changed"] = {
        kind: sum(
            a != b
            for a, b, d, s in zip(ref_cls, reference, defective, scored, strict=True)
            if s and d == want
        )
        for kind, want in (("defective", True), ("good", False))
    }
    out["flips"] = saved_flips(case, t, out["novelty_rule"])
    out["escapes_detail"] = escapes_detail(case, t, out["novelty_rule"])
    out["held_parts"] = held_parts(case)
    if graded:
        g = Counter()
        for p, v in zip(proto.held, reference, strict=True):
            if p.grade:
                g[(p.grade, v)] += 1
        out["graded"] = {
            grade: {v: g[(grade, v)] for v in ("OK", "UNSURE", "NG") if g[(grade, v)]}
            for grade in sorted({p.grade for p in graded})
        }
    esc, ovk = out["line"]["escapes"], out["line"]["overkill"]
    out["coverage"] = {
        "escapes": covers(op.get("escapes"), *esc),
        "overkill": covers(op.get("overkill"), *ovk),
        "claimed": {k: op.get(k) for k in ("escapes", "overkill", "unsure")},
        "oof_claimed": {k: (test.get("oof") or {}).get(k) for k in ("escapes", "overkill")},
    }
    from defectssft import metrics as M

    out["held_auroc"] = M.roc_auc(scores[scored], defective[scored])
    out["scale"] = scale(project, version, scores[scored], defective[scored])
    out["candidates"] = candidates(
        project,
        version,
        scores[scored].astype(np.float64),
        defective[scored],
        train_scores(project, version),
    )
    out["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    return out


# --------------------------------------------------------------------------- table


def _r(pair: list[int]) -> str:
    k, n = pair
    return f"{k}/{n}" + ("" if not n else f" = {100 * k / n:.0f} %")


def _held_out(r: dict[str, Any]) -> str:
    """Labeled images the project held out, val / test, good + defective (the split rule)."""
    sp = r.get("splits")
    if not sp:
        return "—"

    def part(name: str) -> str:
        c = sp[name]
        return f"{c.get(OK, 0)}+{sum(v for k, v in c.items() if k != OK)}"

    return f"{part('val')} / {part('test')}"


def oof_claim(r: dict[str, Any]) -> str:
    """What ``evaluate`` claimed for escapes out of fold, and whether the held-out rate lies in
    its interval (not an independent test: the threshold was set on those scores)."""
    cl = (r["coverage"].get("oof_claimed") or {}).get("escapes")
    if not cl or not cl.get("n"):
        return "—"
    mark = {True: " ✓", False: " ✗", None: ""}[covers(cl, *r["line"]["escapes"])]
    return f"{cl['k']}/{cl['n']} [{100 * cl['low']:.0f}, {100 * cl['high']:.0f}]{mark}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| data set | seed | val / test (good+defective) | NG / UNSURE from | escapes (line) "
        "| overkill (line) | UNSURE (line) | overkill + UNSURE of good | novel → UNSURE "
        "(defective / good) | flips torch→fp32 / int8 | claimed escapes (test) ✓/✗ "
        "| claimed overkill (test) ✓/✗ | claimed escapes (out of fold) ✓/✗ | min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['seed']} | error: {r['error'][:90]} ||||||||||||")
            continue
        t, ln, f, c = r["thresholds"], r["line"], r["flips"], r["coverage"]

        def claim(name: str, c: dict[str, Any] = c) -> str:
            cl = c["claimed"].get(name)
            if not cl or not cl.get("n"):
                return "— (none in test)"
            mark = {True: " ✓", False: " ✗", None: ""}[c[name]]
            return f"{cl['k']}/{cl['n']} [{100 * cl['low']:.0f}, {100 * cl['high']:.0f}]{mark}"

        int8_refused = (r.get("export_int8") or {}).get("rc", 0) != 0
        flips = (
            " / ".join(
                str(f.get(f"torch_vs_{p}", "—"))
                + (" (refused by export)" if p == "int8" and int8_refused else "")
                for p in ("fp32", "int8")
            )
            + f" of {f['n']}"
        )
        nov = r.get("novelty_changed")
        novel = "no head" if not r.get("novelty_rule") else f"{nov['defective']} / {nov['good']}"
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {_held_out(r)} "
            f"| {t['unsure_high']:.3g} / {t['unsure_low']:.3g} "
            f"({r['calibration']['chosen_on']}) | {_r(ln['escapes'])} | {_r(ln['overkill'])} "
            f"| {_r(ln['unsure'])} | {_r(ln['overkill_plus_unsure_good'])} | {novel} | {flips} "
            f"| {claim('escapes')} | {claim('overkill')} | {oof_claim(r)} | {r['minutes']} |"
        )
    cand: dict[str, dict[str, list[int]]] = {}
    for r in results:
        for name, c in (r.get("candidates") or {}).items():
            agg = cand.setdefault(name, {"escapes": [0, 0], "good_flagged": [0, 0], "runs": [0, 0]})
            for key, src in (("escapes", "escapes"), ("good_flagged", "overkill_plus_unsure_good")):
                agg[key][0] += c[src][0]
                agg[key][1] += c[src][1]
            agg["runs"][0] += int(c["escapes"][0] == 0)
            agg["runs"][1] += 1
    lines += [
        "",
        "Calibration candidates on the same held-out parts (torch scores, all runs pooled):",
        "",
        "| rule | escapes | good parts NG or UNSURE | runs with 0 escapes |",
        "|---|---|---|---|",
    ]
    for name, a in cand.items():
        lines.append(
            f"| {name} | {_r(a['escapes'])} | {_r(a['good_flagged'])} | "
            f"{a['runs'][0]} of {a['runs'][1]} |"
        )
    scaled = [r for r in results if r.get("scale")]
    if scaled:
        lines += [
            "",
            "Score scales (median logit of the defect score) and AUROC: out of fold (fold "
            "models) vs the shipped model (held-out parts, stream):",
            "",
            "| data set | seed | AUROC OOF / held-out | OOF defective / good | lowest OOF defect "
            "| held-out defective / good | stream |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in scaled:
            c = r["scale"]

            def f(x: Any) -> str:
                return "—" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)

            lines.append(
                f"| {r['dataset']} | {r['seed']} | {f(c.get('oof_auroc'))} / "
                f"{f(c['held_auroc'])} | {f(c.get('oof_defective_logit'))} / "
                f"{f(c.get('oof_good_logit'))} | {f(c.get('oof_lowest_defect_logit'))} "
                f"| {f(c['held_defective_logit'])} / {f(c['held_good_logit'])} "
                f"| {f(c['stream_logit'])} |"
            )
    detailed = [r for r in results if (r.get("escapes_detail") or {}).get("escapes")]
    if detailed:
        lines += [
            "",
            "The escapes (torch scores): how far below the UNSURE band, the anomaly score over "
            "the head's threshold, and the good held-out parts flagged (NG or UNSURE) now and "
            "if either lever were moved just far enough to catch every escape:",
            "",
            "| data set | seed | escapes: logits below the band / anomaly ÷ threshold "
            "| anomaly AUROC (held-out) | good flagged now | band down to the lowest escape "
            "| novelty threshold down to the lowest escape |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in detailed:
            d = r["escapes_detail"]
            each = "; ".join(
                f"{e['logits_below_band']:.1f}"
                + (f" / {e['anomaly_over_threshold']:.2f}" if "anomaly_over_threshold" in e else "")
                for e in d["escapes"]
            )
            nov = d.get("novelty_to_catch_all")
            auroc = d.get("anomaly_auroc")
            lines.append(
                f"| {r['dataset']} | {r['seed']} | {each} "
                f"| {'—' if auroc is None else f'{auroc:.3f}'} "
                f"| {_r(d['good_flagged_now']) if 'good_flagged_now' in d else '—'} "
                f"| {_r(d['band_to_catch_all']['good_flagged'])} "
                f"| {'no head' if nov is None else _r(nov['good_flagged'])} |"
            )
    graded = [r for r in results if r.get("graded")]
    if graded:
        lines += ["", "ELPV cells graded 0.33 / 0.67 by the annotators (line verdicts, fp32):", ""]
        for r in graded:
            lines.append(
                f"- {r['dataset']} seed {r['seed']}: "
                + "; ".join(
                    f"{g}: " + ", ".join(f"{v} {n}" for v, n in c.items())
                    for g, c in r["graded"].items()
                )
            )
    return "\n".join(lines) + "\n"


def reanalyse(results_file: Path, work: Path, root: Path) -> int:
    """Recompute ``candidates`` for every finished case of a results file from its projects
    (no training: torch scores the held-out parts again), and rewrite the file and its table."""
    from defectssft import metrics as M

    data = json.loads(results_file.read_text())
    for r in data["results"]:
        if "error" in r:
            continue
        proto = protocol(r["dataset"], r["seed"], data["quick"], root)
        case = work / f"{r['dataset']}-s{r['seed']}"
        project = case / "project"
        version = dp._newest_version(project)  # noqa: SLF001
        paths = [case / "held" / dp._held_name(p) for p in proto.held]  # noqa: SLF001
        _, scores, _ = torch_scores(project / "models" / version / "model.pt", paths)
        scored = np.asarray([not p.grade for p in proto.held])
        defective = np.asarray([p.defective for p in proto.held])
        r["held_auroc"] = M.roc_auc(scores[scored], defective[scored])
        r["scale"] = scale(project, version, scores[scored], defective[scored])
        if (case / "held_scores.npz").exists():
            (case / "held_order.json").write_text(json.dumps([q.name for q in paths]))
            r["flips"] = saved_flips(case, r["thresholds"], r.get("novelty_rule"))
            r["escapes_detail"] = escapes_detail(case, r["thresholds"], r.get("novelty_rule"))
            r["held_parts"] = held_parts(case)
        r["candidates"] = candidates(
            project,
            version,
            scores[scored].astype(np.float64),
            defective[scored],
            train_scores(project, version),
        )
    results_file.write_text(json.dumps(data, indent=1, default=str))
    results_file.with_suffix(".md").write_text(table(data["results"]))
    print(table(data["results"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 steps at 64 px, fewer held parts")
    ap.add_argument(
        "--datasets", nargs="+", default=["kolektor", "elpv-mono", "neu"],
        help="kolektor, elpv-mono, elpv-poly, neu (default: kolektor elpv-mono neu)",
    )  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kolektor-only-seeds", action="store_true",
                    help="all seeds on kolektor, seed 0 only on the others")  # fmt: skip
    ap.add_argument("--root", type=Path, default=dp.DATASETS)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--name", default=None)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="a case whose project in --workdir already has a trained version is not retrained; "
        "one whose training was stopped (SIGTERM) resumes it",
    )
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
        help="more train settings for every case (e.g. input.side=160), after the protocol's",
    )  # fmt: skip
    ap.add_argument("--merge", nargs="+", type=Path, help="results files to merge into --name")
    ap.add_argument(
        "--reanalyse",
        type=Path,
        metavar="RESULTS_JSON",
        help="recompute the calibration candidates of a finished run (its --workdir must exist)",
    )
    args = ap.parse_args(argv)
    if args.reanalyse:
        return reanalyse(args.reanalyse, args.workdir, args.root)
    if args.merge:
        files = [json.loads(f.read_text()) for f in args.merge]
        merged = [r for d in files for r in d["results"]]
        stem = RESULTS / (args.name or "decisions_merged")
        payload = {
            "benchmark": "decisions",
            "merged_from": [f.name for f in args.merge],
            "quick": all(d.get("quick", False) for d in files),
            "commands": [d.get("command") for d in files],
        }
        stem.with_suffix(".json").write_text(json.dumps({**payload, "results": merged}, indent=1))
        stem.with_suffix(".md").write_text(table(merged))
        print(table(merged))
        return 0
    name = args.name or ("decisions_quick" if args.quick else "decisions")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="decisions-"))
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    stem = RESULTS / name
    for dataset in args.datasets:
        seeds = args.seeds if (dataset == "kolektor" or not args.kolektor_only_seeds) else [0]
        for seed in seeds:
            try:
                r = run_case(dataset, seed, args.quick, args.root, work, args.reuse, args.set)
            except (RuntimeError, KeyError, ValueError) as e:
                r = {"dataset": dataset, "seed": seed, "error": str(e)}
            results.append(r)
            print(table([r]).splitlines()[2], flush=True)
            save_progress(stem, "decisions", t0, results, table(results), quick=args.quick)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
