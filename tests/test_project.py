"""Project store: creation, images of every kind factories have, bad files, labels, splits."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from defectssft.errors import ProjectError
from defectssft.labeling import LabelSession
from defectssft.project import SCHEMA_VERSION, Project

# ---------------------------------------------------------------- create / open


def test_create_and_reopen(tmp_path: Path) -> None:
    p = Project.create(tmp_path / "p", classes=["ok", "scratch"], ok_class="ok")
    assert (tmp_path / "p" / "project.db").is_file()
    q = Project.open(tmp_path / "p")
    assert q.class_names() == ["ok", "scratch"]
    assert q.ok_class == "ok"
    hotkeys = [c.hotkey for c in q.classes()]
    assert hotkeys == ["1", "2"]
    mode = q._con().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    p.close()
    q.close()


def test_create_refuses_existing_project(tmp_path: Path) -> None:
    Project.create(tmp_path / "p").close()
    with pytest.raises(ProjectError, match="already a project"):
        Project.create(tmp_path / "p")


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "x" * 65])
def test_create_rejects_bad_class_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ProjectError, match="invalid class name"):
        Project.create(tmp_path / "p", classes=[bad])
    assert not (tmp_path / "p" / "project.db").exists()


def test_ok_class_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="OK class"):
        Project.create(tmp_path / "p", classes=["a"], ok_class="ok")


def test_open_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="no such project folder"):
        Project.open(tmp_path / "missing")
    with pytest.raises(ProjectError, match="not a defectssft project"):
        Project.open(tmp_path)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "project.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ProjectError, match="unreadable project database"):
        Project.open(tmp_path / "garbage")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Project.create(tmp_path / "p").close()
    con = sqlite3.connect(tmp_path / "p" / "project.db")
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(ProjectError, match="newer than this defectssft"):
        Project.open(tmp_path / "p")


# ---------------------------------------------------------------- images as factories have them


@pytest.mark.parametrize(
    "name,channels,dtype,expect_channels,expect_depth",
    [
        ("gray.jpg", 1, np.uint8, 1, 8),
        ("rgb.jpg", 3, np.uint8, 3, 8),
        ("gray.png", 1, np.uint8, 1, 8),
        ("rgba.png", 4, np.uint8, 4, 8),
        ("gray16.png", 1, np.uint16, 1, 16),
        ("rgb.bmp", 3, np.uint8, 3, 8),
        ("gray.tif", 1, np.uint8, 1, 8),
        ("gray16.tif", 1, np.uint16, 1, 16),
        ("rgb16.tif", 3, np.uint16, 3, 16),
    ],
)
def test_add_image_formats(
    project: Project, make_image, name, channels, dtype, expect_channels, expect_depth
) -> None:
    path = make_image(name, channels=channels, dtype=dtype)
    res = project.add_image(path)
    assert res.status == "added", res.reason
    rec = project.get_image(res.image_id)
    assert (rec.width, rec.height) == (32, 24)
    assert rec.channels == expect_channels
    assert rec.bit_depth == expect_depth
    assert rec.path.read_bytes() == path.read_bytes()  # the original bytes, untouched
    assert rec.path.name.startswith(res.sha256)


def test_duplicate_content_is_stored_once(project: Project, make_image, tmp_path: Path) -> None:
    a = make_image("a.png", seed=7)
    b = tmp_path / "copy_of_a.png"
    b.write_bytes(a.read_bytes())
    first = project.add_image(a)
    second = project.add_image(b)
    assert second.status == "duplicate"
    assert second.image_id == first.image_id
    assert project.count_images() == 1


def _bad_files(tmp_path: Path, make_image) -> dict[str, tuple[Path, str]]:
    good_jpg = make_image("good.jpg", h=64, w=64).read_bytes()
    good_png = make_image("good.png", h=64, w=64).read_bytes()
    d = tmp_path / "bad"
    d.mkdir()
    files = {
        "empty": (d / "empty.jpg", b"", "empty file"),
        "truncated_jpeg": (d / "trunc.jpg", good_jpg[: len(good_jpg) // 2], "truncated JPEG"),
        "truncated_png": (d / "trunc.png", good_png[: len(good_png) // 2], "truncated PNG"),
        "corrupt_jpeg": (
            d / "corrupt.jpg",
            good_jpg[:20] + b"\x00" * 400 + b"\xff\xd9",
            "not a readable image",
        ),
        "not_an_image": (d / "notes.jpg", b"%PDF-1.4 this is a pdf\n" * 10, "not an image"),
    }
    out = {}
    for key, (path, data, reason) in files.items():
        path.write_bytes(data)
        out[key] = (path, reason)
    return out


def test_bad_files_are_quarantined_with_reason(project: Project, make_image, tmp_path) -> None:
    for key, (path, reason) in _bad_files(tmp_path, make_image).items():
        res = project.add_image(path)
        assert res.status == "quarantined", key
        assert reason in res.reason, (key, res.reason)
        assert "\n" not in res.reason
    assert project.count_images() == 0
    assert len(project.quarantined()) == 5
    assert all(q["reason"] for q in project.quarantined())


def test_unreadable_path_is_quarantined(project: Project, tmp_path: Path) -> None:
    folder_named_like_image = tmp_path / "dir.jpg"
    folder_named_like_image.mkdir()
    res = project.add_image(folder_named_like_image)
    assert res.status == "quarantined"
    assert "cannot read" in res.reason
    res = project.add_image(tmp_path / "vanished.jpg")
    assert res.status == "quarantined" and "cannot read" in res.reason


def test_huge_image_is_refused_before_decoding(project: Project, make_image) -> None:
    path = make_image("big.png", h=100, w=100)
    res = project.add_image(path, max_pixels=5_000)
    assert res.status == "quarantined"
    assert "too large" in res.reason and "100x100" in res.reason


def test_huge_image_header_only(project: Project, tmp_path: Path) -> None:
    # A PNG header that claims 60000 x 60000 pixels: refused from the header, never decoded.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    res = project.add_image(path)
    assert res.status == "quarantined"
    assert "too large" in res.reason


# ---------------------------------------------------------------- labels


def test_labels_history_undo_and_bulk(project: Project, make_image) -> None:
    ids = [project.add_image(make_image(f"{i}.png")).image_id for i in range(4)]
    project.set_label(ids[0], "scratch", who="anna")
    session = LabelSession(project, who="ben")
    session.apply([ids[0]], "dent")
    rec = project.get_image(ids[0])
    assert (rec.label, rec.label_who, rec.label_source) == ("dent", "ben", "human")
    hist = project.label_history(ids[0])
    assert [(e.label, e.previous, e.who) for e in hist] == [
        ("scratch", None, "anna"),
        ("dent", "scratch", "ben"),
    ]
    session.undo()
    assert project.get_image(ids[0]).label == "scratch"
    assert len(project.label_history(ids[0])) == 3  # undo is recorded, history never shrinks
    assert project.set_labels(ids[1:], "ok") == 3
    assert project.set_labels(ids[1:], "ok") == 0  # no change, no event
    assert [r.label for r in project.query_images(label="ok")] == ["ok"] * 3
    project.set_label(ids[1], None)
    assert project.get_image(ids[1]).label is None
    assert len(project.query_images(unlabeled=True)) == 1


def test_set_labels_is_all_or_nothing(project: Project, make_image) -> None:
    """One transaction: an unknown image or class anywhere in a bulk write changes nothing."""
    ids = [project.add_image(make_image(f"{i}.png")).image_id for i in range(3)]
    project.set_label(ids[0], "scratch", who="anna")
    with pytest.raises(ProjectError, match="no image with id 9999"):
        project.set_labels([*ids, 9999], "dent")  # the bad id comes last: earlier rows roll back
    with pytest.raises(ProjectError, match="unknown class 'rust'"):
        project.set_labels_each({ids[1]: "dent", ids[2]: "rust"})
    with pytest.raises(ProjectError, match="no image with id 9999"):
        project.set_labels_each([(ids[1], "dent"), (9999, "ok")])
    assert [project.get_image(i).label for i in ids] == ["scratch", None, None]
    assert [len(project.label_history(i)) for i in ids] == [1, 0, 0]


def test_set_labels_each_one_transaction_one_event_per_image(project: Project, make_image) -> None:
    ids = [project.add_image(make_image(f"{i}.png")).image_id for i in range(4)]
    project.set_label(ids[0], "scratch")
    changed = project.set_labels_each(
        {ids[0]: None, ids[1]: "dent", ids[2]: "ok", ids[3]: None}, who="ben"
    )
    assert changed == 3  # ids[3] was already unlabeled: no event
    assert [project.get_image(i).label for i in ids] == [None, "dent", "ok", None]
    events = [project.label_history(i)[-1] for i in ids[:3]]
    assert [(e.label, e.previous, e.who, e.source) for e in events] == [
        (None, "scratch", "ben", "human"),
        ("dent", None, "ben", "human"),
        ("ok", None, "ben", "human"),
    ]
    assert len({e.time for e in events}) == 1  # written together
    assert project.label_history(ids[3]) == []
    with pytest.raises(ProjectError, match="unknown label source"):
        project.set_labels_each({ids[1]: "ok"}, source="robot")


def test_unknown_class_is_a_clear_error(project: Project, make_image) -> None:
    image_id = project.add_image(make_image("a.png")).image_id
    with pytest.raises(ProjectError, match="unknown class 'rust'"):
        project.set_label(image_id, "rust")
    assert project.label_history(image_id) == []


def test_class_management(project: Project) -> None:
    info = project.add_class("crack", description="thin line")
    assert info.hotkey == "4"
    project.update_class("crack", is_ok=True)
    assert project.ok_class == "crack"
    project.update_class("scratch", hotkey="4")
    keys = {c.name: c.hotkey for c in project.classes()}
    assert keys["scratch"] == "4" and keys["crack"] is None  # a hotkey belongs to one class
    with pytest.raises(ProjectError, match="already exists"):
        project.add_class("crack")


def test_rename_class_keeps_labels_history_splits_and_ok(project: Project, make_image) -> None:
    ids = _labeled_project(project, make_image, per_class=4)
    a = ids["scratch"][0]
    project.set_label(a, "dent", who="anna")
    project.set_label(a, "scratch", who="ben")
    project.assign_splits(val_fraction=0.25, test_fraction=0.25, seed=3)
    splits = {r.id: r.split for r in project.query_images()}
    project.set_setting("labelbook.examples", {"scratch": [a], "dent": [ids["dent"][0]]})
    project.register_model("v0001", {"classes": ["ok", "scratch", "dent"]}, {})
    project.save_predictions("v0001", [(a, [0.1, 0.8, 0.1])])
    before = {c.name: c for c in project.classes()}

    info = project.rename_class("scratch", "scratches", who="carl")
    info_ok = project.rename_class("ok", "good")

    assert (info.id, info.hotkey, info.colour) == (
        before["scratch"].id,
        before["scratch"].hotkey,
        before["scratch"].colour,
    )
    assert project.class_names() == ["good", "scratches", "dent"]
    assert project.ok_class == "good" and info_ok.is_ok
    assert sorted(r.id for r in project.query_images(label="scratches")) == sorted(ids["scratch"])
    assert project.get_image(a).label == "scratches"
    assert [(e.label, e.previous, e.who) for e in project.label_history(a)] == [
        ("scratches", None, "operator"),
        ("dent", "scratches", "anna"),
        ("scratches", "dent", "ben"),
    ]
    assert {r.id: r.split for r in project.query_images()} == splits  # frozen splits untouched
    assert project.predictions("v0001") == {a: [0.1, 0.8, 0.1]}
    assert project.get_model("v0001")["meta"]["classes"] == ["ok", "scratch", "dent"]  # its own
    assert project.get_setting("labelbook.examples") == {"scratches": [a], "dent": [ids["dent"][0]]}
    assert project.status()["by_class"] == {"good": 4, "scratches": 4, "dent": 4}
    data = project.training_data()
    assert data.classes == ["good", "scratches", "dent"] and data.ok_class == "good"
    assert [(r["old"], r["new"], r["who"]) for r in project.class_renames()] == [
        ("scratch", "scratches", "carl"),
        ("ok", "good", "operator"),
    ]
    with pytest.raises(ProjectError, match="unknown class 'scratch'"):
        project.set_label(a, "scratch")
    project.set_label(a, "good")
    assert project.get_image(a).label == "good"


def test_rename_class_same_name_and_case(project: Project) -> None:
    assert project.rename_class("dent", "dent").name == "dent"
    assert project.class_renames() == []  # no-op: nothing logged
    assert project.rename_class("dent", " Dent ").name == "Dent"  # a case fix is a rename
    assert project.class_names() == ["ok", "scratch", "Dent"]


@pytest.mark.parametrize(
    "old,new,match",
    [
        ("rust", "rusty", "cannot rename 'rust': no such class; known classes: "),
        ("scratch", "bad name", "invalid class name 'bad name'"),
        ("scratch", "", "invalid class name ''"),
        ("scratch", "dent", "cannot rename 'scratch' to 'dent': class 'dent' already exists"),
    ],
)
def test_rename_class_errors_change_nothing(project: Project, make_image, old, new, match) -> None:
    image_id = project.add_image(make_image("a.png")).image_id
    project.set_label(image_id, "scratch")
    before = project.classes()
    with pytest.raises(ProjectError, match=match) as e:
        project.rename_class(old, new)
    assert "\n" not in str(e.value)
    assert project.classes() == before
    assert project.get_image(image_id).label == "scratch"
    assert project.class_renames() == []


def test_current_class_names_follow_renames(project: Project) -> None:
    trained = ["ok", "scratch", "dent"]
    assert project.current_class_names(trained) == trained
    project.rename_class("scratch", "scratches")
    project.add_class("scratch")  # a new class may take the old name
    assert project.current_class_names(trained) == ["ok", "scratches", "dent"]
    assert project.current_class_names(project.class_names()) == project.class_names()
    # Swapping two names through a third one: outputs still mean the same classes.
    project.rename_class("ok", "tmp")
    project.rename_class("dent", "ok")
    project.rename_class("tmp", "dent")
    assert project.current_class_names(trained) == ["dent", "scratches", "ok"]
    # Names that are not a former name of that output's class stay as they are.
    assert project.current_class_names(["a", "b", "c", "d", "e"]) == ["a", "b", "c", "d", "e"]


def test_cli_classes_rename(tmp_path: Path, make_image, capsys) -> None:
    from defectssft.cli import main as cli

    proj = tmp_path / "p"
    p = Project.create(proj, classes=["ok", "scrach"], ok_class="ok")
    image_id = p.add_image(make_image("a.png")).image_id
    p.set_label(image_id, "scrach")
    assert cli(["classes", str(proj), "rename", "scrach", "scratch"]) == 0
    out = capsys.readouterr().out
    assert "renamed class 'scrach' to 'scratch'" in out and "scratch" in out.splitlines()[-1]
    assert p.class_names() == ["ok", "scratch"] and p.get_image(image_id).label == "scratch"
    assert cli(["classes", str(proj), "rename", "ok", "good", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["is_ok"]) for r in rows] == [("good", True), ("scratch", False)]
    for argv, message in [
        (["rename", "scratch", "good"], "class 'good' already exists"),
        (["rename", "nope", "x"], "cannot rename 'nope': no such class"),
        (["rename", "scratch", "a b"], "invalid class name 'a b'"),
        (["rename", "scratch"], "`classes rename` needs the current and the new name"),
        (["rename", "scratch", "s2", "--hotkey", "5"], "`classes rename` only renames"),
        (["add", "x", "y"], "`classes add` takes one class name"),
    ]:
        assert cli(["classes", str(proj), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
    assert p.class_names() == ["good", "scratch"]
    assert p.get_image(image_id).label == "scratch"


# ---------------------------------------------------------------- splits and training data


def _labeled_project(project: Project, make_image, per_class: int) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = {}
    for cls in project.class_names():
        for i in range(per_class):
            image_id = project.add_image(make_image(f"{cls}_{i}.png")).image_id
            project.set_label(image_id, cls)
            ids.setdefault(cls, []).append(image_id)
    return ids


def test_splits_are_stratified_and_frozen(project: Project, make_image) -> None:
    _labeled_project(project, make_image, per_class=20)
    moved = project.assign_splits(val_fraction=0.2, test_fraction=0.1, seed=1, min_labels=3)
    assert moved == {"train": 42, "val": 12, "test": 6}
    for cls in project.class_names():
        splits = [r.split for r in project.query_images(label=cls)]
        assert splits.count("test") == 2 and splits.count("val") == 4
    before = {r.id: r.split for r in project.query_images()}
    # New labels later: old assignments never move, and the new ones are drawn per class.
    for i in range(10):
        image_id = project.add_image(make_image(f"late_{i}.png")).image_id
        project.set_label(image_id, "dent")
    project.assign_splits(val_fraction=0.2, test_fraction=0.1, seed=99, min_labels=3)
    after = {r.id: r.split for r in project.query_images()}
    assert all(after[i] == s for i, s in before.items())
    dent = [r.split for r in project.query_images(label="dent")]
    assert dent.count("test") == 3 and dent.count("val") == 6


def test_tiny_classes_keep_their_images_for_training(project: Project, make_image) -> None:
    _labeled_project(project, make_image, per_class=2)
    project.assign_splits(val_fraction=0.3, test_fraction=0.3)
    assert {r.split for r in project.query_images()} == {"train"}


def test_training_data(project: Project, make_image) -> None:
    _labeled_project(project, make_image, per_class=10)
    unlabeled = [project.add_image(make_image(f"u{i}.png")).image_id for i in range(7)]
    project.assign_splits(min_labels=3)
    data = project.training_data()
    assert data.classes == ["ok", "scratch", "dent"] and data.ok_class == "ok"
    assert len(data.labeled) + len(data.val) + len(data.test) == 30
    assert len(data.test) == 6 and len(data.val) == 6
    assert sorted(data.unlabeled_ids) == unlabeled
    assert all(p.is_file() for p, _ in data.labeled)
    assert set(data.test_ids).isdisjoint(data.labeled_ids)
    h1 = data.data_hash
    project.set_label(data.labeled_ids[0], "dent" if data.labeled[0][1] != 2 else "ok")
    assert project.training_data().data_hash != h1
    # An unlabeled image in val/test never leaks into the unlabeled pool.
    project.set_label(data.test_ids[0], None)
    assert data.test_ids[0] not in project.training_data().unlabeled_ids


def test_status_counts(project: Project, make_image, tmp_path: Path) -> None:
    _labeled_project(project, make_image, per_class=3)
    project.add_image(make_image("u.png"))
    (tmp_path / "bad.jpg").write_bytes(b"")
    project.add_image(tmp_path / "bad.jpg")
    st = project.status()
    assert st["images"] == 10 and st["labeled"] == 9 and st["unlabeled"] == 1
    assert st["by_class"] == {"ok": 3, "scratch": 3, "dent": 3}
    assert st["quarantined"] == 1


def test_models_and_predictions(project: Project, make_image) -> None:
    v1, d1 = project.new_model_dir()
    v2, _ = project.new_model_dir()
    assert (v1, v2) == ("v0001", "v0002") and d1.is_dir()
    project.register_model(v1, {"model_name": "x"}, {"acc": 0.9})
    project.update_model_metrics(v1, {"auroc": 0.95})
    assert project.get_model(v1)["metrics"] == {"acc": 0.9, "auroc": 0.95}
    project.register_model(v2, {}, {})
    assert project.get_model()["version"] == v2  # newest when nothing is in production
    project.set_production(v1)
    assert project.production_model() == v1 and project.get_model()["version"] == v1
    image_id = project.add_image(make_image("p.png")).image_id
    project.save_predictions(v1, [(image_id, [0.1, 0.7, 0.2])])
    assert project.predictions(v1) == {image_id: [0.1, 0.7, 0.2]}
    with pytest.raises(ProjectError, match="no model version"):
        project.get_model("v9999")


def test_gc_removes_orphans_only(project: Project, make_image) -> None:
    res = project.add_image(make_image("keep.png"))
    orphan = project.images_dir / "ab" / ("ab" * 32 + ".png")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"x")
    assert project.gc() == 0  # too recent: an import may still commit it
    os.utime(orphan, (0, 0))
    assert project.gc() == 1
    assert not orphan.exists()
    assert project.get_image(res.image_id).path.exists()


def test_full_disk_stops_cleanly_and_keeps_what_was_stored(
    project: Project, make_image, monkeypatch, tmp_path: Path
) -> None:
    import errno

    import defectssft.project as store
    from defectssft.ingest import import_paths

    folder = tmp_path / "batch"
    for i in range(5):
        make_image(f"{i}.png", folder=folder)
    real_write = store._atomic_write
    calls = {"n": 0}

    def write_until_full(dest: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(dest, data)

    monkeypatch.setattr(store, "_atomic_write", write_until_full)
    with pytest.raises(ProjectError, match="No space left on device.*free disk space"):
        import_paths(project, [folder], workers=1)
    assert project.count_images() == 2
    assert all(r.path.is_file() for r in project.query_images())
    assert not list(project.images_dir.rglob("*.tmp"))
    monkeypatch.setattr(store, "_atomic_write", real_write)  # space freed: import again
    summary = import_paths(project, [folder], workers=1)
    assert (summary.added, summary.duplicates) == (3, 2)


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    import os

    import defectssft.project as store

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    dest = tmp_path / "ab" / "x.png"
    with pytest.raises(OSError):
        store._atomic_write(dest, b"data")
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_image_overview_and_labels_of(project: Project, make_image) -> None:
    ids = [project.add_image(make_image(f"{i}.png", seed=i)).image_id for i in range(3)]
    project.set_label(ids[0], "scratch")
    project.save_predictions("v0001", [(ids[1], [0.1, 0.7, 0.2])])
    rows = project.image_overview("v0001")
    assert [r.image_id for r in rows] == ids
    assert rows[0].label == "scratch" and rows[0].probs is None and rows[0].pred_index is None
    assert (rows[1].pred_index, list(rows[1].probs)) == (1, [0.1, 0.7, 0.2])
    assert rows[1].margin == pytest.approx(0.5)
    assert Path(rows[2].path) == project.get_image(ids[2]).path and Path(rows[2].path).is_file()
    assert all(r.probs is None for r in project.image_overview(None))
    project.save_predictions("v0002", [(ids[0], [0.5, 0.5]), (ids[1], [0.2, 1e-9, 0.8])])
    ragged = project.image_overview("v0002")  # unequal lengths: parsed one by one
    assert [list(r.probs) if r.probs is not None else None for r in ragged] == [
        [0.5, 0.5],
        [0.2, 1e-9, 0.8],
        None,
    ]
    assert project.labels_of([ids[1], ids[0]]) == {ids[0]: "scratch", ids[1]: None}
    with pytest.raises(ProjectError, match="999"):
        project.labels_of([ids[0], 999])
