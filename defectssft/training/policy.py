"""The default path's rules for few labels, as small pure functions (what ``train`` decides).

* ``can_choose_checkpoint``: a validation split may pick the weights that ship only when it
  holds ``VAL_MIN_PER_CLASS`` images of every class the run trains on; a handful of images
  ranks checkpoints by noise (the first evaluation that gets them all right wins), so below
  that the final (EMA) weights ship.
* ``cross_fit_folds``: how many fold models cross-fitting trains (0: none). ``auto`` cross-fits
  when some class with training labels has no validation image, i.e. when the split rule
  (``defectssft.splits``) kept a class whole for training and no hold-out can speak for it.
* ``fold_assignment``: stratified folds of the labeled images (each class dealt round the
  folds after a seeded shuffle), so every fold model keeps some of every class with 2+ labels.
* ``guard_choice``: the supervised guard: which method's out-of-fold evidence is better.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

VAL_MIN_PER_CLASS = 10  # validation images of every class before validation may pick weights
GUARD_MARGIN = 0.02  # supervised must beat the method by this much out of fold to replace it


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def can_choose_checkpoint(
    train_labels: Sequence[int], val_labels: Sequence[int], num_classes: int
) -> tuple[bool, str]:
    """(whether the val split may choose the shipped weights, why) by the rule above."""
    trained = [c for c, n in enumerate(class_counts(train_labels, num_classes)) if n]
    val = class_counts(val_labels, num_classes)
    if not val_labels:
        return False, "no validation split"
    short = [c for c in trained if val[c] < VAL_MIN_PER_CLASS]
    if short:
        return False, (
            f"the validation split has fewer than {VAL_MIN_PER_CLASS} images of "
            f"{len(short)} of {len(trained)} classes ({min(val[c] for c in short)} the fewest)"
        )
    return True, f"the validation split has at least {VAL_MIN_PER_CLASS} images of every class"


def cross_fit_folds(
    setting: str | int,
    auto_folds: int,
    train_labels: Sequence[int],
    val_labels: Sequence[int],
    num_classes: int,
) -> tuple[int, str]:
    """(number of folds, 0 for none; why) for ``evidence.cross_fit`` = auto | off | K."""
    n = len(train_labels)
    if setting == "off":
        return 0, "evidence.cross_fit is off"
    if n < 2:
        return 0, "fewer than 2 labeled training images"
    if setting != "auto":
        k = min(int(setting), n)
        return k, f"evidence.cross_fit={setting}"
    counts, val = class_counts(train_labels, num_classes), class_counts(val_labels, num_classes)
    whole = [c for c in range(num_classes) if counts[c] and not val[c]]
    if not whole:
        return 0, "every class has validation images"
    return min(auto_folds, n), (
        f"{len(whole)} of {sum(1 for c in counts if c)} classes have no validation images "
        "(too few labels to hold out)"
    )


def fold_assignment(labels: Sequence[int], folds: int, seed: int) -> list[int]:
    """The fold (0..folds-1) of each labeled image, stratified by class, seeded."""
    out = [0] * len(labels)
    rng = random.Random(f"folds-{seed}")
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(int(c), []).append(i)
    offset = 0
    for c in sorted(by_class):
        idx = by_class[c]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            out[i] = (offset + j) % folds
        offset += len(idx)  # the next class starts where this one stopped: folds stay even
    return out


def guard_choice(
    method_score: float,
    supervised_score: float,
    margin: float = GUARD_MARGIN,
    metric: str = "balanced accuracy",
    method: str = "the method",
) -> tuple[str, str]:
    """("method" | "supervised", why) from the two arms' out-of-fold score (higher is better):
    supervised-only replaces the method only when it wins by more than ``margin``."""
    if supervised_score > method_score + margin:
        return "supervised", (
            f"supervised-only beat {method} out of fold: {metric} {supervised_score:.3f} vs "
            f"{method_score:.3f}"
        )
    return "method", (
        f"out of fold {metric} {method_score:.3f} vs supervised-only {supervised_score:.3f}; "
        f"supervised must win by more than {margin} to replace it"
    )
