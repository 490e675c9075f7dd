"""The one inference path: ModelSpec round trips and InspectionModel on uint8 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectssft.inspection import (
    InputSpec,
    ModelSpec,
    inspection_model,
    load_inspection,
    predict_arrays,
    to_model_input,
)
from defectssft.modeling import save_model_file
from defectssft_line.decision import Thresholds, defect_scores
from tests.helpers import random_images, tiny_meta, tiny_model


def test_spec_round_trips_through_model_pt_meta_and_onnx_metadata():
    spec = ModelSpec.from_meta(
        tiny_meta("v0003", {"ng": 0.4, "unsure_low": 0.3, "unsure_high": 0.6})
    )
    assert spec.input == InputSpec(32, 32, 8) and spec.ok_index == 0
    assert ModelSpec.from_meta(spec.to_meta()) == spec
    onnx_meta = spec.onnx_metadata(spec.resolve_thresholds(), "fp32", "proj")
    assert onnx_meta["thresholds"] == {"ng": 0.4, "unsure_low": 0.3, "unsure_high": 0.6}
    assert ModelSpec.from_onnx_metadata(onnx_meta) == spec


def test_defaults_for_an_older_file_and_the_bit_depth_rule():
    old = ModelSpec.from_meta({"model_name": "x", "classes": ["a", "b"]})
    assert old.input == InputSpec(224, 224, 16) and old.ok_index is None
    # The project's depth only fills in for a model that does not declare one.
    assert ModelSpec.from_meta({"classes": ["a"]}, default_bit_depth=12).input.bit_depth == 12
    declared = {"classes": ["a"], "input": {"height": 8, "width": 8, "bit_depth": 10}}
    assert ModelSpec.from_meta(declared, default_bit_depth=12).input.bit_depth == 10


def test_resolve_thresholds_uses_the_evaluated_operating_point():
    metrics = {"test": {"operating_point": {"threshold": 0.2}}}
    assert ModelSpec.from_meta(tiny_meta()).resolve_thresholds(metrics) == Thresholds(0.2, 0.2, 0.2)


def test_inspection_model_normalises_like_training_and_scores_like_the_decision(tmp_path):
    model = tiny_model(seed=1)
    spec = ModelSpec.from_meta(tiny_meta())
    wrapper = inspection_model(model, spec)
    images = random_images(4)
    probs, scores = predict_arrays(wrapper, images)
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2), spec.mean, spec.std)
        direct = model.eval()(x).softmax(1).numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-5)
    np.testing.assert_allclose(scores, defect_scores(probs, spec.ok_index), atol=1e-6)
    path = save_model_file(tmp_path / "model.pt", model, tiny_meta("v0001"))
    loaded, loaded_spec = load_inspection(path)
    assert loaded_spec.version == "v0001"
    np.testing.assert_allclose(predict_arrays(loaded, images)[0], probs, atol=1e-6)
    assert predict_arrays(loaded, images[:0])[0].shape == (0, 0)
    with pytest.raises(ValueError):
        ModelSpec.from_meta({"model_name": "x"})  # no classes: not a model description
