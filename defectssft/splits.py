"""The stratified hold-out: which labeled images go to the val and test splits (pure, no I/O).

``Project.assign_splits`` reads the labeled images per class, calls ``stratified_holdout`` and
freezes what it returns: once an image has a split it never moves, so test metrics stay
comparable across retrains.

The default rule for few labels: a class is held out from only once it has ``MIN_HOLDOUT_LABELS``
labeled images. Below that, 15 % of a handful of labels is one or two images: too few to measure
anything, and each one is a large share of what the model can learn the class from. Such a class
keeps every label for training, and training gets its evidence by cross-fitting instead
(``defectssft.training.crossfit``: every labeled image scored by a fold model that did not train
on it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# One labeled image: (image id, its split or None, whether that split is frozen).
Labeled = tuple[int, str | None, bool]

# A class is held out from (val and test drawn at their fractions) only from this many labels on:
# at 15 % each, 30 labels give 4-5 test and 4-5 validation images of the class.
MIN_HOLDOUT_LABELS = 30


def stratified_holdout(
    classes: Sequence[Sequence[Labeled]],
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
    min_labels: int = MIN_HOLDOUT_LABELS,
) -> dict[int, str]:
    """The split ("train" | "val" | "test") of every not-yet-frozen image, class by class.

    ``classes`` holds each class's labeled images in a stable order (image id). Per class with at
    least ``min_labels`` labeled images (and never fewer than 3), test and val are topped up to
    ``round(total * fraction)`` images, counting the ones already frozen there, keeping one
    free image for training when the class has none in training yet; smaller classes keep their
    free images for training (images frozen in val/test stay there). The draw is a shuffle
    seeded by ``seed``.
    """
    rng = random.Random(seed)
    out: dict[int, str] = {}
    for rows in classes:
        free = [image_id for image_id, _, frozen in rows if not frozen]
        if not free:
            continue
        total = len(rows)
        rng.shuffle(free)
        if total >= max(3, min_labels):
            has_train = any(frozen and s == "train" for _, s, frozen in rows)
            keep = 0 if has_train else 1
            for split, fraction in (("test", test_fraction), ("val", val_fraction)):
                have = sum(1 for _, s, frozen in rows if frozen and s == split)
                need = max(0, round(total * fraction) - have)
                need = min(need, max(0, len(free) - keep))
                take, free = free[:need], free[need:]
                out.update(dict.fromkeys(take, split))
        out.update(dict.fromkeys(free, "train"))
    return out
