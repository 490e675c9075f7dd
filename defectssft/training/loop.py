"""The training loop, one function read top to bottom: ``train(cfg, data, run_dir, ...)``.

setup (seeds, device, DDP) -> model + EMA teacher -> optimizer -> resume -> loaders -> loop:
  labeled batch + unlabeled batch -> strong view on the device -> pseudo-labels from the weak
  view (EMA teacher) -> L = L_s + lambda_u * L_u -> step -> EMA -> log / eval / checkpoint.

The run folder holds ``last.pt`` (everything needed for an exact resume), ``best.pt`` (the
weights at the best validation score), ``metrics.jsonl`` and ``metrics.csv``. A stop request
(SIGINT/SIGTERM, ``stop_event``) saves ``last.pt`` and returns status "interrupted"; the time
budget (``train.max_time``) ends the run normally with status "time_budget".
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectssft.errors import DefectssftError
from defectssft.metrics import defect_scores, roc_auc
from defectssft.modeling import atomic_torch_save, build_model, default_normalization
from defectssft.safeload import load_checkpoint, plain_rng_state, rng_state_from_plain
from defectssft.training import ddp
from defectssft.training import objectives as obj
from defectssft.training.augment import StrongAugment, to_model_input, weak_transform
from defectssft.training.config import resolve_for_data
from defectssft.training.data import (
    ImageDataset,
    TrainData,
    eval_loader,
    infinite_loader,
    path_items,
)

log = logging.getLogger("defectssft.training")
ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    status: str  # completed | time_budget | interrupted
    step: int
    steps: int
    run_dir: Path
    weights: dict[str, torch.Tensor]  # what to ship: best (else final) EMA/student weights
    config: dict[str, Any] = field(default_factory=dict)  # the config as run (every auto resolved)
    metrics: dict[str, float] = field(default_factory=dict)  # validation metrics of `weights`
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0


# --------------------------------------------------------------------------- small helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str, info: ddp.DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and info.enabled:
        name = f"cuda:{info.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DefectssftError(
            "train.device is cuda but no CUDA GPU is available (use train.device=cpu)"
        )
    return torch.device(name)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; no autocast on the CPU (it is slower there)."""
    if setting == "off" or device.type != "cuda":
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def lr_factor(progress: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` then cosine decay to 0 at progress 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def make_optimizer(model: nn.Module, tc: dict[str, Any]) -> torch.optim.Optimizer:
    """No weight decay on biases and norm layers (1-d parameters). ``tc`` is a resolved train
    section (``config.resolve_for_data``: no ``auto`` optimizer, no empty lr)."""
    if tc["optimizer"] not in ("adamw", "sgd") or tc["lr"] is None or tc["weight_decay"] is None:
        raise DefectssftError("make_optimizer needs a config resolved by config.resolve_for_data")
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": tc["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if tc["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=tc["lr"])
    return torch.optim.SGD(groups, lr=tc["lr"], momentum=tc["momentum"], nesterov=True)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student (float params and buffers; ints copied)."""
    t_state = teacher.state_dict()
    for k, v in student.state_dict().items():
        if v.dtype.is_floating_point:
            t_state[k].lerp_(v.detach(), 1.0 - decay)
        else:
            t_state[k].copy_(v)


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up of the EMA so the teacher follows quickly at first (timm/tf style)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def pseudo_label_accuracy(
    probs_weak: torch.Tensor, mask: torch.Tensor, truth: torch.Tensor
) -> dict[str, float]:
    """Benchmark diagnostic: share of right pseudo-labels over all unlabeled images (``pl_acc``)
    and over those the mask kept (``pl_acc_mask``, left out when the mask kept none)."""
    right = (probs_weak.argmax(1) == truth).float()
    out = {"pl_acc": float(right.mean())}
    if bool(mask.any()):
        out["pl_acc_mask"] = float(right[mask].mean())
    return out


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, ok_index: int | None
) -> dict[str, float]:
    """accuracy, balanced accuracy, macro-F1, NLL and (with an OK class) defect AUROC."""
    pred = probs.argmax(1)
    num_classes = probs.shape[1]
    recalls, f1s = [], []
    for c in range(num_classes):
        tp = float(((pred == c) & (labels == c)).sum())
        n_true, n_pred = float((labels == c).sum()), float((pred == c).sum())
        if n_true > 0:
            recalls.append(tp / n_true)
            f1s.append(2 * tp / (n_true + n_pred))
    out = {
        "accuracy": float((pred == labels).mean()),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
        "nll": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1)).mean()),
    }
    if ok_index is not None:
        scores = defect_scores(probs, ok_index)
        auroc = roc_auc(scores, labels != ok_index) if np.isfinite(scores).all() else None
        out["auroc"] = float("nan") if auroc is None else auroc
    return out


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Any,
    mean: list[float],
    std: list[float],
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels over a loader of (uint8 images, labels)."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for x, y in loader:
        x = to_model_input(x.to(device, non_blocking=True), mean, std)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            logits = model(x)
        probs.append(logits.float().softmax(1).cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def select_score(metrics: dict[str, float], how: str) -> float:
    if how == "auto":
        how = "auroc" if not math.isnan(metrics.get("auroc", float("nan"))) else "balanced_accuracy"
    return metrics.get(how, float("nan"))


class StopFlag:
    """Set by SIGINT/SIGTERM (main thread only) or by an external ``threading.Event``."""

    def __init__(self, stop_event: Any | None, handle_signals: bool) -> None:
        self.event = stop_event
        self.signalled: str | None = None
        self._previous: dict[int, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signalled = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint and stopping", self.signalled)

    def is_set(self) -> bool:
        return self.signalled is not None or bool(self.event is not None and self.event.is_set())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsWriter:
    """Appends one row per log step to metrics.jsonl and metrics.csv (rank 0 only). With
    ``tensorboard`` the numbers of step and eval rows also go to TensorBoard scalars
    (``train/...``, ``val/...``) under ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.jsonl, self.csv, self.enabled = (
            run_dir / "metrics.jsonl",
            run_dir / "metrics.csv",
            enabled,
        )
        self.tb: Any = (
            open_tensorboard(run_dir / "tensorboard") if enabled and tensorboard else None
        )

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if row.get("event") == "step":
            new = not self.csv.exists()
            with self.csv.open("a", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(row)
        if self.tb is not None and row.get("event") in ("step", "eval"):
            prefix = "train" if row["event"] == "step" else "val"
            for key, value in row.items():
                if key in ("event", "step", "steps", "best") or isinstance(value, bool):
                    continue
                if isinstance(value, int | float) and math.isfinite(value):
                    self.tb.add_scalar(f"{prefix}/{key}", value, row["step"])
            self.tb.flush()  # an interrupted night still shows its curves

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def open_tensorboard(log_dir: Path) -> Any:
    """A TensorBoard SummaryWriter, or a one-line error when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise DefectssftError(
            "train.tensorboard is on but the tensorboard package is not installed: "
            "pip install 'defectssft[tensorboard]' (or set train.tensorboard=false)"
        ) from e
    return SummaryWriter(log_dir=str(log_dir))


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- the loop


def train(
    cfg: dict[str, Any],
    data: TrainData,
    run_dir: str | Path,
    *,
    progress: ProgressFn | None = None,
    stop_event: Any | None = None,
    resume: bool = False,
    handle_signals: bool = True,
    progress_bar: bool = False,
    dist_info: ddp.DistInfo | None = None,
) -> TrainResult:
    """Train on ``data`` with the validated config ``cfg``; see the module docstring."""
    cfg = resolve_for_data(cfg, has_ok_class=data.ok_index() is not None)
    mc, ic, sc, ac, tc = cfg["model"], cfg["input"], cfg["ssl"], cfg["augment"], cfg["train"]
    info = dist_info or ddp.DistInfo()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    method = sc["method"]
    use_unlabeled = method != "supervised"
    data.check(need_unlabeled=use_unlabeled)
    if use_unlabeled and not data.unlabeled:
        method, use_unlabeled = "supervised", False
    num_classes = len(data.classes)
    height, width = ic["height"], ic["width"]
    bit_depth = ic["bit_depth"] or data.bit_depth

    # ---- setup: threads, seeds, device
    if tc["threads"]:
        torch.set_num_threads(tc["threads"])
    seed_everything(tc["seed"] + info.rank)
    device = pick_device(tc["device"], info)
    autocast_dtype = amp_dtype(tc["amp"], device)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)

    # ---- model, EMA teacher, optimizer
    torch.manual_seed(tc["seed"])  # same initial head on every rank
    model = build_model(
        mc["name"], num_classes, weights=mc["weights"], drop_rate=mc["drop_rate"]
    ).to(device)
    mean, std = default_normalization(mc["name"], mc["weights"])
    teacher = copy.deepcopy(model).eval() if tc["ema_decay"] > 0 else None
    if teacher is not None:
        teacher.requires_grad_(False)
    optimizer = make_optimizer(model, tc)
    strong = StrongAugment(ac["strong_ops"], ac["strong_magnitude"], (0.02, ac["cutout_max"])).to(
        device
    )
    counts = torch.tensor(data.class_counts(), dtype=torch.float32, device=device)
    da_target = (
        (counts + 1) / (counts + 1).sum()
        if sc["dist_align_target"] == "labeled"
        else torch.full_like(counts, 1 / num_classes)
    )
    da_mean = torch.full((num_classes,), 1.0 / num_classes, device=device)
    adaptive = obj.AdaptiveThresholdState.initial(num_classes, device)

    # ---- resume: everything needed to continue exactly where last.pt stopped
    start_step, best_score, best_metrics, elapsed_before = 0, -math.inf, {}, 0.0
    restored_rng, running_before = None, {}
    last_path = run_dir / "last.pt"
    if resume:
        if not last_path.is_file():
            raise DefectssftError(f"nothing to resume: {last_path} not found")
        ck = load_checkpoint(last_path, ("classes", "model", "optimizer", "step", "rng"))
        if ck.get("classes") != data.classes:
            raise DefectssftError(
                f"cannot resume {run_dir.name}: the project's classes changed since it started "
                f"({ck.get('classes')} -> {data.classes}); start a new run"
            )
        model.load_state_dict(ck["model"])
        if teacher is not None and ck.get("teacher") is not None:
            teacher.load_state_dict(ck["teacher"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        da_mean = ck["da_mean"].to(device)
        adaptive = obj.AdaptiveThresholdState.from_state_dict(ck["adaptive"], device)
        start_step, best_score, best_metrics = ck["step"], ck["best_score"], ck["best_metrics"]
        elapsed_before = ck["elapsed_s"]
        running_before = dict(ck.get("running", {}))
        restored_rng = (
            rng_state_from_plain(ck["rng"][info.rank]) if info.rank < len(ck["rng"]) else None
        )
        log.info("resumed from %s at step %d", last_path, start_step)
    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    # ---- data: infinite seeded streams (positioned at start_step for an exact resume)
    weak = weak_transform(ac["hflip"], ac["vflip"], ac["shift"])
    pin = device.type == "cuda"
    nw = tc["num_workers"]
    bs_l = tc["batch_size"]
    bs_u = bs_l * sc["mu"]
    labeled_ds = ImageDataset(data.labeled, height, width, bit_depth, transform=weak)
    labeled_it = infinite_loader(
        labeled_ds,
        bs_l,
        tc["seed"],
        start_step,
        min(nw, 1) if use_unlabeled else nw,
        info.rank,
        info.world,
        pin,
    )
    unlabeled_it = None
    if use_unlabeled:
        unl_items = (
            list(zip(data.unlabeled, data.unlabeled_truth, strict=True))
            if data.unlabeled_truth is not None
            else path_items(data.unlabeled)
        )
        unl_ds = ImageDataset(
            unl_items, height, width, bit_depth, transform=weak, skip_unreadable=True
        )
        unlabeled_it = infinite_loader(
            unl_ds, bs_u, tc["seed"] + 1, start_step, nw, info.rank, info.world, pin
        )
    val_loader = (
        eval_loader(data.val, height, width, bit_depth, num_workers=0) if data.val else None
    )
    ok_index = data.ok_index()
    if restored_rng is not None:  # after the loaders: their creation draws from the global RNG
        set_rng_state(restored_rng)

    writer = MetricsWriter(run_dir, info.is_main, tc["tensorboard"])
    stopper = StopFlag(stop_event, handle_signals)
    max_time = tc["max_time"]
    steps = tc["steps"]
    t_start = time.monotonic()
    status = "completed"
    step = start_step
    running: dict[str, float] = running_before  # smoothed losses shown in logs/progress
    bar = None
    if progress_bar and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start_step, desc=method, unit="step", dynamic_ncols=True)

    def emit(row: dict[str, Any]) -> None:
        if not info.is_main:
            return
        writer.write(row)
        if progress is not None:
            progress(row)

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - t_start

    def evaluate() -> dict[str, float]:
        net = teacher if teacher is not None else model
        probs, labels = predict(net, val_loader, mean, std, device, autocast_dtype)
        return classification_metrics(probs, labels, ok_index)

    def save_checkpoint(at_step: int) -> None:
        rngs = [rng_state()]
        if info.enabled:
            rngs = [None] * info.world
            torch.distributed.all_gather_object(rngs, rng_state())
        if not info.is_main:
            return
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else None,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "da_mean": da_mean.cpu(),
                "adaptive": adaptive.state_dict(),
                "step": at_step,
                "best_score": best_score,
                "best_metrics": best_metrics,
                "elapsed_s": elapsed(),
                "rng": [plain_rng_state(r) for r in rngs],
                "running": running,
                "config": cfg,
                "classes": data.classes,
            },
            last_path,
        )
        emit({"event": "checkpoint", "step": at_step, "path": str(last_path)})

    def save_best(at_step: int, metrics: dict[str, float]) -> None:
        if info.is_main:
            net = teacher if teacher is not None else model
            atomic_torch_save(
                {"weights": net.state_dict(), "step": at_step, "metrics": metrics},
                run_dir / "best.pt",
            )

    model.train()
    t_log, n_img = time.monotonic(), 0
    try:
        while step < steps:
            # -- stop requests and the time budget (agreed across ranks)
            if ddp.any_true(info, stopper.is_set(), device):
                status = "interrupted"
                break
            if max_time is not None and ddp.any_true(info, elapsed() >= max_time, device):
                status = "time_budget"
                break
            progress_frac = step / steps
            if max_time:
                progress_frac = max(progress_frac, elapsed() / max_time)
            lr = tc["lr"] * lr_factor(progress_frac, step, tc["warmup_steps"])
            for group in optimizer.param_groups:
                group["lr"] = lr

            # -- one batch: labeled, and unlabeled weak view (strong view made here, batched)
            x_l, y_l = next(labeled_it)
            x_l = to_model_input(x_l.to(device, non_blocking=True), mean, std)
            y_l = y_l.to(device, non_blocking=True)
            n_l = x_l.shape[0]
            with (
                torch.autocast(device.type, dtype=autocast_dtype)
                if autocast_dtype
                else nullcontext()
            ):
                if use_unlabeled:
                    u_weak_raw, u_truth = next(unlabeled_it)
                    u_weak_raw = u_weak_raw.to(device, non_blocking=True)
                    u_strong = to_model_input(strong(u_weak_raw), mean, std)
                    u_weak = to_model_input(u_weak_raw, mean, std)
                    if sc["pseudo_from"] == "ema" and teacher is not None:
                        with torch.no_grad():
                            logits_weak = teacher(u_weak)  # pseudo-labels from the EMA teacher
                        logits = train_model(torch.cat([x_l, u_strong]))
                        logits_l, logits_s = logits[:n_l], logits[n_l:]
                    else:
                        logits = train_model(torch.cat([x_l, u_weak, u_strong]))
                        logits_l = logits[:n_l]
                        logits_weak, logits_s = (
                            logits[n_l:].detach().chunk(2)[0],
                            logits[n_l + u_weak.shape[0] :],
                        )
                else:
                    logits_l = train_model(x_l)
            loss_s = obj.supervised_loss(logits_l, y_l, tc["label_smoothing"])
            loss_u = torch.zeros((), device=device)
            mask_rate = 0.0
            diag: dict[str, float] = {}
            if use_unlabeled:
                probs_weak = logits_weak.float().softmax(1).detach()
                if sc["dist_align"]:
                    da_mean = obj.update_running_mean(
                        da_mean, ddp.mean_tensor(info, probs_weak), sc["ema_momentum"]
                    )
                    probs_weak = obj.distribution_alignment(probs_weak, da_mean, da_target)
                if method == "fixmatch":
                    loss_u, mask = obj.fixmatch_loss(probs_weak, logits_s, sc["threshold"])
                else:
                    adaptive = obj.update_adaptive_state(adaptive, probs_weak, sc["ema_momentum"])
                    if info.enabled:  # identical thresholds on every rank
                        adaptive = obj.AdaptiveThresholdState(
                            ddp.mean_tensor(info, adaptive.tau),
                            ddp.mean_tensor(info, adaptive.p),
                            ddp.mean_tensor(info, adaptive.h),
                        )
                    loss_u, mask = obj.freematch_loss(probs_weak, logits_s, adaptive)
                    if sc["fairness"] > 0:
                        loss_u = loss_u + sc["fairness"] * obj.fairness_loss(
                            logits_s, mask, adaptive
                        )
                mask_rate = float(mask.float().mean())
                if method == "freematch":
                    diag["tau"] = float(adaptive.tau)
                if data.unlabeled_truth is not None:  # benchmarks: how right are the pseudo-labels?
                    diag.update(pseudo_label_accuracy(probs_weak, mask, u_truth.to(device)))
            loss = obj.total_loss(loss_s, loss_u, sc["lambda_u"])
            if not torch.isfinite(loss):
                raise DefectssftError(
                    f"training diverged at step {step} (loss {loss.item()}); lower train.lr"
                )

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc["grad_clip"] > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), tc["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            if teacher is not None:
                ddp.average_buffers(info, model)
                ema_update(teacher, model, ema_decay_at(step, tc["ema_decay"]))
            step += 1

            # -- running metrics, logs, eval, checkpoints
            n_img += n_l + (bs_u if use_unlabeled else 0)
            for k, v in (
                ("loss", loss.item()),
                ("loss_s", loss_s.item()),
                ("loss_u", loss_u.item()),
                ("mask", mask_rate),
                *diag.items(),
            ):
                running[k] = v if k not in running else 0.9 * running[k] + 0.1 * v
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()}, refresh=False)
            if step % tc["log_every"] == 0 or step == steps:
                now = time.monotonic()
                rate = (step - start_step) / max(1e-9, now - t_start)
                eta = (steps - step) / max(rate, 1e-9)
                if max_time:
                    eta = min(eta, max(0.0, max_time - elapsed()))
                emit(
                    {
                        "event": "step",
                        "step": step,
                        "steps": steps,
                        "lr": lr,
                        **running,
                        "img_s": n_img / max(1e-9, now - t_log),
                        "elapsed_s": elapsed(),
                        "eta_s": eta,
                    }
                )
                t_log, n_img = now, 0
            if val_loader is not None and (step % tc["eval_every"] == 0 or step == steps):
                metrics = evaluate()
                score = select_score(metrics, tc["select_metric"])
                is_best = not math.isnan(score) and score > best_score
                if is_best:
                    best_score, best_metrics = score, {**metrics, "step": step}
                    save_best(step, best_metrics)
                emit({"event": "eval", "step": step, "best": is_best, **metrics})
            if step % tc["checkpoint_every"] == 0 and step < steps:
                save_checkpoint(step)
    except BaseException:
        writer.close()
        raise
    finally:
        stopper.restore()
        if bar is not None:
            bar.close()

    save_checkpoint(step)
    final_net = teacher if teacher is not None else model
    weights, metrics = final_net.state_dict(), {}
    if val_loader is not None and status != "interrupted":
        metrics = evaluate()
        if (
            best_metrics
            and best_score >= select_score(metrics, tc["select_metric"])
            and info.is_main
        ):
            weights = load_checkpoint(run_dir / "best.pt", ("weights",))["weights"]
            metrics = {k: v for k, v in best_metrics.items() if k != "step"}
    weights = {k: v.detach().cpu() for k, v in weights.items()}
    weights, metrics = ddp.broadcast_object(info, (weights, metrics))  # rank 0's choice everywhere
    emit(
        {
            "event": "done",
            "status": status,
            "step": step,
            "steps": steps,
            "elapsed_s": elapsed(),
            **metrics,
        }
    )
    writer.close()
    return TrainResult(
        status=status,
        step=step,
        steps=steps,
        run_dir=run_dir,
        weights=weights,
        config=cfg,
        metrics=metrics,
        mean=mean,
        std=std,
        elapsed_s=elapsed(),
    )
