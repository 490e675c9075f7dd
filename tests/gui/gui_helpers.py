"""Helpers shared by the GUI tests (a module of its own so imports never hit the other conftest)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = ["ok", "scratch", "dent"]


def write_png(path: Path, seed: int, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, size=(size, size), dtype=np.uint8)
    cv2.rectangle(img, (seed % 20, 5), (seed % 20 + 10, 30), 255, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def add_fake_model(project, version: str = "v0001", probs: dict[int, list[float]] | None = None):
    """Register a model record and its predictions (no weights: enough for filters/suggestions)."""
    project.models_dir.joinpath(version).mkdir(parents=True, exist_ok=True)
    project.register_model(version, {"classes": CLASSES}, {})
    if probs is None:
        probs = {}
        for image_id in project.image_ids():
            k = image_id % 3
            p = [0.1, 0.1, 0.1]
            p[k] = 0.8
            probs[image_id] = p
    project.save_predictions(version, probs.items())
    return probs


def add_tiny_model(project, input_size: int = 32) -> str:
    """Save and register an untrained ``test_resnet`` (real weights file, random predictions)."""
    from defectssft.modeling import build_model, save_model_file

    version, folder = project.new_model_dir()
    model = build_model("test_resnet", len(CLASSES), weights="none")
    save_model_file(
        folder / "model.pt",
        model,
        {
            "model_name": "test_resnet",
            "classes": CLASSES,
            "ok_class": "ok",
            "input": {"height": input_size, "width": input_size, "bit_depth": 8},
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
            "version": version,
        },
    )
    project.register_model(version, {"classes": CLASSES}, {})
    return version
