"""Label what matters: rank unlabeled images by how much a human label would help the model.

Pure numpy, no Qt, no torch: the GUI's "next most useful" queue and any script can use it.
The score of an image is the current model's uncertainty about it (small top-2 margin or high
entropy of its class probabilities). A queue of the most uncertain images alone tends to be many
near-copies of one confusing case, so ``rank_for_labeling`` picks greedily and lowers the score of
images whose probability vectors resemble those already picked (``diversity``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

UNCERTAINTY_KINDS = ("margin", "entropy")


def uncertainty(probs: np.ndarray, kind: str = "margin") -> np.ndarray:
    """Per-row uncertainty in [0, 1] of an (N, C) probability array (1 = most uncertain).

    ``margin``: 1 - (p_top1 - p_top2). ``entropy``: entropy / log(C).
    """
    if kind not in UNCERTAINTY_KINDS:
        raise ValueError(f"unknown uncertainty {kind!r}; use {' or '.join(UNCERTAINTY_KINDS)}")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        return np.zeros((p.shape[0] if p.ndim else 0,), dtype=np.float64)
    n_classes = p.shape[1]
    if n_classes < 2:
        return np.zeros(p.shape[0], dtype=np.float64)
    if kind == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return np.clip(1.0 - (top2[:, 1] - top2[:, 0]), 0.0, 1.0)
    q = np.clip(p, 1e-12, 1.0)
    ent = -(q * np.log(q)).sum(axis=1)
    return np.clip(ent / np.log(n_classes), 0.0, 1.0)


def rank_for_labeling(
    predictions: Mapping[int, Sequence[float]],
    candidates: Iterable[int],
    k: int | None = None,
    kind: str = "margin",
    diversity: float = 0.3,
    diverse_top: int = 200,
) -> list[int]:
    """Order ``candidates`` (image ids) from most to least useful to label next.

    Images with a prediction come first, by uncertainty with a diversity penalty: each pick
    lowers the score of the remaining images by ``diversity`` times their cosine similarity to
    the closest picked probability vector. Images without a prediction follow in id order (the
    model has not seen them; any order is as good). ``k`` limits the list (None: all). Only the
    first ``diverse_top`` picks use the (quadratic) diversity step; the rest follow by uncertainty.
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    cand = list(dict.fromkeys(int(c) for c in candidates))
    scored = [c for c in cand if c in predictions and len(predictions[c]) > 0]
    unscored = sorted(c for c in cand if c not in predictions or len(predictions[c]) == 0)
    limit = len(cand) if k is None else max(0, int(k))
    picked: list[int] = []
    if scored:
        widths = {len(predictions[c]) for c in scored}
        width = max(widths)
        probs = np.zeros((len(scored), width), dtype=np.float64)
        for row, c in enumerate(scored):
            v = np.asarray(predictions[c], dtype=np.float64)
            probs[row, : v.size] = v
        base = uncertainty(probs, kind)
        order = np.lexsort((np.asarray(scored), -base))  # by uncertainty, ties by id
        n_diverse = min(limit, len(scored), max(0, diverse_top))
        # The diverse picks come from the most uncertain few; beyond them order is uncertainty.
        pool = order[: max(n_diverse * 5, n_diverse)]
        head = _greedy_diverse(
            [scored[i] for i in pool], probs[pool], base[pool], diversity, n_diverse
        )
        chosen = set(head)
        picked = head + [scored[i] for i in order if scored[i] not in chosen]
    return (picked + unscored)[:limit]


def _greedy_diverse(
    ids: list[int], probs: np.ndarray, base: np.ndarray, diversity: float, k: int
) -> list[int]:
    """Greedy pick of ``k`` rows maximising base - diversity * max cosine similarity to picks."""
    if diversity == 0.0 or k <= 1:
        # Stable: ties keep id order.
        order = np.lexsort((np.asarray(ids), -base))
        return [ids[i] for i in order[:k]]
    norms = np.linalg.norm(probs, axis=1, keepdims=True)
    unit = probs / np.where(norms > 0, norms, 1.0)
    closest = np.zeros(len(ids), dtype=np.float64)  # max similarity to any pick so far
    available = np.ones(len(ids), dtype=bool)
    id_arr = np.asarray(ids)
    out: list[int] = []
    for _ in range(k):
        score = np.where(available, base - diversity * closest, -np.inf)
        best = score.max()
        ties = np.flatnonzero(score == best)
        i = int(ties[np.argmin(id_arr[ties])])
        out.append(ids[i])
        available[i] = False
        closest = np.maximum(closest, unit @ unit[i])
    return out
