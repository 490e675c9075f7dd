"""The stratified hold-out: which labeled images go to the val and test splits (pure, no I/O).

``Project.assign_splits`` reads the labeled images per class, calls ``stratified_holdout`` and
freezes what it returns: once an image has a split it never moves, so test metrics stay
comparable across retrains.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# One labeled image: (image id, its split or None, whether that split is frozen).
Labeled = tuple[int, str | None, bool]


def stratified_holdout(
    classes: Sequence[Sequence[Labeled]],
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
) -> dict[int, str]:
    """The split ("train" | "val" | "test") of every not-yet-frozen image, class by class.

    ``classes`` holds each class's labeled images in a stable order (image id). Per class, test
    and val are topped up to ``round(total * fraction)`` images, counting the ones already
    frozen there, always keeping one free image for training; classes with fewer than 3 labeled
    images keep them all for training. The draw is a shuffle seeded by ``seed``.
    """
    rng = random.Random(seed)
    out: dict[int, str] = {}
    for rows in classes:
        free = [image_id for image_id, _, frozen in rows if not frozen]
        if not free:
            continue
        total = len(rows)
        rng.shuffle(free)
        if total >= 3:
            for split, fraction in (("test", test_fraction), ("val", val_fraction)):
                have = sum(1 for _, s, frozen in rows if frozen and s == split)
                need = max(0, round(total * fraction) - have)
                need = min(need, max(0, len(free) - 1))  # keep one for training
                take, free = free[:need], free[need:]
                out.update(dict.fromkeys(take, split))
        out.update(dict.fromkeys(free, "train"))
    return out
