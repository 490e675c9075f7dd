"""Deleting and merging classes: labels move to another class (or are removed), with history.

A deleted class keeps its row, renamed ``NAME (deleted ID)``, so the append-only label history
still names it; ``deleted_classes`` (see ``history_tables``) hides it from ``Project.classes()``
and frees its name for a new class. Every image that carried it gets a new history event (who,
when, from what to what), like any label change. Settings keyed by class name (the label book's
examples) follow a merge. Models trained before report the old class until they are retrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from defectssft.classes import CLASS_KEYED_SETTINGS
from defectssft.errors import ProjectError
from defectssft.project import Project, utcnow


@dataclass(frozen=True)
class ClassRemoval:
    """What ``delete_class`` / ``merge_class`` did."""

    name: str
    into: str | None
    moved: int  # images whose label went to ``into`` (or was removed)

    def as_dict(self) -> dict[str, Any]:
        return {"class": self.name, "into": self.into, "images": self.moved}


def merge_class(project: Project, name: str, into: str, who: str = "operator") -> ClassRemoval:
    """Give every image labeled ``name`` the label ``into``, then delete ``name``."""
    return _remove(project, name, into, who)


def delete_class(
    project: Project, name: str, who: str = "operator", unlabel: bool = False
) -> ClassRemoval:
    """Delete class ``name``. Refused while images carry it unless ``unlabel`` (they become
    unlabeled, with history); use ``merge_class`` to move the labels to another class."""
    return _remove(project, name, None, who, unlabel=unlabel)


def deleted_classes(project: Project) -> list[dict[str, Any]]:
    """Deleted and merged classes, oldest first: ``{"id", "name", "merged_into", "who", "time"}``."""
    rows = project._con().execute(  # noqa: SLF001 - same store, own table
        "SELECT d.class_id, d.name, m.name, d.who, d.time FROM deleted_classes d "
        "LEFT JOIN classes m ON m.id = d.merged_into ORDER BY d.time, d.class_id"
    )
    keys = ("id", "name", "merged_into", "who", "time")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _remove(
    project: Project, name: str, into: str | None, who: str, unlabel: bool = False
) -> ClassRemoval:
    verb = "merge" if into is not None else "delete"
    classes = {c.name: c for c in project.classes()}
    if name not in classes:
        raise ProjectError(
            f"cannot {verb} {name!r}: no such class; known classes: "
            f"{', '.join(classes) or '(none)'}"
        )
    if into is not None:
        if into == name:
            raise ProjectError(f"cannot merge {name!r} into itself; name another class")
        if into not in classes:
            raise ProjectError(
                f"cannot merge {name!r} into {into!r}: no such class; known classes: "
                f"{', '.join(classes)}"
            )
    source = classes[name]
    if source.is_ok and into is None:
        raise ProjectError(
            f"cannot delete {name!r}: it is the OK class; make another class the OK class first "
            f"(`defectssft classes PROJECT set OTHER --ok`) or merge it into another class"
        )
    ids = [r.id for r in project.query_images(label=name)]
    if ids and into is None and not unlabel:
        raise ProjectError(
            f"cannot delete {name!r}: {len(ids)} images carry it; merge it into another class "
            "or unlabel them (--unlabel)"
        )
    target = classes[into] if into is not None else None
    now = utcnow()
    with project._disk_errors(f"{verb} class {name!r}"), project.transaction() as tx:  # noqa: SLF001
        for image_id in ids:
            project._write_label(  # noqa: SLF001 - in this transaction: all or nothing
                tx, image_id, target.id if target else None, source.id, "human", who, now
            )
        tx.execute(
            "INSERT INTO deleted_classes (class_id, name, merged_into, who, time) "
            "VALUES (?,?,?,?,?)",
            (source.id, name, target.id if target else None, who, now),
        )
        tx.execute(
            "UPDATE classes SET name=?, hotkey=NULL, is_ok=0 WHERE id=?",
            (f"{name} (deleted {source.id})", source.id),
        )
        if source.is_ok and target is not None:
            tx.execute("UPDATE classes SET is_ok=1 WHERE id=?", (target.id,))
        for key in CLASS_KEYED_SETTINGS:
            value = project._setting_tx(tx, key)  # noqa: SLF001
            if isinstance(value, dict) and name in value:
                gone = value.pop(name)
                if into is not None and isinstance(gone, list):
                    kept = list(value.get(into, []))
                    value[into] = kept + [i for i in gone if i not in kept]
                project._set_setting_tx(tx, key, value)  # noqa: SLF001
    return ClassRemoval(name, into, len(ids))
