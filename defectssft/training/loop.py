"""The training loop, one function read top to bottom: ``train(cfg, data, run_dir, ...)``.

setup (seeds, device, DDP) -> model + EMA teacher -> optimizer -> resume -> loaders -> loop:
  labeled batch + unlabeled batch -> strong view on the device -> pseudo-labels from the weak
  view (EMA teacher) -> L = L_s + lambda_u * L_u -> step -> EMA -> log / eval / checkpoint.

The pieces ``train`` calls sit above it in the order it calls them: ``build_learner``,
``load_checkpoint`` / ``save_checkpoint`` (mirror images), ``make_streams``, ``next_batch``,
``forward_batch``, ``compute_loss`` (the unlabeled step is ``objectives.unlabeled_loss``),
``optimizer_step``. The run log (stop flag, metrics files, RNG state) is ``training.runlog``.

The run folder holds ``last.pt`` (everything needed for an exact resume), ``best.pt`` (the
weights at the best validation score), ``metrics.jsonl`` and ``metrics.csv``. A stop request
(SIGINT/SIGTERM, ``stop_event``) saves ``last.pt`` and returns status "interrupted"; the time
budget (``train.max_time``) ends the run normally with status "time_budget".
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectssft import safeload
from defectssft.errors import DefectssftError
from defectssft.inspection import to_model_input
from defectssft.metrics import classification_metrics
from defectssft.modeling import atomic_torch_save, build_model, default_normalization, fast_layout
from defectssft.training import ddp
from defectssft.training import objectives as obj
from defectssft.training.augment import StrongAugment, weak_transform
from defectssft.training.config import Config, SSLConfig, TrainConfig, resolve_for_data
from defectssft.training.data import (
    ImageDataset,
    TrainData,
    eval_loader,
    infinite_loader,
    path_items,
)
from defectssft.training.policy import can_choose_checkpoint
from defectssft.training.runlog import (
    MetricsWriter,
    StopFlag,
    rng_state,
    seed_everything,
    set_rng_state,
)
from defectssft.training.tiles import tile_streams

log = logging.getLogger("defectssft.training")
ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    status: str  # completed | time_budget | interrupted
    step: int
    steps: int
    run_dir: Path
    weights: dict[str, torch.Tensor]  # what to ship: best or final EMA/student weights
    config: dict[str, Any] = field(default_factory=dict)  # the config as run (every auto resolved)
    metrics: dict[str, float] = field(default_factory=dict)  # validation metrics of `weights`
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    # which weights ``weights`` are and why: {"which": "final"|"best", "step": int, "why": str}
    weights_from: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- small helpers


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


def make_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on biases and norm layers (1-d parameters). ``tc`` is a resolved train
    section (``config.resolve_for_data``: no ``auto`` optimizer, no empty lr)."""
    if tc.optimizer not in ("adamw", "sgd") or tc.lr is None or tc.weight_decay is None:
        raise DefectssftError("make_optimizer needs a config resolved by config.resolve_for_data")
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": tc.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tc.lr)
    return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, nesterov=True)


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
    if hasattr(loader, "predict_pooled"):  # tiles: whole parts, pooled (training.tiles)
        return loader.predict_pooled(model, mean, std, device, dtype)
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


# --------------------------------------------------------------------------- run state


@dataclass
class Learner:
    """The networks and optimiser state a run trains."""

    model: nn.Module
    teacher: nn.Module | None  # the EMA teacher (None: train.ema_decay 0)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler

    @property
    def shipped(self) -> nn.Module:
        """What validation scores and the model file holds: the EMA teacher, else the student."""
        return self.teacher if self.teacher is not None else self.model


@dataclass
class RunProgress:
    """Where a run stands; saved in ``last.pt`` with the learner and restored on resume."""

    step: int = 0
    best_score: float = -math.inf
    best_metrics: dict[str, float] = field(default_factory=dict)
    elapsed_before: float = 0.0  # seconds of training before this process started
    running: dict[str, float] = field(default_factory=dict)  # smoothed losses for logs/progress


def build_learner(
    cfg: Config, num_classes: int, device: torch.device, autocast_dtype: torch.dtype | None
) -> tuple[Learner, list[float], list[float]]:
    """Model (same initial head on every rank), EMA teacher, optimizer, grad scaler; mean/std."""
    model_cfg, train_cfg = cfg.model, cfg.train
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    torch.manual_seed(train_cfg.seed)
    model = build_model(
        model_cfg.name,
        num_classes,
        weights=model_cfg.weights,
        drop_rate=model_cfg.drop_rate,
    ).to(device)
    fast_layout(model, device, train_cfg.layout)
    mean, std = default_normalization(model_cfg.name, model_cfg.weights)
    teacher = copy.deepcopy(model).eval() if train_cfg.ema_decay > 0 else None
    if teacher is not None:
        teacher.requires_grad_(False)
    return Learner(model, teacher, make_optimizer(model, train_cfg), scaler), mean, std


def save_checkpoint(
    path: Path,
    learner: Learner,
    unlabeled: obj.UnlabeledState,
    run: RunProgress,
    elapsed_s: float,
    rngs: list[Any],
    cfg: dict[str, Any],
    classes: list[str],
) -> None:
    """Write ``last.pt`` atomically: everything ``load_checkpoint`` needs for an exact resume."""
    atomic_torch_save(
        {
            "model": learner.model.state_dict(),
            "teacher": learner.teacher.state_dict() if learner.teacher is not None else None,
            "optimizer": learner.optimizer.state_dict(),
            "scaler": learner.scaler.state_dict(),
            "da_mean": unlabeled.da_mean.cpu(),
            "adaptive": unlabeled.adaptive.state_dict(),
            "step": run.step,
            "best_score": run.best_score,
            "best_metrics": run.best_metrics,
            "elapsed_s": elapsed_s,
            "rng": [safeload.plain_rng_state(r) for r in rngs],  # tensors: weights_only loads
            "running": run.running,
            "config": cfg,
            "classes": classes,
        },
        path,
    )


def load_checkpoint(
    path: Path, learner: Learner, classes: list[str], device: torch.device, rank: int
) -> tuple[obj.UnlabeledState, RunProgress, dict[str, Any] | None]:
    """Restore ``learner`` from ``last.pt``; (unlabeled state, progress, this rank's RNG state).

    DefectssftError when there is nothing to resume or the project's classes changed."""
    if not path.is_file():
        raise DefectssftError(f"nothing to resume: {path} not found")
    ck = safeload.load_checkpoint(path, ("classes", "model", "optimizer", "step", "rng"))
    if ck.get("classes") != classes:
        raise DefectssftError(
            f"cannot resume {path.parent.name}: the project's classes changed since it started "
            f"({ck.get('classes')} -> {classes}); start a new run"
        )
    learner.model.load_state_dict(ck["model"])
    if learner.teacher is not None and ck.get("teacher") is not None:
        learner.teacher.load_state_dict(ck["teacher"])
    learner.optimizer.load_state_dict(ck["optimizer"])
    learner.scaler.load_state_dict(ck["scaler"])
    unlabeled = obj.UnlabeledState(
        ck["da_mean"].to(device), obj.AdaptiveThresholdState.from_state_dict(ck["adaptive"], device)
    )
    run = RunProgress(
        ck["step"],
        ck["best_score"],
        ck["best_metrics"],
        ck["elapsed_s"],
        dict(ck.get("running", {})),
    )
    rng = safeload.rng_state_from_plain(ck["rng"][rank]) if rank < len(ck["rng"]) else None
    return unlabeled, run, rng


def gather_rng_states(info: ddp.DistInfo) -> list[Any]:
    """Every rank's RNG state (on every rank), for ``last.pt``."""
    if not info.enabled:
        return [rng_state()]
    states: list[Any] = [None] * info.world
    torch.distributed.all_gather_object(states, rng_state())
    return states


@dataclass
class Streams:
    labeled: Iterator[tuple[torch.Tensor, torch.Tensor]]
    unlabeled: Iterator[tuple[torch.Tensor, torch.Tensor]] | None
    val: Any | None
    unlabeled_batch: int
    unlabeled_truth: bool  # the unlabeled labels carry a hidden truth (benchmarks)


def make_streams(
    data: TrainData,
    cfg: Config,
    use_unlabeled: bool,
    start_step: int,
    info: ddp.DistInfo,
    pin: bool,
) -> Streams:
    """Infinite seeded streams positioned at ``start_step`` (exact resume), and the val loader."""
    input_cfg, augment_cfg, train_cfg = cfg.input, cfg.augment, cfg.train
    height, width = input_cfg.height, input_cfg.width
    bit_depth = input_cfg.bit_depth or data.bit_depth
    weak = weak_transform(augment_cfg.hflip, augment_cfg.vflip, augment_cfg.shift)
    workers, batch, seed = train_cfg.num_workers, train_cfg.batch_size, train_cfg.seed
    unlabeled_batch = batch * cfg.ssl.mu
    roi = data.roi  # the project's region of interest (defectssft_line.roi), None: whole image
    labeled_ds = ImageDataset(data.labeled, height, width, bit_depth, transform=weak, roi=roi)
    labeled = infinite_loader(
        labeled_ds,
        batch,
        seed,
        start_step,
        min(workers, 1) if use_unlabeled else workers,
        info.rank,
        info.world,
        pin,
        class_balanced=train_cfg.class_balanced,
    )
    unlabeled = None
    if use_unlabeled:
        items = (
            list(zip(data.unlabeled, data.unlabeled_truth, strict=True))
            if data.unlabeled_truth is not None
            else path_items(data.unlabeled)
        )
        unlabeled_ds = ImageDataset(
            items, height, width, bit_depth, transform=weak, skip_unreadable=True, roi=roi
        )
        unlabeled = infinite_loader(
            unlabeled_ds, unlabeled_batch, seed + 1, start_step, workers, info.rank, info.world, pin
        )
    val = (
        eval_loader(data.val, height, width, bit_depth, num_workers=0, roi=roi)
        if data.val
        else None
    )
    return Streams(labeled, unlabeled, val, unlabeled_batch, data.unlabeled_truth is not None)


def logit_adjustment(
    data: TrainData, train_cfg: TrainConfig, device: torch.device
) -> torch.Tensor | None:
    """``tau * log(prior)`` added to the labeled logits in the supervised loss (logit adjustment,
    Menon et al. 2021), the prior being the class frequencies the loss sees: the labeled ones, or
    uniform under class-balanced sampling (then nothing to adjust). None when off."""
    if train_cfg.logit_adjust <= 0 or train_cfg.class_balanced:
        return None
    counts = torch.tensor(data.class_counts(), dtype=torch.float32, device=device)
    prior = (counts + 1) / (counts + 1).sum()
    return train_cfg.logit_adjust * prior.log()


def alignment_target(data: TrainData, ssl_cfg: SSLConfig, device: torch.device) -> torch.Tensor:
    """The class distribution distribution alignment aims at: labeled frequencies or uniform."""
    counts = torch.tensor(data.class_counts(), dtype=torch.float32, device=device)
    if ssl_cfg.dist_align_target == "labeled":
        return (counts + 1) / (counts + 1).sum()
    return torch.full_like(counts, 1 / len(data.classes))


@dataclass
class Batch:
    """One step's images on the device: normalised labeled images, and the raw (uint8) weak
    view of the unlabeled ones with their hidden truth (benchmarks only)."""

    x_labeled: torch.Tensor
    y_labeled: torch.Tensor
    u_weak_raw: torch.Tensor | None
    u_truth: torch.Tensor | None
    size: int  # images in the step, for the throughput


def next_batch(
    streams: Streams, device: torch.device, mean: list[float], std: list[float]
) -> Batch:
    x_labeled, y_labeled = next(streams.labeled)
    x_labeled = to_model_input(x_labeled.to(device, non_blocking=True), mean, std)
    y_labeled = y_labeled.to(device, non_blocking=True)
    if streams.unlabeled is None:
        return Batch(x_labeled, y_labeled, None, None, x_labeled.shape[0])
    u_weak_raw, u_truth = next(streams.unlabeled)
    size = x_labeled.shape[0] + streams.unlabeled_batch
    u_weak_raw = u_weak_raw.to(device, non_blocking=True)
    return Batch(
        x_labeled, y_labeled, u_weak_raw, u_truth if streams.unlabeled_truth else None, size
    )


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Mixed precision on the GPU (``amp_dtype``), nothing on the CPU."""
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


@dataclass
class Logits:
    labeled: torch.Tensor
    weak: torch.Tensor | None  # unlabeled weak view, no gradient: the pseudo-label source
    strong: torch.Tensor | None  # unlabeled strong view


def forward_batch(
    net: nn.Module,
    teacher: nn.Module | None,
    batch: Batch,
    strong: StrongAugment,
    mean: list[float],
    std: list[float],
    ssl_cfg: SSLConfig,
) -> Logits:
    """All logits of a step in one batched pass (the strong view is made here, on the device);
    with ``ssl.pseudo_from`` "ema" the weak view goes through the EMA teacher instead."""
    x_labeled, u_weak_raw = batch.x_labeled, batch.u_weak_raw
    if u_weak_raw is None:
        return Logits(net(x_labeled), None, None)
    n_labeled = x_labeled.shape[0]
    u_strong = to_model_input(strong(u_weak_raw), mean, std)
    u_weak = to_model_input(u_weak_raw, mean, std)
    if ssl_cfg.pseudo_from == "ema" and teacher is not None:
        with torch.no_grad():
            logits_weak = teacher(u_weak)
        logits = net(torch.cat([x_labeled, u_strong]))
        return Logits(logits[:n_labeled], logits_weak, logits[n_labeled:])
    logits = net(torch.cat([x_labeled, u_weak, u_strong]))
    logits_weak = logits[n_labeled:].detach().chunk(2)[0]
    return Logits(logits[:n_labeled], logits_weak, logits[n_labeled + u_weak.shape[0] :])


def compute_loss(
    method: str,
    logits: Logits,
    batch: Batch,
    state: obj.UnlabeledState,
    cfg: Config,
    da_target: torch.Tensor,
    info: ddp.DistInfo,
    step: int,
    logit_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float], obj.UnlabeledState]:
    """L = L_s + lambda_u * L_u; (loss, the numbers to log, the unlabeled state for the next
    step). ``logit_bias``: added to the labeled logits in L_s (``logit_adjustment``).
    DefectssftError when the loss is not finite."""
    ssl_cfg = cfg.ssl
    labeled = logits.labeled if logit_bias is None else logits.labeled.float() + logit_bias
    loss_s = obj.supervised_loss(labeled, batch.y_labeled, cfg.train.label_smoothing)
    loss_u, mask_rate, diagnostics = torch.zeros((), device=loss_s.device), 0.0, {}
    if method != "supervised":
        u = obj.unlabeled_loss(
            method,
            logits.weak,
            logits.strong,
            state,
            ssl_cfg,
            da_target,
            lambda t: ddp.mean_tensor(info, t),
        )
        state, loss_u, diagnostics = u.state, u.loss, u.diagnostics
        mask_rate = float(u.mask.float().mean())
        if batch.u_truth is not None:
            truth = batch.u_truth.to(u.probs_weak.device)
            diagnostics.update(pseudo_label_accuracy(u.probs_weak, u.mask, truth))
    loss = obj.total_loss(loss_s, loss_u, ssl_cfg.lambda_u)
    if not torch.isfinite(loss):
        raise DefectssftError(
            f"training diverged at step {step} (loss {loss.item()}); lower train.lr"
        )
    logged = {
        "loss": loss.item(),
        "loss_s": loss_s.item(),
        "loss_u": loss_u.item(),
        "mask": mask_rate,
        **diagnostics,
    }
    return loss, logged, state


def optimizer_step(
    learner: Learner, loss: torch.Tensor, train_cfg: TrainConfig, info: ddp.DistInfo, step: int
) -> None:
    """Backward, clip, step (through the AMP scaler), then the EMA teacher update."""
    optimizer, scaler = learner.optimizer, learner.scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if train_cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(learner.model.parameters(), train_cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if learner.teacher is not None:
        ddp.average_buffers(info, learner.model)
        ema_update(learner.teacher, learner.model, ema_decay_at(step, train_cfg.ema_decay))


def smooth_into(running: dict[str, float], values: dict[str, float]) -> None:
    """Exponential smoothing (0.9) of the logged losses; a new key starts at its value."""
    for key, value in values.items():
        running[key] = value if key not in running else 0.9 * running[key] + 0.1 * value


class Clock:
    """Training time (resumed runs continue their count) and the throughput between log rows."""

    def __init__(self, elapsed_before: float, start_step: int) -> None:
        self.elapsed_before, self.start_step = elapsed_before, start_step
        self.t_start = self.t_log = time.monotonic()
        self.images = 0

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t_start

    def step_row(
        self, step: int, steps: int, max_time: float | None, lr: float, running: dict[str, float]
    ) -> dict[str, Any]:
        now = time.monotonic()
        rate = (step - self.start_step) / max(1e-9, now - self.t_start)
        eta = (steps - step) / max(rate, 1e-9)
        if max_time:
            eta = min(eta, max(0.0, max_time - self.elapsed()))
        row = {
            "event": "step",
            "step": step,
            "steps": steps,
            "lr": lr,
            **running,
            "img_s": self.images / max(1e-9, now - self.t_log),
            "elapsed_s": self.elapsed(),
            "eta_s": eta,
        }
        self.t_log, self.images = now, 0
        return row


def set_learning_rate(
    optimizer: torch.optim.Optimizer, train_cfg: TrainConfig, step: int, elapsed_s: float
) -> float:
    """Warm-up + cosine over the steps, or over the time budget when that runs out first."""
    progress = step / train_cfg.steps
    if train_cfg.max_time:
        progress = max(progress, elapsed_s / train_cfg.max_time)
    lr = train_cfg.lr * lr_factor(progress, step, train_cfg.warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


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
    resolved = resolve_for_data(cfg, has_ok_class=data.ok_index() is not None)
    config = Config.from_dict(resolved)  # attribute access: config.train.steps
    ssl_cfg, augment_cfg, train_cfg = config.ssl, config.augment, config.train
    info = dist_info or ddp.DistInfo()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    method = ssl_cfg.method
    data.check(need_unlabeled=method != "supervised")
    use_unlabeled = method != "supervised" and bool(data.unlabeled)
    method = method if use_unlabeled else "supervised"

    # ---- setup: threads, seeds, device; model, EMA teacher, optimizer; SSL state
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    seed_everything(train_cfg.seed + info.rank)
    device = pick_device(train_cfg.device, info)
    autocast_dtype = amp_dtype(train_cfg.amp, device)
    learner, mean, std = build_learner(config, len(data.classes), device, autocast_dtype)
    strong = StrongAugment(*strong_settings(augment_cfg)).to(device)
    da_target = alignment_target(data, ssl_cfg, device)
    logit_bias = logit_adjustment(data, train_cfg, device)
    may_choose, choose_why = checkpoint_rule(data, train_cfg)
    unlabeled_state = obj.UnlabeledState.initial(len(data.classes), device)

    # ---- resume: everything needed to continue exactly where last.pt stopped
    last_path, run, restored_rng = run_dir / "last.pt", RunProgress(), None
    if resume:
        unlabeled_state, run, restored_rng = load_checkpoint(
            last_path, learner, data.classes, device, info.rank
        )
        log.info("resumed from %s at step %d", last_path, run.step)
    net = ddp.wrap(learner.model, info, device)
    mil = None  # tiles: which tiles of a defective part carry its label (training.tiles)
    if config.tiles.enabled:
        streams, mil = tile_streams(
            data, config, use_unlabeled, run.step, info, device.type == "cuda"
        )
    else:
        streams = make_streams(data, config, use_unlabeled, run.step, info, device.type == "cuda")
    if restored_rng is not None:  # after the loaders: their creation draws from the global RNG
        set_rng_state(restored_rng)

    writer = MetricsWriter(run_dir, info.is_main, train_cfg.tensorboard)
    stopper = StopFlag(stop_event, handle_signals)
    steps, max_time, status = train_cfg.steps, train_cfg.max_time, "completed"
    clock = Clock(run.elapsed_before, run.step)
    bar = open_progress_bar(progress_bar and info.is_main, steps, run.step, method)

    def emit(row: dict[str, Any]) -> None:
        if info.is_main:
            writer.write(row)
            if progress is not None:
                progress(row)

    def evaluate() -> dict[str, float]:
        probs, labels = predict(learner.shipped, streams.val, mean, std, device, autocast_dtype)
        return classification_metrics(probs, labels, data.ok_index())

    def validate() -> None:
        metrics = evaluate()
        score = select_score(metrics, train_cfg.select_metric)
        is_best = may_choose and not math.isnan(score) and score > run.best_score
        if is_best:
            run.best_score, run.best_metrics = score, {**metrics, "step": run.step}
            save_best(run_dir / "best.pt", learner, run, info)
        emit({"event": "eval", "step": run.step, "best": is_best, **metrics})

    def checkpoint() -> None:
        rngs = gather_rng_states(info)
        if info.is_main:
            save_checkpoint(
                last_path,
                learner,
                unlabeled_state,
                run,
                clock.elapsed(),
                rngs,
                resolved,
                data.classes,
            )
            emit({"event": "checkpoint", "step": run.step, "path": str(last_path)})

    learner.model.train()
    try:
        while run.step < steps:
            # -- stop requests and the time budget (agreed across ranks)
            if ddp.any_true(info, stopper.is_set(), device):
                status = "interrupted"
                break
            if max_time is not None and ddp.any_true(info, clock.elapsed() >= max_time, device):
                status = "time_budget"
                break
            lr = set_learning_rate(learner.optimizer, train_cfg, run.step, clock.elapsed())
            if mil is not None and mil.due(run.step):
                mil.refresh(run.step, learner.shipped, mean, std, device, autocast_dtype)

            # -- one batch: labeled, and unlabeled weak view (strong view made here, batched)
            batch = next_batch(streams, device, mean, std)
            with autocast(device, autocast_dtype):
                logits = forward_batch(net, learner.teacher, batch, strong, mean, std, ssl_cfg)
            loss, logged, unlabeled_state = compute_loss(
                method,
                logits,
                batch,
                unlabeled_state,
                config,
                da_target,
                info,
                run.step,
                logit_bias,
            )
            optimizer_step(learner, loss, train_cfg, info, run.step)
            run.step += 1

            # -- running metrics, logs, eval, checkpoints
            clock.images += batch.size
            smooth_into(run.running, logged)
            advance_bar(bar, run.running)
            if run.step % train_cfg.log_every == 0 or run.step == steps:
                emit(clock.step_row(run.step, steps, max_time, lr, run.running))
            if streams.val is not None and (
                run.step % train_cfg.eval_every == 0 or run.step == steps
            ):
                validate()
            if run.step % train_cfg.checkpoint_every == 0 and run.step < steps:
                checkpoint()
    except BaseException:
        writer.close()
        raise
    finally:
        stopper.restore()
        if bar is not None:
            bar.close()

    checkpoint()
    weights, metrics = learner.shipped.state_dict(), {}
    shipped = "final (EMA)" if learner.teacher is not None else "final"
    weights_from = {"which": "final", "step": run.step, "why": choose_why}
    if streams.val is not None and status != "interrupted":
        final_metrics = evaluate()
        metrics = final_metrics
        if may_choose:
            weights, metrics = choose_weights(
                run_dir / "best.pt", weights, final_metrics, run, train_cfg, info
            )
            if metrics is not final_metrics:
                step = int(run.best_metrics.get("step", run.step))
                weights_from = {"which": "best", "step": step, "why": choose_why}
            else:
                weights_from["why"] = choose_why + "; the final weights scored best"
    weights_from["label"] = shipped if weights_from["which"] == "final" else "best validated"
    weights = {k: v.detach().cpu() for k, v in weights.items()}
    weights, metrics, weights_from = ddp.broadcast_object(
        info, (weights, metrics, weights_from)
    )  # rank 0's choice everywhere
    done = {"event": "done", "status": status, "step": run.step, "steps": steps}
    emit({**done, "elapsed_s": clock.elapsed(), "weights": weights_from["which"], **metrics})
    writer.close()
    return TrainResult(
        status,
        run.step,
        steps,
        run_dir,
        weights,
        resolved,
        metrics,
        mean,
        std,
        clock.elapsed(),
        weights_from,
    )


def checkpoint_rule(data: TrainData, train_cfg: TrainConfig) -> tuple[bool, str]:
    """(whether validation may choose the shipped weights, why): ``train.checkpoint`` final or
    best, else (auto) ``policy.can_choose_checkpoint`` on the run's labeled and val images."""
    if not data.val:
        return False, "no validation split"
    if train_cfg.checkpoint == "final":
        return False, "train.checkpoint=final"
    if train_cfg.checkpoint == "best":
        return True, "train.checkpoint=best"
    return can_choose_checkpoint(
        [lab for _, lab in data.labeled], [lab for _, lab in data.val], len(data.classes)
    )


def strong_settings(augment_cfg: Any) -> tuple[int, float, tuple[float, float]]:
    """StrongAugment's (ops, magnitude, cutout area range) from the augment section."""
    return augment_cfg.strong_ops, augment_cfg.strong_magnitude, (0.02, augment_cfg.cutout_max)


def advance_bar(bar: Any, running: dict[str, float]) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()}, refresh=False)


def open_progress_bar(enabled: bool, steps: int, start_step: int, method: str) -> Any:
    """A tqdm bar on the terminal (``defectssft train --progress``), else None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, initial=start_step, desc=method, unit="step", dynamic_ncols=True)


def save_best(path: Path, learner: Learner, run: RunProgress, info: ddp.DistInfo) -> None:
    """``best.pt``: the shipped weights at the best validation score so far (rank 0)."""
    if info.is_main:
        atomic_torch_save(
            {
                "weights": learner.shipped.state_dict(),
                "step": run.step,
                "metrics": run.best_metrics,
            },
            path,
        )


def choose_weights(
    best_path: Path,
    final_weights: dict[str, torch.Tensor],
    final_metrics: dict[str, float],
    run: RunProgress,
    train_cfg: TrainConfig,
    info: ddp.DistInfo,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The weights to ship: the best validated ones when they score at least the final ones."""
    if (
        run.best_metrics
        and run.best_score >= select_score(final_metrics, train_cfg.select_metric)
        and info.is_main
    ):
        best = safeload.load_checkpoint(best_path, ("weights",))["weights"]
        return best, {k: v for k, v in run.best_metrics.items() if k != "step"}
    return final_weights, final_metrics
