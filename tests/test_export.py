"""Export: ONNX parity with torch on a tiny model, INT8/FP16, metadata round trip, atomic writes,
and evaluation of a project model (metrics stored, report written).

The synthetic project and tiny model files come from tests/helpers.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from defectssft.errors import DefectssftError
from defectssft.export import (
    ExportError,
    export_onnx,
    export_project_model,
    read_metadata,
)
from defectssft.inspection import ModelSpec
from defectssft.project import Project
from tests.helpers import (
    CLASSES,
    SIZE,
    add_model,
    make_project,
    random_images,
    tiny_meta,
    tiny_model,
)

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
    assert op["chosen_on"] in ("val", "val+oof") and op["escape_rate"] is not None
    assert op["escapes"]["n"] == m["inspection"]["n_defective"]  # a count with its interval
    report = Path(ev.report)
    assert report.is_file()
    for plot in ("confusion.png", "scores.png", "roc.png"):
        assert (report.parent / plot).is_file()
    assert "## Mistakes" in report.read_text() and "line verdict" in report.read_text()
    assert json.loads((report.parent / "metrics.json").read_text())["version"] == version
    data = project.training_data()  # test, val and the stream sample are stored predictions
    assert len(project.predictions(version)) == m["n"] + len(data.val) + len(data.unlabeled)

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


def test_torch_export_of_a_fixed_head_matches_the_line_test_model(tmp_path):
    """The line's tests use ``tests.helpers.fixed_onnx_model`` (no torch): a real export of a
    model with the same fixed head gives the same outputs and the same metadata keys."""
    from defectssft_line.model import LineModel
    from tests.helpers import fixed_onnx_model, line_metadata

    bias = [1.0, 0.0, -1.0]
    exported = tmp_path / "torch.onnx"
    export_onnx(tiny_model(bias=bias), tiny_meta("v0001"), exported, check_images=random_images(2))
    fixed = fixed_onnx_model(tmp_path / "fixed.onnx", bias)
    images = random_images(3, seed=5)
    a, b = LineModel.load(exported).predict(images), LineModel.load(fixed).predict(images)
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)
    assert set(read_metadata(exported)) == set(line_metadata({}))
