"""Test helpers shared by several test modules (plain functions; fixtures live in conftest.py).

Importing this module needs neither torch nor ``defectssft``: the helpers that do import them
when called, so the line runtime's tests run where only ``defectssft-line`` is installed.

``fixed_onnx_model`` writes a model file of the ONNX contract without torch (onnx.helper), so the
line runtime's tests run where only ``defectssft-line`` is installed. Its graph ignores the image:
``logits = bias``, so ``probs = softmax(bias)`` and the defect score are known exactly (bias 0
gives p = 1/3 per class, a defect score of 2/3). ``tests/test_export.py`` checks that a torch
export of a model with the same fixed head gives the same outputs.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from defectssft_line.decision import FORMAT, FORMAT_VERSION, METADATA_KEY

if TYPE_CHECKING:  # the helpers below the line models import torch/defectssft when called
    import torch

    from defectssft.project import Project
    from defectssft.training.data import TrainData

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
CLASSES = ["ok", "scratch", "spot"]


def random_images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def line_metadata(thresholds: dict, version: str = "v0001") -> dict:
    """The ``metadata_props["defectssft"]`` of a fixed model (what ``defectssft export`` writes)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_version": version,
        "classes": CLASSES,
        "ok_class": "ok",
        "input": {
            "height": SIZE,
            "width": SIZE,
            "channels": 3,
            "layout": "NHWC",
            "dtype": "uint8",
            "color": "rgb",
            "resize": "area",
            "bit_depth": 8,
        },
        "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3},
        "thresholds": thresholds,
        "data_hash": "",
        "backbone": "fixed",
        "precision": "fp32",
        "created": "2026-01-01T00:00:00+00:00",
        "project": "",
    }


def fixed_onnx_model(
    path: Path, bias: list[float], thresholds: dict | None = None, version: str = "v0001"
) -> Path:
    """Write ``path``: an ONNX model of the line contract whose logits are ``bias``."""
    import onnx
    from onnx import TensorProto, helper

    n = len(bias)
    ok_mask = [0.0] + [1.0] * (n - 1)  # the defect score sums every class but "ok"
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),  # [N]
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),  # [N, 1]
        helper.make_node("Mul", ["m1", "zero"], ["z"]),  # zeros [N, 1]
        helper.make_node("Add", ["z", "bias"], ["logits"]),  # [N, C]
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("MatMul", ["probs", "mask"], ["s1"]),  # [N, 1]
        helper.make_node("Squeeze", ["s1", "axis1"], ["defect_score"]),
    ]
    inits = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("bias", TensorProto.FLOAT, [1, n], [float(b) for b in bias]),
        helper.make_tensor("mask", TensorProto.FLOAT, [n, 1], ok_mask),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", SIZE, SIZE, 3])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n]),
            helper.make_tensor_value_info("defect_score", TensorProto.FLOAT, ["batch"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    thresholds = thresholds or {"ng": 0.5, "unsure_low": 0.5, "unsure_high": 0.5}
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(line_metadata(thresholds, version))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# ----------------------------------------------------------- export/evaluation (need torch)


def synthetic_image(kind: str, seed: int) -> np.ndarray:
    """A 40x40 gray part: plain texture (ok), a bright line (scratch) or a dark blob (spot)."""
    rng = np.random.default_rng(seed)
    img = (120 + rng.normal(0, 8, (40, 40))).clip(0, 255).astype(np.uint8)
    if kind == "scratch":
        r = int(rng.integers(5, 35))
        cv2.line(img, (0, r), (39, 39 - r), 250, 2)
    elif kind == "spot":
        cv2.circle(img, (int(rng.integers(10, 30)), int(rng.integers(10, 30))), 6, 20, -1)
    return img


def make_project(root: Path, per_class: int = 10, unlabeled: int = 6) -> Project:
    """A project with labeled synthetic images of each class (frozen splits) and a few unlabeled."""
    from defectssft.project import Project

    src = root / "src"
    src.mkdir(parents=True)
    project = Project.create(root / "proj", classes=CLASSES, ok_class="ok")
    n = 0
    for kind in CLASSES:
        for i in range(per_class):
            path = src / f"{kind}_{i}.png"
            cv2.imwrite(str(path), synthetic_image(kind, n))
            n += 1
            res = project.add_image(path, label=kind)
            assert res.status == "added", res
    for i in range(unlabeled):
        path = src / f"u_{i}.png"
        cv2.imwrite(str(path), synthetic_image(CLASSES[i % 3], 1000 + i))
        project.add_image(path)
    project.assign_splits(val_fraction=0.2, test_fraction=0.3, seed=0, min_labels=3)
    return project


def tiny_meta(version: str = "", thresholds: dict | None = None) -> dict:
    return {
        "model_name": "test_efficientnet",
        "classes": CLASSES,
        "ok_class": "ok",
        "input": {"height": SIZE, "width": SIZE, "bit_depth": 8},
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "version": version,
        "thresholds": thresholds,
    }


def tiny_model(seed: int = 0, bias: list[float] | None = None) -> torch.nn.Module:
    """A random test_efficientnet; with ``bias`` its head ignores the image (fixed prediction)."""
    import torch

    from defectssft.modeling import build_model

    torch.manual_seed(seed)
    model = build_model("test_efficientnet", len(CLASSES), weights="none").eval()
    if bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
    return model


def add_model(
    project: Project, seed: int = 0, bias: list[float] | None = None, thresholds: dict | None = None
) -> str:
    """Save a tiny model as the project's next version and register it."""
    from defectssft.modeling import save_model_file

    version, folder = project.new_model_dir()
    meta = tiny_meta(version, thresholds)
    save_model_file(folder / "model.pt", tiny_model(seed, bias), meta)
    project.register_model(version, {k: v for k, v in meta.items() if k != "thresholds"}, {})
    return version


# ----------------------------------------------------------- training (need torch)


TINY = {
    "model": {"name": "test_resnet", "weights": "none", "drop_rate": 0.1},
    "input": {"height": 32, "width": 32},
    "ssl": {"method": "fixmatch", "mu": 2, "threshold": 0.5},
    "train": {
        "steps": 4,
        "batch_size": 4,
        "warmup_steps": 1,
        "eval_every": 100,
        "checkpoint_every": 2,
        "log_every": 1,
        "num_workers": 0,
        "threads": 1,
        "lr": 0.01,
    },
}


def write_gray(path: Path, value: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(value, 20, (40, 40)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return str(path)


def tiny_data_at(root: Path) -> TrainData:
    """Two classes (dark / bright noise), 6 labeled each, 12 unlabeled, 3 val each; 40x40 PNGs."""
    from defectssft.training.data import TrainData

    lab = [
        (write_gray(root / f"l{c}_{i}.png", 60 + 130 * c, i + 10 * c), c)
        for c in (0, 1)
        for i in range(6)
    ]
    unl = [write_gray(root / f"u{i}.png", 60 + 130 * (i % 2), 100 + i) for i in range(12)]
    val = [
        (write_gray(root / f"v{c}_{i}.png", 60 + 130 * c, 200 + i + 10 * c), c)
        for c in (0, 1)
        for i in range(3)
    ]
    return TrainData(
        classes=["ok", "dent"], labeled=lab, unlabeled=unl, val=val, ok_class="ok", bit_depth=8
    )


def cfg(**sections) -> dict:
    from defectssft.training.config import resolve_config

    merged = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return resolve_config(overrides=merged)


def tiny_project(root: Path, unlabeled: int = 8, test_fraction: float = 0.0, seed: int = 300):
    """An ok/dent project of 8 labeled 40 px images per class and ``unlabeled`` more, split."""
    from defectssft.project import Project  # noqa: F811 - imported when called

    p = Project.create(root / "proj", classes=["ok", "dent"], ok_class="ok")
    p.set_setting("input.bit_depth", 8)
    for c, name in enumerate(["ok", "dent"]):
        for i in range(8):
            r = p.add_image(
                write_gray(root / "src" / f"{name}{i}.png", 60 + 130 * c, seed + i + 10 * c)
            )
            p.set_label(r.image_id, name, who="test", source="human")
    for i in range(unlabeled):
        p.add_image(write_gray(root / "src" / f"u{i}.png", 60 + 130 * (i % 2), seed + 100 + i))
    p.assign_splits(val_fraction=0.25, test_fraction=test_fraction, min_labels=3)
    return p


def cli_sets(steps: int) -> list[str]:
    out = []
    for section, values in TINY.items():
        for k, v in values.items():
            out += ["--set", f"{section}.{k}={steps if k == 'steps' else v}"]
    return out


def with_metadata(src: Path, dest: Path, change) -> Path:
    """Copy the model ``src`` to ``dest`` with its defectssft metadata passed through ``change``."""
    import onnx

    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "defectssft":
            prop.value = json.dumps(change(json.loads(prop.value)))
    onnx.save(model, str(dest))
    return dest


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A few hundred bytes whose header claims width x height 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4)  # a few rows; the rest is 'missing'
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def add_bytes(project: Project, data: bytes, name: str, **kwargs):
    """``Project.add_prepared`` of image bytes (what an import does with a file's content)."""
    from defectssft.ingest import prepare_image_bytes

    return project.add_prepared(prepare_image_bytes(data, name), **kwargs)
