"""Semi-supervised fine-tuning of a project: ``train_project(project_path, ...) -> version``.

The GUI, the demo and ``defectssft train`` all call ``train_project``. A run lives in
``PROJECT/runs/<run>/`` (last.pt for resume, best.pt, metrics, train.log); when it finishes (all
steps, or the time budget) it becomes a model version ``PROJECT/models/vNNNN/`` holding
``model.pt``, ``config.yaml``, ``metrics.jsonl`` and ``train.log``, registered in the project.
An interrupted run (SIGINT/SIGTERM/stop_event) keeps its checkpoint and returns None.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defectssft.errors import DefectssftError

log = logging.getLogger("defectssft.training")

__all__ = ["train_project", "find_run"]


def _run_name(method: str) -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{method}"


def _has_checkpoint(run_dir: Path) -> bool:
    """A run folder with something to resume: the main run's or a cross-fitting fold's
    checkpoint, or finished folds."""
    return (run_dir / "last.pt").is_file() or any((run_dir / "folds").glob("*/last.pt"))


def find_run(project_root: Path, run: str | None) -> Path:
    """The run folder to resume: ``run`` by name (or path), else the newest unfinished one."""
    runs_dir = project_root / "runs"
    if run:
        candidate = Path(run) if Path(run).is_absolute() else runs_dir / run
        if not _has_checkpoint(candidate):
            raise DefectssftError(f"no resumable run '{run}' (expected {candidate / 'last.pt'})")
        return candidate
    unfinished = sorted(
        (p for p in runs_dir.glob("*") if _has_checkpoint(p) and not (p / "done.json").exists()),
        key=lambda p: p.name,
    )
    if not unfinished:
        raise DefectssftError(f"no unfinished run to resume in {runs_dir}")
    return unfinished[-1]


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("defectssft")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def _input_size(project: Any, cfg: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(``cfg`` with an empty ``input.height`` / ``input.width`` filled from the project's
    images, where the size came from). Both empty: ``defectssft.inputsize`` proposes about
    ``input.side`` squared pixels at the images' median aspect ratio; one given: the other
    follows that ratio. Values given are kept."""
    from defectssft.inputsize import MULTIPLE, image_sizes, propose_input_size, shrink_note

    inp = cfg["input"]
    if inp["height"] is not None and inp["width"] is not None:
        return cfg, "set in the config"
    if (cfg.get("tiles") or {}).get("enabled"):  # a tile is square, the grid follows the part
        side = inp["side"]
        h, w = inp["height"] or side, inp["width"] or side
        return {**cfg, "input": {**inp, "height": h, "width": w}}, "tiles of input.side px"
    sizes = image_sizes(project)
    ratios = sorted(w / h for w, h in sizes if w > 0 and h > 0)
    aspect = ratios[len(ratios) // 2] if ratios else 1.0

    def snap(x: float) -> int:
        return min(4096, max(MULTIPLE, int(round(x / MULTIPLE)) * MULTIPLE))

    if inp["height"] is not None:
        h, w = inp["height"], snap(inp["height"] * aspect)
    elif inp["width"] is not None:
        h, w = snap(inp["width"] / aspect), inp["width"]
    else:
        h, w = propose_input_size(sizes, inp["side"])
    out = {**cfg, "input": {**inp, "height": h, "width": w}}
    why = f"from the shape of {len(sizes)} images, median width/height {aspect:.2f}"
    if inp["height"] is None and inp["width"] is None:
        why += f", about {inp['side']}^2 px (input.side)"
    note = shrink_note(sizes, h, w)
    if note:
        why += f"; {note}"
    log.info("input size %d x %d px %s", h, w, why)
    return out, why


def _split_decisions(
    project: Any, data: Any, cfg: dict[str, Any], input_from: str
) -> dict[str, Any]:
    """The run's decisions so far: how the labels were split and the input size."""
    from defectssft.splits import MIN_HOLDOUT_LABELS
    from defectssft.training.summary import label_split

    labels = label_split(
        data,
        int(project.get_setting("split.min_labels", MIN_HOLDOUT_LABELS)),
        float(project.get_setting("split.val_fraction", 0.15)),
        float(project.get_setting("split.test_fraction", 0.15)),
    )
    return {
        "labels": labels,
        "input": {
            "height": cfg["input"]["height"],
            "width": cfg["input"]["width"],
            "from": input_from,
        },
    }


def _cross_fit_decision(folds: int, why: str, crossfit: Any, cfg: dict[str, Any]) -> dict:
    if crossfit is None:
        return {"folds": 0, "why": why}
    return {
        "folds": folds,
        "fold_steps": crossfit.fold_steps,
        "why": why,
        "arms": list(crossfit.summary),
        "evidence": crossfit.summary,
        "seconds": crossfit.seconds,
    }


def train_project(
    project_path: str | Path,
    config_overrides: dict[str, Any] | None = None,
    progress_callback: Callable[[dict[str, Any]], None] | None = None,
    stop_event: Any | None = None,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    resume: bool | str = False,
    max_time: str | float | None = None,
    progress_bar: bool = False,
    handle_signals: bool = True,
) -> str | None:
    """Train a model on the project's data; returns the new model version, or None if stopped.

    Config precedence: defaults < preset < config_file < config_overrides < sets < max_time.
    ``resume=True`` continues the newest unfinished run, ``resume="<run name>"`` that run (its
    saved config is reused; only ``max_time`` may change).
    """
    import yaml

    from defectssft.evidence import save_oof
    from defectssft.inspection import InputSpec, ModelSpec
    from defectssft.modeling import save_model_file
    from defectssft.project import Project
    from defectssft.training import ddp
    from defectssft.training.config import merge, resolve_config, validate
    from defectssft.training.crossfit import arms_of, fold_steps_of, run_cross_fit
    from defectssft.training.data import from_project
    from defectssft.training.loop import train
    from defectssft.training.policy import cross_fit_folds
    from defectssft.training.summary import describe
    from defectssft.training.tiles import describe_input, tiles_meta

    project = Project.open(project_path)
    info = ddp.setup((config_overrides or {}).get("train", {}).get("device", "auto"))
    run_dir: Path | None = None
    try:
        if resume:
            run_dir = find_run(project.root, resume if isinstance(resume, str) else None)
            cfg = validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
            input_from = "the resumed run's config"
            if preset or config_file or config_overrides or sets:
                log.warning(
                    "resuming %s with its saved config; other settings are ignored", run_dir.name
                )
            if max_time is not None:
                cfg = validate(merge(cfg, {"train": {"max_time": max_time}}))
        else:
            cfg = resolve_config(preset, config_file, config_overrides, sets)
            if max_time is not None:
                cfg = validate(merge(cfg, {"train": {"max_time": max_time}}))
            cfg, input_from = _input_size(project, cfg)
            name = ddp.broadcast_object(
                info, _run_name(cfg["ssl"]["method"]) if info.is_main else None
            )
            run_dir = project.root / "runs" / name
            if info.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            ddp.barrier(info)
        data = from_project(project)
        if info.is_main:  # what the model will see: ROI, tile grid (defectssft.tiling)
            log.info("input: %s", describe_input(cfg, data, project))
        handler = _attach_log_file(run_dir / "train.log") if info.is_main else None
        try:
            log.info(
                "run %s: %d labeled, %d unlabeled, %d val images, classes %s",
                run_dir.name,
                len(data.labeled),
                len(data.unlabeled),
                len(data.val),
                data.classes,
            )
            decisions = _split_decisions(project, data, cfg, input_from)
            folds, why = cross_fit_folds(
                cfg["evidence"]["cross_fit"],
                cfg["evidence"]["folds"],
                [lab for _, lab in data.labeled],
                [lab for _, lab in data.val],
                len(data.classes),
            )
            crossfit, main_cfg = None, cfg
            if folds:
                budget = cfg["train"]["max_time"]
                fold_total = len(arms_of(cfg)) * folds * fold_steps_of(cfg)
                share = fold_total / (fold_total + cfg["train"]["steps"])
                log.info("cross-fitting: %d folds, because %s", folds, why)
                crossfit = run_cross_fit(
                    cfg,
                    data,
                    run_dir,
                    folds,
                    resume=bool(resume),
                    progress=progress_callback,
                    stop_event=stop_event,
                    handle_signals=handle_signals,
                    dist_info=info,
                    max_time=None if budget is None else budget * share,
                )
                if crossfit is None:
                    log.warning(
                        "stopped while cross-fitting; resume with: defectssft train %s --resume %s",
                        project.root,
                        run_dir.name,
                    )
                    return None
                main_cfg = validate(
                    merge(
                        cfg,
                        {
                            "ssl": {"method": crossfit.method},
                            "train": {
                                "max_time": None
                                if budget is None
                                else max(1.0, budget - crossfit.seconds)
                            },
                        },
                    )
                )
                log.info("cross-fitting done: the shipped model trains with %s", crossfit.method)
            decisions["cross_fit"] = _cross_fit_decision(folds, why, crossfit, cfg)
            result = train(
                main_cfg,
                data,
                run_dir,
                progress=progress_callback,
                stop_event=stop_event,
                resume=bool(resume) and (run_dir / "last.pt").is_file(),
                handle_signals=handle_signals,
                progress_bar=progress_bar,
                dist_info=info,
            )
            if result.status == "interrupted":
                log.warning(
                    "stopped at step %d/%d; resume with: defectssft train %s --resume %s",
                    result.step,
                    result.steps,
                    project.root,
                    run_dir.name,
                )
                return None
            if not info.is_main:  # rank 0 writes the model version; the others learn its name
                return ddp.broadcast_object(info, None)
            version, model_dir = project.new_model_dir()
            cfg = result.config  # as run: the auto recipe resolved for this project's data
            spec = ModelSpec(
                model_name=cfg["model"]["name"],
                classes=list(data.classes),
                ok_class=data.ok_class,
                input=InputSpec(
                    cfg["input"]["height"],
                    cfg["input"]["width"],
                    cfg["input"]["bit_depth"] or data.bit_depth,
                    data.roi,
                    tiles_meta(cfg),
                ),
                mean=tuple(result.mean),
                std=tuple(result.std),
                data_hash=data.data_hash,
                version=version,
            )
            meta = {
                **spec.to_meta(),
                "config": cfg,
                "run": run_dir.name,
                "status": result.status,
                "steps": result.step,
            }
            save_model_file(model_dir / "model.pt", result.weights, meta)
            (model_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            for name in ("metrics.jsonl", "metrics.csv"):
                if (run_dir / name).is_file():
                    shutil.copyfile(run_dir / name, model_dir / name)
            metrics: dict[str, Any] = {f"val_{k}": v for k, v in result.metrics.items()}
            decisions["weights"] = result.weights_from
            if crossfit is not None:
                save_oof(model_dir, crossfit.evidence(data.labeled, data.labeled_ids))
                decisions["guard"] = {
                    "method": crossfit.method,
                    "configured": cfg["ssl"]["method"],
                    "why": crossfit.why,
                }
                ev = crossfit.summary[crossfit.method]
                decisions["evidence"] = {"source": f"out of fold, {crossfit.method}", **ev}
            elif result.metrics:
                ev = {
                    k: result.metrics[k]
                    for k in ("balanced_accuracy", "auroc", "nll")
                    if k in result.metrics
                }
                decisions["evidence"] = {"source": "validation split", "n": len(data.val), **ev}
            metrics["training"] = decisions
            if handler is not None:  # into train.log; `defectssft train` prints them itself
                for line in describe(decisions):
                    handler.emit(
                        log.makeRecord(log.name, logging.INFO, __file__, 0, line, (), None)
                    )
            log.info("model %s written to %s (%s)", version, model_dir, result.status)
            handler.flush()
            shutil.copyfile(run_dir / "train.log", model_dir / "train.log")
            project.register_model(
                version, {k: v for k, v in meta.items() if k != "config"}, metrics
            )
            (run_dir / "done.json").write_text(f'{{"version": "{version}"}}\n')
            return ddp.broadcast_object(info, version)
        finally:
            if handler is not None:
                logging.getLogger("defectssft").removeHandler(handler)
                handler.close()
    except BaseException:
        # A new run that failed before its first checkpoint (bad data, bad config) leaves nothing.
        if not resume and info.is_main and run_dir is not None:
            if not _has_checkpoint(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        ddp.cleanup(info)
