"""The line's verdict of stored predictions (defectssft.verdicts): the decision contract applied
with the thresholds `defectssft export` would write; torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

from defectssft import verdicts
from defectssft_line.decision import ThresholdError
from tests.helpers import write_gray

CLASSES = ["ok", "scratch", "dent"]
PROBS = [[0.95, 0.03, 0.02], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]  # defect scores .05 .4 .8


def _verdicts(meta, metrics, ok_class="ok"):
    thr = verdicts.version_thresholds(meta, metrics)
    return verdicts.line_verdicts(PROBS, CLASSES, ok_class, thr)


def test_line_verdicts_use_the_models_thresholds():
    # No thresholds anywhere: 0.5, no UNSURE band.
    assert _verdicts({}, None) == ["OK", "OK", "NG"]
    # The model file's band: UNSURE between 0.3 and 0.6.
    meta = {"thresholds": {"ng": 0.45, "unsure_low": 0.3, "unsure_high": 0.6}}
    assert _verdicts(meta, None) == ["OK", "UNSURE", "NG"]
    # The operating threshold stored by `defectssft evaluate`.
    metrics = {"test": {"operating_point": {"threshold": 0.35}}}
    assert _verdicts({}, metrics) == ["OK", "NG", "NG"]
    # Without an OK class the line never passes a part.
    assert set(_verdicts({}, None, ok_class=None)) <= {"NG", "UNSURE"}


def test_thresholds_the_line_refuses_are_refused():
    bad = {"thresholds": {"ng": 0.5, "unsure_low": 0.7, "unsure_high": 0.6}}
    with pytest.raises(ThresholdError):
        verdicts.version_thresholds(bad, None)


def test_verdict_mismatch():
    assert verdicts.verdict_mismatch("scratch", "OK", "ok") == "escape"
    assert verdicts.verdict_mismatch("ok", "NG", "ok") == "overkill"
    assert verdicts.verdict_mismatch("ok", "UNSURE", "ok") == "unsure"
    assert verdicts.verdict_mismatch("scratch", "NG", "ok") is None
    assert verdicts.verdict_mismatch(None, "OK", "ok") is None
    assert verdicts.verdict_mismatch("scratch", "OK", None) is None


def test_cache_and_version_verdicts_from_stored_predictions(project, tmp_path):
    for i in range(len(PROBS)):
        project.add_image(write_gray(tmp_path / f"img{i}.png", 40 * i, seed=i))
    ids = project.image_ids()
    meta = {"classes": CLASSES, "thresholds": {"ng": 0.45, "unsure_low": 0.3, "unsure_high": 0.6}}
    project.models_dir.joinpath("v0001").mkdir(parents=True)
    project.register_model("v0001", meta, {})
    project.save_predictions("v0001", list(zip(ids, PROBS, strict=True)))
    expected = dict(zip(ids, ["OK", "UNSURE", "NG"], strict=True))
    assert verdicts.version_verdicts(project, "v0001") == expected
    cache = verdicts.VerdictCache(project, "v0001")
    assert {i: cache.get(i) for i in ids} == expected
    assert cache.get(None) is None
    assert verdicts.VerdictCache(project, None).get(ids[0]) is None
    assert verdicts.version_verdicts(project, "v0009") == {}  # unknown version: no verdicts


def test_verdicts_never_import_torch():
    code = "import sys, defectssft.verdicts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_operating_point_set_for_a_version_is_what_the_line_uses(project):
    from defectssft.metrics import operating_point

    version, _ = project.new_model_dir()
    project.register_model(version, {"classes": ["ok", "scratch", "dent"], "ok_class": "ok"}, {})
    project.update_model_metrics(version, {"test": {"operating_point": {"threshold": 0.2}}})
    record = project.get_model(version)
    assert verdicts.version_thresholds(record["meta"], record["metrics"]).ng == 0.2
    project.set_operating_point(version, 0.4, 0.3, 0.7)
    record = project.get_model(version)
    assert operating_point(record["metrics"]) == {"ng": 0.4, "unsure_low": 0.3, "unsure_high": 0.7}
    t = verdicts.version_thresholds(record["meta"], record["metrics"])
    assert (t.ng, t.unsure_low, t.unsure_high) == (0.4, 0.3, 0.7)
    with pytest.raises(ThresholdError):
        project.set_operating_point(version, 0.4, 0.5, 0.7)  # band does not contain ng
    assert operating_point(project.get_model(version)["metrics"])["ng"] == 0.4  # kept
    project.set_operating_point(version, None)  # cleared: back to what evaluate chose
    assert operating_point(project.get_model(version)["metrics"]) == {"ng": 0.2}


def test_out_of_fold_evidence_round_trip_and_bad_file(tmp_path):
    import numpy as np

    from defectssft.errors import DefectssftError
    from defectssft.evidence import Evidence, load_oof, save_oof

    assert load_oof(tmp_path) is None
    ev = Evidence(np.arange(3), np.array([0, 1, 1]), np.full((3, 2), 0.5), np.array([0, 1, 0]))
    save_oof(tmp_path, ev)
    back = load_oof(tmp_path)
    assert back is not None and back.labels.tolist() == [0, 1, 1] and back.probs.shape == (3, 2)
    (tmp_path / "oof.npz").write_bytes(b"not an npz")
    with pytest.raises(DefectssftError, match="unreadable out-of-fold"):
        load_oof(tmp_path)
