"""Export: ONNX parity with torch on a tiny model, INT8/FP16, metadata round trip, atomic writes,
and evaluation of a project model (metrics stored, report written).

The helpers at the top (a synthetic project and tiny model files) are reused by test_promote.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defectssft.errors import DefectssftError
from defectssft.export import (
    ExportError,
    export_onnx,
    export_project_model,
    read_metadata,
)
from defectssft.inspection import ModelSpec
from defectssft.modeling import build_model, save_model_file
from defectssft.project import Project

SIZE = 32
CLASSES = ["ok", "scratch", "spot"]


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
    project.assign_splits(val_fraction=0.2, test_fraction=0.3, seed=0)
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
    version, folder = project.new_model_dir()
    meta = tiny_meta(version, thresholds)
    save_model_file(folder / "model.pt", tiny_model(seed, bias), meta)
    project.register_model(version, {k: v for k, v in meta.items() if k != "thresholds"}, {})
    return version


def random_images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- export_onnx


def test_fp32_export_matches_torch_and_carries_metadata(tmp_path):
    out = tmp_path / "m.onnx"
    thresholds = {"ng": 0.4, "unsure_low": 0.3, "unsure_high": 0.6}
    res = export_onnx(
        tiny_model(),
        tiny_meta("v0007"),
        out,
        check_images=random_images(),
        check_labels=[0, 1, 2, 0, 1, 2],
        thresholds=thresholds,
        project="line3",
    )
    assert out.is_file() and res.path == str(out)
    assert res.max_prob_diff < 1e-4
    assert res.top1_agreement == 1.0
    meta = read_metadata(out)
    assert meta["format"] == "defectssft-model" and meta["format_version"] == 1
    assert meta["classes"] == CLASSES and meta["ok_class"] == "ok"
    assert meta["input"] == {
        "height": SIZE,
        "width": SIZE,
        "channels": 3,
        "layout": "NHWC",
        "dtype": "uint8",
        "color": "rgb",
        "resize": "area",
        "bit_depth": 8,
    }
    assert meta["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert meta["thresholds"] == thresholds
    assert meta["model_version"] == "v0007" and meta["project"] == "line3"
    assert meta["precision"] == "fp32" and meta["backbone"] == "test_efficientnet"


def test_onnx_graph_signature_and_defect_score(tmp_path):
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    export_onnx(tiny_model(), tiny_meta(), out, check_images=random_images(2))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("image", "tensor(uint8)", [SIZE, SIZE, 3])
    probs, logits, score = sess.run(
        ["probs", "logits", "defect_score"], {"image": random_images(5)}
    )
    assert probs.shape == logits.shape == (5, 3) and score.shape == (5,)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(score, 1.0 - probs[:, 0], atol=1e-6)


@pytest.mark.parametrize("ok_class", ["ok", None])
def test_onnx_defect_score_of_a_confident_prediction_is_not_rounded_to_zero(tmp_path, ok_class):
    # A margin of 25-30 logits puts p(other) near 1e-11..1e-13: 1 - p(top) in float32 would be 0
    # for both models; the graph's score keeps its value and so the rank between them.
    import onnxruntime as ort

    scores = []
    for margin in (25.0, 30.0):
        out = tmp_path / f"m{margin:.0f}.onnx"
        meta = {**tiny_meta(), "ok_class": ok_class}
        export_onnx(tiny_model(bias=[margin, 0.0, 0.0]), meta, out, check_images=random_images(2))
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (score,) = sess.run(["defect_score"], {"image": random_images(3)})
        np.testing.assert_allclose(score, 2 * np.exp(-margin), rtol=1e-3)
        scores.append(float(score[0]))
    assert scores[0] > scores[1] > 0.0


def test_int8_and_fp16_exports_run(tmp_path):
    images = random_images(8)
    res8 = export_onnx(
        tiny_model(),
        tiny_meta(),
        tmp_path / "m8.onnx",
        check_images=images,
        calib_images=random_images(8, seed=1),
        precision="int8",
        max_int8_drop=1.0,
    )
    assert res8.reference == "onnx-fp32" and res8.n_checked == 8
    assert read_metadata(tmp_path / "m8.onnx")["precision"] == "int8"
    res16 = export_onnx(
        tiny_model(), tiny_meta(), tmp_path / "m16.onnx", check_images=images, precision="fp16"
    )
    assert res16.max_prob_diff < 2e-2
    assert read_metadata(tmp_path / "m16.onnx")["precision"] == "fp16"


def test_failed_check_keeps_existing_file(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the good model")
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(
            tiny_model(), tiny_meta(), out, check_images=random_images(), max_prob_diff=-1.0
        )
    assert out.read_bytes() == b"the good model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp files left


def test_bad_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(ExportError, match="unknown precision"):
        export_onnx(
            tiny_model(),
            tiny_meta(),
            tmp_path / "m.onnx",
            check_images=random_images(),
            precision="int4",
        )
    with pytest.raises(ExportError, match=r"check images must be \[N, 32, 32, 3\]"):
        export_onnx(
            tiny_model(),
            tiny_meta(),
            tmp_path / "m.onnx",
            check_images=np.zeros((2, 16, 16, 3), np.uint8),
        )
    with pytest.raises(ExportError, match="unsure_low"):
        export_onnx(
            tiny_model(),
            tiny_meta(),
            tmp_path / "m.onnx",
            check_images=random_images(1),
            thresholds={"ng": 0.5, "unsure_low": 0.7, "unsure_high": 0.5},
        )
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("hello")
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        read_metadata(not_onnx)


def resolve_thresholds(meta, metrics=None, **overrides):
    return ModelSpec.from_meta(meta).resolve_thresholds(metrics, **overrides).as_dict()


def test_threshold_resolution_order():
    assert resolve_thresholds(tiny_meta())["ng"] == 0.5
    metrics = {"test": {"operating_point": {"threshold": 0.2}}}
    assert resolve_thresholds(tiny_meta(), metrics)["ng"] == 0.2
    own = tiny_meta(thresholds={"ng": 0.3, "unsure_low": 0.2, "unsure_high": 0.4})
    assert resolve_thresholds(own, metrics) == {"ng": 0.3, "unsure_low": 0.2, "unsure_high": 0.4}
    assert resolve_thresholds(own, metrics, threshold=0.7) == {
        "ng": 0.7,
        "unsure_low": 0.7,
        "unsure_high": 0.7,
    }


# --------------------------------------------------------------------------- project level


def test_evaluate_and_export_project_model(tmp_path):
    from defectssft.evaluate import evaluate_project_model

    project = make_project(tmp_path)
    version = add_model(project)
    ev = evaluate_project_model(project, version, max_escape=0.0)
    m = project.get_model(version)["metrics"]["test"]
    assert m["n"] == len(project.training_data().test) > 0
    assert sum(map(sum, m["confusion_matrix"])) == m["n"]
    op = m["operating_point"]
    assert op["chosen_on"] in ("val", "test") and op["escape_rate"] is not None
    report = Path(ev.report)
    assert report.is_file()
    for plot in ("confusion.png", "scores.png", "roc.png"):
        assert (report.parent / plot).is_file()
    assert "Misclassified images" in report.read_text()
    assert json.loads((report.parent / "metrics.json").read_text())["version"] == version
    assert len(project.predictions(version)) == m["n"]

    res = export_project_model(project, version)
    assert Path(res.path) == Path(project.get_model(version)["path"]) / "model.onnx"
    assert read_metadata(res.path)["thresholds"]["ng"] == pytest.approx(op["threshold"])
    assert project.get_model(version)["metrics"]["export_fp32"]["max_prob_diff"] < 1e-4


def test_cli_evaluate_export_errors(tmp_path, capsys):
    from defectssft.cli import main

    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "error:" in capsys.readouterr().err
    project = make_project(tmp_path)
    assert main(["export", str(project.root)]) == 2
    assert "no trained model" in capsys.readouterr().err
    version = add_model(project)
    assert main(["export", str(project.root), "--model", "v0099"]) == 2
    assert "no model version" in capsys.readouterr().err
    out = tmp_path / "cli.onnx"
    assert (
        main(
            ["export", str(project.root), "--model", version, "-o", str(out), "--threshold", "0.3"]
        )
        == 0
    )
    assert read_metadata(out)["thresholds"]["ng"] == 0.3
    assert main(["evaluate", str(project.root), "--no-report"]) == 0
    assert "escape" in capsys.readouterr().out


def test_evaluate_needs_a_test_split(tmp_path):
    from defectssft.evaluate import EvaluationError, evaluate_project_model

    project = Project.create(tmp_path / "p", classes=CLASSES, ok_class="ok")
    add_model(project)
    with pytest.raises(EvaluationError, match="test split is empty"):
        evaluate_project_model(project)
    assert issubclass(EvaluationError, DefectssftError)
