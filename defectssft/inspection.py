"""The one inference path: what a model is (``ModelSpec``) and how it scores an image.

``ModelSpec`` is the typed description of a trained model (timm calls it ``pretrained_cfg``):
classes, OK class, input size and bit depth, normalisation, thresholds. ``model.pt`` is written
from it and read into it (``ModelSpec.from_meta`` / ``to_meta``), and the ONNX metadata of the
line contract is written from it (``onnx_metadata``). Defaults for keys an older file lacks live
here only.

``InspectionModel`` takes uint8 NHWC RGB images (as ``defectssft_line.preprocess`` prepares
them), normalises them with the spec's mean/std and returns probabilities, logits and the defect
score. It is the graph that is exported to ONNX and the one evaluation, the app's predictions and
heat maps (``defectssft.predict``, ``defectssft.explain``) and the demo run. The verdict on the
score is the decision contract's (``defectssft_line.decision``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectssft.metrics import operating_point
from defectssft_line.decision import FORMAT, FORMAT_VERSION, Thresholds, resolve_thresholds
from defectssft_line.preprocess import DEFAULT_BIT_DEPTH

DEFAULT_INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _required(meta: Mapping[str, Any], key: str) -> Any:
    if key not in meta:
        raise ValueError(f"model description without {key!r}")
    return meta[key]


@dataclass(frozen=True)
class InputSpec:
    """The model's input: RGB uint8 at ``height`` x ``width``; 16-bit files scaled from
    ``bit_depth`` bits (docs/ARCHITECTURE.md, "Image normalisation")."""

    height: int = DEFAULT_INPUT_SIZE
    width: int = DEFAULT_INPUT_SIZE
    bit_depth: int = DEFAULT_BIT_DEPTH
    # region of interest and tiling rule, in their metadata form (defectssft_line.roi / .tiles);
    # None: the whole image resized to height x width
    roi: dict[str, Any] | None = field(default=None, compare=False)
    tiles: dict[str, Any] | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"height": self.height, "width": self.width}
        out["bit_depth"] = self.bit_depth
        out.update({k: v for k, v in (("roi", self.roi), ("tiles", self.tiles)) if v is not None})
        return out


@dataclass
class ModelSpec:
    """Everything but the weights that scoring an image with a model needs."""

    model_name: str
    classes: list[str]
    ok_class: str | None = None
    input: InputSpec = field(default_factory=InputSpec)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    thresholds: dict[str, float] | None = None  # the model's own, as written; resolved on use
    version: str = ""
    data_hash: str = ""

    @property
    def ok_index(self) -> int | None:
        return self.classes.index(self.ok_class) if self.ok_class in self.classes else None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], default_bit_depth: int | None = None) -> ModelSpec:
        """The spec of a ``model.pt`` meta dict (``modeling.load_model_file``); keys an older
        file lacks take the defaults (``default_bit_depth``: e.g. the project's sensor depth)."""
        inp = meta.get("input") or {}
        depth = inp.get("bit_depth") or default_bit_depth or DEFAULT_BIT_DEPTH
        return cls(
            model_name=str(meta.get("model_name", "")),
            classes=[str(c) for c in _required(meta, "classes")],
            ok_class=meta.get("ok_class"),
            input=InputSpec(
                int(inp.get("height", DEFAULT_INPUT_SIZE)),
                int(inp.get("width", DEFAULT_INPUT_SIZE)),
                int(depth),
                inp.get("roi"),
                inp.get("tiles"),
            ),
            mean=tuple(float(v) for v in meta.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in meta.get("std", IMAGENET_STD)),
            thresholds=meta.get("thresholds"),
            version=str(meta.get("version") or ""),
            data_hash=str(meta.get("data_hash") or ""),
        )

    def to_meta(self) -> dict[str, Any]:
        """The ``model.pt`` fields of this spec (``modeling.save_model_file`` adds the rest)."""
        return {
            "model_name": self.model_name,
            "num_classes": len(self.classes),
            "classes": list(self.classes),
            "ok_class": self.ok_class,
            "input": self.input.as_dict(),
            "mean": list(self.mean),
            "std": list(self.std),
            "data_hash": self.data_hash,
            "version": self.version,
            "thresholds": self.thresholds,
        }

    def resolve_thresholds(
        self,
        metrics: Mapping[str, Any] | None = None,
        threshold: float | None = None,
        unsure_low: float | None = None,
        unsure_high: float | None = None,
    ) -> Thresholds:
        """The thresholds the line will use (``decision.resolve_thresholds``): overrides, the
        model's own, the operating threshold ``defectssft evaluate`` stored in ``metrics``, 0.5."""
        return resolve_thresholds(
            self.thresholds, operating_point(metrics), threshold, unsure_low, unsure_high
        )

    def onnx_metadata(
        self, thresholds: Thresholds, precision: str, project: str | None = None
    ) -> dict[str, Any]:
        """The ``metadata_props["defectssft"]`` JSON of the ONNX contract."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_version": self.version,
            "classes": list(self.classes),
            "ok_class": self.ok_class,
            "input": {
                "height": self.input.height,
                "width": self.input.width,
                "channels": 3,
                "layout": "NHWC",
                "dtype": "uint8",
                "color": "rgb",
                "resize": "area",
                "bit_depth": self.input.bit_depth,
                **{k: v for k, v in self.input.as_dict().items() if k in ("roi", "tiles")},
            },
            "normalize": {"mean": list(self.mean), "std": list(self.std)},
            "thresholds": thresholds.as_dict(),
            "data_hash": self.data_hash,
            "backbone": self.model_name,
            "precision": precision,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "project": project or "",
        }

    @classmethod
    def from_onnx_metadata(cls, metadata: Mapping[str, Any]) -> ModelSpec:
        """The spec an exported file was written from (its metadata, ``export.read_metadata``)."""
        norm = metadata.get("normalize") or {}
        return cls.from_meta(
            {
                "model_name": metadata.get("backbone", ""),
                "classes": metadata["classes"],
                "ok_class": metadata.get("ok_class"),
                "input": metadata.get("input") or {},
                "mean": norm.get("mean", IMAGENET_MEAN),
                "std": norm.get("std", IMAGENET_STD),
                "thresholds": metadata.get("thresholds"),
                "version": metadata.get("model_version", ""),
                "data_hash": metadata.get("data_hash", ""),
            }
        )


def to_model_input(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) NCHW batch -> normalised float32 ``(x - mean) / std``: the
    one normalisation, of training batches (after augmentation) and of the inspection model."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class InspectionModel(nn.Module):
    """uint8 NHWC RGB in -> (probs, logits, defect_score): the exported graph, also used by eval."""

    def __init__(
        self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], ok_index: int | None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.ok_index = ok_index

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC RGB -> the backbone's float NCHW input (``to_model_input``)."""
        return to_model_input(image.permute(0, 3, 1, 2), self.mean, self.std)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.backbone(self.normalise(image)).to(torch.float32)
        probs, score = self.probs_and_score(logits)
        return probs, logits, score

    def probs_and_score(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax and the defect score of ``defectssft_line.decision.defect_scores``, as graph
        operations (float32 logits [N, C] -> probs [N, C], score [N])."""
        probs = torch.softmax(logits, dim=1)
        if self.ok_index is None:
            drop = probs.argmax(dim=1, keepdim=True)
        else:
            drop = torch.full(
                (probs.shape[0], 1), self.ok_index, dtype=torch.int64, device=probs.device
            )
        return probs, probs.scatter(1, drop, 0.0).sum(dim=1)


def inspection_model(model: nn.Module, spec: ModelSpec | Mapping[str, Any]) -> InspectionModel:
    """Wrap a backbone loaded from ``model.pt`` with its normalisation and score head."""
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.from_meta(spec)
    return InspectionModel(model, spec.mean, spec.std, spec.ok_index).eval()


def load_inspection(
    path: str | Path, device: str | torch.device = "cpu", default_bit_depth: int | None = None
) -> tuple[InspectionModel, ModelSpec]:
    """``model.pt`` -> (its InspectionModel in eval mode, its spec); ModelFileError if unusable."""
    from defectssft.modeling import load_model_file

    backbone, meta = load_model_file(path, device)
    spec = ModelSpec.from_meta(meta, default_bit_depth)
    return inspection_model(backbone, spec).to(device), spec


def input_size(meta: Mapping[str, Any]) -> tuple[int, int, int]:
    """(height, width, bit_depth) the model of a ``model.pt`` meta dict expects."""
    inp = ModelSpec.from_meta(meta).input
    return inp.height, inp.width, inp.bit_depth


def predict_arrays(
    wrapper: InspectionModel, images: np.ndarray, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(probs [N, C], defect scores [N]) of the torch graph on uint8 NHWC images."""
    probs, scores = [], []
    device = next(wrapper.parameters(), torch.empty(0)).device
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))
            p, _, s = wrapper(batch.to(device))
            probs.append(p.cpu().numpy())
            scores.append(s.cpu().numpy())
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(probs, axis=0), np.concatenate(scores, axis=0)


def run_torch(wrapper: InspectionModel, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """probs [N, C] of the torch graph on uint8 NHWC images."""
    return predict_arrays(wrapper, images, batch_size)[0]


def load_images(
    paths: Sequence[str | Path], height: int, width: int, bit_depth: int, roi: Any = None
) -> np.ndarray:
    """Project images as one uint8 [N, H, W, 3] array through the shared preprocessing
    (``roi``: the model's region of interest, ``defectssft_line.roi``)."""
    from defectssft.export import ExportError
    from defectssft_line.preprocess import ImageDecodeError, load_for_model
    from defectssft_line.roi import as_roi

    roi = as_roi(roi)  # once, not per image (a mask is decoded here)
    arrays = []
    for p in paths:
        try:
            arrays.append(load_for_model(p, height, width, bit_depth, roi))
        except ImageDecodeError as e:
            raise ExportError(f"cannot read project image: {e}") from e
    if not arrays:
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack(arrays)
