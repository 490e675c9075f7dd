"""The INT8 recipe (defectssft/int8.py): which nodes stay in float, that the written graph keeps
them so, the per-model weight sensitivity, and the one-line error without calibration images."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from defectssft import int8
from defectssft.export import ExportError, _to_int8, export_onnx, int8_excluded_nodes
from tests.helpers import SIZE, random_images, tiny_meta, tiny_model


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "m.onnx"
    export_onnx(tiny_model(), tiny_meta(), path, check_images=random_images(4))
    return path


def _conv(name: str, x: str, y: str, stride: int, inits: list) -> onnx.NodeProto:
    w = np.ones((4, 4, 3, 3), np.float32)
    inits.append(numpy_helper.from_array(w, f"{name}.w"))
    return helper.make_node(
        "Conv", [x, f"{name}.w"], [y], name=name, strides=[stride, stride], pads=[1, 1, 1, 1]
    )


def test_high_resolution_convs_count_the_strides_of_convolutions_and_poolings():
    inits: list = []
    nodes = [
        _conv("stem", "x", "a", 2, inits),  # stride 2
        helper.make_node("MaxPool", ["a"], ["b"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        _conv("c4", "b", "c", 1, inits),  # 4
        _conv("c8", "c", "d", 2, inits),  # 8
        _conv("c16", "d", "e", 2, inits),  # 16
        _conv("c16b", "e", "f", 1, inits),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 64, 64])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph)
    assert int8.high_resolution_convs(model, 8) == ["stem", "c4", "c8"]
    assert int8.high_resolution_convs(model, 2) == ["stem"]
    assert int8.high_resolution_convs(model, 1) == []
    assert int8.high_resolution_convs(model, 4, region=True) == ["stem", "pool", "c4"]


def test_the_export_keeps_the_stem_the_high_resolution_convs_and_the_classifier_float(
    fp32_file, tmp_path
):
    model = onnx.load(str(fp32_file))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    excluded = set(int8_excluded_nodes(model))
    early = int8.high_resolution_convs(model, int8.DEFAULT.float_stride)
    region = int8.high_resolution_convs(model, 8, region=True)
    assert (int8.DEFAULT.float_stride, int8.DEFAULT.float_region) == (8, True)
    assert convs[0] == early[0] and set(early) < set(region) <= excluded
    assert 2 < len(early) < len(convs)  # some convolutions stay float, most do not
    assert set(early) <= excluded
    assert {n.name for n in model.graph.node if n.op_type == "Gemm"} <= excluded
    assert not set(convs[len(early) :]) & excluded  # the low-resolution layers are quantized

    _to_int8(fp32_file, tmp_path / "m8.onnx", random_images(8, seed=1))
    q = onnx.load(str(tmp_path / "m8.onnx"))
    dequantized = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized_convs = {
        n.name for n in q.graph.node if n.op_type == "Conv" and n.input[1] in dequantized
    }
    assert quantized_convs == set(convs[len(early) :])
    # nothing between the early convolutions is quantized either: only where the region feeds
    # the quantized rest
    region_outputs = {o for n in model.graph.node if n.name in region for o in n.output}
    boundary = {i for n in model.graph.node if n.name not in excluded for i in n.input}
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized & region_outputs and quantized & region_outputs <= boundary


def test_sensitive_float_keeps_the_convolutions_whose_rounding_moves_the_logits_most(fp32_file):
    model = onnx.load(str(fp32_file))
    calib = random_images(4, seed=2)
    ranked = int8.weight_sensitivity(model, calib, skip=int8.excluded_nodes(model))
    scores = [s for s, _ in ranked]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    recipe = int8.Int8Recipe("t", float_stride=8, sensitive_float=2)
    extra = set(int8.excluded_nodes(model, recipe, calib)) - set(int8.excluded_nodes(model))
    assert extra == {name for _, name in ranked[:2]}
    # the model's weights are unchanged by the measurement
    again = onnx.load(str(fp32_file))
    for a, b in zip(model.graph.initializer, again.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_no_calibration_images_is_a_one_line_error(fp32_file, tmp_path):
    empty = np.zeros((0, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(ExportError, match="needs project images to calibrate on") as e:
        _to_int8(fp32_file, tmp_path / "m8.onnx", empty)
    assert "\n" not in str(e.value)
    with pytest.raises(int8.Int8Error, match="calibrate on"):
        int8.quantize(fp32_file, tmp_path / "m8.onnx", empty)
    with pytest.raises(ExportError, match="calibrate on"):
        export_onnx(
            tiny_model(),
            tiny_meta(),
            tmp_path / "e8.onnx",
            check_images=random_images(2),
            calib_images=empty,
            precision="int8",
        )
    assert not (tmp_path / "e8.onnx").exists() and not (tmp_path / "m8.onnx").exists()
    with pytest.raises(ValueError, match="calibration method"):
        int8.Int8Recipe("bad", method="kl")
