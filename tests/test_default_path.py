"""benchmarks/default_path.py: its protocol, scoring and a --smoke run of the whole default path."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dp():
    spec = importlib.util.spec_from_file_location(
        "default_path", ROOT / "benchmarks" / "default_path.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["default_path"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _pool(tmp_path: Path, n_good: int, n_defect: int) -> dict[str, list[Path]]:
    pool: dict[str, list[Path]] = {"good": [], "defect": []}
    for cls, n in (("good", n_good), ("defect", n_defect)):
        for i in range(n):
            p = tmp_path / f"{cls}_{i}.png"
            p.write_bytes(b"x")
            pool[cls].append(p)
    return pool


def test_wilson_interval(dp):
    assert dp.wilson(0, 0) is None
    lo, hi = dp.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = dp.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)


def test_protocol_keeps_held_out_fixed_and_apart(dp, tmp_path):
    pool = _pool(tmp_path, 200, 40)
    a = dp.build_protocol("t", pool, {"good": 50, "defect": 10}, 5, 0)
    b = dp.build_protocol("t", pool, {"good": 50, "defect": 10}, 5, 1)
    held = {p.path for p in a.held}
    assert held == {p.path for p in b.held}  # the held-out parts do not depend on the seed
    assert a.labeled != b.labeled  # the labels do
    for proto in (a, b):
        labeled = {p for paths in proto.labeled.values() for p in paths}
        stream = {p.path for p in proto.stream}
        assert not (held & labeled) and not (held & stream) and not (labeled & stream)
        assert len(proto.labeled["defect"]) == 5
        assert len(proto.labeled["good"]) == dp.MIN_OK_LABELS
        n_def = sum(p.defective for p in proto.stream)
        assert 0 < n_def / len(proto.stream) < 0.1  # a realistic few-% defect rate
        ceiling = {p for paths in proto.all_labels.values() for p in paths}
        assert not (ceiling & held) and labeled <= ceiling


def test_protocol_refuses_too_few_defects(dp, tmp_path):
    with pytest.raises(SystemExit, match="only 2 defect images"):
        dp.build_protocol("t", _pool(tmp_path, 50, 4), {"good": 10, "defect": 2}, 5, 0)


def test_unknown_dataset_and_missing_root_are_one_line(dp, tmp_path):
    with pytest.raises(SystemExit, match="unknown data set 'mvtec'"):
        dp.protocol("mvtec", 5, 0, "full", tmp_path)
    with pytest.raises(SystemExit, match="not found"):
        dp.main(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path)])


def test_score_verdicts_counts_escapes_overkill_unsure(dp, tmp_path):
    parts = [
        dp.Part(tmp_path / "a" / "1.png", "good", False),
        dp.Part(tmp_path / "a" / "2.png", "good", False),
        dp.Part(tmp_path / "a" / "3.png", "scratch", True),
        dp.Part(tmp_path / "a" / "4.png", "dent", True),
        dp.Part(tmp_path / "a" / "5.png", "graded-0.33", False, "0.33"),
        dp.Part(tmp_path / "a" / "6.png", "good", False),
    ]
    names = [dp._held_name(p) for p in parts]
    records = [
        {"file": f"/x/{names[0]}", "verdict": "OK", "class": "good"},
        {"file": f"/x/{names[1]}", "verdict": "NG", "class": "dent"},
        {"file": f"/x/{names[2]}", "verdict": "OK", "class": "good"},
        {"file": f"/x/{names[3]}", "verdict": "UNSURE", "class": "dent"},
        {"file": f"/x/{names[4]}", "verdict": "NG", "class": "scratch"},
    ]  # the sixth part has no record
    s = dp.score_verdicts(parts, records)
    assert (s["n_good"], s["n_defective"], s["missing"]) == (2, 2, 1)
    assert s["escapes"]["x"] == 1 and s["escapes"]["n"] == 2
    assert s["overkill"]["x"] == 1 and s["unsure"]["x"] == 1 and s["unsure"]["n"] == 4
    assert s["balanced_accuracy"] == 0.25  # good: 1/2 OK; defective: 0/2 NG (UNSURE is not NG)
    assert s["graded_verdicts"] == {"0.33": {"NG": 1}}
    assert s["balanced_accuracy_class"] == pytest.approx((0.5 + 0 + 1) / 3, abs=1e-4)
    assert s["auroc"] is None  # no scores in these records
    assert dp.auroc([0.1, 0.5], [0.5, 0.9]) == 0.875  # 3 of 4 pairs above, one tie


def test_parse_evaluate_reads_the_printout(dp):
    text = (
        "model v0001 on the test split (7 images): accuracy 85.71 %, macro F1 0.800\n"
        "  good                 P 0.833  R 1.000  F1 0.909  n 5\n"
        "  defect               P 1.000  R 0.500  F1 0.667  n 2\n"
        "  OK/NG: ROC AUC 1.0000, AP 1.0000\n"
        "  operating threshold 0.1315 (from val): escape 50.00 %, overkill 0.00 %\n"
    )
    c = dp.parse_evaluate(text)
    assert c["n"] == 7 and c["accuracy_pct"] == 85.71 and c["roc_auc"] == 1.0
    assert c["threshold"] == 0.1315 and c["escape_pct"] == 50.0 and c["overkill_pct"] == 0.0
    assert c["test_support"] == {"good": 5, "defect": 2} and c["n_defective"] == 2
    assert dp.parse_evaluate("error: the test split is empty")["n"] is None


@pytest.mark.slow
def test_smoke_runs_the_default_path_through_the_clis(dp, tmp_path):
    """The whole path on samples/kolektorsdd: init, import, train, evaluate, export, promote,
    defectssft-line run on the held-out parts; every held-out part gets a scored verdict."""
    out = tmp_path / "results"
    dp.main(["--smoke", "--out", str(out), "--workdir", str(tmp_path / "work")])
    payload = json.loads((out / "default_path_smoke.json").read_text())
    assert payload["mode"] == "smoke" and payload["settings_changed"]
    (res,) = payload["results"]
    arm = res["arms"]["default"]
    assert "error" not in arm, arm
    cmds = [c["cmd"].split()[:2] for c in arm["commands"]]
    assert ["defectssft", "train"] in cmds and ["defectssft-line", "run"] in cmds
    line = arm["line"]
    held = res["protocol"]["held"]
    assert line["missing"] == 0 and line["errors"] == 0
    assert arm["checkpoint"]["final_step"] == 2  # what the run log says it shipped
    assert line["n_good"] == held["good"] and line["n_defective"] == held["defect"]
    assert line["escapes"]["n"] == held["defect"] and line["escapes"]["ci95"] is not None
    # nothing held out was imported: the project holds only labeled + stream images
    total = sum(res["protocol"]["labeled"].values()) + res["protocol"]["stream"]
    splits = arm["splits"].get("by_split", arm["splits"])  # as `status --json` says it
    assert sum(sum(v.values()) for v in splits.values()) == total
    assert "| samples | 3 | 0 | default |" in (out / "default_path_smoke.md").read_text()


def test_merge_keeps_the_most_finished_entry(dp, tmp_path):
    arm = {
        "line": dp.score_verdicts([], []),
        "claims": {"refused": "error: the test split is empty"},
        "seconds": 60.0,
    }
    base = {"dataset": "kolektor", "k": 5, "seed": 0, "mode": "quick"}
    a = {"results": [{**base, "arms": {"default": {"error": "killed"}}}, {}]}
    b = {"results": [{**base, "arms": {"default": arm}}]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    argv = ["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path)]
    assert dp.main([*argv, "--name", "m"]) == 0
    (res,) = json.loads((tmp_path / "m.json").read_text())["results"]
    assert res["arms"]["default"]["claims"]["refused"]
    assert "| kolektor | 5 | 0 | default |" in (tmp_path / "m.md").read_text()
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match="not a default_path results file"):
        dp.main(["--merge", str(tmp_path / "bad.json"), "--out", str(tmp_path)])


def test_claim_cell_says_whether_the_claim_holds_on_unseen_parts(dp):
    claims = {
        "n": 7,
        "accuracy_pct": 85.71,
        "escape_pct": 0.0,
        "roc_auc": 1.0,
        "test_support": {"good": 2, "defect": 5},
    }
    line = {"escapes": dp.rate(10, 50)}  # 20 %: inside 0/5's interval [0, 43.4 %]
    assert "escapes 0/5 [0.0, 43.5] ✓" in dp._claim_cell(claims, line)
    line = {"escapes": dp.rate(30, 50)}  # 60 %: outside
    assert dp._claim_cell(claims, line).endswith("✗, AUROC 1.000")
    assert dp._claim_cell({"refused": "error: P: the test split is empty; label more"}, line) == (
        "refused: the test split is empty"
    )


EVALUATE_OOF = """\
model v0001: the test split (0 images) holds nothing to score; the evidence below is out of fold and the unlabeled stream
  operating threshold 0.2684 (from oof; oof defective 3, oof good 3, stream 4), UNSURE band [0.1189, 0.2684)
  unlabeled stream (4 scored): 0.00% to review (target 2.00%), 100.00% rejected
  out-of-fold (6 labeled images): escapes 0 / 3, ≤ 70.8 % at 95 %; overkill 3 / 3 = 100.0 % [29.2, 100.0] at 95 %; UNSURE 0 / 6, ≤ 45.9 % at 95 % (scores of the fold models, which trained shorter on fewer labels than this one)
warning: the test split is empty: no claim on labeled parts the model never saw
"""


def test_claims_without_a_test_split_are_the_out_of_fold_intervals(dp):
    """evaluate's printout from OOF + stream evidence (no test split): the suite records the
    operating point, each rate's interval and whether it holds the line's rate."""
    c = dp.parse_evaluate(EVALUATE_OOF)
    assert not c["n"] and c["oof_n"] == 6 and c["chosen_on"] == "oof"
    assert c["threshold"] == 0.2684 and c["unsure_band"] == [0.1189, 0.2684]
    assert c["oof_escapes"] == {"k": 0, "n": 3, "low": 0.0, "high": 0.708}
    assert c["oof_overkill"]["low"] == 0.292 and c["test_escapes"] is None
    assert c["stream"] == {"n": 4, "review_pct": 0.0, "reject_pct": 100.0}
    # today's printout: counts with their intervals
    new = EVALUATE_OOF.replace(
        "0.00% to review (target 2.00%), 100.00% rejected",
        "to review (UNSURE) 0 / 4, ≤ 60.2 % at 95 % (target 2.00 %); rejected (NG) 4 / 4 = "
        "100.0 % [39.8, 100.0] at 95 %",
    )
    assert dp.parse_evaluate(new)["stream"] == c["stream"]
    assert c["warnings"][0].startswith("the test split is empty")
    line = {"escapes": dp.rate(1, 10), "overkill": dp.rate(1, 10), "unsure": dp.rate(0, 20)}
    cov = dp.coverage(c, line)
    assert set(cov) == {"oof"}  # no test parts: no test claim to check
    assert cov["oof"]["escapes"]["holds"] and not cov["oof"]["overkill"]["holds"]
    cell = dp._claim_cell(c, line)
    assert cell.startswith("no test split; NG ≥ 0.268, UNSURE [0.119, 0.268) (from oof)")
    assert "escapes 0/3 [0.0, 70.8] ✓" in cell and "overkill 3/3 [29.2, 100.0] ✗" in cell
    res = [{"arms": {"default": {"claims": c, "line": line}}}]
    assert "out of fold overkill 0/1" in dp.coverage_tally(res)
