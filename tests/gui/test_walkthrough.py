"""A new user's first session, scripted through the real window (the steps of
``scripts/screenshots.py walkthrough``): new project -> import samples/kolektorsdd -> label 10
images by keyboard -> train a tiny model -> its verdicts -> promote from the Models panel ->
a second model -> roll back. Real child processes for training, evaluation and export."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_screenshots():
    spec = importlib.util.spec_from_file_location(
        "screenshots", REPO / "scripts" / "screenshots.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_new_user_walkthrough(qtbot, qapp, tmp_path):
    shots = load_screenshots()

    def wait(cond, seconds, what):
        qtbot.waitUntil(cond, timeout=int(seconds * 1000))

    out = shots.walkthrough(qapp, tmp_path / "kolektor", wait, shoot=None, steps=4)
    assert out["labeled"] == {"good": 5, "defective": 5}
    assert (out["v1"], out["v2"]) == ("v0001", "v0002")
    # The unlabeled images got the new model's suggestions and the line's verdicts by themselves.
    assert all(v in ("OK", "NG", "UNSURE") for v in out["verdicts"])
    assert out["strip_verdict"] in ("OK", "NG", "UNSURE")
    # Promoted from the panel: the CLI's evidence rule refuses a first model on a handful of
    # test images, so the walkthrough publishes it with --force, which says what it overrides.
    assert out["promoted"][0] == "v0001" and (
        "first production model" in out["promoted"][1] or "overrides" in out["promoted"][1]
    )
    assert out["second"][0] in ("v0001", "v0002")  # promoted only if not worse
    # Rolled back: v0001 is production again, published, and the window follows.
    assert out["rolled_back"][0] == "v0001" and "forced" in out["rolled_back"][1]
    assert out["production_onnx"]
    assert out["changes"][0] == "v0001" and out["changes"][-1] == "v0001"
    assert "v0002" in out["changes"]
    assert out["window_model"] == "v0001"
