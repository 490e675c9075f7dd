"""INT8 with the exact re-check (defectssft_line/recheck.py, int8.with_recheck, export): which
parts the fp32 graph decides, the margin measured at export, the one-file graph with both
branches, the line runtime taking the fp32 outputs exactly for the parts near an edge, and
files a runtime must refuse."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from defectssft.export import _set_metadata, export_onnx, read_metadata
from defectssft_line.cli import _verdict_record
from defectssft_line.decision import Prediction, Thresholds
from defectssft_line.model import LineModel, LineModelError
from defectssft_line.recheck import RECHECK_INPUT, SAFETY, RecheckRule, fit_margin
from tests.helpers import CLASSES, SIZE, random_images, tiny_meta, tiny_model


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def _sig(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


# --------------------------------------------------------------------------- the rule


def test_near_an_edge_means_within_the_margin_of_either_band_edge_in_logits():
    t = Thresholds(0.5, _sig(-2.0), _sig(2.0))
    rule = RecheckRule(logit=1.0)
    scores = np.array([_sig(x) for x in (-3.5, -2.9, -1.5, 0.0, 1.2, 2.8, 3.2)])
    probs = np.stack([1 - scores, scores, np.zeros_like(scores)], axis=1)
    near = rule.near(probs, CLASSES, "ok", t)
    assert near.tolist() == [False, True, True, False, True, True, False]
    # edges at 0 and 1 cannot be crossed: nothing is near them
    t0 = Thresholds(0.0, 0.0, 0.0)
    assert not rule.near(probs, CLASSES, "ok", t0).any()


def test_without_an_ok_class_the_top_probability_and_the_class_gap_decide():
    t = Thresholds(0.5, 0.5, 0.5)  # UNSURE when the top probability is below 0.5
    rule = RecheckRule(logit=0.5)
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # far from 0.5, clear class
            [0.52, 0.40, 0.08],  # top p near 0.5
            [0.48, 0.47, 0.05],  # two classes within 0.5 in log probability
        ]
    )
    near = rule.near(probs, ["a", "b", "c"], None, t)
    assert near.tolist() == [False, True, True]


def test_the_anomaly_threshold_is_an_edge_too():
    t = Thresholds(0.5, 0.5, 0.5)
    rule = RecheckRule(logit=0.1, anomaly=2.0)
    scores = np.array([0.01, 0.01, 0.01])
    probs = np.stack([1 - scores, scores, np.zeros(3)], axis=1)
    anomaly = np.array([10.0, 18.5, 21.0])
    near = rule.near(probs, CLASSES, "ok", t, anomaly, 20.0)
    assert near.tolist() == [False, True, True]
    assert not rule.near(probs, CLASSES, "ok", t).any()  # no head, no anomaly edge


def test_the_margin_is_the_largest_difference_seen_times_the_safety_factor():
    exact = np.array([0.1, 0.5, 0.9])
    fast = np.array([_sig(_logit(0.1) + 0.3), _sig(_logit(0.5) - 1.2), 0.9])
    probs = lambda s: np.stack([1 - s, s, np.zeros_like(s)], axis=1)  # noqa: E731
    rule, said = fit_margin(probs(fast), probs(exact), 0,
                            np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 3.0]))  # fmt: skip
    assert said["max_logit_diff"] == pytest.approx(1.2, abs=1e-6)
    assert rule.logit == pytest.approx(SAFETY * 1.2, abs=1e-6)
    assert rule.anomaly == pytest.approx(SAFETY * 0.5)


# --------------------------------------------------------------------------- the file


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("recheck")
    model, meta = tiny_model(), tiny_meta("v0003")
    check, calib = random_images(8), random_images(16, seed=1)
    export_onnx(model, meta, d / "fp32.onnx", check_images=check)
    kw = {"check_images": check, "calib_images": calib, "precision": "int8", "max_int8_drop": 1.0}
    res = export_onnx(model, meta, d / "int8.onnx", **kw)
    export_onnx(model, meta, d / "plain.onnx", recheck=False, **kw)
    return d, res


def test_an_int8_export_holds_both_graphs_behind_one_input(files):
    d, res = files
    meta = read_metadata(d / "int8.onnx")
    assert meta["format_version"] == 2 and meta["precision"] == "int8"
    assert meta["recheck"]["logit"] == pytest.approx(SAFETY * meta["recheck"]["max_logit_diff"])
    assert meta["recheck"]["measured_on"] == 8 + 16
    assert res.metadata["recheck"] == meta["recheck"]
    graph = onnx.load(str(d / "int8.onnx")).graph
    assert [n.op_type for n in graph.node] == ["If"]
    assert [i.name for i in graph.input] == ["image", RECHECK_INPUT]
    plain = read_metadata(d / "plain.onnx")
    assert plain["format_version"] == 1 and "recheck" not in plain
    assert [i.name for i in onnx.load(str(d / "plain.onnx")).graph.input] == ["image"]


def test_exact_runs_the_fp32_graph_and_the_default_the_int8_graph(files):
    d, _ = files
    x = random_images(5, seed=3)
    both = LineModel.load(d / "int8.onnx")
    fp32, plain = LineModel.load(d / "fp32.onnx"), LineModel.load(d / "plain.onnx")
    for got, want in zip(both.predict(x, exact=True), fp32.predict(x), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(both.predict(x), plain.predict(x), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(both.predict(x)[1], fp32.predict(x)[1])  # INT8 moves scores


def test_the_line_takes_the_fp32_outputs_of_exactly_the_parts_near_an_edge(files):
    d, _ = files
    x = random_images(6, seed=4)
    fast = LineModel.load(d / "plain.onnx").predict(x)[1]
    exact = LineModel.load(d / "fp32.onnx").predict(x)[1]
    q = np.sort(_logit_arr(fast))
    edge, margin = float(np.sort(fast)[2]), 0.5 * min(q[3] - q[2], q[2] - q[1])
    assert margin > 0
    model = LineModel.load(d / "int8.onnx", threshold=edge)
    model.recheck = RecheckRule(logit=margin)
    preds = model.classify_inputs(x)
    near = np.abs(_logit_arr(fast) - _logit(edge)) < margin
    assert near.sum() == 1
    for p, n, f, e in zip(preds, near, fast, exact, strict=True):
        assert p.rechecked == bool(n)
        assert p.score == pytest.approx(float(e if n else f), rel=0, abs=0)


def _logit_arr(s: np.ndarray) -> np.ndarray:
    s = np.clip(s.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(s) - np.log1p(-s)


def test_a_tiled_part_near_an_edge_is_scored_again_tile_by_tile_through_fp32(files):
    from defectssft_line.tiles import TileSpec

    d, _ = files
    image = np.random.default_rng(5).integers(0, 256, (3 * SIZE, 2 * SIZE, 3), dtype=np.uint8)
    want = LineModel.load(d / "fp32.onnx")
    model = LineModel.load(d / "int8.onnx")
    for m in (want, model):
        m.tiles = TileSpec(SIZE, SIZE)
    model.recheck = RecheckRule(logit=1e9)  # every part is near
    got = model.classify([image])[0]
    assert got.rechecked and got.score == want.classify([image])[0].score
    model.recheck = RecheckRule(logit=0.0)  # none is
    assert not model.classify([image])[0].rechecked


def test_a_file_with_the_exact_input_but_no_recheck_entry_is_refused(files, tmp_path):
    d, _ = files
    m = onnx.load(str(d / "int8.onnx"))
    meta = read_metadata(d / "int8.onnx")
    meta.pop("recheck")
    _set_metadata(m, meta)
    onnx.save(m, str(tmp_path / "odd.onnx"))
    with pytest.raises(LineModelError, match="re-check input 'exact' but its metadata no") as e:
        LineModel.load(tmp_path / "odd.onnx")
    assert "\n" not in str(e.value)
    meta = read_metadata(d / "plain.onnx")  # the INT8 graph alone, claiming a re-check
    m = onnx.load(str(d / "plain.onnx"))
    _set_metadata(m, {**meta, "format_version": 2, "recheck": {"logit": 1.0}})
    onnx.save(m, str(tmp_path / "claims.onnx"))
    with pytest.raises(LineModelError, match="'recheck' in its metadata but no 'exact' input"):
        LineModel.load(tmp_path / "claims.onnx")


def test_the_record_says_which_parts_the_fp32_graph_decided(files):
    d, _ = files
    model = LineModel.load(d / "int8.onnx")
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    pred = Prediction("OK", "ok", 0.1, (0.9, 0.1, 0.0), rechecked=True)
    rec = _verdict_record("a.png", pred, 0.0, model, image)
    assert rec["rechecked"] is True
    assert "rechecked" not in _verdict_record("b.png", Prediction("OK", "ok", 0.1, (0.9, 0.1, 0.0)),
                                               0.0, model, image)  # fmt: skip
    assert json.loads(json.dumps(rec))["rechecked"] is True


def test_bench_times_the_fp32_graph_of_a_recheck_file_too(files):
    from defectssft_line.bench import format_table, run_bench

    d, _ = files
    rows = run_bench(d / "int8.onnx", [], [1], [1], iters=2, warmup=1)
    assert [r["graph"] for r in rows] == ["int8", "fp32 (re-check)"]
    assert "fp32 (re-check)" in format_table(rows)
    assert [r["graph"] for r in run_bench(d / "plain.onnx", [], [1], [1], 2, 1)] == ["int8"]
