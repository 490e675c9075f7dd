"""Tables that record imports (for undo and relabel) and deleted classes, added to v1 projects.

They are created with ``CREATE TABLE IF NOT EXISTS`` when a project is created or opened, so
older projects gain them without a schema bump (older defectssft versions ignore them).

* ``imports`` / ``import_items``: one row per import run and one per image it added or whose
  label it set, with the label before, so ``defectssft imports undo`` can put things back.
* ``deleted_classes``: a deleted or merged class keeps its ``classes`` row (the label history
  still points at it, renamed to ``NAME (deleted ID)``), listed here so ``Project.classes()``
  no longer shows it.
"""

from __future__ import annotations

import sqlite3

STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS deleted_classes (
        class_id INTEGER PRIMARY KEY REFERENCES classes(id),
        name TEXT NOT NULL,
        merged_into INTEGER REFERENCES classes(id),
        who TEXT NOT NULL,
        time TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS imports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        who TEXT NOT NULL,
        source TEXT NOT NULL,
        paths TEXT NOT NULL,
        label_from TEXT,
        mapping TEXT NOT NULL DEFAULT '{}',
        relabel INTEGER NOT NULL DEFAULT 0,
        summary TEXT NOT NULL DEFAULT '{}',
        undone TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS import_items (
        import_id INTEGER NOT NULL REFERENCES imports(id),
        image_id INTEGER NOT NULL,
        added INTEGER NOT NULL,
        previous_class_id INTEGER,
        class_id INTEGER,
        PRIMARY KEY (import_id, image_id)
    )""",
)

# SQL that keeps deleted classes out of class listings: ``... WHERE id NOT IN (<this>)``.
DELETED_IDS_SQL = "SELECT class_id FROM deleted_classes"


def ensure(con: sqlite3.Connection) -> None:
    """Create the tables if missing (idempotent, one statement at a time: no implicit COMMIT)."""
    for statement in STATEMENTS:
        con.execute(statement)
