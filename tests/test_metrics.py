"""Metrics on hand-made predictions, checked against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from defectssft import metrics as m

# Six good parts and four defective ones, scored by hand.
SCORES = np.array([0.05, 0.10, 0.20, 0.35, 0.60, 0.15, 0.40, 0.70, 0.80, 0.95])
DEFECT = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)


def test_confusion_matrix_and_prf():
    cm = m.confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    prf = m.per_class_prf(cm)
    assert prf["precision"].tolist() == pytest.approx([0.5, 2 / 3, 0.0])
    assert prf["recall"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert prf["f1"][1] == pytest.approx(0.8)
    assert prf["support"].tolist() == [2, 2, 1]
    assert m.accuracy(cm) == pytest.approx(0.6)


def test_confusion_matrix_rejects_bad_index():
    with pytest.raises(ValueError, match="outside 0..1"):
        m.confusion_matrix([0, 2], [0, 1], 2)


def test_escape_and_overkill_at_threshold():
    # threshold 0.5: defect 0.40 escapes (1/4), good 0.60 rejected (1/6)
    escape, overkill = m.escape_overkill(SCORES, DEFECT, 0.5)
    assert escape == pytest.approx(0.25)
    assert overkill == pytest.approx(1 / 6)
    # score == threshold is rejected
    escape, overkill = m.escape_overkill(SCORES, DEFECT, 0.40)
    assert escape == 0.0
    assert overkill == pytest.approx(1 / 6)


def test_threshold_for_zero_escape_is_lowest_defect_score():
    choice = m.threshold_for_max_escape(SCORES, DEFECT, 0.0)
    assert choice.threshold == pytest.approx(0.40)
    assert choice.escape_rate == 0.0
    assert choice.overkill_rate == pytest.approx(1 / 6)


def test_threshold_allowing_one_escape():
    # 25% of 4 defects = 1 allowed escape -> threshold at the 2nd lowest defect score
    choice = m.threshold_for_max_escape(SCORES, DEFECT, 0.25)
    assert choice.threshold == pytest.approx(0.70)
    assert choice.escape_rate == pytest.approx(0.25)
    assert choice.overkill_rate == 0.0
    # 0.5% of 4 defects -> no escape allowed
    assert m.threshold_for_max_escape(SCORES, DEFECT, 0.005).escape_rate == 0.0


def test_threshold_needs_defects_and_valid_target():
    with pytest.raises(ValueError, match="no defective parts"):
        m.threshold_for_max_escape([0.1, 0.2], [False, False], 0.01)
    with pytest.raises(ValueError, match="max_escape"):
        m.threshold_for_max_escape(SCORES, DEFECT, 1.5)


def test_roc_auc_by_pair_counting():
    # AUC = P(score_defect > score_good): count the pairs by hand
    pairs = [(d, g) for d in SCORES[DEFECT] for g in SCORES[~DEFECT]]
    expected = np.mean([1.0 if d > g else 0.5 if d == g else 0.0 for d, g in pairs])
    assert m.roc_auc(SCORES, DEFECT) == pytest.approx(expected)
    assert m.roc_auc([0.1, 0.9], [False, True]) == 1.0
    assert m.roc_auc([0.5, 0.5], [False, True]) == pytest.approx(0.5)
    assert m.roc_auc([0.1, 0.2], [True, True]) is None


def test_average_precision_by_hand():
    # ranked: 0.95 D, 0.80 D, 0.70 D, 0.60 G, 0.40 D -> AP = (1 + 1 + 1 + 4/5) / 4
    assert m.average_precision(SCORES, DEFECT) == pytest.approx((3 + 0.8) / 4)
    assert m.average_precision([0.3], [False]) is None


def test_defect_scores():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert m.defect_scores(probs, 0).tolist() == pytest.approx([0.3, 0.9])
    assert m.defect_scores(probs, None).tolist() == pytest.approx([0.3, 0.4])
    assert m.defect_scores(np.array([[0.5, 0.5, 0.0]]), None).tolist() == pytest.approx([0.5])


def test_defect_scores_keep_the_rank_of_confidently_ok_parts():
    # p(defect) 1e-9 and 1e-12: in float32 p(OK) rounds to 1, so 1 - p(OK) ties both parts at 0
    # (and with the good parts); the score summed from the other classes keeps them apart.
    probs = np.array([[1 - 1e-9, 1e-9], [1 - 1e-12, 1e-12]], dtype=np.float32)
    assert (1.0 - probs[:, 0]).tolist() == [0.0, 0.0]
    assert m.defect_scores(probs, 0).tolist() == pytest.approx([1e-9, 1e-12], rel=1e-6)
    assert m.defect_scores(probs[:, ::-1], None).tolist() == pytest.approx([1e-9, 1e-12], rel=1e-6)


def test_reports():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    rep = m.classification_report([0, 1, 1], probs, ["ok", "ng"])
    assert rep["accuracy"] == pytest.approx(2 / 3)
    assert rep["confusion_matrix"] == [[1, 0], [1, 1]]
    assert rep["per_class"]["ng"]["recall"] == pytest.approx(0.5)
    insp = m.inspection_report(SCORES, DEFECT, 0.5, 0.0)
    assert insp["escape_rate"] == pytest.approx(0.25)
    assert insp["threshold_for_max_escape"]["threshold"] == pytest.approx(0.40)


def test_mismatched_lengths_and_nan():
    with pytest.raises(ValueError, match="differ in length"):
        m.escape_overkill([0.1, 0.2], [True], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        m.escape_overkill([np.nan], [True], 0.5)


def test_wilson_interval_known_values():
    # 0 of 30: the "rule of three"-like upper bound, 11.35 % at 95 %
    low, high = m.wilson_interval(0, 30)
    assert low == 0.0 and high == pytest.approx(0.1135, abs=1e-4)
    # 5 of 50 (Wilson 1927 / Newcombe 1998 tables): 4.35 % .. 21.36 %
    low, high = m.wilson_interval(5, 50)
    assert low == pytest.approx(0.0435, abs=1e-4) and high == pytest.approx(0.2136, abs=1e-4)
    # all of n: the upper end is exactly 1
    assert m.wilson_interval(10, 10)[1] == 1.0
    # more confidence, wider interval; no data, nothing known
    assert m.wilson_interval(5, 50, 0.99)[0] < m.wilson_interval(5, 50)[0]
    assert m.wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("k, n, conf", [(3, 2, 0.95), (-1, 5, 0.95), (1, 5, 1.0), (1, 5, 0.0)])
def test_wilson_interval_rejects_bad_input(k, n, conf):
    with pytest.raises(ValueError):
        m.wilson_interval(k, n, conf)


def test_validation_and_test_macro_f1_agree_when_a_class_is_missing():
    # Three classes, class 2 absent from the split: both average F1 over all three classes.
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    labels = np.array([0, 1, 1, 1])
    val = m.classification_metrics(probs, labels, ok_index=0)
    test = m.classification_report(labels, probs, ["ok", "a", "b"])
    assert val["macro_f1"] == pytest.approx(test["macro_f1"])
    assert val["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)
    assert val["balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)  # over classes present
    assert val["accuracy"] == pytest.approx(0.75)
