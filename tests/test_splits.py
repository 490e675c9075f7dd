"""The stratified hold-out as a pure function (defectssft.splits)."""

from __future__ import annotations

from collections import Counter

from defectssft.splits import stratified_holdout


def free(ids):
    return [(i, None, False) for i in ids]


def test_fractions_per_class_and_one_kept_for_training():
    out = stratified_holdout([free(range(20)), free(range(100, 110))], 0.15, 0.15, min_labels=3)
    assert set(out) == set(range(20)) | set(range(100, 110))
    a = Counter(out[i] for i in range(20))
    b = Counter(out[i] for i in range(100, 110))
    assert (a["test"], a["val"], a["train"]) == (3, 3, 14)
    assert (b["test"], b["val"], b["train"]) == (2, 2, 6)  # round(10 * 0.15) = 2
    # Three images and big fractions: one still stays for training.
    small = stratified_holdout([free([1, 2, 3])], 0.45, 0.45, min_labels=0)
    assert Counter(small.values())["train"] == 1


def test_small_classes_train_only_and_the_draw_is_seeded():
    assert stratified_holdout([free([1, 2])], 0.5, 0.4, min_labels=0) == {1: "train", 2: "train"}
    rows = [free(range(30))]
    assert stratified_holdout(rows, 0.2, 0.2, seed=1) == stratified_holdout(rows, 0.2, 0.2, seed=1)
    assert stratified_holdout(rows, 0.2, 0.2, seed=1) != stratified_holdout(rows, 0.2, 0.2, seed=2)


def test_frozen_images_never_move_and_count_toward_their_split():
    rows = [(i, "test", True) for i in range(3)] + free(range(3, 20))
    out = stratified_holdout([rows], 0.15, 0.15, min_labels=3)
    assert not set(out) & {0, 1, 2}  # frozen: not returned, not moved
    counts = Counter(out.values())
    assert counts["test"] == 0  # round(20 * 0.15) = 3 are already there
    assert counts["val"] == 3 and counts["train"] == 14
    assert stratified_holdout([[(1, "train", True), (2, "val", True)]], 0.5, 0.5) == {}


def test_few_labels_are_not_held_out_by_default():
    # 29 labels: all train; 30: val and test drawn (round(30 * 0.15) = 4 each).
    out = stratified_holdout([free(range(29)), free(range(100, 130))], 0.15, 0.15)
    assert {out[i] for i in range(29)} == {"train"}
    big = Counter(out[i] for i in range(100, 130))
    assert (big["test"], big["val"], big["train"]) == (4, 4, 22)
    # The k = 5 line of the default-path suite: nothing held out at all.
    assert set(stratified_holdout([free(range(25)), free(range(50, 55))], 0.15, 0.15).values()) == {
        "train"
    }


def test_a_frozen_test_split_stays_when_the_rule_keeps_the_rest_for_training():
    # A project split under the old rule (a test image of a 5-label class) keeps it frozen;
    # the class's new labels train.
    rows = [(1, "test", True), (2, "val", True), (3, "train", True)] + free([4, 5, 6])
    assert stratified_holdout([rows], 0.15, 0.15) == {4: "train", 5: "train", 6: "train"}


def test_a_class_that_grows_past_the_rule_is_topped_up_without_moving_anything():
    # 20 labels already trained (frozen), 10 new ones: the class reaches 30 and its val/test
    # are drawn from the new ones only (no image must be kept free: it has training images).
    rows = [(i, "train", True) for i in range(20)] + free(range(20, 30))
    out = stratified_holdout([rows], 0.15, 0.15)
    assert set(out) == set(range(20, 30))
    counts = Counter(out.values())
    assert (counts["test"], counts["val"], counts["train"]) == (4, 4, 2)
