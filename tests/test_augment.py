"""Weak (CPU, albumentations) and strong (batched, kornia) augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectssft.inspection import to_model_input
from defectssft.training.augment import StrongAugment, apply_weak, weak_transform


def test_weak_view_is_reproducible_per_seed_and_keeps_shape():
    img = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    t = weak_transform()
    a, b = apply_weak(t, img, 7), apply_weak(t, img, 7)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert any(not np.array_equal(a, apply_weak(t, img, s)) for s in range(8, 16))


def test_weak_view_without_ops_is_identity():
    img = np.zeros((8, 8, 3), np.uint8)
    t = weak_transform(hflip=False, vflip=False, shift=0)
    assert apply_weak(t, img, 1) is img


def test_strong_view_shape_range_and_device_follow_input():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    y = StrongAugment()(x)
    assert y.shape == (6, 3, 32, 32) and y.dtype == torch.float32 and y.device == x.device
    assert 0.0 <= y.min().item() and y.max().item() <= 1.0


def test_strong_view_differs_per_sample():
    torch.manual_seed(0)
    one = torch.rand(1, 3, 32, 32)
    batch = one.repeat(8, 1, 1, 1)
    y = StrongAugment(n_ops=3, magnitude=1.0)(batch)
    diffs = [(y[i] - y[0]).abs().mean().item() for i in range(1, 8)]
    assert min(diffs) > 1e-4, "identical inputs got identical strong views"


def test_strong_view_is_reproducible_under_the_global_seed():
    x = torch.rand(4, 3, 32, 32)
    aug = StrongAugment()
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    assert torch.equal(a, b)


def test_strong_magnitude_out_of_range_is_refused():
    with pytest.raises(ValueError, match="magnitude"):
        StrongAugment(magnitude=2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_strong_view_runs_on_cuda():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, device="cuda")
    assert StrongAugment().cuda()(x).device.type == "cuda"


def test_to_model_input_normalises_uint8_and_float_alike():
    x8 = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = to_model_input(x8, [0.5] * 3, [0.5] * 3)
    assert torch.allclose(out, torch.ones_like(out))
    assert torch.allclose(
        to_model_input(torch.zeros(1, 3, 2, 2), [0.5] * 3, [0.25] * 3),
        torch.full((1, 3, 2, 2), -2.0),
    )
