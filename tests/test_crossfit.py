"""The default path for few labels: the split rule's effect on training, cross-fitting (out-of-fold
evidence, the supervised guard, stop and resume inside a fold), the checkpoint rule, class
balance, the input size from the images, and what ``train`` prints and stores."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from defectssft.cli import main as cli_main
from defectssft.errors import ConfigError
from defectssft.evidence import load_oof
from defectssft.training import train_project
from defectssft.training.config import resolve_config
from defectssft.training.data import ClassBalancedSampler, TrainData
from defectssft.training.loop import logit_adjustment, train
from defectssft.training.policy import (
    VAL_MIN_PER_CLASS,
    can_choose_checkpoint,
    cross_fit_folds,
    fold_assignment,
    guard_choice,
)
from defectssft.training.summary import describe, describe_evidence
from tests.helpers import TINY, cfg, cli_sets, tiny_data_at, write_gray


def few_labels_project(root: Path, ok: int = 6, dent: int = 4, size: tuple[int, int] = (40, 40)):
    """An ok/dent project with few labels (no split drawn yet) and 6 unlabeled images."""
    from defectssft.project import Project

    p = Project.create(root / "proj", classes=["ok", "dent"], ok_class="ok")
    p.set_setting("input.bit_depth", 8)
    h, w = size
    for c, (name, n) in enumerate((("ok", ok), ("dent", dent))):
        for i in range(n):
            path = write_gray(root / "src" / f"{name}{i}.png", 60 + 130 * c, i + 10 * c)
            if (h, w) != (40, 40):
                import cv2

                cv2.imwrite(path, cv2.resize(cv2.imread(path, 0), (w, h)))
            r = p.add_image(path)
            p.set_label(r.image_id, name, who="test", source="human")
    for i in range(6):
        p.add_image(write_gray(root / "src" / f"u{i}.png", 60 + 130 * (i % 2), 100 + i))
    return p


def tiny_overrides(**extra) -> dict:
    out = {k: dict(v) for k, v in TINY.items()}
    out["evidence"] = {"cross_fit": "auto", "folds": 2, "fold_steps": 0.5}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


# ----------------------------------------------------------------------------- the rules


def test_folds_are_stratified_even_and_seeded():
    labels = [0] * 9 + [1] * 3 + [2] * 2
    a = fold_assignment(labels, 3, seed=0)
    assert a == fold_assignment(labels, 3, seed=0) and a != fold_assignment(labels, 3, seed=1)
    for c in (0, 1):  # every fold holds out some of each class with >= 3 labels
        assert {a[i] for i, y in enumerate(labels) if y == c} == {0, 1, 2}
    assert len({a[i] for i, y in enumerate(labels) if y == 2}) == 2  # 2 labels: 2 folds
    assert sorted(Counter(a).values()) in ([4, 5, 5], [4, 4, 6])  # folds stay even


def test_validation_chooses_weights_only_when_it_holds_enough_of_every_class():
    train_labels = [0] * 20 + [1] * 5
    ok, why = can_choose_checkpoint(train_labels, [0] * 30 + [1] * 2, 2)
    assert not ok and "fewer than 10 images of 1 of 2 classes (2 the fewest)" in why
    ok, _ = can_choose_checkpoint(train_labels, [0] * VAL_MIN_PER_CLASS + [1] * 10, 2)
    assert ok
    assert can_choose_checkpoint(train_labels, [], 2) == (False, "no validation split")


def test_cross_fit_auto_only_when_a_class_has_no_validation_images():
    labels = [0] * 20 + [1] * 5
    k, why = cross_fit_folds("auto", 4, labels, [], 2)
    assert k == 4 and "2 of 2 classes have no validation images" in why
    assert cross_fit_folds("auto", 4, labels, [0, 1], 2)[0] == 0
    assert cross_fit_folds("auto", 4, labels, [0], 2)[0] == 4  # the defect class has none
    assert cross_fit_folds("off", 4, labels, [], 2) == (0, "evidence.cross_fit is off")
    assert cross_fit_folds(3, 4, labels, [0, 1], 2)[0] == 3  # a K given always cross-fits
    assert cross_fit_folds(5, 4, [0, 1, 1], [], 2)[0] == 3  # never more folds than images


def test_the_guard_keeps_the_method_unless_supervised_wins_by_the_margin():
    assert guard_choice(0.80, 0.81)[0] == "method"
    choice, why = guard_choice(0.70, 0.90, metric="auroc")
    assert choice == "supervised" and "auroc 0.900 vs 0.700" in why
    assert guard_choice(0.70, 0.90, method="freematch")[1].startswith(
        "supervised-only beat freematch out of fold"
    )


@pytest.mark.parametrize(
    "value,message",
    [
        ("1", "evidence.cross_fit must be auto, off or a fold count from 2 to 20, got 1"),
        ("sometimes", "evidence.cross_fit must be auto, off or a fold count from 2 to 20"),
        ("0", "evidence.cross_fit must be auto, off or a fold count from 2 to 20, got 0"),
    ],
)
def test_cross_fit_setting_errors_are_one_line(value, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(sets=[f"evidence.cross_fit={value}"])
    assert resolve_config(sets=["evidence.cross_fit=5"])["evidence"]["cross_fit"] == 5
    assert resolve_config(sets=["evidence.cross_fit=OFF"])["evidence"]["cross_fit"] == "off"
    assert resolve_config(sets=["evidence.cross_fit=off"])["evidence"]["cross_fit"] == "off"
    assert resolve_config(sets=["evidence.cross_fit=true"])["evidence"]["cross_fit"] == "auto"


def test_class_balanced_sampler_draws_each_class_equally_and_resumes_positionally():
    labels = [0] * 12 + [1] * 2 + [2] * 4
    s = ClassBalancedSampler(labels, seed=3)
    first = [i for i, _ in zip(s, range(72), strict=False)]
    drawn = Counter(labels[i] for i, _ in first)
    assert drawn == {0: 24, 1: 24, 2: 24}  # two epochs of 3 x 12
    later = ClassBalancedSampler(labels, seed=3, start=40)
    assert [i for i, _ in zip(later, range(32), strict=False)] == first[40:72]


def test_logit_adjustment_is_tau_log_prior_and_off_under_balanced_sampling(tmp_path):
    data = TrainData(["ok", "dent"], [("a", 0)] * 7 + [("b", 1)] * 1)
    tc = type("T", (), {"logit_adjust": 1.0, "class_balanced": False})
    bias = logit_adjustment(data, tc, torch.device("cpu"))
    assert torch.allclose(bias, torch.tensor([0.8, 0.2]).log())
    tc.class_balanced = True
    assert logit_adjustment(data, tc, torch.device("cpu")) is None
    tc.class_balanced, tc.logit_adjust = False, 0.0
    assert logit_adjustment(data, tc, torch.device("cpu")) is None


def test_balanced_sampling_and_logit_adjustment_train(tmp_path):
    data = tiny_data_at(tmp_path / "imgs")
    for train_cfg in ({"class_balanced": True}, {"logit_adjust": 1.0}):
        result = train(cfg(train=train_cfg), data, tmp_path / str(train_cfg), handle_signals=False)
        assert result.status == "completed" and result.step == 4


def test_a_large_validation_split_chooses_the_weights(tmp_path):
    data = tiny_data_at(tmp_path / "imgs")
    val = [(p, c) for p, c in data.val for _ in range(4)]  # 12 per class (repeats are fine)
    data = TrainData(data.classes, data.labeled, data.unlabeled, val, ok_class="ok", bit_depth=8)
    result = train(cfg(train={"eval_every": 2}), data, tmp_path / "run", handle_signals=False)
    assert (tmp_path / "run" / "best.pt").is_file()
    assert result.weights_from["which"] in ("best", "final")
    assert "at least 10 images of every class" in result.weights_from["why"]
    forced = train(
        cfg(train={"checkpoint": "final", "eval_every": 2}),
        data,
        tmp_path / "run2",
        handle_signals=False,
    )
    assert forced.weights_from == {
        "which": "final",
        "step": 4,
        "why": "train.checkpoint=final",
        "label": "final (EMA)",
    }


# ----------------------------------------------------------------------------- a whole run


@pytest.mark.slow
def test_few_labels_train_on_everything_and_cross_fit_with_out_of_fold_evidence(tmp_path, capsys):
    p = few_labels_project(tmp_path)
    sets = [*cli_sets(4), "--set", "evidence.folds=2", "--set", "evidence.fold_steps=0.5"]
    assert cli_main(["train", str(p.root), *sets]) == 0
    out = capsys.readouterr().out
    assert "model v0001\n" in out  # after the anomaly head's line
    assert "labels: 10 train, 0 val, 0 test" in out
    assert "kept whole for training (too few to hold out): ok (6), dent (4)" in out
    assert "cross-fitting: 2 folds x 2 steps (fixmatch, supervised)" in out
    assert "out of fold, fixmatch: balanced accuracy" in out and "escapes" in out
    assert "method: " in out and "weights: final (EMA), step 4 (no validation split)" in out
    # every labeled image scored once, by the fold model that did not train on it
    ev = load_oof(p.root / "models" / "v0001")
    data = p.training_data()
    assert sorted(ev.image_ids.tolist()) == sorted(data.labeled_ids) and len(ev) == 10
    assert set(ev.folds.tolist()) == {0, 1} and np.allclose(ev.probs.sum(1), 1, atol=1e-4)
    assert ev.labels.tolist() == [c for _, c in data.labeled]
    d = p.get_model("v0001")["metrics"]["training"]
    assert d["labels"]["kept_for_training"] == ["ok", "dent"]
    assert d["cross_fit"]["folds"] == 2 and set(d["cross_fit"]["evidence"]) == {
        "fixmatch",
        "supervised",
    }
    assert d["guard"]["method"] in ("fixmatch", "supervised")
    assert d["evidence"]["source"] == f"out of fold, {d['guard']['method']}"
    assert d["evidence"]["escapes"]["n"] == 4 and d["evidence"]["overkill"]["n"] == 6
    log = (p.root / "models" / "v0001" / "train.log").read_text()
    assert "cross-fitting fold 2/2 (supervised, run 4 of 4)" in log and "method: " in log


@pytest.mark.slow
def test_cross_fit_off_and_the_guard_off(tmp_path):
    p = few_labels_project(tmp_path)
    v = train_project(
        p.root,
        tiny_overrides(evidence={"cross_fit": "off"}),
        handle_signals=False,
    )
    d = p.get_model(v)["metrics"]["training"]
    assert d["cross_fit"] == {"folds": 0, "why": "evidence.cross_fit is off"}
    assert load_oof(p.root / "models" / v) is None
    v2 = train_project(p.root, tiny_overrides(evidence={"guard": False}), handle_signals=False)
    d2 = p.get_model(v2)["metrics"]["training"]
    assert d2["cross_fit"]["arms"] == ["fixmatch"] and d2["guard"]["method"] == "fixmatch"


@pytest.mark.slow
def test_a_stop_inside_a_fold_is_clean_and_resume_skips_finished_folds(tmp_path):
    p = few_labels_project(tmp_path)
    stop, phases = threading.Event(), []

    def progress(row):
        if row["event"] == "fold":
            phases.append(row["phase"])
            if row["phase"].startswith("fold 2/2 (fixmatch"):
                stop.set()

    assert train_project(p.root, tiny_overrides(), progress, stop, handle_signals=False) is None
    run = next((p.root / "runs").iterdir())
    assert (run / "folds" / "fixmatch-1of2" / "fold.npz").is_file()
    assert (run / "folds" / "fixmatch-2of2" / "last.pt").is_file()
    assert not (run / "folds" / "fixmatch-2of2" / "fold.npz").exists()
    log = (run / "train.log").read_text()
    assert "stopped during cross-fitting fold 2/2 (fixmatch, run 2 of 4)" in log
    assert "--resume " + run.name in log
    assert not (p.root / "models" / "v0001").exists()
    phases.clear()
    version = train_project(p.root, None, phases.append, resume=True, handle_signals=False)
    assert version == "v0001"
    resumed = {r["phase"] for r in phases if r["event"] == "fold"}
    assert not any(ph.startswith("fold 1/2 (fixmatch") for ph in resumed)  # not trained again
    assert any(ph.startswith("fold 2/2 (fixmatch") for ph in resumed)
    assert load_oof(p.root / "models" / "v0001") is not None


@pytest.mark.slow
def test_input_size_comes_from_the_images_unless_set(tmp_path):
    p = few_labels_project(tmp_path, size=(80, 40))  # tall parts, 40 wide x 80 high
    over = tiny_overrides(
        input={"height": None, "width": None, "side": 64}, evidence={"cross_fit": "off"}
    )
    v = train_project(p.root, over, handle_signals=False)
    model = p.get_model(v)
    # 6 unlabeled 40 x 40 images and 10 tall ones: median aspect 0.5 -> 96 x 32 at ~64^2 px
    assert (model["meta"]["input"]["height"], model["meta"]["input"]["width"]) == (96, 32)
    d = model["metrics"]["training"]["input"]
    assert d["from"].startswith("from the shape of 16 images, median width/height 0.50")
    given = tiny_overrides(input={"height": 32, "width": None}, evidence={"cross_fit": "off"})
    v2 = train_project(p.root, given, handle_signals=False)
    # height given: kept; width empty: follows the aspect (16 -> snapped to 32, the minimum)
    assert (
        p.get_model(v2)["meta"]["input"]["height"],
        p.get_model(v2)["meta"]["input"]["width"],
    ) == (32, 32)
    given = tiny_overrides(input={"height": None, "width": 32}, evidence={"cross_fit": "off"})
    v3 = train_project(p.root, given, handle_signals=False)
    assert p.get_model(v3)["meta"]["input"]["height"] == 64  # 32 / 0.5


def test_split_min_labels_flag(tmp_path, capsys):
    p = few_labels_project(tmp_path)
    assert cli_main(["split", str(p.root), "--min-labels", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --min-labels must be 0 or more, got -1"
    assert p.status()["by_split"]["test"]["labeled"] == 0  # nothing changed
    assert cli_main(["split", str(p.root), "--min-labels", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["by_split"]["test"]["labeled"] == 2 and out["by_split"]["val"]["labeled"] == 2
    assert p.get_setting("split.min_labels") == 3


def test_train_states_its_evidence_with_intervals_and_warns_when_it_is_thin():
    """What `train` prints about the shipped model's evidence: its size, the rates with their
    95 % intervals, and warnings when a handful of parts cannot support them or the model does
    not separate defective from good parts out of fold."""
    ev = {
        "source": "out of fold, supervised",
        "n": 9,
        "classes": 2,
        "balanced_accuracy": 0.583,
        "auroc": 0.278,
        "escapes": {"x": 0, "n": 3},
        "overkill": {"x": 5, "n": 6},
    }
    lines = describe({"evidence": ev})
    assert lines[0].startswith(
        "evidence (out of fold, supervised, 9 labeled images: 3 defective, 6 good): AUROC 0.278; "
        "at the 0.5 threshold escapes 0 / 3, ≤ 70.8 % at 95 %, overkill 5 / 6 = 83.3 %"
    )
    assert "`defectssft evaluate` calibrates the operating point" in lines[1]
    assert any("hardly ranks defective parts above good ones (AUROC 0.28" in x for x in lines)
    assert any(x.startswith("warning: 3 defective labeled parts cannot tell") for x in lines)
    strong = {**ev, "n": 400, "auroc": 0.97, "escapes": {"x": 2, "n": 200}}
    strong["overkill"] = {"x": 4, "n": 200}
    assert not [x for x in describe({"evidence": strong}) if x.startswith("warning")]
    six = describe_evidence({**ev, "classes": 6})
    assert six.startswith("balanced accuracy over the 6 classes 58.3 % on 9 images")
    # validation evidence (no escapes counted) is stated as it is
    val = {"source": "validation split", "n": 40, "balanced_accuracy": 0.9}
    assert describe({"evidence": val}) == [
        "evidence (validation split): balanced accuracy 90.0 % on 40 images"
    ]
