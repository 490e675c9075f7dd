"""Semi-supervised objectives as small pure functions: logits in, (loss, mask) out.

L = L_s + lambda_u * L_u.  Each unlabeled objective takes the logits of the weak view (the
pseudo-label source, usually from the EMA teacher, no gradient) and of the strong view (the
student) and returns the unsupervised loss and the per-sample mask of images that counted.

* ``supervised_loss``       cross-entropy on labeled images (the baseline uses only this).
* ``fixmatch_loss``         fixed confidence threshold tau (Sohn et al. 2020).
* ``freematch_loss``        self-adaptive global+per-class thresholds (Wang et al. 2023),
                            state in ``AdaptiveThresholdState``, updated by ``update_adaptive_state``.
* ``fairness_loss``         FreeMatch's self-adaptive fairness term: keeps the strong-view
                            predictions of the masked samples spread over the classes the way
                            the running estimates say they should be (weight ``ssl.fairness``).
* ``unlabeled_loss``        one step of the chosen unlabeled objective: alignment, loss, mask and
                            the state carried to the next step (``UnlabeledState``).
* ``distribution_alignment`` rescales the weak-view probabilities so their running mean matches a
                            target class distribution (ReMixMatch). On a production stream that is
                            mostly OK parts, FixMatch's pseudo-labels drift onto the majority class;
                            alignment counteracts that drift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from defectssft.training.config import SSLConfig


def supervised_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of labeled logits ``[B, C]`` against class indices ``[B]``."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def _masked_ce(
    logits_strong: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy averaged over ALL unlabeled samples (masked ones count as zero), as in FixMatch."""
    if logits_strong.numel() == 0:
        return logits_strong.sum() * 0.0
    per_sample = F.cross_entropy(logits_strong.float(), pseudo, reduction="none")
    return (per_sample * mask.float()).mean()


def fixmatch_loss(
    probs_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch: hard pseudo-label = argmax of weak-view probs, kept where its prob >= threshold.

    ``probs_weak`` [U, C] (already softmaxed, possibly aligned; treated as constant),
    ``logits_strong`` [U, C]. Returns (loss, mask [U] bool).
    """
    probs_weak = probs_weak.detach()
    conf, pseudo = probs_weak.max(dim=1)
    mask = conf >= threshold
    return _masked_ce(logits_strong, pseudo, mask), mask


@dataclass
class AdaptiveThresholdState:
    """FreeMatch's running estimates: global confidence ``tau``, class-wise mean probs ``p`` and
    the histogram ``h`` of weak-view pseudo-labels (used by the fairness term)."""

    tau: torch.Tensor  # scalar
    p: torch.Tensor  # [C]
    h: torch.Tensor | None = None  # [C]; None = uniform (checkpoints written before it existed)

    def __post_init__(self) -> None:
        if self.h is None:
            self.h = torch.full_like(self.p, 1.0 / self.p.numel())

    @classmethod
    def initial(
        cls, num_classes: int, device: torch.device | str = "cpu"
    ) -> AdaptiveThresholdState:
        # FreeMatch initialises both at 1/C: thresholds start low and rise as the model learns.
        return cls(
            tau=torch.tensor(1.0 / num_classes, device=device),
            p=torch.full((num_classes,), 1.0 / num_classes, device=device),
        )

    def thresholds(self) -> torch.Tensor:
        """Per-class thresholds: tau scaled by the max-normalised class-wise confidence."""
        return self.tau * self.p / self.p.max().clamp_min(1e-12)

    def state_dict(self) -> dict[str, torch.Tensor]:
        assert self.h is not None
        return {
            "tau": self.tau.detach().cpu(),
            "p": self.p.detach().cpu(),
            "h": self.h.detach().cpu(),
        }

    @classmethod
    def from_state_dict(
        cls, sd: dict[str, torch.Tensor], device: torch.device | str = "cpu"
    ) -> AdaptiveThresholdState:
        h = sd.get("h")
        return cls(
            tau=sd["tau"].to(device), p=sd["p"].to(device), h=None if h is None else h.to(device)
        )


def update_adaptive_state(
    state: AdaptiveThresholdState, probs_weak: torch.Tensor, momentum: float
) -> AdaptiveThresholdState:
    """New state after seeing a batch of weak-view probs (EMA of the mean max-prob, the mean
    probs and the pseudo-label histogram)."""
    probs_weak = probs_weak.detach().float()
    if probs_weak.numel() == 0:
        return state
    conf, pseudo = probs_weak.max(dim=1)
    num_classes = probs_weak.shape[1]
    hist = torch.bincount(pseudo, minlength=num_classes).float() / pseudo.numel()
    assert state.h is not None
    return AdaptiveThresholdState(
        tau=momentum * state.tau + (1 - momentum) * conf.mean(),
        p=momentum * state.p + (1 - momentum) * probs_weak.mean(dim=0),
        h=momentum * state.h + (1 - momentum) * hist,
    )


def freematch_loss(
    probs_weak: torch.Tensor, logits_strong: torch.Tensor, state: AdaptiveThresholdState
) -> tuple[torch.Tensor, torch.Tensor]:
    """FreeMatch self-adaptive thresholding: keep a sample when its confidence reaches the
    threshold of its pseudo-class, ``state.thresholds()[pseudo]``. Returns (loss, mask)."""
    probs_weak = probs_weak.detach()
    conf, pseudo = probs_weak.max(dim=1)
    mask = conf >= state.thresholds()[pseudo]
    return _masked_ce(logits_strong, pseudo, mask), mask


def _ratio_normalised(values: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
    """SumNorm(values / hist), classes with an empty histogram contributing 0."""
    scaled = values * torch.where(hist > 0, 1.0 / hist.clamp_min(1e-12), torch.zeros_like(hist))
    return scaled / scaled.sum().clamp_min(1e-12)


def fairness_loss(
    logits_strong: torch.Tensor, mask: torch.Tensor, state: AdaptiveThresholdState
) -> torch.Tensor:
    """FreeMatch's self-adaptive fairness, ``-H(SumNorm(p/h), SumNorm(p_bar/h_bar))``.

    ``p``/``h``: running mean prediction and pseudo-label histogram on unlabeled data (the state);
    ``p_bar``/``h_bar``: the same for the strong-view predictions of the masked samples of this
    batch. Minimising ``sum(target * log(mean))`` (a negative cross-entropy) pushes the batch's
    confident predictions apart instead of letting them pile onto one class. Returns 0 when no
    sample is masked in.
    """
    if not bool(mask.any()):
        return logits_strong.sum() * 0.0
    probs = logits_strong[mask].float().softmax(dim=1)
    hist = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).float() / probs.shape[0]
    assert state.h is not None
    target = _ratio_normalised(state.p.float(), state.h.float()).detach()
    mean = _ratio_normalised(probs.mean(dim=0), hist.detach())
    return (target * torch.log(mean + 1e-12)).sum()


def distribution_alignment(
    probs_weak: torch.Tensor, running_mean: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """ReMixMatch alignment: ``p * target / running_mean``, renormalised per row.

    ``running_mean`` [C] is the model's average prediction on unlabeled data (an EMA),
    ``target`` [C] the class distribution we expect there (e.g. the labeled frequencies).
    """
    aligned = probs_weak * (target / running_mean.clamp_min(1e-6))
    return aligned / aligned.sum(dim=1, keepdim=True).clamp_min(1e-12)


def update_running_mean(
    running_mean: torch.Tensor, probs_weak: torch.Tensor, momentum: float
) -> torch.Tensor:
    """EMA of the mean weak-view prediction, the denominator of distribution alignment."""
    if probs_weak.numel() == 0:
        return running_mean
    return momentum * running_mean + (1 - momentum) * probs_weak.detach().float().mean(dim=0)


def total_loss(loss_s: torch.Tensor, loss_u: torch.Tensor, lambda_u: float) -> torch.Tensor:
    """L = L_s + lambda_u * L_u."""
    return loss_s + lambda_u * loss_u


@dataclass
class UnlabeledState:
    """What the unlabeled objective carries from step to step (saved in ``last.pt``): the
    running mean prediction of distribution alignment and FreeMatch's adaptive thresholds."""

    da_mean: torch.Tensor
    adaptive: AdaptiveThresholdState

    @classmethod
    def initial(cls, num_classes: int, device: torch.device | str = "cpu") -> UnlabeledState:
        return cls(
            torch.full((num_classes,), 1.0 / num_classes, device=device),
            AdaptiveThresholdState.initial(num_classes, device),
        )


@dataclass
class UnlabeledStep:
    loss: torch.Tensor
    mask: torch.Tensor  # [U] bool: the images whose pseudo-label counted
    probs_weak: torch.Tensor  # [U, C] the (aligned) pseudo-label probabilities
    state: UnlabeledState
    diagnostics: dict[str, float]


def unlabeled_loss(
    method: str,
    logits_weak: torch.Tensor,
    logits_strong: torch.Tensor,
    state: UnlabeledState,
    ssl: SSLConfig,
    da_target: torch.Tensor,
    mean_across: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> UnlabeledStep:
    """One step of the unlabeled objective ``method`` ("fixmatch" | "freematch") with the ``ssl``
    config section: optional distribution alignment, then the loss and mask; the new state.

    ``mean_across`` averages a statistic over DDP ranks so every rank keeps the same state.
    """
    probs_weak = logits_weak.float().softmax(1).detach()
    da_mean, adaptive = state.da_mean, state.adaptive
    diagnostics: dict[str, float] = {}
    if ssl.dist_align:
        da_mean = update_running_mean(da_mean, mean_across(probs_weak), ssl.ema_momentum)
        probs_weak = distribution_alignment(probs_weak, da_mean, da_target)
    if method == "fixmatch":
        loss, mask = fixmatch_loss(probs_weak, logits_strong, ssl.threshold)
    else:
        adaptive = update_adaptive_state(adaptive, probs_weak, ssl.ema_momentum)
        adaptive = AdaptiveThresholdState(
            mean_across(adaptive.tau), mean_across(adaptive.p), mean_across(adaptive.h)
        )
        loss, mask = freematch_loss(probs_weak, logits_strong, adaptive)
        if ssl.fairness > 0:
            loss = loss + ssl.fairness * fairness_loss(logits_strong, mask, adaptive)
        diagnostics["tau"] = float(adaptive.tau)
    return UnlabeledStep(loss, mask, probs_weak, UnlabeledState(da_mean, adaptive), diagnostics)
