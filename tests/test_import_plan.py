"""Import preview and mapping, relabel, import undo, class delete/merge: core and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectssft.class_ops import delete_class, deleted_classes, merge_class
from defectssft.cli import main as cli
from defectssft.errors import DefectssftError
from defectssft.import_log import ImportLogError, list_imports, undo_import
from defectssft.import_plan import (
    IGNORE,
    UNLABELED,
    ImportPlanError,
    apply_plan,
    default_target,
    import_with_plan,
    parse_mapping,
    plan_import,
    sanitize_class_name,
    scan_import,
)
from defectssft.new_project import check_project_folder, create_project
from defectssft.project import Project

from .conftest import noise_image, write_image

NEU_RULE = r"filename:^(.*)_\d+\.jpg$"
NEU_CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def _snapshot(p: Project) -> tuple:
    st = p.status()
    return (st["images"], st["by_class"], p.class_names(), len(list_imports(p)))


# ---------------------------------------------------------------- scan and plan (no writes)


def test_scan_writes_nothing_and_counts_labels(tmp_path: Path, samples: Path) -> None:
    p = Project.create(tmp_path / "p", classes=["good"], ok_class="good")
    scan = scan_import([samples / "kolektorsdd"], "folder", p)
    assert {k: g.files for k, g in scan.groups.items()} == {"defective": 6, "good": 10}
    plan = plan_import(scan, p.class_names(), p.ok_class)
    assert plan.mapping == {"defective": "new:defective", "good": "good"}
    assert plan.new_classes == ["defective"] and plan.counts() == {"defective": 6, "good": 10}
    assert p.count_images() == 0 and p.class_names() == ["good"] and list_imports(p) == []


def test_folder_rule_never_makes_the_imported_folder_a_class(tmp_path: Path, samples) -> None:
    p = Project.create(tmp_path / "p", classes=["ok", "defect"], ok_class="ok")
    scan = scan_import([samples / "neu-det"], "folder", p)
    plan = plan_import(scan, p.class_names(), p.ok_class)
    assert plan.mapping == {"neu-det": UNLABELED} and plan.new_classes == []
    assert any("directly in the imported folder 'neu-det'" in n for n in scan.notes())
    s = apply_plan(p, plan)
    assert (s.added, s.labeled) == (60, 0) and p.class_names() == ["ok", "defect"]


def test_kolektor_into_a_project_whose_ok_class_is_good(tmp_path: Path, samples: Path) -> None:
    p = Project.create(tmp_path / "p", classes=["good", "defective"], ok_class="good")
    s = import_with_plan(p, [samples / "kolektorsdd"], "folder")
    assert s.new_classes == [] and p.status()["by_class"] == {"good": 10, "defective": 6}
    assert p.ok_class == "good"


def test_ok_synonyms_map_to_the_ok_class_and_new_projects_get_one(tmp_path, samples) -> None:
    p = Project.create(tmp_path / "p", classes=["ok", "crack"], ok_class="ok")
    scan = scan_import([samples / "kolektorsdd"], "folder", p)
    assert plan_import(scan, p.class_names(), "ok").mapping["good"] == "ok"
    empty = Project.create(tmp_path / "q")  # no classes yet: good/ becomes the OK class
    s = import_with_plan(empty, [samples / "kolektorsdd"], "folder")
    assert sorted(s.new_classes) == ["defective", "good"] and empty.ok_class == "good"


def test_mapping_ignore_unlabeled_new_and_existing(tmp_path: Path, samples: Path) -> None:
    p = Project.create(tmp_path / "p", classes=["ok", "scratch"], ok_class="ok")
    mapping = {
        "scratches": "scratch",
        "crazing": IGNORE,
        "patches": UNLABELED,
        "inclusion": "new:incl",
    }
    s = import_with_plan(p, [samples / "neu-det"], NEU_RULE, mapping)
    assert s.skipped == 10 and s.added == 50
    by = p.status()["by_class"]
    assert by["scratch"] == 10 and by["incl"] == 10 and "crazing" not in by
    assert "patches" not in by and p.status()["unlabeled"] == 10


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"scratches": "scrach"}, "mapped to class 'scrach', which does not exist"),
        ({"nothing": "ok"}, "--map 'nothing': not found in this import"),
        ({"scratches": "new:a b"}, "new class 'a b': invalid class name"),
    ],
)
def test_bad_mappings_are_one_line_and_write_nothing(tmp_path, samples, mapping, message) -> None:
    p = Project.create(tmp_path / "p", classes=["ok"], ok_class="ok")
    scan = scan_import([samples / "neu-det"], NEU_RULE, p)
    with pytest.raises(ImportPlanError, match=message.replace("(", r"\(")) as e:
        plan_import(scan, p.class_names(), p.ok_class, mapping)
    assert "\n" not in str(e.value) and p.count_images() == 0


def test_parse_mapping_and_sanitize() -> None:
    assert parse_mapping(["good=ok", " bad = new:ng "]) == {"good": "ok", "bad": "new:ng"}
    for bad in (["good"], ["good="], ["=ok"]):
        with pytest.raises(ImportPlanError, match="use FOUND=CLASS"):
            parse_mapping(bad)
    assert sanitize_class_name("Rolled in scale!") == "Rolled_in_scale"
    assert sanitize_class_name("***") is None
    assert default_target("***", [], None) == UNLABELED
    assert default_target("Good", ["good"], "good") == "good"


def test_a_class_gone_since_the_preview_stops_the_import(tmp_path, samples) -> None:
    p = Project.create(tmp_path / "p", classes=["ok", "scratch"], ok_class="ok")
    scan = scan_import([samples / "neu-det"], NEU_RULE, p)
    plan = plan_import(scan, p.class_names(), "ok", {n: "scratch" for n in NEU_CLASSES})
    delete_class(p, "scratch")
    with pytest.raises(ImportPlanError, match="'scratch', which does not exist"):
        apply_plan(p, plan)
    assert p.count_images() == 0 and list_imports(p) == []


def test_yolo_without_label_files_says_so(tmp_path: Path, samples: Path) -> None:
    p = Project.create(tmp_path / "p", classes=["ok", "ng"], ok_class="ok")
    scan = scan_import([samples / "kolektorsdd"], "yolo", p)
    assert scan.yolo_missing == 16
    assert any("16 of 16 images have no YOLO label file" in n for n in scan.notes())


def test_yolo_rule_maps_boxes_and_empty_files(tmp_path: Path) -> None:
    root = tmp_path / "y"
    for i, text in enumerate(["", "0 0.1 0.1 0.2 0.2\n"]):
        write_image(root / "images" / f"{i}.png", noise_image(seed=i))
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{i}.txt").write_text(text)
    p = Project.create(tmp_path / "p", classes=["ok", "ng"], ok_class="ok")
    s = import_with_plan(p, [root / "images"], "yolo")
    assert p.status()["by_class"] == {"ok": 1, "ng": 1} and s.notes == []


# ---------------------------------------------------------------- relabel and undo


def test_relabel_changes_labels_with_history_and_undo_puts_them_back(tmp_path, samples) -> None:
    p = Project.create(tmp_path / "p", classes=["good", "defective", "crack"], ok_class="good")
    first = import_with_plan(p, [samples / "kolektorsdd"], "folder")
    again = import_with_plan(p, [samples / "kolektorsdd"], "folder", {"defective": "crack"})
    assert (again.duplicates, again.relabeled, len(again.conflicts)) == (16, 0, 6)
    assert any("--relabel" in n for n in again.notes)
    assert p.status()["by_class"]["crack"] == 0
    scan = scan_import([samples / "kolektorsdd"], "folder", p)
    plan = plan_import(scan, p.class_names(), "good", {"defective": "crack"}, relabel=True)
    assert plan.relabel_candidates() == 6
    assert any("they are relabeled" in line for line in plan.summary_lines())
    re = apply_plan(p, plan, who="carl")
    assert re.relabeled == 6 and p.status()["by_class"]["crack"] == 6
    image = p.query_images(label="crack")[0]
    assert [(e.label, e.previous, e.who) for e in p.label_history(image.id)][-1] == (
        "crack",
        "defective",
        "carl",
    )
    person = p.query_images(label="crack")[1].id
    p.set_label(person, "good")  # a person's change after the import is kept by undo
    u = undo_import(p, re.import_id, mode="labels")
    assert (u.restored, u.kept, u.removed) == (5, 1, 0)
    assert p.status()["by_class"] == {"good": 11, "defective": 5, "crack": 0}
    u = undo_import(p, first.import_id)  # images: the 16 go, with their files
    assert u.removed == 16 and p.count_images() == 0
    assert not any(p.images_dir.glob("*/*"))
    assert [(i["undone"] or {}).get("mode") for i in list_imports(p)] == [
        "images",
        None,
        "labels",
    ]


def test_undo_images_removes_classes_it_created(tmp_path: Path, samples: Path) -> None:
    p = Project.create(tmp_path / "p", classes=["ok"], ok_class="ok")
    before = p.count_images()
    s = import_with_plan(p, [samples / "neu-det"], NEU_RULE)
    assert len(s.new_classes) == 6
    u = undo_import(p, s.import_id)
    assert sorted(u.classes_removed) == NEU_CLASSES
    assert p.class_names() == ["ok"] and p.count_images() == before


def test_undo_errors_are_one_line_and_change_nothing(tmp_path: Path, samples: Path) -> None:
    p = Project.create(tmp_path / "p", classes=["good"], ok_class="good")
    s = import_with_plan(p, [samples / "kolektorsdd"], "folder")
    snap = _snapshot(p)
    with pytest.raises(ImportLogError, match=r"no import with id 99; recorded imports: 1"):
        undo_import(p, 99)
    with pytest.raises(ImportLogError, match="unknown undo mode"):
        undo_import(p, s.import_id, mode="everything")
    assert _snapshot(p) == snap
    undo_import(p, s.import_id, mode="labels")
    with pytest.raises(ImportLogError, match="import 1 was already undone"):
        undo_import(p, s.import_id)
    assert p.count_images() == 16  # labels-only kept the images


# ---------------------------------------------------------------- class delete / merge


def test_merge_moves_labels_with_history_and_frees_the_name(tmp_path: Path, make_image) -> None:
    p = Project.create(tmp_path / "p", classes=["ok", "scratch", "scratches"], ok_class="ok")
    ids = [p.add_image(make_image(f"{i}.png")).image_id for i in range(3)]
    p.set_labels(ids[:2], "scratches")
    p.set_label(ids[2], "scratch")
    p.set_setting("labelbook.examples", {"scratches": [ids[0]]})
    done = merge_class(p, "scratches", "scratch", who="ann")
    assert done.moved == 2 and p.class_names() == ["ok", "scratch"]
    assert p.status()["by_class"] == {"ok": 0, "scratch": 3}
    history = p.label_history(ids[0])
    assert (history[-1].label, history[-1].who) == ("scratch", "ann")
    assert history[-1].previous.startswith("scratches (deleted")
    assert p.get_setting("labelbook.examples") == {"scratch": [ids[0]]}
    assert deleted_classes(p)[0]["merged_into"] == "scratch"
    p.add_class("scratches")  # the name is free again; old history still names the old class
    assert p.class_names() == ["ok", "scratch", "scratches"]
    assert p.status()["by_class"]["scratches"] == 0
    reopened = Project.open(p.root)
    assert reopened.class_names() == ["ok", "scratch", "scratches"]


def test_merging_the_ok_class_moves_the_ok_flag(tmp_path: Path) -> None:
    p = Project.create(tmp_path / "p", classes=["ok", "good"], ok_class="ok")
    merge_class(p, "ok", "good")
    assert p.ok_class == "good"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: merge_class(p, "dent", "dent"), "cannot merge 'dent' into itself"),
        (lambda p: merge_class(p, "dent", "nope"), "cannot merge 'dent' into 'nope': no such"),
        (lambda p: merge_class(p, "nope", "dent"), "cannot merge 'nope': no such class"),
        (lambda p: delete_class(p, "ok"), "cannot delete 'ok': it is the OK class"),
        (lambda p: delete_class(p, "dent"), "cannot delete 'dent': 1 images carry it"),
    ],
)
def test_class_removal_errors_change_nothing(tmp_path: Path, make_image, call, message) -> None:
    p = Project.create(tmp_path / "p", classes=["ok", "dent"], ok_class="ok")
    image_id = p.add_image(make_image("a.png")).image_id
    p.set_label(image_id, "dent")
    with pytest.raises(DefectssftError, match=message) as e:
        call(p)
    assert "\n" not in str(e.value)
    assert p.class_names() == ["ok", "dent"] and p.get_image(image_id).label == "dent"
    assert len(p.label_history(image_id)) == 1 and deleted_classes(p) == []


def test_delete_with_unlabel(tmp_path: Path, make_image) -> None:
    p = Project.create(tmp_path / "p", classes=["ok", "dent"], ok_class="ok")
    image_id = p.add_image(make_image("a.png")).image_id
    p.set_label(image_id, "dent")
    assert delete_class(p, "dent", unlabel=True).moved == 1
    assert p.get_image(image_id).label is None and p.class_names() == ["ok"]


# ---------------------------------------------------------------- CLI


def test_cli_dry_run_map_relabel_and_undo(tmp_path: Path, samples: Path, capsys) -> None:
    proj = str(tmp_path / "p")
    kol = str(samples / "kolektorsdd")
    assert cli(["init", proj, "--classes", "good", "--ok-class", "good"]) == 0
    capsys.readouterr()
    assert cli(["import", proj, kol, "--label-from", "folder", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "nothing written" in out and "-> class defective (new)" in out
    assert Project.open(proj).count_images() == 0
    assert cli(["import", proj, kol, "--label-from", "folder", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"defective": 6, "good": 10}
    assert cli(["import", proj, kol, "--label-from", "folder", "--map", "defective=new:ng"]) == 0
    out = capsys.readouterr().out
    assert "new classes: ng" in out and "undo: defectssft imports" in out
    assert cli(["import", proj, kol, "--label-from", "folder", "--map", "ng=good"]) == 2
    assert "--map 'ng': not found in this import" in capsys.readouterr().err
    argv = ["import", proj, kol, "--label-from", "folder", "--map", "defective=good"]
    assert cli(argv) == 0
    assert "keep" not in capsys.readouterr().out  # conflicts are a warning, labels stay
    assert cli([*argv, "--relabel"]) == 0
    assert "relabeled 6 images" in capsys.readouterr().out
    assert Project.open(proj).status()["by_class"] == {"good": 16, "ng": 0}
    assert cli(["imports", proj, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["summary"]["relabeled"] for r in rows] == [0, 0, 6]
    assert cli(["imports", proj, "undo", "3", "--labels-only"]) == 0
    assert "put back 6 labels" in capsys.readouterr().out
    assert Project.open(proj).status()["by_class"] == {"good": 10, "ng": 6}
    for args, message in [
        (["undo", "3"], "import 3 was already undone"),
        (["undo", "42"], "no import with id 42"),
        (["undo"], "`imports undo` needs the import's id"),
    ]:
        assert cli(["imports", proj, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
    assert Project.open(proj).status()["by_class"] == {"good": 10, "ng": 6}
    assert cli(["imports", proj, "undo", "1"]) == 0
    assert "removed 16 images" in capsys.readouterr().out
    assert Project.open(proj).count_images() == 0


def test_cli_yolo_without_label_files_warns(tmp_path: Path, samples: Path, capsys) -> None:
    proj = str(tmp_path / "p")
    cli(["init", proj, "--classes", "ok,ng"])
    assert cli(["import", proj, str(samples / "kolektorsdd"), "--label-from", "yolo"]) == 0
    out = capsys.readouterr().out
    assert "warning: 16 of 16 images have no YOLO label file" in out


def test_cli_classes_merge_and_delete(tmp_path: Path, make_image, capsys) -> None:
    proj = tmp_path / "p"
    p = Project.create(proj, classes=["ok", "scratch", "scrach"], ok_class="ok")
    image_id = p.add_image(make_image("a.png")).image_id
    p.set_label(image_id, "scrach")
    for argv, message in [
        (["merge", "scrach", "scrach"], "cannot merge 'scrach' into itself"),
        (["merge", "scrach"], "`classes merge` needs the class and the class to merge it into"),
        (["delete", "ok"], "it is the OK class"),
        (["delete", "scrach"], "1 images carry it"),
        (["delete", "scrach", "x"], "`classes delete` takes one class name"),
        (["merge", "scrach", "ok", "--hotkey", "3"], "`classes merge` does not take --hotkey"),
    ]:
        assert cli(["classes", str(proj), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
    assert p.class_names() == ["ok", "scratch", "scrach"]
    assert cli(["classes", str(proj), "merge", "scrach", "scratch", "--who", "ann"]) == 0
    out = capsys.readouterr().out
    assert "deleted class 'scrach'; 1 labels moved to 'scratch'" in out
    assert p.get_image(image_id).label == "scratch" and p.class_names() == ["ok", "scratch"]
    assert cli(["classes", str(proj), "delete", "scratch", "--unlabel", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["ok"]
    assert p.get_image(image_id).label is None


# ---------------------------------------------------------------- where a new project may go


def test_check_project_folder_kinds(tmp_path: Path) -> None:
    assert check_project_folder(tmp_path / "new").kind == "new"
    (tmp_path / "empty").mkdir()
    assert check_project_folder(tmp_path / "empty").can_create
    Project.create(tmp_path / "proj")
    assert check_project_folder(tmp_path / "proj").kind == "project"
    write_image(tmp_path / "shots" / "a" / "1.png", noise_image(seed=1))
    (tmp_path / "shots" / "readme.txt").write_text("x")
    c = check_project_folder(tmp_path / "shots")
    assert (c.kind, c.images, c.can_create) == ("images", 1, False)
    assert c.beside == tmp_path / "shots-project" and "holds 1 images" in c.message()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.pdf").write_bytes(b"%PDF")
    assert check_project_folder(tmp_path / "docs").kind == "other"
    (tmp_path / "f.txt").write_text("x")
    assert check_project_folder(tmp_path / "f.txt").kind == "file"


def test_create_project_with_hotkeys_and_bit_depth(tmp_path: Path) -> None:
    p = create_project(
        tmp_path / "p", [("good", "g"), ("crack", "1"), ("dent", None)], "good", bit_depth=12
    )
    assert [(c.name, c.hotkey, c.is_ok) for c in p.classes()] == [
        ("good", "g", True),
        ("crack", "1", False),
        ("dent", "3", False),
    ]
    assert p.get_setting("input.bit_depth") == 12


@pytest.mark.parametrize(
    "classes, ok, depth, message",
    [
        ([("a", "1"), ("b", "1")], None, None, "hotkey '1' is given to two classes"),
        ([("a", None)], "ok", None, "OK class 'ok' is not among the classes"),
        ([("a b", None)], None, None, "invalid class name 'a b'"),
        ([("a", None)], None, 20, "bit depth 20: use 8 to 16"),
    ],
)
def test_create_project_refuses_bad_input(tmp_path: Path, classes, ok, depth, message) -> None:
    with pytest.raises(DefectssftError, match=message) as e:
        create_project(tmp_path / "p", classes, ok, depth)
    assert "\n" not in str(e.value) and not (tmp_path / "p" / "project.db").exists()


def test_create_project_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "plan.xlsx").write_bytes(b"x")
    with pytest.raises(DefectssftError, match="is not empty"):
        create_project(folder, [("ok", None)])
    assert sorted(f.name for f in folder.iterdir()) == ["plan.xlsx"]


def test_a_rule_that_makes_a_class_per_file_is_doubted(tmp_path: Path, samples: Path) -> None:
    p = Project.create(tmp_path / "p")
    scan = scan_import([samples / "neu-det"], r"filename:^(.*)\.jpg$", p)
    plan = plan_import(scan, [], None)
    assert len(plan.new_classes) == 60
    assert any(
        "60 new classes would be created: check the label rule" in w for w in plan.warnings()
    )
    assert plan.as_dict()["notes"] == plan.warnings()
