"""Augmentation: weak per-image views on the CPU (albumentations, in DataLoader workers) and the
strong RandAugment-like view batched on the training device (kornia, per-sample parameters).

Images travel as uint8 ``[B, 3, H, W]`` tensors (the shared preprocessing already made them
RGB at the model's input size); ``to_model_input`` (``defectssft.inspection``, the one
normalisation) turns a batch into normalised floats.

Why the split: weak flips/shifts are cheap per image and overlap with training in the workers;
the strong view needs a dozen colour/geometry ops per image, which as batched tensor ops cost
little on a GPU and free the CPU workers for decoding. The same code runs on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import kornia.augmentation as K
import numpy as np
import torch
from torch import nn


def weak_transform(hflip: bool = True, vflip: bool = True, shift: float = 0.0625) -> A.Compose:
    """FixMatch's weak view: flips and a small translation with reflected borders (uint8 HWC)."""
    ops: list[A.BasicTransform] = []
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if vflip:
        ops.append(A.VerticalFlip(p=0.5))
    if shift > 0:
        ops.append(
            A.Affine(translate_percent=(-shift, shift), border_mode=cv2.BORDER_REFLECT_101, p=1.0)
        )
    return A.Compose(ops)


def apply_weak(transform: A.Compose | None, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply ``transform`` with a per-sample seed, so a run (and its resume) is reproducible."""
    if transform is None or not transform.transforms:
        return image
    transform.set_random_seed(seed)
    return transform(image=image)["image"]


class StrongAugment(nn.Module):
    """RandAugment-like strong view for a uint8 or [0,1]-float batch ``[B, 3, H, W]``.

    Each op fires independently per sample with probability ``n_ops / len(ops)`` (so ``n_ops``
    ops on average), with per-sample random magnitudes up to ``magnitude`` (0..1); then cutout
    (random erasing of one rectangle of ``cutout`` area fraction) on every sample.
    Returns float in [0, 1].
    """

    def __init__(
        self, n_ops: int = 2, magnitude: float = 0.9, cutout: Sequence[float] = (0.02, 0.15)
    ) -> None:
        super().__init__()
        m = float(magnitude)
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"magnitude must be in [0, 1], got {m}")
        ops: list[nn.Module] = [
            K.RandomAffine(degrees=30 * m, p=1.0, padding_mode="reflection"),  # rotate
            K.RandomAffine(
                degrees=0,
                shear=(-17 * m, 17 * m, -17 * m, 17 * m),
                p=1.0,
                padding_mode="reflection",
            ),
            K.RandomAffine(
                degrees=0, translate=(0.3 * m, 0.3 * m), p=1.0, padding_mode="reflection"
            ),
            K.ColorJiggle(brightness=0.9 * m, p=1.0),
            K.ColorJiggle(contrast=0.9 * m, p=1.0),
            K.ColorJiggle(saturation=0.9 * m, p=1.0),
            K.RandomSharpness(sharpness=(0.0, 0.9 * m + 1e-3), p=1.0),
            K.RandomPosterize(bits=(max(1, int(8 - 4 * m)), 8), p=1.0),
            K.RandomSolarize(thresholds=0.5 * m, additions=0.0, p=1.0),
            K.RandomEqualize(p=1.0),
            K.RandomAutoContrast(p=1.0),
        ]
        prob = min(1.0, n_ops / len(ops)) if n_ops > 0 else 0.0
        for op in ops:
            op.p = prob
            op.p_batch = 1.0
        self.ops = nn.ModuleList(ops)
        self.erase = None
        if cutout and cutout[1] > 0:
            self.erase = K.RandomErasing(scale=tuple(cutout), ratio=(0.5, 2.0), value=0.5, p=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        for op in self.ops:
            x = op(x).clamp_(0.0, 1.0)
        if self.erase is not None:
            x = self.erase(x)
        return x
