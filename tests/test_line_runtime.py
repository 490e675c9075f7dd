"""The line runtime: verdicts with torch unimportable, bad images and bad model files, threshold
override, the UNSURE band, CSV output, camera source and bench.

Models here ignore the image (``tests.helpers.fixed_onnx_model``, built without torch) so the
verdict is known exactly: bias 0 gives p = 1/3 per class, i.e. a defect score of 2/3.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectssft_line.cli import main
from defectssft_line.model import LineModel, LineModelError, Thresholds, decide
from tests.helpers import REPO, with_metadata
from tests.helpers import fixed_onnx_model as export_fixed

SCORE = 2 / 3  # defect score of a zero-bias model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "ng": export_fixed(d / "ng.onnx", [0.0, 0.0, 0.0]),  # score 2/3, top defect 'scratch'
        "ok": export_fixed(d / "ok.onnx", [5.0, 0.0, 0.0]),  # score ~0.013
    }


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_gray.png"), np.full((50, 70), 100, np.uint8))
    cv2.imwrite(str(folder / "b_color.jpg"), np.full((40, 40, 3), 200, np.uint8))
    cv2.imwrite(str(folder / "c_16bit.png"), np.full((30, 30), 4000, np.uint16))
    return folder


def run_cli(args: list[str], capsys) -> tuple[int, list[dict], str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines() if line.strip()], err


BLOCKER = """
import sys
BLOCKED = ("torch", "timm", "defectssft", "torchvision", "kornia")
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked in this test: " + name)
        return None
sys.meta_path.insert(0, Blocker())
from defectssft_line.cli import main
rc = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
sys.exit(rc)
"""


def test_runtime_works_with_torch_unimportable(models, images, tmp_path):
    (images / "d_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9")
    unsure = tmp_path / "unsure"
    env = {**os.environ, "PYTHONPATH": str(REPO / "deploy")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKER,
            "run",
            "--model",
            str(models["ng"]),
            "--input",
            str(images),
            "--unsure-low",
            "0.5",
            "--unsure-high",
            "0.9",
            "--send-unsure",
            str(unsure),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # 1: one input could not be read
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["file"]).name for r in rows] == [
        "a_gray.png",
        "b_color.jpg",
        "c_16bit.png",
        "d_corrupt.jpg",
    ]
    assert [r["verdict"] for r in rows] == ["UNSURE", "UNSURE", "UNSURE", "ERROR"]
    assert rows[0]["class"] == "scratch" and rows[0]["score"] == pytest.approx(SCORE, abs=1e-4)
    assert "not a readable image" in rows[3]["error"]
    assert sorted(p.name for p in unsure.iterdir()) == ["a_gray.png", "b_color.jpg", "c_16bit.png"]
    assert (unsure / "c_16bit.png").read_bytes() == (images / "c_16bit.png").read_bytes()


def test_verdicts_threshold_override_and_band(models, images, capsys):
    rc, rows, err = run_cli(["run", "--model", str(models["ng"]), "--input", str(images)], capsys)
    assert rc == 0 and {r["verdict"] for r in rows} == {"NG"} and len(rows) == 3
    assert "thresholds ng=0.5" in err
    rc, rows, _ = run_cli(
        ["run", "--model", str(models["ng"]), "--input", str(images), "--threshold", "0.7"], capsys
    )
    assert {(r["verdict"], r["class"]) for r in rows} == {("OK", "ok")}
    rc, rows, _ = run_cli(
        [
            "run",
            "--model",
            str(models["ok"]),
            "--input",
            str(images / "a_gray.png"),
            "--threshold",
            "0.01",
        ],
        capsys,
    )
    assert rows[0]["verdict"] == "NG"
    assert rows[0]["latency_ms"] > 0 and rows[0]["model_version"] == "v0001"


def test_decide_rules():
    classes, thr = ["ok", "a", "b"], Thresholds(0.5, 0.3, 0.7)
    assert decide(np.array([0.8, 0.1, 0.1]), 0.2, classes, "ok", thr).verdict == "OK"
    p = decide(np.array([0.5, 0.1, 0.4]), 0.5, classes, "ok", thr)
    assert (p.verdict, p.cls) == ("UNSURE", "b")
    assert decide(np.array([0.2, 0.7, 0.1]), 0.7, classes, "ok", thr).verdict == "NG"
    # without an OK class: NG with the class, UNSURE when the top probability is low
    p = decide(np.array([0.1, 0.8, 0.1]), 0.2, classes, None, thr)
    assert (p.verdict, p.cls) == ("NG", "a")
    assert (
        decide(np.array([0.2, 0.25, 0.55]), 0.45, classes, None, Thresholds(0.5, 0.5, 0.5)).verdict
        == "NG"
    )
    assert (
        decide(np.array([0.3, 0.4, 0.3]), 0.6, classes, None, Thresholds(0.5, 0.5, 0.5)).verdict
        == "UNSURE"
    )


def test_csv_output_to_file_appends(models, images, tmp_path, capsys):
    out = tmp_path / "results.csv"
    for _ in range(2):
        assert (
            main(
                [
                    "run",
                    "--model",
                    str(models["ok"]),
                    "--input",
                    str(images / "b_color.jpg"),
                    "--format",
                    "csv",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 2 and rows[0]["verdict"] == "OK" and rows[0]["class"] == "ok"
    assert set(rows[0]) == {
        "file",
        "verdict",
        "class",
        "score",
        "latency_ms",
        "model_version",
        "error",
        "anomaly_score",  # empty for a model without an anomaly head
        "novel",
    }
    assert rows[0]["anomaly_score"] == rows[0]["novel"] == ""


def test_bad_model_files_are_refused(models, tmp_path, images, capsys):
    import onnx
    from onnx import TensorProto, helper

    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["probs"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.UINT8, [1, 4])],
    )
    onnx.save(helper.make_model(graph), str(plain))
    truncated = tmp_path / "truncated.onnx"
    whole = models["ng"].read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    newer = with_metadata(
        models["ng"], tmp_path / "newer.onnx", lambda m: {**m, "format_version": 3}
    )
    foreign = with_metadata(models["ng"], tmp_path / "foreign.onnx", lambda m: {**m, "format": "x"})
    cases = {
        plain: "not a defectssft model",
        truncated: "not a loadable ONNX model",
        newer: "newer than this runtime supports",
        foreign: "not a defectssft model",
        tmp_path / "missing.onnx": "model file not found",
    }
    for path, message in cases.items():
        with pytest.raises(LineModelError, match=message):
            LineModel.load(path)
        assert main(["run", "--model", str(path), "--input", str(images)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bad_arguments(models, tmp_path, capsys):
    assert main(["run", "--model", str(models["ng"]), "--input", str(tmp_path / "nope.png")]) == 2
    assert "input not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", "--model", str(models["ng"]), "--input", str(empty)]) == 2
    assert "no image files" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                "--model",
                str(models["ng"]),
                "--input",
                str(empty),
                "--unsure-low",
                "0.8",
                "--unsure-high",
                "0.2",
            ]
        )
        == 2
    )
    assert "--unsure-low must not be above" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--model", str(models["ng"]), "--input", "x", "--threshold", "1.5"])
    assert main(["run", "--model", str(models["ng"]), "--camera", str(tmp_path / "none.avi")]) == 2
    assert "cannot open camera" in capsys.readouterr().err


def test_camera_source_and_unsure_frames(models, tmp_path, capsys):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f_{i:03d}.png"), np.full((40, 40, 3), 60 * i, np.uint8))
    unsure = tmp_path / "unsure"
    rc, rows, _ = run_cli(
        [
            "run",
            "--model",
            str(models["ng"]),
            "--camera",
            str(tmp_path / "f_%03d.png"),
            "--max-frames",
            "2",
            "--unsure-low",
            "0.1",
            "--unsure-high",
            "0.9",
            "--send-unsure",
            str(unsure),
        ],
        capsys,
    )
    assert rc == 0 and [r["verdict"] for r in rows] == ["UNSURE", "UNSURE"]
    assert len(list(unsure.glob("*.png"))) == 2


def test_bench(models, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--model",
                str(models["ng"]),
                "--batch",
                "1",
                "4",
                "--threads",
                "1",
                "--iters",
                "3",
                "--warmup",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "p99 ms" in table
    rows = json.loads(out.read_text())["rows"]
    assert [(r["threads"], r["batch"]) for r in rows] == [(1, 1), (1, 4)]
    assert all(r["p50_ms"] <= r["p99_ms"] and r["images_per_s"] > 0 for r in rows)
