"""One decision everywhere, novelty included: for a version with an anomaly head, a part the
classifier passes as OK and the head finds novel is UNSURE in the app's verdict
(``defectssft.verdicts``), in ``evaluate``'s verdict counts and on the line alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from defectssft import anomaly as A
from defectssft.evaluate import evaluate_project_model
from defectssft.export import export_project_model
from defectssft.inspection import load_images, load_inspection
from defectssft.novel_scores import load_scores
from defectssft.verdicts import (
    ANOMALY_META_FILE,
    VerdictCache,
    anomaly_scores,
    line_verdicts,
    store_anomaly_scores,
    version_novelty,
    version_verdicts,
)
from defectssft_line.decision import Thresholds, decide_part
from defectssft_line.novelty import NoveltyRule
from tests.helpers import CLASSES, SIZE, add_model, make_project


def test_the_app_reads_the_heads_file_by_its_name():
    assert ANOMALY_META_FILE == A.META_FILE


def test_decide_part_applies_the_novelty_rule_only_to_ok_parts():
    thr = Thresholds(0.5, 0.4, 0.5)
    rule = NoveltyRule(2.0)
    ok_probs = np.array([0.9, 0.05, 0.05])
    ng_probs = np.array([0.1, 0.8, 0.1])
    assert decide_part(ok_probs, 0.1, CLASSES, "ok", thr).verdict == "OK"
    assert decide_part(ok_probs, 0.1, CLASSES, "ok", thr, 1.0, rule).verdict == "OK"
    novel = decide_part(ok_probs, 0.1, CLASSES, "ok", thr, 2.0, rule)
    assert novel.verdict == "UNSURE" and novel.novel is True and novel.anomaly_score == 2.0
    assert decide_part(ok_probs, 0.1, CLASSES, "ok", thr, 3.0, NoveltyRule(2.0, "NG")).verdict == (
        "NG"
    )
    assert decide_part(ng_probs, 0.9, CLASSES, "ok", thr, 3.0, rule).verdict == "NG"
    # a rule without the part's score (never scored by the head): the classifier's verdict
    assert decide_part(ok_probs, 0.1, CLASSES, "ok", thr, None, rule).verdict == "OK"
    rows = [ok_probs, ok_probs, ng_probs]
    assert line_verdicts(rows, CLASSES, "ok", thr, [3.0, None, 3.0], rule) == [
        "UNSURE",
        "OK",
        "NG",
    ]
    with pytest.raises(ValueError, match="2 anomaly scores for 3"):
        line_verdicts(rows, CLASSES, "ok", thr, [1.0, 1.0], rule)


def test_a_broken_heads_description_gives_no_rule(tmp_path):
    assert version_novelty(tmp_path) is None
    (tmp_path / ANOMALY_META_FILE).write_text("{not json")
    assert version_novelty(tmp_path) is None
    (tmp_path / ANOMALY_META_FILE).write_text(json.dumps({"threshold": -1}))
    assert version_novelty(tmp_path) is None
    (tmp_path / ANOMALY_META_FILE).write_text(json.dumps({"threshold": 1.5, "on_novel": "NG"}))
    assert version_novelty(tmp_path) == NoveltyRule(1.5, "NG")


@pytest.fixture(scope="module")
def novel_ok(tmp_path_factory):
    """A version whose classifier passes every part (a fixed OK prediction, NG threshold 0.5)
    and whose anomaly head's threshold lies between the test parts' middle anomaly scores: about
    half of them are novel."""
    root = tmp_path_factory.mktemp("novel_verdicts")
    project = make_project(root)
    version = add_model(project, bias=[8.0, -8.0, -8.0])
    head = A.fit_project_anomaly(project, version)
    folder = Path(project.get_model(version)["path"])
    data = project.training_data()
    wrapper, _ = load_inspection(folder / "model.pt")
    graph = head.wrap(wrapper)
    images = load_images([p for p, _ in data.test], SIZE, SIZE, 8)
    scores, _ = A.torch_anomaly(graph, images)
    # halfway between two neighbouring scores, so no part sits on the threshold, where the
    # exported graph's last-digit differences from torch would decide its verdict
    ranked = np.sort(scores)
    head.threshold = float((ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2)
    head.save(folder)
    project.set_operating_point(version, 0.5, 0.4, 0.5)
    return project, version, data, scores


def test_novel_ok_parts_are_unsure_in_the_app_in_evaluate_and_on_the_line(
    novel_ok, tmp_path, capsys
):
    from defectssft_line.model import LineModel
    from defectssft_line.preprocess import read_image

    project, version, data, scores = novel_ok
    threshold = version_novelty(project.get_model(version)["path"]).threshold
    expected = ["UNSURE" if s >= threshold else "OK" for s in scores]
    assert "UNSURE" in expected and "OK" in expected

    # evaluate: its per-image verdicts, its counts by class and what it prints
    from defectssft.cli import main

    assert main(["evaluate", str(project.root), "--model", version, "--no-report"]) == 0
    said = capsys.readouterr().out
    n_novel = expected.count("UNSURE")
    assert f"{n_novel} test part(s) the classifier passed are novel -> UNSURE" in said
    ev = evaluate_project_model(project, version, report=False)
    assert ev.verdicts == expected
    counts = ev.metrics["verdicts"]
    assert sum(c["UNSURE"] for c in counts.values()) == expected.count("UNSURE")
    assert sum(c["NG"] for c in counts.values()) == 0
    assert ev.metrics["novelty"]["changed"] == expected.count("UNSURE")
    assert ev.metrics["operating_point"]["unsure"]["k"] == expected.count("UNSURE")
    # the test parts' anomaly scores are stored beside the unlabeled ones of the fit, whose
    # own file (the "novel" filter's) keeps the unlabeled images only
    folder = project.get_model(version)["path"]
    stored = anomaly_scores(folder)
    assert all(i in stored for i in data.test_ids) and any(i in stored for i in data.unlabeled_ids)
    assert set(load_scores(folder)) == set(data.unlabeled_ids)

    # the app: the grid's verdict and the Models panel's
    cache = VerdictCache(project, version)
    app = [cache.get(i) for i in data.test_ids]
    assert app == expected
    assert [cache.novel(i) for i in data.test_ids] == [v == "UNSURE" for v in expected]
    every = version_verdicts(project, version)
    assert [every[i] for i in data.test_ids] == expected

    # the line, on the exported file
    res = export_project_model(project, version, out=tmp_path / "m.onnx")
    line = LineModel.load(res.path)
    preds = line.classify([read_image(p) for p, _ in data.test])
    assert [p.verdict for p in preds] == expected


def test_a_version_without_a_head_decides_as_before(tmp_path):
    project = make_project(tmp_path)
    version = add_model(project, bias=[8.0, -8.0, -8.0])
    project.set_operating_point(version, 0.5, 0.4, 0.5)
    ev = evaluate_project_model(project, version, report=False)
    assert set(ev.verdicts) == {"OK"} and "novelty" not in ev.metrics
    cache = VerdictCache(project, version)
    assert cache.novelty is None and cache.novel(ev.image_ids[0]) is None
    assert {cache.get(i) for i in ev.image_ids} == {"OK"}


def test_predict_all_stores_anomaly_scores_so_every_image_agrees_with_the_line(novel_ok, tmp_path):
    from defectssft.predict import predict_images
    from defectssft_line.model import LineModel
    from defectssft_line.preprocess import read_image

    project, version, data, _ = novel_ok
    predict_images(project, version, only_unlabeled=False)
    ids = [*data.labeled_ids, *data.val_ids]
    paths = [p for p, _ in (*data.labeled, *data.val)]
    stored = anomaly_scores(project.get_model(version)["path"])
    assert all(i in stored for i in ids)
    cache = VerdictCache(project, version)
    app = [cache.get(i) for i in ids]
    res = export_project_model(project, version, out=tmp_path / "m.onnx")
    line = [p.verdict for p in LineModel.load(res.path).classify([read_image(p) for p in paths])]
    assert app == line and "UNSURE" in app


def test_scores_of_an_earlier_fit_are_not_used(tmp_path):
    """A head fitted again has another bank: the scores stored for the old one are ignored."""
    folder = tmp_path
    meta = {"threshold": 1.0, "on_novel": "UNSURE", "created": "t1", "bank_rows": 10}
    (folder / ANOMALY_META_FILE).write_text(json.dumps(meta))
    store_anomaly_scores(folder, {5: 2.0, 6: 0.5})
    assert anomaly_scores(folder) == {5: 2.0, 6: 0.5}
    store_anomaly_scores(folder, {7: 3.0})
    assert anomaly_scores(folder) == {5: 2.0, 6: 0.5, 7: 3.0}
    (folder / ANOMALY_META_FILE).write_text(json.dumps({**meta, "created": "t2"}))
    assert anomaly_scores(folder) == {}
    (folder / "anomaly_scored.npz").write_bytes(b"broken")
    assert anomaly_scores(folder) == {}


def test_export_names_parts_the_novelty_rule_flips_between_torch_and_the_file(
    novel_ok, tmp_path, monkeypatch, capsys
):
    """The export's verdict check compares the line's verdicts, the head included: a part whose
    anomaly score the file puts on the other side of the head's threshold is named."""
    from defectssft import exportcheck
    from defectssft.cli import main

    project, version, _, _ = novel_ok
    threshold = version_novelty(project.get_model(version)["path"]).threshold
    real = exportcheck._file_outputs

    def across(path, images, thresholds, with_anomaly, opened):
        outs, mask = real(path, images, thresholds, with_anomaly, opened)
        scores = outs[2].copy()
        scores[0] = threshold / 2 if scores[0] >= threshold else threshold * 2
        return [*outs[:2], scores], mask

    out = tmp_path / "m.onnx"
    assert main(["export", str(project.root), "--model", version, "-o", str(out)]) == 0
    check = project.get_model(version)["metrics"]["export_fp32"]["verdict_check"]
    assert check["novel_flips"] == [] and "sit on the anomaly" not in capsys.readouterr().out
    monkeypatch.setattr(exportcheck, "_file_outputs", across)
    assert main(["export", str(project.root), "--model", version, "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "1 image(s) sit on the anomaly head's threshold" in said
    flip = project.get_model(version)["metrics"]["export_fp32"]["verdict_check"]["novel_flips"]
    assert len(flip) == 1 and {flip[0]["torch"], flip[0]["exported"]} == {"OK", "UNSURE"}
    assert flip[0]["name"] in said
