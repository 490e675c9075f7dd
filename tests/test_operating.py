"""The operating point's evidence (defectssft.operating): score sets of a version from stored
predictions and out-of-fold evidence, and what a candidate threshold + band does to them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from defectssft import operating
from defectssft.evidence import Evidence, save_oof
from defectssft.metrics import wilson_interval
from defectssft.project import Project
from defectssft_line.decision import ThresholdError, Thresholds, verdict
from tests.helpers import write_gray

CLASSES = ["ok", "scratch"]


def probs_for(score: float) -> list[float]:
    return [1.0 - score, score]


def build(tmp_path, n_ok=20, n_def=10, n_unl=12, ok_score=0.1, def_score=0.8):
    """A project with labeled OK/defect images (frozen splits), unlabeled ones, a model v0001
    whose stored predictions give each labeled OK part ``ok_score + small``, each defect
    ``def_score + small``, the stream scores spread over [0, 1)."""
    p = Project.create(tmp_path / "proj", classes=CLASSES, ok_class="ok")
    for i in range(n_ok + n_def + n_unl):
        label = "ok" if i < n_ok else "scratch" if i < n_ok + n_def else None
        r = p.add_image(write_gray(tmp_path / "src" / f"{i}.png", 10 + i, seed=i), label=label)
        assert r.status == "added"
    p.assign_splits(val_fraction=0.25, test_fraction=0.25, seed=0, min_labels=3)
    version, _ = p.new_model_dir()
    p.register_model(version, {"classes": CLASSES, "ok_class": "ok"}, {})
    labels = p.labels_of(p.image_ids())
    rows = []
    for k, (i, lab) in enumerate(sorted(labels.items())):
        if lab == "ok":
            s = ok_score + 0.001 * k
        elif lab == "scratch":
            s = def_score + 0.001 * k
        else:
            s = (k % n_unl) / n_unl
        rows.append((i, probs_for(s)))
    p.save_predictions(version, rows)
    return p, version


def test_verdict_counts_agree_with_the_decision_contract():
    rng = np.random.default_rng(0)
    for trial in range(200):
        scores = np.sort(np.r_[rng.random(int(rng.integers(0, 40))), [0.3, 0.5, 0.7]])
        low, ng, high = np.sort(rng.choice([0.0, 0.3, 0.5, 0.7, 1.0, *rng.random(3)], 3))
        t = Thresholds(float(ng), float(low), float(high))
        brute = [verdict(float(s), t) for s in scores]
        expected = (brute.count("OK"), brute.count("UNSURE"), brute.count("NG"))
        assert operating.verdict_counts(scores, t) == expected, (trial, t)


def test_rates_of_a_candidate_on_val_test_and_the_stream(tmp_path):
    p, version = build(tmp_path)
    data = operating.load_operating_data(p, version)
    assert set(data.parts) == {"val", "test"}
    n_ok = data.labeled.ok.size
    n_def = data.labeled.defect.size
    split = p.training_data(assign=False)
    assert n_ok + n_def == len(split.val_ids) + len(split.test_ids)
    assert data.stream.size == 12
    # Every labeled part is separated at 0.5: no escapes, no overkill, nothing unsure.
    table = operating.rates(data, operating.candidate(0.5))
    a = table.parts["all"]
    assert (a.escapes.k, a.escapes.n, a.overkill.k, a.overkill.n) == (0, n_def, 0, n_ok)
    assert a.escapes.interval == wilson_interval(0, n_def)
    # Stream scores are 0, 1/12, ..., 11/12: at ng 0.5, 6 of 12 are NG.
    assert (table.stream.review.k, table.stream.unsure.k) == (6, 0)
    # A threshold above every defect passes them all; a band catches the stream's middle.
    table = operating.rates(data, operating.candidate(0.95, 0.25, 0.99))
    a = table.parts["all"]
    assert a.escapes.k == 0 and a.unsure.k == n_def  # defects in [0.8, 0.85): UNSURE, not passed
    assert table.stream.review.k == 9 and table.stream.unsure.k == 9  # 3/12 .. 11/12
    table = operating.rates(data, operating.candidate(0.9))
    assert table.parts["all"].escapes.k == n_def and table.parts["all"].escapes.rate == 1.0
    # The table as data and as text.
    d = table.as_dict()
    assert d["parts"]["all"]["escapes"]["k"] == n_def and d["stream"]["n"] == 12
    text = operating.table_text(table)
    assert "all labeled" in text and "95 % Wilson" in text


def test_current_thresholds_follow_the_saved_operating_point(tmp_path):
    p, version = build(tmp_path)
    data = operating.load_operating_data(p, version)
    assert data.current.ng == 0.5 and data.saved is None and "default" in data.source
    p.set_operating_point(version, 0.4, 0.3, 0.6, source="test")
    data = operating.load_operating_data(p, version)
    assert (data.current.ng, data.current.unsure_low, data.current.unsure_high) == (0.4, 0.3, 0.6)
    assert data.saved is not None and data.source.startswith("saved by test")


def test_out_of_fold_evidence_counts_each_image_once(tmp_path):
    p, version = build(tmp_path)
    split = p.training_data(assign=False)
    labels = p.labels_of(p.image_ids())
    train = split.labeled_ids
    overlap = split.val_ids[0]  # also in val: counted once, with its out-of-fold score
    ids = [*train, overlap]
    cls = [CLASSES.index(labels[i]) for i in ids]
    # Out-of-fold every defect scores 0.3: below a 0.5 threshold, so they escape there.
    probs = [probs_for(0.3 if c else 0.05) for c in cls]
    ev = Evidence(np.array(ids), np.array(cls), np.array(probs), np.zeros(len(ids), int))
    save_oof(p.models_dir / version, ev)
    data = operating.load_operating_data(p, version)
    assert set(data.parts) == {"val", "test", "oof"}
    total = len(set(split.val_ids) | set(split.test_ids) | set(ids))
    assert len(data.labeled) == total
    table = operating.rates(data, operating.candidate(0.5))
    oof_def = sum(cls)
    assert table.parts["oof"].escapes.k == oof_def
    assert table.parts["all"].escapes.k == oof_def  # the overlap's val score is replaced
    assert table.parts["val"].escapes.k == 0


def test_bad_out_of_fold_file_is_a_note_not_a_crash(tmp_path):
    p, version = build(tmp_path)
    (p.models_dir / version / "oof.npz").write_bytes(b"junk")
    data = operating.load_operating_data(p, version)
    assert "oof" not in data.parts
    assert any("unreadable out-of-fold" in n for n in data.notes)


def test_what_the_evidence_cannot_tell_is_said(tmp_path):
    p, version = build(tmp_path, n_ok=8, n_def=3, n_unl=4)
    # Forget the stream's predictions: the review rate is unknown, and said so.
    with p.transaction() as tx:
        for i in p.training_data(assign=False).unlabeled_ids:
            tx.execute("DELETE FROM predictions WHERE image_id=?", (i,))
    data = operating.load_operating_data(p, version)
    notes = " ".join(data.notes)
    assert "labeled defective part(s) scored" in notes  # 3 defects only in val/test
    assert "review rate is unknown" in notes
    assert data.missing == {"stream": 4}
    assert set(operating.unscored_ids(p, version)) == set(
        p.training_data(assign=False).unlabeled_ids
    )
    assert operating.rates(data, operating.candidate(0.5)).stream.review.text() == "—"


def test_no_ok_class_and_bad_thresholds_are_one_line(tmp_path):
    p = Project.create(tmp_path / "p", classes=["scratch", "dent"])
    version, _ = p.new_model_dir()
    p.register_model(version, {"classes": ["scratch", "dent"]}, {})
    with pytest.raises(operating.OperatingError, match="no OK class"):
        operating.load_operating_data(p, version)
    for args in ((0.5, 0.6, 0.7), (0.5, 0.3, 0.4), (1.5,), (-0.1,)):
        with pytest.raises(ThresholdError) as e:
            operating.candidate(*args)
        assert "\n" not in str(e.value)


def test_histogram_holds_every_score(tmp_path):
    p, version = build(tmp_path)
    data = operating.load_operating_data(p, version)
    h = operating.histogram(data, bins=30)
    assert h.ok.sum() == data.labeled.ok.size and h.defect.sum() == data.labeled.defect.size
    assert h.stream.sum() == data.stream.size  # a stream score of exactly 0 is clipped in
    assert len(h.edges) == 31 and np.all(np.diff(h.score_edges) > 0)
    assert float(operating.from_logit(operating.to_logit(0.25))) == pytest.approx(0.25)


def test_operating_never_imports_torch():
    code = "import sys, defectssft.operating; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_thresholds_in_the_model_file_win_and_are_said(tmp_path):
    p, version = build(tmp_path)
    p.register_model(
        version,
        {"classes": CLASSES, "ok_class": "ok", "thresholds": {"ng": 0.7}},
        p.get_model(version)["metrics"],
    )
    p.set_operating_point(version, 0.4)
    data = operating.load_operating_data(p, version)
    assert data.current.ng == 0.7 and data.source == "the model file's own thresholds"
    assert any("carries its own thresholds (ng 0.7)" in n for n in data.notes)


def test_line_counts_are_decide_parts_with_novel_parts_either_way():
    """Novel parts move from the score's verdict to decide_part's: with on_novel NG the verdict
    is NG, UNSURE, NG along the score, which no bisection on the score alone could count."""
    from defectssft_line.decision import decide_part
    from defectssft_line.novelty import NoveltyRule

    rng = np.random.default_rng(1)
    scores = np.sort(rng.random(60))
    anomaly = rng.random(60) * 2
    classes = ["ok", "scratch"]
    for on in ("UNSURE", "NG"):
        rule = NoveltyRule(1.0, on)
        data = operating.OperatingData(
            "v0001", classes, "ok", {}, operating.LabeledScores(scores, scores[:0]),
            scores[:0], Thresholds(0.5, 0.3, 0.7), None, None, "", novelty=rule,
        )  # fmt: skip
        novel = [
            operating.NovelPart((1 - s, s), float(s), float(a))
            for s, a in zip(scores, anomaly, strict=True)
            if rule.is_novel(a)
        ]
        for t in (Thresholds(0.5, 0.3, 0.7), Thresholds(0.9, 0.9, 0.9), Thresholds(0.1, 0.0, 1.0)):
            brute = [
                decide_part(
                    np.array([1 - s, s]), float(s), classes, "ok", t, float(a), rule
                ).verdict
                for s, a in zip(scores, anomaly, strict=True)
            ]
            got = operating.line_counts(scores, novel, t, data)
            assert got == (brute.count("OK"), brute.count("UNSURE"), brute.count("NG")), (on, t)


def test_the_production_file_is_where_promote_publishes(tmp_path):
    from defectssft.promote import production_path
    from defectssft.verdicts import PRODUCTION_FILE

    p = Project.create(tmp_path / "proj", classes=CLASSES, ok_class="ok")
    assert production_path(p) == p.root.joinpath(*PRODUCTION_FILE)
