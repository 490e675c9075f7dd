"""Anomaly scores of a version's unlabeled images, for the app's "novel" filter (no torch).

``defectssft fit-anomaly`` (and ``train``'s last step) scores the project's unlabeled images with
the fitted head and stores ``models/vNNNN/anomaly_scores.npz`` (image ids and scores, read with
``allow_pickle=False``); ``defectssft.queries`` lists them most anomalous first, so the operator
labels a new defect type from there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from defectssft.fsutil import atomic_path

SCORES_FILE = "anomaly_scores.npz"


def save_scores(model_dir: str | Path, image_ids: list[int], scores: np.ndarray) -> Path:
    path = Path(model_dir) / SCORES_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                image_ids=np.asarray(image_ids, dtype=np.int64),
                scores=np.asarray(scores, dtype=np.float32),
            )
    return path


def load_scores(model_dir: str | Path) -> dict[int, float]:
    """{image id: anomaly score}; empty when the version has none (or they are unreadable)."""
    path = Path(model_dir) / SCORES_FILE
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, scores = z["image_ids"], z["scores"]
    except (OSError, ValueError, KeyError):
        return {}
    if ids.shape != scores.shape:
        return {}
    return {int(i): float(s) for i, s in zip(ids, scores, strict=True)}
