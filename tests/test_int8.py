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


# --------------------------------------------------------------------------- weight-side fixes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained a few steps on synthetic parts (real BatchNorm statistics, not
    random ones), its fp32 file, calibration images and other images of the same kind."""
    import cv2
    import torch

    from tests.helpers import CLASSES, synthetic_image

    def parts(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        kinds = [CLASSES[i % len(CLASSES)] for i in range(n)]
        images = [
            cv2.cvtColor(cv2.resize(synthetic_image(k, seed + i), (SIZE, SIZE)), cv2.COLOR_GRAY2RGB)
            for i, k in enumerate(kinds)
        ]
        return np.stack(images), np.array([CLASSES.index(k) for k in kinds])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = tiny_model()
    x, y = parts(1000, 48)
    inputs = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(30):
        idx = torch.from_numpy(np.random.default_rng(step).permutation(len(x))[:16])
        loss = torch.nn.functional.cross_entropy(model(inputs[idx]), torch.from_numpy(y)[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    model.eval()
    path = tmp_path_factory.mktemp("int8t") / "m.onnx"
    export_onnx(model, tiny_meta(), path, check_images=x[:4])
    return path, parts(2000, 32)[0], parts(3000, 32)[0]


def _quantized_convs(fp32, path) -> list[tuple]:
    """(float conv node, quantized conv node) of the convolutions ``path`` quantized."""
    f, q = onnx.load(str(fp32)), onnx.load(str(path))
    fnodes = {n.name: n for n in f.graph.node if n.op_type == "Conv"}
    producers = {o: n for n in q.graph.node for o in n.output}
    return [
        (fnodes[n.name], n)
        for n in q.graph.node
        if n.op_type == "Conv"
        and n.name in fnodes
        and int8._quantized_bias(q, n, producers) is not None
    ]


def _mean_shift(fp32, path, images: np.ndarray) -> float:
    """Mean over the quantized convolutions of the rms over channels of (quantized - float)
    per-channel mean output on ``images``: what bias correction removes. Each convolution's
    output is read alone, so every layer before it runs as on the line: onnxruntime computes a
    quantized convolution whose output is not a graph output in integer arithmetic (fused),
    one whose output is read in float, and those two differ by more than the correction."""
    f, q = onnx.load(str(fp32)), onnx.load(str(path))

    def alone(model, name: str) -> np.ndarray:
        return int8._channel_means(model, [name], images)[name]

    return float(
        np.mean(
            [
                np.sqrt(np.mean((alone(q, qn.output[0]) - alone(f, fn.output[0])) ** 2))
                for fn, qn in _quantized_convs(fp32, path)
            ]
        )
    )


def _weight_error(fp32, path, images: np.ndarray) -> float:
    """Sum over the quantized convolutions of |(W - dequantized W) x|^2 over the patches x they
    read in the float graph on ``images``: what error-feedback rounding lowers."""
    f, q = onnx.load(str(fp32)), onnx.load(str(path))
    finits = {i.name: numpy_helper.to_array(i) for i in f.graph.initializer}
    qinits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    total = 0.0
    for fnode, qnode in _quantized_convs(fp32, path):
        dq = producers[qnode.input[1]]
        wq = qinits[dq.input[0]].astype(np.float64) * qinits[dq.input[1]].reshape(-1, 1, 1, 1)
        w = finits[fnode.input[1]]
        x = int8._with_outputs(f, [fnode.input[0]]).run([fnode.input[0]], {"image": images})[0]
        m = int8._patch_moments(x, fnode, w.shape[2:])
        d = (w - wq).reshape(m.shape[0], -1, m.shape[1])
        total += float(np.einsum("god,gde,goe->", d, m, d))
    return total


def _int32_biases(path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {
        i.name: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.data_type == TensorProto.INT32 and i.name.endswith("_quantized")
    }


def test_bias_correction_moves_the_biases_and_removes_the_mean_error(trained, tmp_path):
    fp32, calib, other = trained
    plain, corrected = tmp_path / "plain.onnx", tmp_path / "bc.onnx"
    int8.quantize(fp32, plain, calib, int8.Int8Recipe("plain"))
    int8.quantize(fp32, corrected, calib, int8.Int8Recipe("bc", bias_correction=True))
    before, after = _int32_biases(plain), _int32_biases(corrected)
    assert before.keys() == after.keys() and before
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2
    # only the biases: the int8 weights are the very same
    w = [
        (numpy_helper.to_array(a), numpy_helper.to_array(b))
        for a, b in zip(
            onnx.load(str(plain)).graph.initializer,
            onnx.load(str(corrected)).graph.initializer,
            strict=True,
        )
        if a.data_type == TensorProto.INT8
    ]
    assert w and all(np.array_equal(a, b) for a, b in w)
    # the per-channel mean error of the quantized convolutions' outputs: all but gone on the
    # calibration images, lower on other images of the same kind
    assert _mean_shift(fp32, corrected, calib) < 0.25 * _mean_shift(fp32, plain, calib)
    assert _mean_shift(fp32, corrected, other) < 0.8 * _mean_shift(fp32, plain, other)
    # deterministic: the same images give the same file
    again = tmp_path / "bc2.onnx"
    int8.quantize(fp32, again, calib, int8.Int8Recipe("bc", bias_correction=True))
    assert all(np.array_equal(after[k], v) for k, v in _int32_biases(again).items())


def test_error_feedback_rounding_keeps_a_layer_output_closer_than_nearest_rounding():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(24, 24))
    x = rng.normal(size=(2000, 24)) @ mix  # correlated inputs, as a layer's are
    w = rng.normal(size=(8, 24, 1, 1)).astype(np.float32)
    scale = np.abs(w).reshape(8, -1).max(axis=1) / 127.0
    q = int8._error_feedback_round(w, scale, (x.T @ x)[None])
    assert q.dtype == np.int8 and q.shape == w.shape and np.abs(q).max() <= 127
    nearest = np.round(w.reshape(8, -1) / scale[:, None])
    flat = w.reshape(8, -1)

    def err(levels):
        return np.linalg.norm(x @ (flat - levels * scale[:, None]).T)

    assert err(q.reshape(8, -1)) < 0.8 * err(nearest)
    np.testing.assert_array_equal(q, int8._error_feedback_round(w, scale, (x.T @ x)[None]))
    # uncorrelated inputs of equal power: nothing to trade, nearest rounding it is
    q = int8._error_feedback_round(w, scale, np.eye(24)[None] * 2000.0)
    np.testing.assert_array_equal(q.reshape(8, -1), nearest)


def test_patch_moments_are_those_of_the_convolution():
    import torch
    from onnx import helper as h

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 9, 11)).astype(np.float32)
    w = rng.normal(size=(6, 2, 3, 3)).astype(np.float32)  # 2 groups of 2 input channels
    node = h.make_node(
        "Conv", ["x", "w"], ["y"], strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 2], group=2
    )
    moments = int8._patch_moments(x, node, (3, 3))
    assert moments.shape == (2, 18, 18)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 2)))
    y = torch.nn.functional.conv2d(
        torch.from_numpy(xp), torch.from_numpy(w), stride=(2, 1), dilation=(1, 2), groups=2
    ).numpy()
    rows = w.reshape(2, 3, 18).astype(np.float64)
    # sum over positions of (w . p)^2 = w^T M w, per output channel
    expected = np.einsum("god,gde,goe->go", rows, moments, rows).reshape(-1)
    np.testing.assert_allclose(expected, (y.astype(np.float64) ** 2).sum(axis=(0, 2, 3)), rtol=1e-4)


def test_error_feedback_rounding_changes_only_the_int8_weights_and_lowers_their_error(
    trained, tmp_path
):
    fp32, calib, other = trained
    plain, rounded = tmp_path / "plain.onnx", tmp_path / "ef.onnx"
    int8.quantize(fp32, plain, calib, int8.Int8Recipe("plain"))
    int8.quantize(fp32, rounded, calib, int8.Int8Recipe("ef", error_feedback=True))
    a, b = onnx.load(str(plain)).graph.initializer, onnx.load(str(rounded)).graph.initializer
    moved = 0
    for x, y in zip(a, b, strict=True):
        same = np.array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y))
        if x.data_type == TensorProto.INT8:
            moved += not same
        else:
            assert same, x.name  # scales, zero points and biases stay
    assert moved > 0
    # the convolutions' output error from their weights' rounding, on the calibration images
    # and on other images of the same kind
    for images in (calib, other):
        assert _weight_error(fp32, rounded, images) < 0.5 * _weight_error(fp32, plain, images)


def test_an_unknown_recipe_is_a_one_line_error():
    assert int8.recipe("stride-8-region") is int8.RECIPES["stride-8-region"]
    with pytest.raises(int8.Int8Error, match="unknown INT8 recipe 'nope'; known: minmax") as e:
        int8.recipe("nope")
    assert "\n" not in str(e.value) and int8.DEFAULT.name in str(e.value)


def test_the_weight_side_statistics_read_a_bounded_number_of_pixels():
    small = np.zeros((80, 64, 64, 3), np.uint8)
    assert len(int8.statistics_images(small)) == 64
    assert len(int8.statistics_images(small[:10])) == 10
    large = np.zeros((64, 224, 224, 3), np.uint8)
    assert len(int8.statistics_images(large)) == 16
    assert len(int8.statistics_images(np.zeros((64, 96, 256, 3), np.uint8))) == 16
