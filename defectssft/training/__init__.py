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


def find_run(project_root: Path, run: str | None) -> Path:
    """The run folder to resume: ``run`` by name (or path), else the newest unfinished one."""
    runs_dir = project_root / "runs"
    if run:
        candidate = Path(run) if Path(run).is_absolute() else runs_dir / run
        if not (candidate / "last.pt").is_file():
            raise DefectssftError(f"no resumable run '{run}' (expected {candidate / 'last.pt'})")
        return candidate
    unfinished = sorted(
        (
            p
            for p in runs_dir.glob("*")
            if (p / "last.pt").is_file() and not (p / "done.json").exists()
        ),
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

    from defectssft.inspection import InputSpec, ModelSpec
    from defectssft.modeling import save_model_file
    from defectssft.project import Project
    from defectssft.training import ddp
    from defectssft.training.config import merge, resolve_config, validate
    from defectssft.training.data import from_project
    from defectssft.training.loop import train
    from defectssft.training.tiles import describe_input, tiles_meta

    project = Project.open(project_path)
    info = ddp.setup((config_overrides or {}).get("train", {}).get("device", "auto"))
    run_dir: Path | None = None
    try:
        if resume:
            run_dir = find_run(project.root, resume if isinstance(resume, str) else None)
            cfg = validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
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
            result = train(
                cfg,
                data,
                run_dir,
                progress=progress_callback,
                stop_event=stop_event,
                resume=bool(resume),
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
            log.info("model %s written to %s (%s)", version, model_dir, result.status)
            handler.flush()
            shutil.copyfile(run_dir / "train.log", model_dir / "train.log")
            metrics = {f"val_{k}": v for k, v in result.metrics.items()}
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
            if not (run_dir / "last.pt").exists():
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        ddp.cleanup(info)
