"""Where the model looked: Grad-CAM heat maps of a ``model.pt`` (torch; call from a worker thread).

The image goes through the one inference path (``defectssft.inspection``): the shared
preprocessing at the model's input size and bit depth, then the ``InspectionModel``'s own
normalisation; the class score is back-propagated to the last convolutional feature
map (timm's ``forward_features`` / ``forward_head`` split), and the channels are weighted by
their mean gradient (Selvaraju et al., Grad-CAM). The map is returned at the image's own size.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defectssft.errors import ModelFileError
from defectssft_line.preprocess import read_image, resize, to_rgb8

_lock = threading.Lock()
_cache: dict[tuple[str, float, int | None], tuple[Any, Any]] = {}


@dataclass
class CamResult:
    probs: list[float]
    classes: list[str]
    class_index: int  # the class the map explains
    heat: np.ndarray  # HxW float32 in [0, 1], at the original image size

    @property
    def predicted(self) -> str:
        return self.classes[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(max(self.probs))


def _load(model_path: Path, bit_depth: int | None) -> tuple[Any, Any]:
    """The InspectionModel and spec of ``model_path``, kept loaded while the file is unchanged."""
    from defectssft.inspection import load_inspection

    key = (str(model_path.resolve()), model_path.stat().st_mtime, bit_depth)
    with _lock:
        if key not in _cache:
            _cache.clear()
            _cache[key] = load_inspection(model_path, default_bit_depth=bit_depth)
        return _cache[key]


def grad_cam(
    model_path: str | Path,
    image_path: str | Path,
    class_index: int | None = None,
    bit_depth: int | None = None,
) -> CamResult:
    """Probabilities and the Grad-CAM map of ``image_path`` for ``class_index`` (None: top class).

    The model's own bit depth is used; ``bit_depth`` (the project's) only for a model file
    that does not declare one. Raises ModelFileError for a model without a convolutional feature map, ImageDecodeError for
    an unreadable image.
    """
    import torch

    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelFileError(f"model file not found: {model_path}")
    wrapper, spec = _load(model_path, bit_depth)
    model = wrapper.backbone
    inp = spec.input
    raw = read_image(image_path)
    box = None  # ROI / tiles: the part of the image the map explains (defectssft.tiling)
    if inp.roi is not None or inp.tiles is not None:
        from defectssft.tiling import cam_input

        rgb, box = cam_input(wrapper, raw, spec, str(image_path))
    else:
        rgb = resize(to_rgb8(raw, inp.bit_depth), inp.height, inp.width)
    x = wrapper.normalise(torch.from_numpy(rgb).unsqueeze(0))
    with _lock:  # one model object: one backward pass at a time
        feats = model.forward_features(x)
        if feats.ndim != 4:
            raise ModelFileError(
                f"{model_path}: {spec.model_name} has no convolutional "
                "feature map; heat maps need a CNN backbone"
            )
        feats = feats.detach().requires_grad_(True)
        logits = model.forward_head(feats)
        probs = torch.softmax(logits, dim=1)[0]
        idx = int(probs.argmax()) if class_index is None else int(class_index)
        if not 0 <= idx < probs.numel():
            raise ValueError(f"class index {idx} out of range (model has {probs.numel()})")
        model.zero_grad(set_to_none=True)
        logits[0, idx].backward()
        grads = feats.grad[0]
        weights = grads.mean(dim=(1, 2))
        cam = torch.relu((weights[:, None, None] * feats[0]).sum(dim=0)).detach().numpy()
    heat = cam.astype(np.float32)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else np.zeros_like(heat)
    if box is not None:
        from defectssft.tiling import paste_heat

        heat = paste_heat(heat, box, raw.shape)
    else:
        heat = cv2.resize(heat, (raw.shape[1], raw.shape[0]), interpolation=cv2.INTER_LINEAR)
    classes = list(spec.classes)
    return CamResult(
        [float(p) for p in probs.detach().tolist()], classes, idx, np.clip(heat, 0.0, 1.0)
    )
