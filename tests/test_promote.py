"""Promotion: a worse model is refused, an equal one is published, production.onnx stays whole."""

from __future__ import annotations

import pytest

from defectssft.export import ExportError, read_metadata
from defectssft.promote import compare, maybe_promote, production_path
from tests.helpers import add_model, make_project

FIXED = {"ng": 0.5, "unsure_low": 0.5, "unsure_high": 0.5}
ALWAYS_OK = [10.0, 0.0, 0.0]  # passes every part: escape 100 %, overkill 0 %
ALWAYS_NG = [0.0, 10.0, 0.0]  # rejects every part: escape 0 %, overkill 100 %


def _m(escape, overkill, split="a"):
    return {
        "test_hash": split,
        "operating_point": {"escape_rate": escape, "overkill_rate": overkill},
    }


def test_compare_rule_by_hand():
    assert compare(_m(0.0, 0.02), _m(0.0, 0.02))[0]
    assert compare(_m(0.0, 0.024), _m(0.0, 0.02), overkill_tolerance=0.005)[0]
    ok, reason = compare(_m(0.0, 0.03), _m(0.0, 0.02), overkill_tolerance=0.005)
    assert not ok and "overkill" in reason
    ok, reason = compare(_m(0.01, 0.0), _m(0.0, 0.5))
    assert not ok and "escape rate would rise" in reason
    assert not compare(_m(0.0, 0.0, "a"), _m(0.0, 0.0, "b"))[0]
    # no OK class: the error rate decides
    no_ok = {"test_hash": "a", "operating_point": {}, "error_rate": 0.10}
    assert compare({**no_ok, "error_rate": 0.104}, no_ok, 0.005)[0]
    assert not compare({**no_ok, "error_rate": 0.2}, no_ok, 0.005)[0]


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path)


def test_first_model_becomes_production(project):
    v1 = add_model(project, bias=ALWAYS_NG, thresholds=FIXED)
    ok, reason = maybe_promote(project, v1)
    assert ok, reason
    assert project.production_model() == v1
    assert read_metadata(production_path(project))["model_version"] == v1
    assert maybe_promote(project, v1) == (False, f"{v1} is already the production model")


def test_worse_model_is_refused_and_production_untouched(project):
    v1 = add_model(project, bias=ALWAYS_NG, thresholds=FIXED)
    assert maybe_promote(project, v1)[0]
    before = production_path(project).read_bytes()

    v2 = add_model(project, bias=ALWAYS_OK, thresholds=FIXED)  # lets every defect through
    ok, reason = maybe_promote(project, v2)
    assert not ok and "escape rate would rise" in reason
    assert project.production_model() == v1
    assert production_path(project).read_bytes() == before

    v3 = add_model(project, bias=ALWAYS_NG, thresholds=FIXED)  # same as production: not worse
    ok, reason = maybe_promote(project, v3)
    assert ok, reason
    assert project.production_model() == v3
    assert read_metadata(production_path(project))["model_version"] == v3


def test_more_overkill_is_refused(project):
    v1 = add_model(project, bias=[2.0, 0.0, 0.0], thresholds=FIXED)  # p(ok)=0.79: all OK
    assert maybe_promote(project, v1)[0]
    v2 = add_model(project, bias=[0.0, 0.0, 0.0], thresholds=FIXED)
    # v2 rejects everything: escape falls to 0 but every good part is overkill
    ok, reason = maybe_promote(project, v2, overkill_tolerance=0.1)
    assert not ok and "overkill rate would rise" in reason


def test_failed_export_changes_nothing(project, monkeypatch):
    import defectssft.export as export

    v1 = add_model(project, bias=ALWAYS_NG, thresholds=FIXED)
    assert maybe_promote(project, v1)[0]
    before = production_path(project).read_bytes()
    v2 = add_model(project, bias=ALWAYS_NG, thresholds=FIXED)

    def broken(*a, **k):
        raise ExportError("export check failed: simulated")

    monkeypatch.setattr(export, "export_project_model", broken)
    with pytest.raises(ExportError):
        maybe_promote(project, v2)
    assert project.production_model() == v1
    assert production_path(project).read_bytes() == before


def test_cli_promote(project, capsys):
    from defectssft.cli import main

    v1 = add_model(project, bias=ALWAYS_NG, thresholds=FIXED)
    v2 = add_model(project, bias=ALWAYS_OK, thresholds=FIXED)
    assert main(["promote", str(project.root), v1]) == 0
    assert main(["promote", str(project.root), v2]) == 1
    assert "not promoted" in capsys.readouterr().out
    assert main(["promote", str(project.root), v2, "--force"]) == 0
    assert project.production_model() == v2
    assert main(["promote", str(project.root), "v0042"]) == 2
    assert "no model version" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["promote", str(project.root), v1, "--overkill-tolerance", "-1"])
    assert e.value.code == 2
    assert "must be in [0, 1)" in capsys.readouterr().err


def test_a_model_trained_before_a_class_rename_is_still_compared(project):
    v1 = add_model(project, bias=ALWAYS_NG, thresholds=FIXED)
    assert maybe_promote(project, v1)[0]
    project.rename_class("ok", "good")  # the OK class itself: its output and flag must follow
    v2 = add_model(project, bias=ALWAYS_OK, thresholds=FIXED)  # still the old names inside
    ok, reason = maybe_promote(project, v2)
    assert not ok and "escape rate would rise" in reason  # compared, not refused for its names
    from defectssft.evaluate import evaluate_project_model

    metrics = evaluate_project_model(project, v1, report=False, store=False).metrics
    assert metrics["classes"][0] == "good" and metrics["ok_class"] == "good"
