"""Promotion by evidence: a first model must beat chance, a challenger must be better by a paired
test and pass no more defects; a refusal says why with the counts; production.onnx stays whole.

The publishing mechanics tests below use fixed-head models that cannot separate anything, so
they lower the evidence level to "any" (``promote.ALPHA = 1``); the rule itself is tested on
evaluations with known verdicts."""

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
def project(tmp_path, monkeypatch):
    import defectssft.promote as promote

    monkeypatch.setattr(promote, "ALPHA", 1.0)  # mechanics: not worse is enough here
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
    assert not ok and "passes more defective parts" in reason and "escapes" in reason
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
    assert not ok and "overkill rises beyond the tolerance" in reason


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
    assert "forced; overrides the evidence rule" in capsys.readouterr().out
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
    assert not ok and "passes more defective parts" in reason  # compared, not refused for names
    from defectssft.evaluate import evaluate_project_model

    metrics = evaluate_project_model(project, v1, report=False, store=False).metrics
    assert metrics["classes"][0] == "good" and metrics["ok_class"] == "good"


# --------------------------------------------------------------------------- the evidence rule


def _evaluation(truth: str, verdicts: str, ids=None, ok_class="ok"):
    """An Evaluation with known line verdicts: truth "d"efective / "g"ood, verdicts O/N/U."""
    import numpy as np

    from defectssft.evaluate import Evaluation, decision_claims, split_hash

    classes = ["ok", "dent"]
    labels = np.asarray([1 if t == "d" else 0 for t in truth])
    names = {"O": "OK", "N": "NG", "U": "UNSURE"}
    v = [names[x] for x in verdicts]
    probs = np.where(labels[:, None] == 1, [0.1, 0.9], [0.9, 0.1])
    ids = list(range(len(truth))) if ids is None else ids
    claims = decision_claims(labels == 1, v)
    counts = {c: dict.fromkeys(("OK", "NG", "UNSURE"), 0) for c in classes}
    for y, x in zip(labels, v, strict=True):
        counts[classes[y]][x] += 1
    metrics = {
        "classes": classes,
        "ok_class": ok_class,
        "test_hash": split_hash(ids, labels.tolist()),
        "operating_point": claims if ok_class else {},
        "verdicts": counts,
    }
    return Evaluation(metrics, probs, labels, ids, [], verdicts=v if ok_class else [])


def test_a_first_model_must_beat_chance():
    from defectssft.promote import judge_first

    # 1 defective and 3 good test parts, all right: cannot tell from chance (p = 0.25)
    j = judge_first(_evaluation("dggg", "NOOO"))
    assert not j.ok and "does not beat chance" in j.reason and "escapes 0 / 1" in j.reason
    assert "p = 0.25" in j.reason
    # both kinds of part with their 95 % interval, not the escapes alone
    assert "good parts stopped 0 / 3, ≤ 70.8 % at 95 %" in j.reason
    # 6 + 6, all right: it does
    assert judge_first(_evaluation("d" * 6 + "g" * 6, "N" * 6 + "O" * 6)).ok
    # rejecting everything is chance, however many parts
    j = judge_first(_evaluation("d" * 20 + "g" * 20, "N" * 40))
    assert not j.ok and "p = 1" in j.reason
    # UNSURE on every part is not evidence either
    assert not judge_first(_evaluation("d" * 20 + "g" * 20, "U" * 40)).ok
    # no defective test part and no out-of-fold evidence: nothing to go on
    j = judge_first(_evaluation("gggg", "OOOO"))
    assert not j.ok and "0 defective" in j.reason


def test_a_first_model_without_test_defects_is_judged_on_out_of_fold_evidence():
    from defectssft import metrics as M
    from defectssft.promote import judge_first

    ev = _evaluation("gggg", "OOOO")
    ev.metrics["oof"] = {
        "n": 16,
        "n_defective": 8,
        "n_good": 8,
        "escapes": M.rate_claim(0, 8),
        "overkill": M.rate_claim(0, 8),
        "unsure": M.rate_claim(0, 16),
    }
    j = judge_first(ev)
    assert j.ok and "out-of-fold evidence" in j.reason


def test_a_first_model_without_an_ok_class_must_beat_the_commonest_class():
    import numpy as np

    from defectssft.promote import judge_first

    ev = _evaluation("dddddddddggg", "NNNNNNNNNNNN", ok_class=None)
    ev.probs = np.tile([0.1, 0.9], (12, 1))  # always the commonest class
    j = judge_first(ev)  # 9 / 12 right = always answering the commonest class
    assert not j.ok and "commonest class" in j.reason


def test_a_challenger_needs_a_paired_improvement():
    from defectssft.promote import judge_challenger

    truth = "ddddd" + "ggggg" * 2
    champion = _evaluation(truth, "NNNNN" + "NNNNN" + "OOOOO")  # 5 good parts overkilled
    # better on 5 parts, worse on none: one-sided exact McNemar p = 1/32
    j = judge_challenger(_evaluation(truth, "NNNNN" + "OOOOO" * 2), champion, 0.0)
    assert j.ok and "right on 5" in j.reason and "p = 0.0312" in j.reason
    # production's rates come with their intervals too
    assert "vs production's overkill 5 / 10 = 50.0 % [18.7, 81.3] at 95 %" in j.reason
    # better on 2 good test images: not evidence (the bug of issue #13)
    j = judge_challenger(_evaluation(truth, "NNNNN" + "OONNN" + "OOOOO"), champion, 0.0)
    assert not j.ok and "not enough evidence" in j.reason and "p = 0.25" in j.reason
    # one more escape: refused whatever else it fixes
    j = judge_challenger(_evaluation(truth, "ONNNN" + "OOOOO" * 2), champion, 0.0)
    assert not j.ok and "passes more defective parts" in j.reason
    # the same parts in another order are still paired by image id
    order = list(range(15))[::-1]
    rev = _evaluation(truth[::-1], ("NNNNN" + "OOOOO" * 2)[::-1], ids=order)
    assert judge_challenger(rev, champion, 0.0).ok


def test_cli_refusal_prints_why_with_the_numbers(tmp_path, capsys, monkeypatch):
    from defectssft.cli import main

    project = make_project(tmp_path)
    v1 = add_model(project, bias=ALWAYS_NG, thresholds=FIXED)
    assert main(["promote", str(project.root), v1]) == 1
    out = capsys.readouterr().out
    assert "not promoted, nothing is production" in out and "does not beat chance" in out
    assert "Fisher exact p =" in out and "--force" in out
    assert project.production_model() is None
    assert main(["promote", str(project.root), v1, "--force"]) == 0
    out = capsys.readouterr().out
    assert "overrides the evidence rule, which refuses it" in out
    assert project.production_model() == v1
