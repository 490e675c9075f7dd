"""Calibration: a margin below the lowest evidence defect in logit space, a real UNSURE band sized
to the review rate on the stream, honest fallbacks, and what `evaluate` stores and prints."""

from __future__ import annotations

import numpy as np
import pytest

from defectssft import calibration as C
from defectssft import metrics as M
from defectssft.evidence import Evidence, save_oof
from defectssft_line.decision import verdict
from tests.helpers import CLASSES, add_model, make_project

RNG = np.random.default_rng(0)


def _val(defects, goods):
    scores = np.r_[defects, goods]
    return C.Source("val", scores, np.r_[np.ones(len(defects)), np.zeros(len(goods))])


def test_the_threshold_keeps_a_logit_margin_below_the_lowest_defect():
    val = _val([0.13149966, 0.6, 0.9], [0.01, 0.02, 0.05])
    point = C.calibrate([val], review_rate=0.0, margin_logit=1.0)
    assert point.anchor == pytest.approx(0.13149966)
    assert C.logit(point.anchor) - C.logit(point.threshold) == pytest.approx(1.0)
    # the defect it was set on, and the same defect after a torch -> ONNX wobble, stay NG
    for wobble in (0.0, -1e-5, -1e-3):
        assert verdict(0.13149966 + wobble, point.thresholds) == "NG"
    assert point.chosen_on == "val" and point.evidence == {"val_defective": 3, "val_good": 3}
    assert point.unsure_low == point.unsure_high == point.threshold  # review rate 0: no band


def test_the_unsure_band_holds_the_review_rate_of_the_stream():
    stream = C.Source("stream", RNG.beta(1, 30, 1000))  # mostly good parts, low scores
    val = _val([0.5, 0.8], [0.01, 0.02])
    point = C.calibrate([val, stream], review_rate=0.02, margin_logit=1.0)
    assert point.unsure_high == point.threshold > point.unsure_low
    assert point.predicted["stream_review_rate"] == pytest.approx(0.02, abs=0.002)
    s = stream.scores
    assert np.mean((s >= point.unsure_low) & (s < point.threshold)) == pytest.approx(0.02, abs=2e-3)
    # a part just below the NG threshold goes to review instead of passing
    assert verdict(point.threshold * 0.999, point.thresholds) == "UNSURE"


def test_novel_stream_parts_count_against_the_review_rate_first():
    """With an anomaly head, the stream parts its rule sends to review whatever their score take
    their share of the review rate: band + novel parts stay within the target."""
    from defectssft_line.decision import decide_part
    from defectssft_line.novelty import NoveltyRule

    scores = RNG.beta(1, 30, 1000)
    anomaly = RNG.random(1000)
    anomaly[:5] = np.nan  # never scored by the head
    rule = NoveltyRule(0.99)  # about 1 % novel
    stream = C.Source("stream", scores, anomaly=anomaly)
    val = _val([0.5, 0.8], [0.01, 0.02])
    point = C.calibrate([val, stream], review_rate=0.02, margin_logit=1.0, novelty=rule)
    line = [
        decide_part(
            np.array([1 - s, s]), float(s), ["ok", "d"], "ok", point.thresholds,
            None if np.isnan(a) else float(a), rule,
        ).verdict
        for s, a in zip(scores, anomaly, strict=True)
    ]  # fmt: skip
    n_novel = sum(v == "UNSURE" and s < point.unsure_low for v, s in zip(line, scores, strict=True))
    assert n_novel > 0
    assert line.count("UNSURE") / len(line) == pytest.approx(0.02, abs=2e-3)
    assert point.predicted["stream_review_rate"] == line.count("UNSURE") / len(line)
    assert point.unsure_low < point.threshold  # the band keeps the rest of the 2 %
    assert any("anomaly head sends" in n for n in point.notes)
    # novel parts that fill the rate leave no band; on_novel NG sends none to review
    full = C.calibrate([val, stream], review_rate=0.005, novelty=rule)
    assert full.unsure_low == full.threshold and "no band" in " ".join(full.notes)
    ng = C.calibrate([val, stream], review_rate=0.02, novelty=NoveltyRule(0.99, "NG"))
    plain = C.calibrate([val, C.Source("stream", scores)], review_rate=0.02)
    assert ng.unsure_low == plain.unsure_low


def test_no_defects_in_the_evidence_falls_back_to_the_stream_quantile_and_says_so():
    stream = C.Source("stream", np.linspace(0, 1, 201))
    val = _val([], [0.01, 0.02, 0.03])
    point = C.calibrate([val, stream], review_rate=0.02)
    assert point.chosen_on == "stream-quantile"
    assert point.threshold == pytest.approx(np.quantile(stream.scores, C.FALLBACK_QUANTILE))
    assert any("no defective parts in the evidence" in n for n in point.notes)
    assert point.anchor is None
    # no stream either: a margin above the highest OK score; nothing at all: 0.5
    only_ok = C.calibrate([val], review_rate=0.02, margin_logit=1.0)
    assert only_ok.chosen_on == "ok-evidence" and only_ok.threshold > 0.03
    assert C.calibrate([], review_rate=0.02).threshold == 0.5


@pytest.mark.parametrize("rate,margin", [(0.7, 1.0), (-0.1, 1.0), (0.02, -1.0), (0.02, 11.0)])
def test_settings_out_of_range_are_one_line_errors(rate, margin):
    with pytest.raises(C.CalibrationError, match="must be in"):
        C.calibrate([], review_rate=rate, margin_logit=margin)


def test_a_saturated_defect_score_still_leaves_a_margin_the_line_can_see():
    import numpy as np

    val = _val([1.0, 1.0], [0.01])  # float32 scores of confident defects are exactly 1.0
    t = C.calibrate([val], review_rate=0.0, margin_logit=1.0).threshold
    assert np.float32(t) < np.float32(1.0) - 1e-6  # a part at 1 - 1e-6 is still NG
    tiny = C.calibrate([_val([1e-12], [1e-14])], review_rate=0.0, margin_logit=1.0)
    assert 0 < tiny.threshold < 1e-12  # far below 1: the margin is still measured in odds


def test_allowed_escapes_move_the_anchor_up():
    val = _val([0.1, 0.5, 0.6, 0.7], [0.01])
    assert C.calibrate([val], 0.0, 0.0, max_escape=0.25).anchor == pytest.approx(0.5)


def test_stream_sample_is_bounded_and_stable():
    ids = list(range(1000, 0, -1))
    a = C.stream_sample(ids, 50)
    assert len(a) == 50 and a == C.stream_sample(ids, 50)
    assert C.stream_sample(ids[:10], 50) == list(range(10))


# --------------------------------------------------------------------------- evaluate


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path, unlabeled=12)


def test_evaluate_stores_the_calibrated_triple_with_counts_and_intervals(project, capsys):
    from defectssft.cli import main
    from defectssft.metrics import operating_point

    version = add_model(project, seed=1)
    assert main(["evaluate", str(project.root), "--no-report", "--review-rate", "0.1"]) == 0
    out = capsys.readouterr().out
    test = project.get_model(version)["metrics"]["test"]
    op = test["operating_point"]
    for key in ("threshold", "unsure_low", "unsure_high", "chosen_on", "evidence", "escapes"):
        assert key in op
    assert op["evidence"]["stream"] == 12 and op["review_rate"] == 0.1
    assert op["unsure_low"] < op["unsure_high"] == op["threshold"]  # a real band
    assert operating_point(project.get_model(version)["metrics"]) == {
        "ng": op["threshold"],
        "unsure_low": op["unsure_low"],
        "unsure_high": op["unsure_high"],
    }
    assert project.get_setting(C.SETTING_REVIEW_RATE) == 0.1
    assert "at 95 %" in out and "escapes" in out and "verdicts: OK" in out
    # the stream's forecast is counts with intervals too, from the line's verdicts
    pred = op["predicted"]
    assert pred["stream_n"] == 12
    assert f"unlabeled stream (12 scored): to review (UNSURE) {pred['stream_unsure']} / 12" in out
    assert f"(target 10.00 %); rejected (NG) {pred['stream_ng']} / 12" in out
    assert sum(sum(v.values()) for v in test["verdicts"].values()) == test["n"]
    # few test parts: the claim is flagged as unsupported
    assert "warning:" in out and "cannot tell" in out


def test_evaluate_uses_out_of_fold_evidence_and_reports_it_beside_test(project, capsys):
    from defectssft.cli import main

    version = add_model(project, seed=2)
    data = project.training_data()
    ids = np.asarray(data.labeled_ids)
    labels = np.asarray([c for _, c in data.labeled])
    probs = np.full((len(ids), 3), 0.1, np.float32)
    probs[np.arange(len(ids)), labels] = 0.8
    probs[labels == 1] = [0.45, 0.5, 0.05]  # a weak defect: the anchor
    save_oof(project.get_model(version)["path"], Evidence(ids, labels, probs, ids % 3))
    assert main(["evaluate", str(project.root), "--no-report"]) == 0
    out = capsys.readouterr().out
    test = project.get_model(version)["metrics"]["test"]
    assert "oof" in test["operating_point"]["chosen_on"]
    assert test["operating_point"]["anchor"] <= 0.55 + 1e-6
    assert test["oof"]["n"] == len(ids) and "out-of-fold" in out
    assert "barely separates" not in out  # AUROC 1 out of fold


def test_evaluate_warns_when_out_of_fold_evidence_is_near_chance(project, capsys):
    from defectssft.cli import main

    version = add_model(project, seed=2)
    data = project.training_data()
    ids = np.asarray(data.labeled_ids)
    labels = np.asarray([c for _, c in data.labeled])
    probs = np.tile(np.float32([0.5, 0.3, 0.2]), (len(ids), 1))
    probs[::2] = [0.2, 0.5, 0.3]  # every other image scored high, whatever its class
    save_oof(project.get_model(version)["path"], Evidence(ids, labels, probs, ids % 3))
    assert main(["evaluate", str(project.root), "--no-report"]) == 0
    out = capsys.readouterr().out
    auc = project.get_model(version)["metrics"]["test"]["oof"]["roc_auc"]
    assert auc < 0.7
    lines = [x for x in out.splitlines() if "barely separates" in x]
    assert len(lines) == 1 and f"AUROC {auc:.2f}" in lines[0]


def test_evaluate_without_test_defects_says_so(tmp_path, capsys):
    import cv2

    from defectssft.cli import main
    from defectssft.project import Project
    from tests.helpers import synthetic_image

    project = Project.create(tmp_path / "p", classes=CLASSES, ok_class="ok")
    for i in range(8):
        path = tmp_path / f"u{i}.png"
        cv2.imwrite(str(path), synthetic_image("ok", i))
        project.add_image(path)  # only an unlabeled stream
    add_model(project)
    assert main(["evaluate", str(project.root), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "no defective parts in the evidence" in out
    assert "test split is empty" in out
    # nothing was tested: no accuracy, per-class or verdict rows of zeros that read as a result
    assert "holds nothing to score" in out
    assert "macro F1" not in out and "P 0.000" not in out and "line verdicts on test" not in out
    op = project.get_model(project.models()[-1]["version"])["metrics"]["test"]["operating_point"]
    assert op["chosen_on"] == "stream-quantile"


def test_a_project_with_one_class_is_one_line(tmp_path, capsys):
    import cv2
    import torch

    from defectssft.cli import main
    from defectssft.modeling import build_model, save_model_file
    from defectssft.project import Project
    from tests.helpers import synthetic_image, tiny_meta

    project = Project.create(tmp_path / "p", classes=["ok"], ok_class="ok")
    for i in range(6):
        path = tmp_path / f"o{i}.png"
        cv2.imwrite(str(path), synthetic_image("ok", i))
        project.add_image(path, label="ok")
    project.assign_splits(val_fraction=0.3, test_fraction=0.3, min_labels=3)
    version, folder = project.new_model_dir()
    torch.manual_seed(0)
    meta = {**tiny_meta(version), "classes": ["ok"]}
    save_model_file(folder / "model.pt", build_model("test_efficientnet", 1, weights="none"), meta)
    project.register_model(version, {k: v for k, v in meta.items() if k != "thresholds"}, {})
    assert main(["evaluate", str(project.root), "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "one class" in err and len(err.splitlines()) == 1
    # export (never evaluated, cannot be), thresholds and promote: one line each, nothing written
    for args in (["export"], ["thresholds"], ["promote", str(project.root), version]):
        argv = [*args, str(project.root)] if len(args) == 1 else args
        assert main(argv) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "one class" in err and len(err.splitlines()) == 1
    assert not list(folder.glob("*.onnx")) and project.production_model() is None


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--review-rate", "0.7"], "must be in [0, 0.5)"),
        (["--margin", "-1"], "must be in [0, 10]"),
        (["--margin", "x"], "not a number"),
    ],
)
def test_evaluate_rejects_bad_settings_in_one_line(project, capsys, flags, message):
    from defectssft.cli import main

    add_model(project)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(project.root), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_bad_stored_setting_is_one_line(project, capsys):
    from defectssft.cli import main

    add_model(project)
    project.set_setting(C.SETTING_REVIEW_RATE, 3)
    assert main(["evaluate", str(project.root), "--no-report"]) == 2
    assert "review rate must be in" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--threshold", "0.5", "--unsure-low", "0.7"], "unsure_low"),
        (["--threshold", "1.5"], "must be in [0, 1)"),
        (["--unsure-high", "-0.1"], "must be in [0, 1)"),
    ],
)
def test_export_thresholds_out_of_order_or_range_are_one_line(project, capsys, flags, message):
    from defectssft.cli import main

    add_model(project)
    try:
        rc = main(["export", str(project.root), *flags])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith(("error:", "usage:", "defectssft"))


def test_rate_claims_are_exact_intervals():
    assert M.clopper_pearson(0, 3)[1] == pytest.approx(0.7076, abs=1e-4)
    low, high = M.clopper_pearson(1, 3)
    assert low == pytest.approx(0.0084, abs=1e-4) and high == pytest.approx(0.9057, abs=1e-4)
    assert M.format_rate("escapes", M.rate_claim(0, 3)) == "escapes 0 / 3, ≤ 70.8 % at 95 %"
    assert M.format_rate("overkill", M.rate_claim(2, 40)).startswith("overkill 2 / 40 = 5.0 %")
    assert M.support_warning("escapes", M.rate_claim(0, 300), "defective parts") is None
    assert "cannot tell" in M.support_warning("escapes", M.rate_claim(0, 3), "defective parts")


def test_a_project_without_an_ok_class_says_there_is_no_threshold(tmp_path, capsys):
    import cv2

    from defectssft.cli import main
    from defectssft.modeling import save_model_file
    from defectssft.project import Project
    from tests.helpers import synthetic_image, tiny_meta, tiny_model

    project = Project.create(tmp_path / "p", classes=CLASSES, ok_class=None)
    for k, kind in enumerate(CLASSES * 4):
        path = tmp_path / f"{kind}{k}.png"
        cv2.imwrite(str(path), synthetic_image(kind, k))
        project.add_image(path, label=kind)
    project.assign_splits(val_fraction=0.25, test_fraction=0.25, min_labels=3)
    version, folder = project.new_model_dir()
    meta = {**tiny_meta(version), "ok_class": None}
    save_model_file(folder / "model.pt", tiny_model(), meta)
    project.register_model(version, {k: v for k, v in meta.items() if k != "thresholds"}, {})
    assert main(["evaluate", str(project.root), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "no OK class: every part is NG with its class" in out and "errors" in out
    op = project.get_model(version)["metrics"]["test"]["operating_point"]
    assert op["chosen_on"] == "none" and op["errors"]["n"] == 3


@pytest.mark.parametrize(
    "k,n,confidence", [(4, 3, 0.95), (-1, 3, 0.95), (0, -1, 0.95), (1, 3, 1.0)]
)
def test_intervals_refuse_impossible_counts_in_one_line(k, n, confidence):
    from defectssft.metrics import clopper_pearson, wilson_interval

    for interval in (clopper_pearson, wilson_interval):
        with pytest.raises(ValueError, match="need 0 <= k <= n|confidence must be"):
            interval(k, n, confidence)
    assert clopper_pearson(0, 0) == wilson_interval(0, 0) == (0.0, 1.0)
