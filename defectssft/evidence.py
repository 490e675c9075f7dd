"""Out-of-fold evidence of a model version: labeled images scored by models that never trained on
them, saved beside ``model.pt`` as ``oof.npz`` (plain arrays, read with ``allow_pickle=False``).

Training writes it when it cross-fits (few labels: every labeled image trains the shipped model,
and each also gets a score from a fold model that did not see it); calibration and the default
path's report read it as evidence alongside the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectssft.errors import DefectssftError

FILE = "oof.npz"


@dataclass(frozen=True)
class Evidence:
    """Scored labeled images: ids, class indices, probabilities [N, C] and each one's fold."""

    image_ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    folds: np.ndarray

    def __len__(self) -> int:
        return int(self.image_ids.size)


def save_oof(folder: Path, evidence: Evidence) -> Path:
    """Write ``folder/oof.npz`` atomically (a temporary file, then a rename)."""
    n = len(evidence)
    if not (evidence.labels.size == evidence.folds.size == n and evidence.probs.shape[0] == n):
        raise ValueError("out-of-fold arrays differ in length")
    path = Path(folder) / FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            image_ids=np.asarray(evidence.image_ids, np.int64),
            labels=np.asarray(evidence.labels, np.int64),
            probs=np.asarray(evidence.probs, np.float32),
            folds=np.asarray(evidence.folds, np.int64),
        )
    tmp.replace(path)
    return path


def load_oof(folder: Path) -> Evidence | None:
    """The version's out-of-fold evidence, None when it has none; one-line error if unreadable."""
    path = Path(folder) / FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            ev = Evidence(z["image_ids"], z["labels"], z["probs"], z["folds"])
    except (OSError, ValueError, KeyError) as e:
        raise DefectssftError(f"{path}: unreadable out-of-fold evidence ({e})") from None
    if not (ev.labels.size == ev.folds.size == len(ev) and ev.probs.ndim == 2):
        raise DefectssftError(f"{path}: out-of-fold arrays differ in length")
    return ev
