"""The one inference path: a ``model.pt`` backbone wrapped with its normalisation and score head.

``InspectionModel`` takes uint8 NHWC RGB images (as ``defectssft_line.preprocess`` prepares them)
and returns probabilities, logits and the defect score. It is the graph that is exported to ONNX
and the one evaluation, the app's predictions and heat maps, and the demo run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class InspectionModel(nn.Module):
    """uint8 NHWC RGB in -> (probs, logits, defect_score): the exported graph, also used by eval."""

    def __init__(
        self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], ok_index: int | None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer(
            "scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1)
        )
        self.register_buffer(
            "shift", (torch.tensor(mean, dtype=torch.float32) * 255.0).view(1, 3, 1, 1)
        )
        self.ok_index = ok_index

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.shift) * self.scale
        logits = self.backbone(x).to(torch.float32)
        probs = torch.softmax(logits, dim=1)
        # 1 - p(OK) (or 1 - max prob) summed from the other classes: 1 - p in float32 rounds
        # every score below ~6e-8 to 0 and confident OK parts would tie (see defectssft.metrics).
        if self.ok_index is None:
            drop = probs.argmax(dim=1, keepdim=True)
        else:
            drop = torch.full(
                (probs.shape[0], 1), self.ok_index, dtype=torch.int64, device=probs.device
            )
        score = probs.scatter(1, drop, 0.0).sum(dim=1)
        return probs, logits, score


def inspection_model(model: nn.Module, meta: dict[str, Any]) -> InspectionModel:
    """Wrap a backbone loaded from ``model.pt`` with its normalisation and score head."""
    classes = list(meta["classes"])
    ok = meta.get("ok_class")
    ok_index = classes.index(ok) if ok in classes else None
    return InspectionModel(model, meta["mean"], meta["std"], ok_index).eval()


def input_size(meta: dict[str, Any]) -> tuple[int, int, int]:
    """(height, width, bit_depth) the model expects."""
    inp = meta.get("input") or {}
    return int(inp.get("height", 224)), int(inp.get("width", 224)), int(inp.get("bit_depth", 16))


def run_torch(wrapper: InspectionModel, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """probs [N, C] of the torch graph on uint8 NHWC images."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(
                wrapper(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))[
                    0
                ].numpy()
            )
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


def load_images(paths: Sequence[str | Path], height: int, width: int, bit_depth: int) -> np.ndarray:
    """Project images as one uint8 [N, H, W, 3] array through the shared preprocessing."""
    from defectssft.export import ExportError
    from defectssft_line.preprocess import ImageDecodeError, load_for_model

    arrays = []
    for p in paths:
        try:
            arrays.append(load_for_model(p, height, width, bit_depth))
        except ImageDecodeError as e:
            raise ExportError(f"cannot read project image: {e}") from e
    if not arrays:
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack(arrays)
