"""The record of imports (``import_plan.apply_plan`` writes it): list them, undo one.

Undo ``images`` removes the images an import added (rows, predictions, their history, the stored
files) and puts back the labels it set or changed on images that were already there; undo
``labels`` only puts back labels (images it added become unlabeled). A label a person changed
after the import is kept either way (counted as ``kept``). Classes the import created that no
image carries any more are deleted by an ``images`` undo. An import is undone once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from defectssft.classes import CLASS_KEYED_SETTINGS
from defectssft.errors import DefectssftError
from defectssft.project import Project, utcnow

UNDO_MODES = ("images", "labels")


class ImportLogError(DefectssftError):
    """An import id or undo mode that cannot be used."""


@dataclass(frozen=True)
class UndoResult:
    import_id: int
    mode: str
    removed: int  # images deleted
    restored: int  # labels put back
    kept: int  # labels changed since the import, left alone
    classes_removed: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_imports(project: Project) -> list[dict[str, Any]]:
    """Every recorded import, oldest first, with its summary and undo state."""
    rows = project._con().execute(  # noqa: SLF001
        "SELECT id, time, who, source, paths, label_from, mapping, relabel, summary, undone "
        "FROM imports ORDER BY id"
    )
    out = []
    for r in rows:
        out.append(
            {
                "id": r[0],
                "time": r[1],
                "who": r[2],
                "source": r[3],
                "paths": json.loads(r[4]),
                "label_from": r[5],
                "mapping": json.loads(r[6]),
                "relabel": bool(r[7]),
                "summary": json.loads(r[8]),
                "undone": json.loads(r[9]) if r[9] else None,
            }
        )
    return out


def get_import(project: Project, import_id: int) -> dict[str, Any]:
    found = [i for i in list_imports(project) if i["id"] == int(import_id)]
    if not found:
        known = [str(i["id"]) for i in list_imports(project)]
        raise ImportLogError(
            f"no import with id {import_id}; recorded imports: {', '.join(known) or '(none)'} "
            "(`defectssft imports PROJECT list`)"
        )
    return found[0]


def undo_import(
    project: Project, import_id: int, mode: str = "images", who: str = "operator"
) -> UndoResult:
    """Undo import ``import_id`` (see the module docstring); one transaction, all or nothing."""
    if mode not in UNDO_MODES:
        raise ImportLogError(f"unknown undo mode {mode!r}; use {' or '.join(UNDO_MODES)}")
    record = get_import(project, import_id)
    if record["undone"]:
        raise ImportLogError(
            f"import {import_id} was already undone ({record['undone'].get('mode')}, "
            f"{record['undone'].get('time')})"
        )
    con = project._con()  # noqa: SLF001
    items = con.execute(
        "SELECT image_id, added, previous_class_id, class_id FROM import_items "
        "WHERE import_id=? ORDER BY image_id",
        (import_id,),
    ).fetchall()
    live_classes = {c.id for c in project.classes()}
    removed: list[tuple[int, str, str]] = []  # (id, sha256, ext) of deleted images
    restored = kept = 0
    now = utcnow()
    with project.transaction() as tx:
        for image_id, added, previous, class_id in items:
            row = tx.execute(
                "SELECT sha256, ext, label_class_id FROM images WHERE id=?", (image_id,)
            ).fetchone()
            if row is None:
                continue  # removed since (another undo)
            if added and mode == "images":
                for table in ("predictions", "label_events"):
                    tx.execute(f"DELETE FROM {table} WHERE image_id=?", (image_id,))
                tx.execute("DELETE FROM images WHERE id=?", (image_id,))
                removed.append((image_id, row[0], row[1]))
                continue
            if class_id is None:
                continue
            if row[2] != class_id:
                kept += 1  # somebody changed it since: theirs wins
                continue
            back = previous if previous in live_classes else None
            project._write_label(  # noqa: SLF001 - same transaction: all or nothing
                tx, image_id, back, class_id, "imported", who, now
            )
            restored += 1
        gone_ids = {r[0] for r in removed}
        if gone_ids:
            for key in CLASS_KEYED_SETTINGS:
                value = project._setting_tx(tx, key)  # noqa: SLF001
                if isinstance(value, dict):
                    value = {k: [i for i in v if i not in gone_ids] for k, v in value.items()}
                    project._set_setting_tx(tx, key, value)  # noqa: SLF001
        undone = {
            "mode": mode,
            "time": now,
            "who": who,
            "removed": len(removed),
            "restored": restored,
            "kept": kept,
        }
        tx.execute("UPDATE imports SET undone=? WHERE id=?", (json.dumps(undone), import_id))
    for _, sha, ext in removed:  # after the commit: a crash leaves orphans for `gc`, never holes
        project.image_file(sha, ext).unlink(missing_ok=True)
    classes_removed = []
    if mode == "images":
        from defectssft.class_ops import delete_class

        used = set(project.status()["by_class"].items())
        for name in record["summary"].get("new_classes", []):
            if (name, 0) in used and name != project.ok_class:
                delete_class(project, name, who=who)
                classes_removed.append(name)
    return UndoResult(import_id, mode, len(removed), restored, kept, classes_removed)
