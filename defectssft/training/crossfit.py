"""Cross-fitting: validation evidence for a run whose labels are too few to hold out.

K fold models each train without one stratified fold of the labeled images (fewer steps than
the main run: ``evidence.fold_steps`` of ``train.steps``) and score that fold; together they give
every labeled image a probability from a model that never saw it (out-of-fold, OOF). With
``evidence.guard`` the supervised-only baseline is cross-fitted on the same folds too (its steps
are several times cheaper than semi-supervised ones), and the method whose OOF evidence is
better trains the shipped model on every label (``policy.guard_choice``).

A fold is a normal training run in ``RUN/folds/<method>-<j>of<K>/`` (``last.pt``, metrics), so
stopping, resuming and the time budget behave as for any run: a stop inside a fold keeps its
checkpoint and ``--resume`` continues that fold; a finished fold leaves ``fold.npz`` (its
images' probabilities) and is not trained again; ``RUN/crossfit.json`` holds the outcome once
every fold is done.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from defectssft.evidence import Evidence
from defectssft.metrics import classification_metrics
from defectssft.modeling import build_model, fast_layout
from defectssft.training import ddp
from defectssft.training.data import TrainData, eval_loader
from defectssft.training.loop import pick_device, predict, select_score, train
from defectssft.training.policy import fold_assignment, guard_choice

log = logging.getLogger("defectssft.training")

OUTCOME = "crossfit.json"
FOLD_FILE = "fold.npz"


@dataclass
class CrossFit:
    """What cross-fitting found: the method the main run trains with, and the evidence."""

    folds: int
    fold_steps: int
    method: str  # the ssl.method the shipped model trains with (the guard may pick supervised)
    why: str  # the guard's reason, or why there was no comparison
    assignment: list[int]
    probs: dict[str, list[list[float]]]  # method -> OOF probabilities [N, C]
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> OOF metrics
    seconds: float = 0.0

    def evidence(self, labeled: list[tuple[str, int]], ids: list[int]) -> Evidence:
        """The shipped method's OOF evidence in the ``defectssft.evidence`` contract."""
        return Evidence(
            image_ids=np.asarray(ids or range(len(labeled)), np.int64),
            labels=np.asarray([lab for _, lab in labeled], np.int64),
            probs=np.asarray(self.probs[self.method], np.float32),
            folds=np.asarray(self.assignment, np.int64),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "folds": self.folds,
            "fold_steps": self.fold_steps,
            "method": self.method,
            "why": self.why,
            "assignment": self.assignment,
            "probs": self.probs,
            "summary": self.summary,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CrossFit:
        return cls(**d)


def oof_summary(probs: np.ndarray, labels: np.ndarray, ok_index: int | None) -> dict[str, Any]:
    """OOF numbers ``train`` prints and stores: balanced accuracy, NLL, with an OK class the
    AUROC and, at the 0.5 defect-score threshold, escapes and overkill as counts."""
    m = classification_metrics(probs, labels, ok_index)
    out: dict[str, Any] = {
        "n": int(len(labels)),
        "classes": int(probs.shape[1]),
        "balanced_accuracy": m["balanced_accuracy"],
        "accuracy": m["accuracy"],
        "nll": m["nll"],
    }
    if ok_index is not None:
        from defectssft_line.decision import defect_scores

        scores = defect_scores(probs, ok_index)
        bad = labels != ok_index
        out["auroc"] = None if math.isnan(m.get("auroc", math.nan)) else m["auroc"]
        out["escapes"] = {"x": int((scores[bad] < 0.5).sum()), "n": int(bad.sum())}
        out["overkill"] = {"x": int((scores[~bad] >= 0.5).sum()), "n": int((~bad).sum())}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def fold_config(cfg: dict[str, Any], method: str, steps: int, max_time: float | None) -> dict:
    """A fold run's config: the main config at ``steps`` steps (warm-up scaled alike), ``method``,
    no cross-fitting of its own, the fold's share of the time budget."""
    out = copy.deepcopy(cfg)
    main_steps = max(1, int(cfg["train"]["steps"]))
    out["train"]["steps"] = steps
    out["train"]["warmup_steps"] = int(round(cfg["train"]["warmup_steps"] * steps / main_steps))
    out["train"]["max_time"] = max_time
    out["train"]["checkpoint"] = "final"
    out["ssl"]["method"] = method
    out["evidence"]["cross_fit"] = "off"
    return out


def fold_steps_of(cfg: dict[str, Any]) -> int:
    return max(1, int(round(cfg["train"]["steps"] * cfg["evidence"]["fold_steps"])))


def arms_of(cfg: dict[str, Any]) -> list[str]:
    """The methods cross-fitted: the configured one, and supervised-only for the guard."""
    method = cfg["ssl"]["method"]
    if cfg["evidence"]["guard"] and method != "supervised":
        return [method, "supervised"]
    return [method]


def run_cross_fit(
    cfg: dict[str, Any],
    data: TrainData,
    run_dir: Path,
    folds: int,
    *,
    resume: bool,
    progress: Callable[[dict[str, Any]], None] | None = None,
    stop_event: Any | None = None,
    handle_signals: bool = True,
    dist_info: ddp.DistInfo | None = None,
    max_time: float | None = None,
) -> CrossFit | None:
    """Train the fold models (resuming a stopped one) and gather the OOF evidence; None when a
    stop request interrupted a fold (its checkpoint is kept). ``max_time``: the folds' budget."""
    outcome = run_dir / OUTCOME
    if resume and outcome.is_file():
        return CrossFit.from_json(json.loads(outcome.read_text()))
    info = dist_info or ddp.DistInfo()
    labels = [lab for _, lab in data.labeled]
    seed = int(cfg["train"]["seed"])
    assignment = fold_assignment(labels, folds, seed)
    steps = fold_steps_of(cfg)
    arms = arms_of(cfg)
    runs = [(arm, j) for arm in arms for j in range(folds)]
    per_run_time = None if max_time is None else max(1.0, max_time / len(runs))
    probs = {arm: np.zeros((len(labels), len(data.classes)), np.float32) for arm in arms}
    seconds = 0.0
    for n, (arm, j) in enumerate(runs, 1):
        name = f"{arm}-{j + 1}of{folds}"
        fold_dir = run_dir / "folds" / name
        held = [i for i, f in enumerate(assignment) if f == j]
        done = fold_dir / FOLD_FILE
        if done.is_file():
            with np.load(done, allow_pickle=False) as z:
                probs[arm][z["index"]] = z["probs"]
                seconds += float(z["seconds"])
            continue
        fold_data = replace(
            data,
            labeled=[x for i, x in enumerate(data.labeled) if assignment[i] != j],
            val=[],
            test=[],
            labeled_ids=[],
        )
        phase = f"fold {j + 1}/{folds} ({arm}, run {n} of {len(runs)})"
        log.info("cross-fitting %s: %d images held out, %d steps", phase, len(held), steps)

        def fold_progress(row: dict[str, Any], phase: str = phase) -> None:
            if progress is not None:
                progress({**row, "event": "fold", "fold_event": row.get("event"), "phase": phase})

        again = resume and (fold_dir / "last.pt").is_file()
        result = train(
            fold_config(cfg, arm, steps, per_run_time),
            fold_data,
            fold_dir,
            progress=fold_progress,
            stop_event=stop_event,
            resume=again,
            handle_signals=handle_signals,
            dist_info=info,
        )
        if result.status == "interrupted":
            log.warning("stopped during cross-fitting %s at step %d", phase, result.step)
            return None
        fold_probs = _score(result, data, held)
        probs[arm][held] = fold_probs
        seconds += result.elapsed_s
        if info.is_main:
            tmp = done.with_name(done.name + ".tmp")
            with open(tmp, "wb") as f:
                np.savez(f, index=np.asarray(held, np.int64), probs=fold_probs, seconds=seconds)
            tmp.replace(done)
    ok = data.ok_index()
    y = np.asarray(labels, np.int64)
    summary = {arm: oof_summary(probs[arm], y, ok) for arm in arms}
    method, why = arms[0], "no supervised comparison (evidence.guard off or supervised already)"
    if len(arms) == 2:
        how = cfg["train"]["select_metric"]
        ma = classification_metrics(probs[arms[0]], y, ok)
        mb = classification_metrics(probs[arms[1]], y, ok)
        a, b = select_score(ma, how), select_score(mb, how)
        metric = how
        if how == "auto":
            metric = "balanced_accuracy" if math.isnan(ma.get("auroc", math.nan)) else "auroc"
        if math.isnan(a) or math.isnan(b):
            why = f"no comparison: out-of-fold {metric} undefined"
        else:
            label = "AUROC" if metric == "auroc" else metric.replace("_", " ")
            choice, why = guard_choice(a, b, metric=label, method=arms[0])
            method = arms[0] if choice == "method" else "supervised"
    cf = CrossFit(
        folds,
        steps,
        method,
        why,
        assignment,
        {k: v.tolist() for k, v in probs.items()},
        summary,
        round(seconds, 1),
    )
    if info.is_main:
        tmp = outcome.with_name(outcome.name + ".tmp")
        tmp.write_text(json.dumps(cf.to_json()))
        tmp.replace(outcome)
    ddp.barrier(info)
    return cf


def _score(result: Any, data: TrainData, held: list[int]) -> np.ndarray:
    """Probabilities of the fold model's weights on its held-out labeled images."""
    cfg = result.config
    model = build_model(cfg["model"]["name"], len(data.classes), weights="none")
    model.load_state_dict(result.weights)
    items = [data.labeled[i] for i in held]
    bit_depth = cfg["input"]["bit_depth"] or data.bit_depth
    loader = eval_loader(items, cfg["input"]["height"], cfg["input"]["width"], bit_depth)
    device = pick_device(cfg["train"]["device"], ddp.DistInfo())
    model = fast_layout(model.to(device), device, cfg["train"].get("layout", "auto"))
    probs, _ = predict(model, loader, result.mean, result.std, device)
    return probs.astype(np.float32)
