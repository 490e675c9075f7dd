"""Shared image normalisation: 16-bit scaling, colour handling, resize, decode errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from defectssft_line.preprocess import (
    ImageDecodeError,
    decode_image,
    load_for_model,
    read_image,
    resize,
    to_rgb8,
)


def test_16bit_scales_by_declared_bit_depth() -> None:
    img = np.array([[0, 4095, 65535]], dtype=np.uint16)
    full = to_rgb8(img, bit_depth=16)[..., 0]
    assert full.tolist() == [[0, 16, 255]]
    twelve = to_rgb8(img, bit_depth=12)[..., 0]
    assert twelve.tolist() == [[0, 255, 255]]  # saturates above the sensor's range
    with pytest.raises(ValueError, match="bit_depth"):
        to_rgb8(img, bit_depth=20)


def test_gray_is_replicated_and_colour_is_rgb() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_rgb8(gray)
    assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == gray).all() and (rgb[..., 2] == gray).all()
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV order
    assert to_rgb8(bgr)[0, 0].tolist() == [0, 0, 200]
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 2] = 100
    bgra[..., 3] = 7
    assert to_rgb8(bgra)[0, 0].tolist() == [100, 0, 0]


def test_resize_and_round_trip(tmp_path) -> None:
    img = (np.random.default_rng(0).random((40, 60)) * 65535).astype(np.uint16)
    path = tmp_path / "x.tif"
    cv2.imwrite(str(path), img)
    out = load_for_model(path, 16, 24, bit_depth=16)
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    assert resize(np.zeros((5, 5, 3), np.uint8), 10, 20).shape == (10, 20, 3)


def test_decode_errors() -> None:
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(b"", "a.jpg")
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_image(b"hello world", "a.jpg")
    with pytest.raises(ImageDecodeError, match="cannot read"):
        read_image("/nonexistent/file.png")
