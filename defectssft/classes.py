"""The project's classes: names, colours, hotkeys, the OK class, renames (mixed into Project).

``ClassCatalog`` is a mixin of ``defectssft.project.Project`` (like ``registry.ModelRegistry``):
its methods use the project's connection, transactions and settings. Deleted and merged classes
(``class_ops``) keep their rows for the label history and are hidden here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from defectssft import history_tables
from defectssft.errors import ProjectError

CLASS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# Settings whose value is a JSON object keyed by class name: rename_class rewrites their keys.
CLASS_KEYED_SETTINGS = ("labelbook.examples",)
# Append-only log of class renames: [{"id", "old", "new", "who", "time"}, ...].
RENAMES_SETTING = "classes.renamed"
DEFAULT_COLOURS = (
    "#2ca02c",
    "#d62728",
    "#1f77b4",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    description: str
    colour: str | None
    hotkey: str | None
    is_ok: bool


def validate_class_name(name: str) -> str:
    name = name.strip()
    if not CLASS_NAME_RE.match(name):
        raise ProjectError(
            f"invalid class name {name!r}: use letters, digits, '_', '-', '.' (at most 64)"
        )
    return name


def _utcnow() -> str:
    from defectssft.project import utcnow  # project.py imports this module

    return utcnow()


class ClassCatalog:
    """Class methods of ``Project`` (see the module docstring)."""

    def classes(self) -> list[ClassInfo]:
        rows = self._con().execute(
            "SELECT id, name, description, colour, hotkey, is_ok FROM classes "
            f"WHERE id NOT IN ({history_tables.DELETED_IDS_SQL}) ORDER BY id"
        )
        return [ClassInfo(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def class_names(self) -> list[str]:
        return [c.name for c in self.classes()]

    @property
    def ok_class(self) -> str | None:
        row = self._con().execute("SELECT name FROM classes WHERE is_ok=1").fetchone()
        return row[0] if row else None

    def _class_ids(self) -> dict[str, int]:
        return {
            r[1]: r[0]
            for r in self._con().execute(
                f"SELECT id, name FROM classes WHERE id NOT IN ({history_tables.DELETED_IDS_SQL})"
            )
        }

    def _class_id(self, name: str) -> int:
        ids = self._class_ids()
        if name not in ids:
            raise ProjectError(
                f"unknown class {name!r}; known classes: {', '.join(ids) or '(none)'} "
                "(add one with `defectssft classes add`)"
            )
        return ids[name]

    def add_class(
        self,
        name: str,
        description: str = "",
        colour: str | None = None,
        hotkey: str | None = None,
        is_ok: bool = False,
    ) -> ClassInfo:
        name = validate_class_name(name)
        with self.transaction() as tx:
            if tx.execute("SELECT 1 FROM classes WHERE name=?", (name,)).fetchone():
                raise ProjectError(f"class {name!r} already exists")
            n = tx.execute(
                f"SELECT COUNT(*) FROM classes WHERE id NOT IN ({history_tables.DELETED_IDS_SQL})"
            ).fetchone()[0]
            if is_ok:
                tx.execute("UPDATE classes SET is_ok=0")
            if hotkey is None and n < 9:
                used = {r[0] for r in tx.execute("SELECT hotkey FROM classes")}
                hotkey = next((str(k) for k in range(1, 10) if str(k) not in used), None)
            tx.execute(
                "INSERT INTO classes (name, description, colour, hotkey, is_ok) VALUES (?,?,?,?,?)",
                (
                    name,
                    description,
                    colour or DEFAULT_COLOURS[n % len(DEFAULT_COLOURS)],
                    hotkey,
                    int(is_ok),
                ),
            )
        return next(c for c in self.classes() if c.name == name)

    def update_class(self, name: str, **fields: Any) -> ClassInfo:
        allowed = {"description", "colour", "hotkey", "is_ok"}
        unknown = set(fields) - allowed
        if unknown:
            raise ProjectError(f"cannot change {', '.join(sorted(unknown))} of a class")
        cid = self._class_id(name)
        with self.transaction() as tx:
            if fields.get("is_ok"):
                tx.execute("UPDATE classes SET is_ok=0")
            if fields.get("hotkey"):
                tx.execute(
                    "UPDATE classes SET hotkey=NULL WHERE hotkey=? AND id<>?",
                    (fields["hotkey"], cid),
                )
            for key, value in fields.items():
                tx.execute(
                    f"UPDATE classes SET {key}=? WHERE id=?",
                    (int(value) if key == "is_ok" else value, cid),
                )
        return next(c for c in self.classes() if c.name == name)

    def rename_class(self, old: str, new: str, who: str = "operator") -> ClassInfo:
        """Rename class ``old`` to ``new`` in one transaction; returns the renamed class.

        Labels, label history, splits, predictions and the OK flag refer to the class by id and
        follow it. Settings keyed by class name (the label book's examples) are rewritten and the
        rename is logged (setting ``classes.renamed``, with ``who``). Names are case-sensitive as
        in ``add_class`` (``Scratch`` -> ``scratch`` is a rename); ``new == old`` changes nothing.
        ProjectError (one line, nothing changed) for an unknown ``old``, an invalid ``new`` or a
        ``new`` that another class has.

        Trained models keep the names they were trained with (``model.pt``, ``model.onnx``): a
        model trained before the rename reports the old name (on the line too) until it is
        retrained; ``current_class_names`` maps its names to today's (the app, ``evaluate`` and
        ``promote`` use it, so an older model is still compared on today's test split).
        """
        new = validate_class_name(new)
        with self._disk_errors(f"renaming class {old!r}"), self.transaction() as tx:
            ids = self._class_ids()
            if old not in ids:
                raise ProjectError(
                    f"cannot rename {old!r}: no such class; known classes: "
                    f"{', '.join(self.class_names()) or '(none)'}"
                )
            cid = ids[old]
            if new == old:
                return next(c for c in self.classes() if c.id == cid)
            if tx.execute("SELECT 1 FROM classes WHERE name=?", (new,)).fetchone():
                raise ProjectError(
                    f"cannot rename {old!r} to {new!r}: class {new!r} already exists"
                )
            tx.execute("UPDATE classes SET name=? WHERE id=?", (new, cid))
            for key in CLASS_KEYED_SETTINGS:
                value = self._setting_tx(tx, key)
                if isinstance(value, dict) and old in value:
                    value[new] = value.pop(old)
                    self._set_setting_tx(tx, key, value)
            log = self._setting_tx(tx, RENAMES_SETTING)
            log = log if isinstance(log, list) else []
            log.append({"id": cid, "old": old, "new": new, "who": who, "time": _utcnow()})
            self._set_setting_tx(tx, RENAMES_SETTING, log)
        return next(c for c in self.classes() if c.id == cid)

    def class_renames(self) -> list[dict[str, Any]]:
        """Every class rename so far, oldest first: ``{"id", "old", "new", "who", "time"}``."""
        log = self.get_setting(RENAMES_SETTING, [])
        return list(log) if isinstance(log, list) else []

    def current_class_names(self, model_classes: Sequence[str]) -> list[str]:
        """Today's names for a model's classes (in the model's output order).

        Output ``i`` of a model trained on this project is the ``i``-th class by id, so a name
        that this class had before a rename is replaced by its current name. Names that match
        neither (a model from elsewhere, a class list that changed) are kept as they are.
        """
        classes = self.classes()
        former: dict[int, set[str]] = {}
        for r in self.class_renames():
            former.setdefault(int(r.get("id", -1)), set()).add(str(r.get("old")))
        out = []
        for i, name in enumerate(model_classes):
            name = str(name)
            if i < len(classes) and name in former.get(classes[i].id, ()):
                name = classes[i].name
            out.append(name)
        return out
