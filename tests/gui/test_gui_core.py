"""The app's Qt-free logic: ranking for labeling, grid queries, undo/redo, shortcuts, overrides."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import CLASSES, add_fake_model

from defectssft import queries
from defectssft.active import rank_for_labeling, uncertainty
from defectssft.errors import DefectssftError
from defectssft.labeling import LabelSession
from defectssft_gui.actions import DEFAULT_SHORTCUTS, SHORTCUTS_SETTING, shortcuts_for
from defectssft_gui.train_dialog import parse_overrides


# ---------------------------------------------------------------- active ranking
def test_uncertainty_margin_and_entropy_by_hand():
    p = np.array([[1.0, 0.0], [0.5, 0.5], [0.7, 0.3]])
    assert uncertainty(p, "margin").tolist() == pytest.approx([0.0, 1.0, 0.6])
    ent = uncertainty(p, "entropy")
    assert ent[0] == pytest.approx(0.0, abs=1e-9) and ent[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown uncertainty"):
        uncertainty(p, "variance")


def test_rank_puts_uncertain_first_and_unpredicted_last():
    preds = {1: [0.99, 0.01], 2: [0.5, 0.5], 3: [0.7, 0.3]}
    assert rank_for_labeling(preds, [4, 3, 2, 1], diversity=0.0) == [2, 3, 1, 4]
    assert rank_for_labeling(preds, [1, 2, 3, 4], k=2, diversity=0.0) == [2, 3]


def test_rank_diversity_avoids_near_copies():
    # Three near-identical confusing images and one different, slightly less uncertain one.
    preds = {1: [0.5, 0.5, 0.0], 2: [0.5, 0.5, 0.0], 3: [0.51, 0.49, 0.0], 4: [0.0, 0.45, 0.55]}
    plain = rank_for_labeling(preds, preds, diversity=0.0)
    diverse = rank_for_labeling(preds, preds, diversity=0.5)
    assert plain[:3] == [1, 2, 3]
    assert diverse[:2] == [1, 4]
    assert sorted(diverse) == [1, 2, 3, 4]


def test_rank_rejects_bad_diversity():
    with pytest.raises(ValueError, match="diversity"):
        rank_for_labeling({}, [1], diversity=2.0)


# ---------------------------------------------------------------- grid queries
def test_filters_and_sorts(gui_project):
    p = gui_project
    ids = p.image_ids()
    p.set_label(ids[0], "scratch")
    p.set_label(ids[1], "ok")
    rows = queries.fetch_rows(p, "all", "capture")
    assert [r.image_id for r in rows] == ids
    assert [r.image_id for r in queries.fetch_rows(p, "all", "-capture")] == ids[::-1]
    assert len(queries.fetch_rows(p, "unlabeled")) == len(ids) - 2
    assert [r.image_id for r in queries.fetch_rows(p, "class:scratch")] == [ids[0]]
    # No model yet: nothing predicted, nothing uncertain or misclassified.
    assert queries.fetch_rows(p, "uncertain") == []
    probs = add_fake_model(p)
    version = queries.current_model(p)
    assert version == "v0001"
    pred_scratch = queries.fetch_rows(p, "pred:scratch", version=version)
    assert {r.image_id for r in pred_scratch} == {i for i in ids if i % 3 == 1}
    mis = queries.fetch_rows(p, "misclassified", version=version)
    expected = {i for i in ids[:2] if CLASSES[int(np.argmax(probs[i]))] != p.get_image(i).label}
    assert {r.image_id for r in mis} == expected
    by_score = queries.fetch_rows(p, "all", "score", version=version)
    scores = [r.score for r in by_score]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(0.9)  # 1 - p(ok) with p(ok) = 0.1


def test_score_sort_keeps_the_order_of_confidently_ok_parts(gui_project):
    # float32 probabilities of confident OK parts store p(OK) = 1.0: the score must come from the
    # other classes (1e-9 before 1e-12), not 1 - p(OK), which ties them all at 0.
    p = gui_project
    ids = p.image_ids()
    probs = {ids[0]: [1.0, 1e-12, 0.0], ids[1]: [1.0, 1e-9, 0.0], ids[2]: [0.2, 0.5, 0.3]}
    add_fake_model(p, probs=probs)
    rows = queries.fetch_rows(p, "all", "score", version="v0001")
    assert [r.image_id for r in rows[:3]] == [ids[2], ids[1], ids[0]]
    assert [r.score for r in rows[:3]] == pytest.approx([0.8, 1e-9, 1e-12], rel=1e-6)
    assert all(r.score is None for r in rows[3:])  # no prediction, no score


def test_predictions_of_a_model_trained_before_a_rename(gui_project):
    p = gui_project
    ids = p.image_ids()
    probs = add_fake_model(p)  # the model's record says ok/scratch/dent
    p.set_label(ids[1], CLASSES[int(np.argmax(probs[ids[1]]))])
    p.rename_class("ok", "good")
    p.rename_class(p.get_image(ids[1]).label, "renamed")
    names = p.class_names()
    assert queries.model_classes(p, "v0001") == names
    rows = queries.fetch_rows(p, "all", "score", version="v0001")
    assert {r.pred for r in rows} == set(names)  # today's names, not the model's
    assert rows[0].score == pytest.approx(0.9)  # the OK column is still found after its rename
    assert ids[1] not in {
        r.image_id for r in queries.fetch_rows(p, "misclassified", version="v0001")
    }
    pred_renamed = queries.fetch_rows(p, "pred:renamed", version="v0001")
    assert ids[1] in {r.image_id for r in pred_renamed}


def test_uncertain_and_useful(gui_project):
    p = gui_project
    ids = p.image_ids()
    probs = {i: [0.9, 0.05, 0.05] for i in ids}
    probs[ids[3]] = [0.45, 0.40, 0.15]
    probs[ids[5]] = [0.30, 0.35, 0.35]
    add_fake_model(p, probs=probs)
    unc = queries.fetch_rows(p, "uncertain", version="v0001", uncertain_margin=0.2)
    assert {r.image_id for r in unc} == {ids[3], ids[5]}
    useful = queries.fetch_rows(p, "useful", version="v0001")
    assert [r.image_id for r in useful][:2] == [ids[5], ids[3]]
    p.set_label(ids[5], "dent")
    assert ids[5] not in [r.image_id for r in queries.fetch_rows(p, "useful", version="v0001")]


def test_quarantined_rows(gui_project, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xffnot really a jpeg")
    gui_project.add_image(bad)
    rows = queries.fetch_rows(gui_project, "quarantined")
    assert len(rows) == 1 and rows[0].image_id is None and "JPEG" in rows[0].reason


@pytest.mark.parametrize(
    "spec,sort,match",
    [
        ("class:nosuch", "capture", "unknown class 'nosuch'"),
        ("weird", "capture", "unknown filter 'weird'"),
        ("all", "size", "unknown sort 'size'"),
    ],
)
def test_bad_filter_or_sort_is_one_line(gui_project, spec, sort, match):
    with pytest.raises(DefectssftError, match=match) as e:
        queries.fetch_rows(gui_project, spec, sort)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- undo / redo
def test_label_session_undo_redo_and_history(gui_project):
    p = gui_project
    a, b, c = p.image_ids()[:3]
    s = LabelSession(p, who="alice")
    s.apply([a], "scratch")
    s.apply([a, b, c], "dent")  # bulk: a was scratch, b and c unlabeled
    assert [p.get_image(i).label for i in (a, b, c)] == ["dent"] * 3
    assert s.undo() is not None
    assert [p.get_image(i).label for i in (a, b, c)] == ["scratch", None, None]
    assert s.redo() is not None
    assert [p.get_image(i).label for i in (a, b, c)] == ["dent"] * 3
    s.undo()
    s.undo()
    assert p.get_image(a).label is None
    assert s.undo() is None and not s.can_undo
    assert all(e.who == "alice" for e in p.label_history(a))
    assert s.apply([a], None) is None  # already unlabeled: nothing to record


def test_bulk_change_is_one_undo_step_and_one_transaction(gui_project, monkeypatch):
    p = gui_project
    a, b, c, d = p.image_ids()[:4]
    s = LabelSession(p, who="alice")
    s.apply([a], "scratch")
    s.apply([b], "ok")
    writes = []
    real = p.set_labels_each
    monkeypatch.setattr(
        p, "set_labels_each", lambda labels, **kw: writes.append(dict(labels)) or real(labels, **kw)
    )
    change = s.apply_each({a: "dent", b: "dent", c: "scratch", d: None})  # d: no change
    assert change is not None and change.image_ids == [a, b, c]
    assert [p.get_image(i).label for i in (a, b, c)] == ["dent", "dent", "scratch"]
    assert s.undo() is change  # one step puts back three different labels...
    assert [p.get_image(i).label for i in (a, b, c)] == ["scratch", "ok", None]
    assert s.redo() is change  # ...and one step re-applies them
    assert [p.get_image(i).label for i in (a, b, c)] == ["dent", "dent", "scratch"]
    assert len(writes) == 3  # apply, undo, redo: one transaction each
    # Each image still has its own history event for every step.
    assert [e.label for e in p.label_history(a)] == ["scratch", "dent", "scratch", "dent"]
    assert all(e.who == "alice" and e.source == "human" for e in p.label_history(c))
    s.undo()
    s.undo()
    s.undo()
    assert [p.get_image(i).label for i in (a, b, c)] == [None, None, None]
    assert not s.can_undo


def _two_steps(p):
    """A session that labeled image a 'scratch', then a and b 'dent'."""
    a, b = p.image_ids()[:2]
    s = LabelSession(p)
    s.apply([a], "scratch")
    s.apply([a, b], "dent")
    return s, a, b


def test_failed_undo_keeps_the_step(gui_project):
    p = gui_project
    s, a, b = _two_steps(p)
    p.rename_class("scratch", "scratches")  # the stack was not told: undo names a lost class
    with pytest.raises(DefectssftError, match="unknown class 'scratch'"):
        s.undo()
    assert [p.get_image(i).label for i in (a, b)] == ["dent", "dent"]  # nothing half-undone
    assert s.can_undo
    s.rename_class("scratch", "scratches")
    s.undo()
    assert [p.get_image(i).label for i in (a, b)] == ["scratches", None]


def test_label_session_follows_a_class_rename(gui_project):
    p = gui_project
    s, a, b = _two_steps(p)
    s.undo()
    p.rename_class("scratch", "scratches")
    s.rename_class("scratch", "scratches")
    s.redo()  # the stacks hold names: they must follow, or this would be an unknown class
    assert [p.get_image(i).label for i in (a, b)] == ["dent", "dent"]
    s.undo()
    assert [p.get_image(i).label for i in (a, b)] == ["scratches", None]


def test_label_session_errors(gui_project):
    s = LabelSession(gui_project)
    with pytest.raises(DefectssftError, match="unknown class 'nope'"):
        s.apply([gui_project.image_ids()[0]], "nope")
    with pytest.raises(DefectssftError, match="no image with id 9999"):
        s.apply([9999], "ok")


# ---------------------------------------------------------------- shortcuts / overrides
def test_shortcuts_are_data_overridable_per_project(gui_project):
    assert shortcuts_for(gui_project)["next"] == DEFAULT_SHORTCUTS["next"]
    gui_project.set_setting(SHORTCUTS_SETTING, {"next": "J", "bogus": "K"})
    table = shortcuts_for(gui_project)
    assert table["next"] == ["J"] and "bogus" not in table
    assert table["undo"] == ["Ctrl+Z"]


def test_parse_overrides():
    assert parse_overrides("train.steps=3, model.name=x") == ["train.steps=3", "model.name=x"]
    assert parse_overrides("") == []
    with pytest.raises(ValueError, match="not section.key=value"):
        parse_overrides("steps=3")
    with pytest.raises(ValueError, match="not section.key=value"):
        parse_overrides("train.steps")


# ---------------------------------------------------------------- display of 8/16-bit images
def test_window_level_uses_the_sensor_bit_depth():
    from defectssft_gui.viewer import to_display, window_lut

    raw = np.array([[0, 2048, 4095, 65535]], dtype=np.uint16)  # a 12-bit camera in 16-bit files
    img = to_display(raw, bit_depth=12)
    row = [img.pixelColor(x, 0).red() for x in range(4)]
    assert row == [0, 128, 255, 255]
    # A window over the lower half of the range stretches it to full brightness.
    lut = window_lut(np.dtype(np.uint8), 16, 0.0, 0.5)
    assert lut[0] == 0 and lut[64] == 128 and lut[128] == 255 and lut[255] == 255


def test_thumbnail_of_16bit_colour_image(tmp_path):
    import cv2

    from defectssft_gui.thumbs import load_thumbnail

    img = np.full((300, 150, 3), 65535, dtype=np.uint16)
    img[:, :, 0] = 0  # no blue in BGR
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), img)
    cache = tmp_path / "thumbs"
    q = load_thumbnail("abc", str(path), cache, size=64, bit_depth=16)
    assert (q.width(), q.height()) == (32, 64)
    c = q.pixelColor(10, 10)
    assert (c.red(), c.green(), c.blue()) == (255, 255, 0)
    assert (cache / "abc.u16.png").is_file()  # raw 16-bit kept: the display mapping comes later
    with pytest.raises(ValueError):
        load_thumbnail("bad", str(tmp_path / "missing.png"), cache)
