"""Novel parts on the line (``defectssft_line.novelty``): a model with an anomaly head turns an OK
part above the anomaly threshold into UNSURE (or NG) with ``novel: true``; records carry
``anomaly_score``/``novel``; ``--save-maps`` writes overlays; bad ``anomaly`` metadata and a
model missing the outputs it declares are refused; a model without the head runs as before.

The model is built without torch: ``tests.helpers.fixed_onnx_model`` (a fixed classifier) plus
an anomaly head whose map is the image's mean brightness / 255 on every cell, so a bright image
is "novel" and a dark one is not.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectssft_line.cli import main
from defectssft_line.metadata import MetadataError, validate_metadata
from defectssft_line.model import LineModel, LineModelError
from defectssft_line.novelty import NoveltyRule, apply_novelty, heat_weights, peak_in_image
from tests.helpers import fixed_onnx_model, line_metadata

MAP = (3, 4)


def with_anomaly_head(
    path: Path,
    anomaly: dict | None,
    with_map: bool = True,
    peak: list[float] | None = None,
    roi: dict | None = None,
) -> Path:
    """Add ``anomaly_score`` (= mean pixel / 255) and ``anomaly_map`` outputs and the metadata
    entry ``anomaly`` to a fixed model; with ``peak`` also ``anomaly_peak`` = ``peak`` (x, y in
    input pixels) for every part; with ``roi`` that region of interest (``input.roi``)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    g = model.graph
    g.node.extend(
        [
            helper.make_node("Div", ["m", "c255"], ["anomaly_score"]),  # m: mean pixel [N]
            helper.make_node("Reshape", ["anomaly_score", "shape_n11"], ["a11"]),
            helper.make_node("Expand", ["a11", "map_shape"], ["anomaly_map"]),
        ]
    )
    g.initializer.extend(
        [
            helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]),
            helper.make_tensor("shape_n11", TensorProto.INT64, [3], [-1, 1, 1]),
            helper.make_tensor("map_shape", TensorProto.INT64, [3], [1, *MAP]),
        ]
    )
    g.output.append(helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, ["batch"]))
    if with_map:
        g.output.append(
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", *MAP])
        )
    if peak is not None:
        g.node.extend(
            [
                helper.make_node("Reshape", ["anomaly_score", "shape_n1"], ["a_n1"]),
                helper.make_node("Mul", ["a_n1", "c0"], ["zeros_n1"]),
                helper.make_node("Add", ["zeros_n1", "peak_xy"], ["anomaly_peak"]),
            ]
        )
        g.initializer.extend(
            [
                helper.make_tensor("shape_n1", TensorProto.INT64, [2], [-1, 1]),
                helper.make_tensor("c0", TensorProto.FLOAT, [], [0.0]),
                helper.make_tensor("peak_xy", TensorProto.FLOAT, [1, 2], list(peak)),
            ]
        )
        g.output.append(
            helper.make_tensor_value_info("anomaly_peak", TensorProto.FLOAT, ["batch", 2])
        )
    for prop in model.metadata_props:
        if prop.key == "defectssft":
            meta = json.loads(prop.value)
            if anomaly is not None:
                meta["anomaly"] = anomaly
            if roi is not None:
                meta["input"]["roi"] = roi
            prop.value = json.dumps(meta)
    onnx.save(model, str(path))
    return path


HEAD = {"threshold": 0.5, "on_novel": "UNSURE", "map": list(MAP), "method": "patchcore"}
PEAK = [24.0, 8.0]  # x, y in the fixed model's input pixels (32 x 32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("novelty")
    return {
        "ok": with_anomaly_head(fixed_onnx_model(d / "ok.onnx", [5.0, 0.0, 0.0]), HEAD),
        "ng": with_anomaly_head(fixed_onnx_model(d / "ng.onnx", [0.0, 0.0, 0.0]), HEAD),
        "ok_ng": with_anomaly_head(
            fixed_onnx_model(d / "okng.onnx", [5.0, 0.0, 0.0]), {**HEAD, "on_novel": "NG"}
        ),
        "plain": fixed_onnx_model(d / "plain.onnx", [5.0, 0.0, 0.0]),
        "no_map": with_anomaly_head(
            fixed_onnx_model(d / "nomap.onnx", [5.0, 0.0, 0.0]), {**HEAD, "map": None}, False
        ),
        "peak": with_anomaly_head(
            fixed_onnx_model(d / "peak.onnx", [5.0, 0.0, 0.0]), {**HEAD, "peak": True}, peak=PEAK
        ),
    }


@pytest.fixture
def parts(tmp_path) -> Path:
    folder = tmp_path / "parts"
    folder.mkdir()
    cv2.imwrite(str(folder / "dark.png"), np.full((40, 50), 30, np.uint8))  # 0.12: not novel
    cv2.imwrite(str(folder / "bright.png"), np.full((40, 50), 230, np.uint8))  # 0.90: novel
    return folder


def run(args: list[str], capsys) -> tuple[int, dict[str, dict], str]:
    rc = main(args)
    out, err = capsys.readouterr()
    recs = [json.loads(line) for line in out.splitlines() if line.strip()]
    return rc, {Path(r["file"]).name: r for r in recs}, err


def test_ok_part_above_the_anomaly_threshold_is_unsure_and_novel(models, parts, capsys):
    rc, recs, err = run(["run", "--model", str(models["ok"]), "--input", str(parts)], capsys)
    assert rc == 0
    assert "anomaly head: novel at score >= 0.5 -> UNSURE" in err
    dark, bright = recs["dark.png"], recs["bright.png"]
    assert (dark["verdict"], dark["class"], dark["novel"]) == ("OK", "ok", False)
    assert dark["anomaly_score"] == pytest.approx(30 / 255, abs=1e-5)
    assert (bright["verdict"], bright["novel"]) == ("UNSURE", True)
    assert bright["anomaly_score"] == pytest.approx(230 / 255, abs=1e-5)


def test_on_novel_ng_from_metadata_or_flag(models, parts, capsys):
    _, recs, _ = run(["run", "--model", str(models["ok_ng"]), "--input", str(parts)], capsys)
    assert recs["bright.png"]["verdict"] == "NG" and recs["bright.png"]["novel"] is True
    _, recs, _ = run(
        ["run", "--model", str(models["ok"]), "--input", str(parts), "--on-novel", "NG"], capsys
    )
    assert recs["bright.png"]["verdict"] == "NG"
    assert recs["dark.png"]["verdict"] == "OK"


def test_ng_by_the_classifier_stays_ng_and_says_novel(models, parts, capsys):
    _, recs, _ = run(["run", "--model", str(models["ng"]), "--input", str(parts)], capsys)
    assert recs["bright.png"]["verdict"] == "NG" and recs["bright.png"]["novel"] is True
    assert recs["dark.png"]["verdict"] == "NG" and recs["dark.png"]["novel"] is False


def test_model_without_head_runs_as_before(models, parts, tmp_path, capsys):
    rc, recs, err = run(
        ["run", "--model", str(models["plain"]), "--input", str(parts), "--save-maps",
         str(tmp_path / "maps")],
        capsys,
    )  # fmt: skip
    assert rc == 0 and "no anomaly head" in err
    assert not {"anomaly_score", "novel"} & set(recs["bright.png"])
    assert recs["bright.png"]["verdict"] == "OK"
    assert not (tmp_path / "maps").exists()


def test_csv_carries_anomaly_columns(models, parts, tmp_path, capsys):
    out = tmp_path / "r.csv"
    for name in ("ok", "plain"):
        args = ["run", "--model", str(models[name]), "--input", str(parts)]
        assert main([*args, "--format", "csv", "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and rows[0].keys() >= {"anomaly_score", "novel"}
    by = {(i >= 2, Path(r["file"]).name): r for i, r in enumerate(rows)}
    assert by[(False, "bright.png")]["novel"] == "True"
    assert float(by[(False, "dark.png")]["anomaly_score"]) == pytest.approx(30 / 255, abs=1e-5)
    assert by[(True, "bright.png")]["anomaly_score"] == by[(True, "bright.png")]["novel"] == ""


def test_save_maps_writes_overlays_of_ng_and_unsure_parts_only(models, parts, tmp_path, capsys):
    maps = tmp_path / "maps"
    rc, _, _ = run(
        ["run", "--model", str(models["ok"]), "--input", str(parts), "--save-maps", str(maps)],
        capsys,
    )
    assert rc == 0
    assert sorted(p.name for p in maps.iterdir()) == ["bright.anomaly.png"]
    img = cv2.imread(str(maps / "bright.anomaly.png"))
    assert img.shape == (40, 50, 3)


def test_no_map_model_scores_without_maps(models, parts, tmp_path, capsys):
    maps = tmp_path / "maps"
    _, recs, _ = run(
        ["run", "--model", str(models["no_map"]), "--input", str(parts), "--save-maps", str(maps)],
        capsys,
    )
    assert recs["bright.png"]["verdict"] == "UNSURE" and recs["bright.png"]["novel"] is True
    assert not maps.exists()


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"threshold": "high"}, "anomaly.threshold"),
        ({"threshold": -1.0}, "anomaly.threshold"),
        ({"threshold": float("nan")}, "anomaly.threshold"),
        ({"threshold": 0.3, "on_novel": "OK"}, "anomaly.on_novel"),
        ({"threshold": 0.3, "map": [0, 4]}, "anomaly.map"),
        ({"threshold": 0.3, "map": [3, 4], "peak": "yes"}, "anomaly.peak"),
        ({"threshold": 0.3, "map": None, "peak": True}, "anomaly.peak needs the map"),
        ("yes", "anomaly must be an object"),
    ],
)
def test_bad_anomaly_metadata_is_refused_naming_the_field(entry, field):
    meta = line_metadata({"ng": 0.5, "unsure_low": 0.5, "unsure_high": 0.5})
    meta["anomaly"] = entry
    with pytest.raises(MetadataError, match=field.replace(".", r"\.")):
        validate_metadata(meta)


def test_declared_head_without_its_outputs_is_refused(tmp_path):
    path = fixed_onnx_model(tmp_path / "m.onnx", [5.0, 0.0, 0.0])
    import onnx

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "defectssft":
            prop.value = json.dumps({**json.loads(prop.value), "anomaly": HEAD})
    onnx.save(model, str(path))
    with pytest.raises(LineModelError, match="anomaly_map, anomaly_score"):
        LineModel.load(path)


def test_apply_novelty_rules():
    from defectssft_line.decision import Prediction

    rule = NoveltyRule(0.5)
    ok = Prediction("OK", "ok", 0.01, (0.99, 0.01))
    assert apply_novelty(ok, 0.49, rule, "ok").verdict == "OK"
    hit = apply_novelty(ok, 0.5, rule, "ok")
    assert (hit.verdict, hit.novel, hit.anomaly_score) == ("UNSURE", True, 0.5)
    # without an OK class a novel part is unlike every known class: on_novel too
    ng = Prediction("NG", "crack", 0.2, (0.8, 0.2))
    assert apply_novelty(ng, 0.9, rule, None).verdict == "UNSURE"
    assert apply_novelty(ng, 0.9, rule, "ok").verdict == "NG"


def test_heat_weights_draw_only_the_high_part():
    amap = np.zeros((8, 8), np.float32)
    amap[2, 5] = 1.0
    w = heat_weights(amap, threshold=0.5, height=80, width=80)
    assert w.shape == (80, 80) and w.max() == pytest.approx(1.0)
    assert (w > 0).mean() < 0.1  # a spot, not a wash
    ys, xs = np.unravel_index(np.argmax(w), w.shape)
    assert 15 <= ys <= 35 and 45 <= xs <= 65
    assert heat_weights(np.full((8, 8), 0.1, np.float32), 0.5, 80, 80).max() == 0.0


def test_peak_model_marks_the_peak_in_the_overlay(models, parts, tmp_path, capsys):
    maps, plain = tmp_path / "maps", tmp_path / "plain"
    for key, folder in (("peak", maps), ("ok", plain)):
        rc, recs, _ = run(
            ["run", "--model", str(models[key]), "--input", str(parts), "--save-maps", str(folder)],
            capsys,
        )
        assert rc == 0 and recs["bright.png"]["verdict"] == "UNSURE"
        # the peak in the record, in the image's pixels (24/32 * 50, 8/32 * 40)
        assert recs["bright.png"].get("anomaly_peak") == ([37.5, 10.0] if key == "peak" else None)
    # with a region of interest: the peak scaled to its box and offset by its corner, and the
    # overlay is the box (what the model saw)
    roi = {"rects": [[10, 4, 20, 16], [30, 10, 10, 20]]}  # box 10, 4, 30 x 26
    assert peak_in_image(PEAK, (32, 32), (40, 50), roi) == [10 + 22.5, 4 + 6.5]
    m = fixed_onnx_model(tmp_path / "roi.onnx", [5.0, 0.0, 0.0])
    m = with_anomaly_head(m, {**HEAD, "peak": True}, peak=PEAK, roi=roi)
    boxed = tmp_path / "boxed"
    rc, recs, _ = run(
        ["run", "--model", str(m), "--input", str(parts), "--save-maps", str(boxed)], capsys
    )
    assert rc == 0 and recs["bright.png"]["anomaly_peak"] == [32.5, 10.5]
    assert cv2.imread(str(boxed / "bright.anomaly.png")).shape == (26, 30, 3)
    assert peak_in_image([float("nan"), 1.0], (32, 32), (40, 50)) is None
    line = LineModel.load(models["peak"])
    assert line.novelty.has_peak and line.novelty.output_names()[-1] == "anomaly_peak"
    pred = line.classify([np.full((40, 50, 3), 230, np.uint8)])[0]
    assert list(pred.anomaly_peak) == PEAK
    # the ring is centred on the peak scaled to the image (24/32 * 50, 8/32 * 40) = (37.5, 10)
    a = cv2.imread(str(maps / "bright.anomaly.png")).astype(int)
    b = cv2.imread(str(plain / "bright.anomaly.png")).astype(int)
    ys, xs = np.nonzero(np.abs(a - b).sum(axis=2) > 30)
    assert len(ys) and abs(xs.mean() - 37.5) < 2 and abs(ys.mean() - 10) < 2


def test_model_with_map_but_no_peak_keeps_its_outputs(models):
    line = LineModel.load(models["ok"])  # exported before the peak: no anomaly_peak
    assert not line.novelty.has_peak
    assert line.novelty.output_names() == ["anomaly_score", "anomaly_map"]
    assert line.classify([np.full((40, 50, 3), 230, np.uint8)])[0].anomaly_peak is None


def test_declared_peak_without_its_output_is_refused(tmp_path):
    path = with_anomaly_head(
        fixed_onnx_model(tmp_path / "m.onnx", [5.0, 0.0, 0.0]), {**HEAD, "peak": True}
    )
    with pytest.raises(LineModelError, match="lacks output.*anomaly_peak"):
        LineModel.load(path)


def test_mark_peak_draws_a_ring_only_for_a_drawn_map_and_a_finite_peak():
    from defectssft_line.novelty import mark_peak

    amap = np.zeros((8, 8), np.float32)
    amap[2, 5] = 1.0
    w = heat_weights(amap, threshold=0.5, height=80, width=80)
    ringed = mark_peak(w, (20.0, 30.0), (40, 40), amap, 0.5)  # input 40 x 40 -> image 80 x 80
    diff = np.argwhere(ringed != w)  # (row, column): the ring's centre at x 40, y 60
    assert len(diff) and np.allclose(diff.mean(axis=0), (60, 40), atol=1)
    assert ringed.max() <= 1.0
    assert mark_peak(w, (float("nan"), 3.0), (40, 40), amap, 0.5) is w
    assert mark_peak(w, None, (40, 40), amap, 0.5) is w
    low = np.full((8, 8), 0.1, np.float32)  # far below the threshold: nothing drawn, no ring
    assert mark_peak(w, (40.0, 20.0), (40, 40), low, 0.5) is w
