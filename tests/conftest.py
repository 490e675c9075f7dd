"""Shared test fixtures: sample paths, throw-away projects and image-file makers."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture
def project(tmp_path: Path):
    from defectssft.project import Project

    p = Project.create(tmp_path / "proj", classes=["ok", "scratch", "dent"], ok_class="ok")
    yield p
    p.close()


def write_image(path: Path, img: np.ndarray) -> Path:
    """Write ``img`` with OpenCV in the format the suffix names (16-bit kept for PNG/TIFF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok, f"could not encode {path.suffix}"
    path.write_bytes(buf.tobytes())
    return path


def noise_image(h: int = 24, w: int = 32, channels: int = 1, dtype=np.uint8, seed: int = 0):
    rng = np.random.default_rng(seed)
    hi = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, hi, size=shape, endpoint=True).astype(dtype)


@pytest.fixture
def make_image(tmp_path: Path):
    """make_image(name, h=, w=, channels=, dtype=, seed=) -> Path of a new image file."""
    counter = {"n": 0}

    def make(
        name: str,
        h: int = 24,
        w: int = 32,
        channels: int = 1,
        dtype=np.uint8,
        seed: int | None = None,
        folder: Path | None = None,
    ) -> Path:
        counter["n"] += 1
        img = noise_image(h, w, channels, dtype, seed if seed is not None else counter["n"])
        return write_image((folder or tmp_path / "files") / name, img)

    return make


@pytest.fixture(scope="module")
def still_model(tmp_path_factory) -> Path:
    """A fixed-logit ONNX model (every part scores the same) for runs of the line's CLI."""
    from tests.helpers import fixed_onnx_model

    return fixed_onnx_model(tmp_path_factory.mktemp("m") / "m.onnx", [0.0, 0.0, 0.0])


@pytest.fixture
def still_frames(tmp_path) -> str:
    """Three flat 40x40 frames as an OpenCV image-sequence camera (``f_%03d.png``)."""
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f_{i:03d}.png"), np.full((40, 40, 3), 60 * i, np.uint8))
    return str(tmp_path / "f_%03d.png")
