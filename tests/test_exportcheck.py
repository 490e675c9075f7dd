"""Export's decision checks: an unevaluated model is evaluated first, and an exported file that
would change a verdict against torch is refused with the image named, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defectssft import exportcheck
from defectssft.export import ExportError, export_project_model, read_metadata
from defectssft_line.decision import Thresholds
from tests.helpers import add_model, make_project


def test_find_flips_names_the_images_whose_verdict_changes():
    t = Thresholds(0.5, 0.4, 0.5)
    probs = np.asarray([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.55, 0.45, 0.0]])
    ref = (probs, np.asarray([0.1, 0.5, 0.45]))
    exported = (probs, np.asarray([0.1, 0.4999, 0.45]))  # NG -> UNSURE for the second
    flips = exportcheck.find_flips(
        [7, 8, 9], ["a.png", "b.png", "c.png"], ref, exported, ["ok", "s", "t"], "ok", t
    )
    assert [(f.image_id, f.name, f.reference, f.exported) for f in flips] == [
        (8, "b.png", "NG", "UNSURE")
    ]


def test_export_of_an_unevaluated_model_evaluates_it_first(tmp_path, capsys):
    from defectssft.cli import main

    project = make_project(tmp_path)
    version = add_model(project, seed=3)
    assert "test" not in project.get_model(version)["metrics"]
    assert main(["export", str(project.root), "--model", version]) == 0
    out = capsys.readouterr().out
    assert "was never evaluated: evaluated it first" in out
    op = project.get_model(version)["metrics"]["test"]["operating_point"]
    meta = read_metadata(Path(project.get_model(version)["path"]) / "model.onnx")
    assert meta["thresholds"] == {
        "ng": pytest.approx(op["threshold"]),
        "unsure_low": pytest.approx(op["unsure_low"]),
        "unsure_high": pytest.approx(op["unsure_high"]),
    }
    assert "verdicts: the same as torch on all" in out


def test_an_unevaluable_model_is_refused_in_one_line(tmp_path, capsys):
    from defectssft.cli import main
    from defectssft.project import Project
    from tests.helpers import CLASSES

    project = Project.create(tmp_path / "p", classes=CLASSES, ok_class="ok")
    add_model(project)
    assert main(["export", str(project.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "never evaluated and cannot be" in err and len(err.splitlines()) == 1


def _far_flip(monkeypatch, project, version):
    """The exported file scores the first checked image 2+ logits across a threshold edge (a
    file that moves scores)."""
    from defectssft.calibration import logit, sigmoid

    real = exportcheck._file_outputs

    def nudged(path, images, thresholds, with_anomaly, opened):
        outs, mask = real(path, images, thresholds, with_anomaly, opened)
        t = project.get_model(version)["metrics"]["test"]["operating_point"]
        ng, low = t["threshold"], t["unsure_low"]
        scores = outs[1].copy()
        up = float(sigmoid(logit(ng) + 2))
        scores[0] = float(sigmoid(logit(low) - 2)) if scores[0] >= low else up
        return [outs[0], scores, *outs[2:]], mask

    monkeypatch.setattr(exportcheck, "_file_outputs", nudged)


def _edge_flip(monkeypatch, project, version) -> dict[str, float]:
    """Thresholds with the first checked image just above the UNSURE edge (torch: UNSURE), and
    an exported file that scores it 1e-3 lower (OK): a part on the edge."""
    from defectssft.calibration import logit, sigmoid
    from defectssft.inspection import load_images, load_inspection, predict_arrays

    folder = Path(project.get_model(version)["path"])
    wrapper, spec = load_inspection(folder / "model.pt")
    _, paths, _ = exportcheck.verdict_images(project)
    inp = spec.input
    t0 = float(predict_arrays(wrapper, load_images(paths[:1], inp.height, inp.width, 8))[1][0])
    ng = float(sigmoid(logit(t0) + 1))
    point = {"ng": ng, "unsure_low": t0 * (1 - 1e-5), "unsure_high": ng}
    real = exportcheck._file_outputs

    def nudged(path, images, thresholds, with_anomaly, opened):
        outs, mask = real(path, images, thresholds, with_anomaly, opened)
        scores = outs[1].copy()
        scores[0] = t0 * (1 - 1e-3)
        return [outs[0], scores, *outs[2:]], mask

    monkeypatch.setattr(exportcheck, "_file_outputs", nudged)
    return {"torch": t0, "exported": t0 * (1 - 1e-3), **point}


def test_a_far_verdict_flip_refuses_the_export_and_writes_nothing(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    version = add_model(project, seed=4)
    good = export_project_model(project, version)  # evaluated, checked, written
    before = Path(good.path).read_bytes()
    assert good.verdict_check["flips"] == 0 and good.verdict_check["n"] > 0
    assert "widened" not in good.verdict_check
    point = project.get_model(version)["metrics"].get("operating_point")
    _far_flip(monkeypatch, project, version)
    with pytest.raises(ExportError, match=r"changes 1 verdict\(s\).*id \d+\): torch.*logits apart"):
        export_project_model(project, version)
    assert Path(good.path).read_bytes() == before  # the good file stays
    assert project.get_model(version)["metrics"].get("operating_point") == point


def test_an_edge_flip_widens_the_band_says_so_and_stores_it(tmp_path, monkeypatch, capsys):
    from defectssft.cli import main
    from defectssft.metrics import operating_point
    from defectssft.verdicts import version_thresholds

    project = make_project(tmp_path)
    version = add_model(project, seed=4)
    moved = _edge_flip(monkeypatch, project, version)
    project.set_operating_point(version, moved["ng"], moved["unsure_low"], moved["unsure_high"])
    assert main(["export", str(project.root), "--model", version]) == 0
    out = capsys.readouterr().out
    assert "flipped between torch and the fp32 file" in out and "UNSURE band widened from" in out
    assert "stored as the version's operating point" in out
    assert "with the widened UNSURE band" in out
    record = project.get_model(version)
    written = read_metadata(Path(record["path"]) / "model.onnx")["thresholds"]
    # both scores of the flipped part are inside the band: UNSURE in torch and in the file
    lo, hi = sorted((moved["torch"], moved["exported"]))
    assert written["unsure_low"] < lo and hi < written["unsure_high"]
    assert written["ng"] == pytest.approx(moved["ng"])
    assert written["unsure_low"] < moved["unsure_low"]
    assert written["unsure_high"] == pytest.approx(moved["unsure_high"])
    check = record["metrics"]["export_fp32"]["verdict_check"]
    assert check["widened"]["flips"][0]["score_torch"] == pytest.approx(moved["torch"])
    assert check["widened"]["flips"][0]["name"] in out
    # one decision everywhere: the app resolves the thresholds the file carries
    assert operating_point(record["metrics"]) == pytest.approx(written)
    t = version_thresholds(record.get("meta") or {}, record["metrics"])
    assert t.as_dict() == pytest.approx(written)


def test_max_flip_logit_zero_refuses_every_flip(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    version = add_model(project, seed=4)
    moved = _edge_flip(monkeypatch, project, version)
    project.set_operating_point(version, moved["ng"], moved["unsure_low"], moved["unsure_high"])
    with pytest.raises(ExportError, match=r"more than the 0 an UNSURE band may absorb"):
        export_project_model(project, version, max_flip_logit=0.0)
    stored = project.get_model(version)["metrics"]["operating_point"]
    assert stored["unsure_low"] == pytest.approx(moved["unsure_low"])


def test_an_edge_flip_under_explicit_thresholds_is_written_not_stored(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    version = add_model(project, seed=4)
    moved = _edge_flip(monkeypatch, project, version)
    res = export_project_model(
        project, version, threshold=moved["ng"], unsure_low=moved["unsure_low"],
        unsure_high=moved["unsure_high"],
    )  # fmt: skip
    assert "widened" in res.verdict_check
    assert res.metadata["thresholds"] == res.verdict_check["widened"]["to"]
    assert read_metadata(res.path)["thresholds"] == res.verdict_check["widened"]["to"]
    assert "operating_point" not in project.get_model(version)["metrics"]


def test_widen_band_covers_both_scores_of_each_edge_flip():
    from defectssft.calibration import logit

    t = Thresholds(0.5, 0.3, 0.5)
    low_flip = exportcheck.Flip(1, "a", "UNSURE", "OK", 0.3, 0.2999)
    high_flip = exportcheck.Flip(2, "b", "NG", "UNSURE", 0.5, 0.4999)
    w = exportcheck.widen_band([low_flip, high_flip], t)
    assert w.ng == 0.5 and w.unsure_low < 0.2999 and w.unsure_high > 0.5
    assert logit(0.2999) - logit(w.unsure_low) == pytest.approx(exportcheck.BAND_PAD_LOGIT)
    assert logit(w.unsure_high) - logit(0.5) == pytest.approx(exportcheck.BAND_PAD_LOGIT)
    probs = np.asarray([[0.7, 0.3, 0.0], [0.5, 0.5, 0.0]])
    for scores in ((0.3, 0.5), (0.2999, 0.4999)):
        verdicts = exportcheck.verdicts_of(probs, np.asarray(scores), ["ok", "s", "t"], "ok", w)
        assert verdicts == ["UNSURE", "UNSURE"]
    assert exportcheck.widen_band([], t) == t


def test_an_int8_export_carries_the_recheck_and_says_what_it_sends_to_fp32(tmp_path, capsys):
    from defectssft.cli import main

    project = make_project(tmp_path)
    version = add_model(project, seed=4)
    folder = Path(project.get_model(version)["path"])
    assert (
        main(["export", str(project.root), "--model", version, "--int8", "--max-int8-drop", "0.99"])
        == 0
    )
    out = capsys.readouterr().out
    assert "INT8 with the exact re-check: parts within" in out and "checked images" in out
    meta = read_metadata(folder / "model.int8.onnx")
    assert meta["format_version"] == 2 and meta["recheck"]["logit"] >= 0
    check = project.get_model(version)["metrics"]["export_int8"]["verdict_check"]
    assert 0 <= check["rechecked"]["n"] <= check["n"] and check["flips"] == 0
    argv = ["export", str(project.root), "--model", version, "--int8", "--max-int8-drop", "0.99"]
    assert main([*argv, "--no-recheck", "-o", str(tmp_path / "plain.onnx")]) in (0, 2)
    out = capsys.readouterr()
    if (tmp_path / "plain.onnx").exists():  # written when INT8 alone flips no checked verdict
        plain = read_metadata(tmp_path / "plain.onnx")
        assert plain["format_version"] == 1 and "recheck" not in plain
        assert "re-check" not in out.out
    else:
        assert "export refused" in out.err and len(out.err.strip().splitlines()) == 1
