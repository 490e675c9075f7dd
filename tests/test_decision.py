"""The decision contract (defectssft_line.decision): thresholds, their resolution, the verdict.

Torch-free: these run in an environment with only the line runtime installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from defectssft_line.decision import (
    ThresholdError,
    Thresholds,
    decide,
    defect_scores,
    resolve_thresholds,
    verdict,
)


def test_thresholds_must_be_ordered():
    Thresholds(0.5, 0.2, 0.8)
    for bad in [(0.5, 0.6, 0.8), (0.5, 0.2, 0.4), (1.5, 1.5, 1.5), (0.5, -0.1, 0.5)]:
        with pytest.raises(ThresholdError, match="thresholds must satisfy"):
            Thresholds(*bad)


def test_resolution_order():
    assert resolve_thresholds() == Thresholds(0.5, 0.5, 0.5)
    assert resolve_thresholds(None, 0.2).ng == 0.2  # the operating point when the model has none
    own = {"ng": 0.3, "unsure_low": 0.2, "unsure_high": 0.4}
    assert resolve_thresholds(own, 0.2) == Thresholds(0.3, 0.2, 0.4)  # the model's own wins
    # An overriding threshold drops the model's band unless a band is given too.
    assert resolve_thresholds(own, threshold=0.7) == Thresholds(0.7, 0.7, 0.7)
    assert resolve_thresholds(own, threshold=0.7, unsure_high=0.9) == Thresholds(0.7, 0.7, 0.9)
    assert resolve_thresholds(own, unsure_high=0.6) == Thresholds(0.3, 0.2, 0.6)
    assert resolve_thresholds({"ng": 0.4}) == Thresholds(0.4, 0.4, 0.4)
    with pytest.raises(ThresholdError):
        resolve_thresholds(own, threshold=0.5, unsure_low=0.7)


def test_the_operating_point_brings_its_band():
    point = {"ng": 0.3, "unsure_low": 0.1, "unsure_high": 0.6}
    assert resolve_thresholds(None, point) == Thresholds(0.3, 0.1, 0.6)
    assert resolve_thresholds({"ng": 0.4}, point) == Thresholds(0.4, 0.4, 0.4)  # model's own wins
    assert resolve_thresholds(None, point, threshold=0.5) == Thresholds(0.5, 0.5, 0.5)
    assert resolve_thresholds(None, point, unsure_high=0.9) == Thresholds(0.3, 0.1, 0.9)
    assert resolve_thresholds(None, {"ng": 0.2}) == Thresholds(0.2, 0.2, 0.2)


def test_verdict_band_edges():
    t = Thresholds(0.5, 0.3, 0.7)
    assert [verdict(s, t) for s in (0.0, 0.2999, 0.3, 0.6999, 0.7, 1.0)] == [
        "OK",
        "OK",
        "UNSURE",
        "UNSURE",
        "NG",
        "NG",
    ]
    no_band = Thresholds(0.5, 0.5, 0.5)
    assert verdict(0.4999, no_band) == "OK" and verdict(0.5, no_band) == "NG"


def test_decide_classes():
    classes, t = ["ok", "a", "b"], Thresholds(0.5, 0.5, 0.5)
    p = decide(np.array([0.9, 0.04, 0.06]), 0.1, classes, "ok", t)
    assert (p.verdict, p.cls) == ("OK", "ok")
    p = decide(np.array([0.2, 0.3, 0.5]), 0.8, classes, "ok", t)
    assert (p.verdict, p.cls, p.score) == ("NG", "b", 0.8)
    # Without an OK class: NG with the top class, UNSURE below 1 - unsure_high.
    assert decide(np.array([0.2, 0.7, 0.1]), 0.3, classes, None, t).cls == "a"
    assert decide(np.array([0.3, 0.4, 0.3]), 0.6, classes, None, t).verdict == "UNSURE"


def test_defect_scores_bad_shape():
    with pytest.raises(ValueError, match="probs must be"):
        defect_scores(np.zeros(3), 0)


def test_line_model_refuses_a_band_that_does_not_contain_the_threshold(tmp_path):
    pytest.importorskip("onnx")
    from defectssft_line.model import LineError, LineModel
    from tests.helpers import fixed_onnx_model

    path = fixed_onnx_model(tmp_path / "m.onnx", [0.0, 0.0, 0.0])  # the model's ng is 0.5
    assert LineModel.load(path, unsure_low=0.1, unsure_high=0.9).thresholds == Thresholds(
        0.5, 0.1, 0.9
    )
    with pytest.raises(LineError, match="thresholds must satisfy"):
        LineModel.load(path, unsure_low=0.6, unsure_high=0.8)
    assert LineModel.load(path, threshold=0.7, unsure_low=0.6, unsure_high=0.8).thresholds.ng == 0.7


def test_a_line_record_keeps_the_score_its_verdict_was_decided_on():
    import numpy as np

    from defectssft_line.decision import Thresholds, verdict
    from defectssft_line.output import record

    t = Thresholds(2.1e-7, 3.3e-8, 2.1e-7)
    for s in (np.float32(2.458139e-07), np.float32(1.7758073e-07), np.float32(0.123456789)):
        rec = record("a.png", verdict(float(s), t), "defect", float(s), 1.0, "v0001")
        assert np.float32(rec["score"]) == s
        assert verdict(rec["score"], t) == rec["verdict"]
