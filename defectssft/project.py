"""The project store: one folder with ``project.db`` (SQLite, WAL) and a content-addressed image store.

Everything the other parts know about images, labels, splits and model versions goes through
``Project``. Writes are single short transactions so that a hot-folder ingest, the labeling app and
a training run can use one project at the same time; a process killed mid-import leaves either a
whole row or none (an orphan image file at worst, which ``gc`` removes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defectssft import history_tables
from defectssft.classes import (
    DEFAULT_COLOURS,
    ClassCatalog,
    validate_class_name,
)
from defectssft.errors import ProjectError
from defectssft.fsutil import atomic_path
from defectssft.registry import ModelRegistry
from defectssft.splits import MIN_HOLDOUT_LABELS, stratified_holdout

if TYPE_CHECKING:  # image preparation lives in ingest.py, which imports this module
    from defectssft.ingest import PreparedImage
from defectssft.storelock import store_lock
from defectssft_line.names import safe_text

SCHEMA_VERSION = 1
DB_NAME = "project.db"
DEFAULT_MAX_PIXELS = 200_000_000  # 200 MP: bigger files are quarantined, not decoded
SPLITS = ("train", "val", "test")
LABEL_SOURCES = ("human", "imported")
_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE classes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    colour TEXT,
    hotkey TEXT,
    is_ok INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    ext TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    bit_depth INTEGER NOT NULL,
    file_size INTEGER NOT NULL,
    source TEXT NOT NULL,
    original_name TEXT,
    capture_time TEXT,
    ingest_time TEXT NOT NULL,
    split TEXT NOT NULL DEFAULT 'train' CHECK (split IN ('train', 'val', 'test')),
    split_frozen INTEGER NOT NULL DEFAULT 0,
    label_class_id INTEGER REFERENCES classes(id),
    label_source TEXT,
    label_who TEXT,
    label_time TEXT
);
CREATE INDEX images_label ON images(label_class_id);
CREATE INDEX images_split ON images(split, split_frozen);
CREATE INDEX images_ingest ON images(ingest_time);
CREATE INDEX images_capture ON images(capture_time);
CREATE TABLE label_events (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id),
    class_id INTEGER REFERENCES classes(id),
    previous_class_id INTEGER REFERENCES classes(id),
    source TEXT NOT NULL,
    who TEXT NOT NULL,
    time TEXT NOT NULL
);
CREATE INDEX label_events_image ON label_events(image_id, id);
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    sha256 TEXT,
    reason TEXT NOT NULL,
    source TEXT,
    time TEXT NOT NULL
);
CREATE TABLE seen_files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    time TEXT NOT NULL
);
CREATE TABLE models (
    version TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'trained'
);
CREATE TABLE predictions (
    model_version TEXT NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id),
    probs TEXT NOT NULL,
    pred_class_id INTEGER,
    confidence REAL,
    margin REAL,
    PRIMARY KEY (model_version, image_id)
);
CREATE INDEX predictions_margin ON predictions(model_version, margin);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Migrations from version N to N+1, applied in order inside one transaction each.
_MIGRATIONS: dict[int, str] = {}


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ImageRecord:
    id: int
    sha256: str
    path: Path
    width: int
    height: int
    channels: int
    bit_depth: int
    source: str
    original_name: str | None
    capture_time: str | None
    ingest_time: str
    split: str
    label: str | None
    label_source: str | None
    label_who: str | None


@dataclass(frozen=True)
class LabelEvent:
    id: int
    image_id: int
    label: str | None
    previous: str | None
    source: str
    who: str
    time: str


@dataclass(frozen=True)
class AddResult:
    status: str  # "added" | "duplicate" | "quarantined"
    image_id: int | None = None
    sha256: str | None = None
    reason: str | None = None
    path: str | None = None
    restored: bool = False  # a duplicate whose missing/damaged stored file was written again


@dataclass(slots=True)
class ImageOverview:
    """One image as the app's grid lists it: label and one model version's prediction."""

    image_id: int
    sha256: str
    path: str
    label: str | None
    capture: str  # capture time, else ingest time
    name: str  # original file name
    pred_index: int | None  # the model's top class index (None: not predicted)
    confidence: float | None
    margin: float | None
    probs: Sequence[float] | None  # the stored probabilities (a numpy row)


@dataclass
class ProjectSplits:
    """The project's images by split, as ``Project.training_data`` returns them: labeled train,
    the unlabeled pool, val and test, with ids and a hash of what they contain. Paths are
    absolute, class indices follow ``classes``. (``training.data.TrainData`` is what the loop
    consumes; ``training.data.from_project`` builds one from this.)"""

    classes: list[str]
    ok_class: str | None
    labeled: list[tuple[Path, int]] = field(default_factory=list)
    unlabeled: list[Path] = field(default_factory=list)
    val: list[tuple[Path, int]] = field(default_factory=list)
    test: list[tuple[Path, int]] = field(default_factory=list)
    labeled_ids: list[int] = field(default_factory=list)
    unlabeled_ids: list[int] = field(default_factory=list)
    val_ids: list[int] = field(default_factory=list)
    test_ids: list[int] = field(default_factory=list)
    data_hash: str = ""


DUPLICATE_REASON = "same content as an image already in the project"


def _parse_probs(texts: list[str]) -> Sequence[Sequence[float]]:
    """Stored prediction JSON arrays -> rows of one float array (numpy parses 20,000 of them in
    one call, many times faster than a json.loads each); json for rows of unequal length."""
    if not texts:
        return []
    commas = texts[0].count(",")
    if texts[0] != "[]" and all(t.count(",") == commas for t in texts):
        flat = np.array(",".join(t[1:-1] for t in texts).split(","), dtype=np.float64)
        return flat.reshape(len(texts), commas + 1)
    return [json.loads(t) for t in texts]


def image_relpath(sha256: str, ext: str) -> str:
    """Where the store keeps an image, relative to ``PROJECT/images``: ``ab/abcdef….ext``."""
    return f"{sha256[:2]}/{sha256}{ext}"


class Project(ClassCatalog, ModelRegistry):
    """A defectssft project folder. Safe to use from several threads and processes at once."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.db_path = self.root / DB_NAME
        self.images_dir = self.root / "images"
        self.models_dir = self.root / "models"
        self.runs_dir = self.root / "runs"
        self.exports_dir = self.root / "exports"
        self._local = threading.local()

    # ----------------------------------------------------------------- open / create
    @classmethod
    def create(
        cls,
        path: str | Path,
        classes: Sequence[str] = (),
        ok_class: str | None = None,
        name: str | None = None,
    ) -> Project:
        root = Path(path)
        if (root / DB_NAME).exists():
            raise ProjectError(f"{root}: already a project (found {DB_NAME})")
        if root.exists() and not root.is_dir():
            raise ProjectError(f"{root}: exists and is not a folder")
        names = [validate_class_name(c) for c in classes]
        if len(set(names)) != len(names):
            raise ProjectError("duplicate class names in --classes")
        if ok_class is not None and ok_class not in names:
            raise ProjectError(f"OK class {ok_class!r} is not among the classes {names}")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ProjectError(f"{root}: cannot create the project folder ({e.strerror})") from e
        # Build the database under a temporary name: a crash never leaves a half-made project.
        tmp_db = root / (DB_NAME + ".creating")
        tmp_db.unlink(missing_ok=True)
        con = sqlite3.connect(tmp_db)
        try:
            con.executescript(_SCHEMA_V1)
            history_tables.ensure(con)
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            con.execute("INSERT INTO meta VALUES ('name', ?)", (name or root.resolve().name,))
            con.execute("INSERT INTO meta VALUES ('created', ?)", (utcnow(),))
            for i, cname in enumerate(names):
                hotkey = str(i + 1) if i < 9 else None
                con.execute(
                    "INSERT INTO classes (name, colour, hotkey, is_ok) VALUES (?, ?, ?, ?)",
                    (
                        cname,
                        DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)],
                        hotkey,
                        int(cname == ok_class),
                    ),
                )
            con.commit()
        finally:
            con.close()
        os.replace(tmp_db, root / DB_NAME)
        project = cls(root)
        for d in (project.images_dir, project.models_dir, project.runs_dir, project.exports_dir):
            d.mkdir(exist_ok=True)
        return project

    @classmethod
    def open(cls, path: str | Path) -> Project:
        root = Path(path)
        if not root.exists():
            raise ProjectError(
                f"{root}: no such project folder (create one with `defectssft init`)"
            )
        if not (root / DB_NAME).is_file():
            raise ProjectError(f"{root}: not a defectssft project (no {DB_NAME})")
        project = cls(root)
        project._check_schema()
        return project

    def _check_schema(self) -> None:
        try:
            con = self._con()
            row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise ProjectError(f"{self.db_path}: unreadable project database ({e})") from e
        if row is None:
            raise ProjectError(f"{self.db_path}: not a defectssft project database")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise ProjectError(
                f"{self.root}: project schema v{version} is newer than this defectssft "
                f"(v{SCHEMA_VERSION}); upgrade defectssft"
            )
        while version < SCHEMA_VERSION:
            with self.transaction() as tx:
                tx.executescript(_MIGRATIONS[version])
                version += 1
                tx.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
        history_tables.ensure(con)
        for d in (self.images_dir, self.models_dir, self.runs_dir, self.exports_dir):
            d.mkdir(exist_ok=True)

    # ----------------------------------------------------------------- connections
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.db_path, timeout=60.0, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA busy_timeout=60000")
            self._local.con = con
        return con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolls back on any exception."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    @contextlib.contextmanager
    def _disk_errors(self, what: str) -> Iterator[None]:
        """Turn SQLite's 'disk full' / I/O errors into a one-line ProjectError."""
        try:
            yield
        except sqlite3.OperationalError as e:
            msg = str(e)
            if "full" in msg or "disk I/O" in msg or "readonly" in msg:
                raise ProjectError(
                    f"{what}: cannot write to {self.db_path} ({msg}); free disk space and try again"
                ) from e
            raise

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        row = self._con().execute("SELECT value FROM meta WHERE key='name'").fetchone()
        return row[0] if row else self.root.name

    # ----------------------------------------------------------------- images
    def image_file(self, sha256: str, ext: str) -> Path:
        return self.images_dir / image_relpath(sha256, ext)

    def add_image(
        self,
        path: str | Path,
        source: str = "import",
        capture_time: str | None = None,
        label: str | None = None,
        who: str = "import",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> AddResult:
        """Copy one image file into the store; bad files are quarantined with a reason."""
        from defectssft.ingest import prepare_image_file  # ingest imports this module

        prepared = prepare_image_file(path, max_pixels)
        return self.add_prepared(
            prepared, source=source, capture_time=capture_time, label=label, who=who
        )

    def add_prepared(
        self,
        prepared: PreparedImage,
        source: str = "import",
        capture_time: str | None = None,
        label: str | None = None,
        who: str = "import",
    ) -> AddResult:
        """Store a checked image (see ``prepare_image_bytes``) and record it in one transaction."""
        where, sha = prepared.where, prepared.sha256
        source = safe_text(source)
        if prepared.error is not None:
            return self._quarantine(where, sha, prepared.error, source)
        label_id = self._class_id(label) if label is not None else None
        # Shared store lock: `gc` (exclusive) never deletes a file between our write and commit.
        with store_lock(self.root):
            return self._add_locked(prepared, source, capture_time, label_id, who)

    def _add_locked(
        self,
        prepared: PreparedImage,
        source: str,
        capture_time: str | None,
        label_id: int | None,
        who: str,
    ) -> AddResult:
        where, sha = prepared.where, prepared.sha256
        info = prepared.info
        assert info is not None and prepared.data is not None
        existing = (
            self._con()
            .execute("SELECT id, ext, file_size FROM images WHERE sha256=?", (sha,))
            .fetchone()
        )
        if existing:
            restored = self._restore_file(self.image_file(sha, existing[1]), prepared, verify=True)
            self._label_if_unlabeled(existing[0], label_id, who)
            reason = DUPLICATE_REASON + (
                "; its missing stored file was restored" if restored else ""
            )
            return AddResult("duplicate", existing[0], sha, reason, where, restored=restored)
        dest = self.image_file(sha, info.ext)
        self._restore_file(dest, prepared)
        now = utcnow()
        try:
            with self._disk_errors(where), self.transaction() as tx:
                cur = tx.execute(
                    "INSERT INTO images (sha256, ext, width, height, channels, bit_depth, file_size,"
                    " source, original_name, capture_time, ingest_time) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        sha,
                        info.ext,
                        info.width,
                        info.height,
                        info.channels,
                        info.bit_depth,
                        len(prepared.data),
                        source,
                        prepared.name,
                        capture_time,
                        now,
                    ),
                )
                image_id = int(cur.lastrowid)
                if label_id is not None:
                    self._write_label(tx, image_id, label_id, None, "imported", who, now)
        except sqlite3.IntegrityError:
            # Another process added the same content between our check and insert.
            row = self._con().execute("SELECT id FROM images WHERE sha256=?", (sha,)).fetchone()
            self._label_if_unlabeled(row[0], label_id, who)
            return AddResult("duplicate", row[0], sha, DUPLICATE_REASON, where)
        return AddResult("added", image_id, sha, None, where)

    def _restore_file(self, dest: Path, prepared: PreparedImage, verify: bool = False) -> bool:
        """Make sure ``dest`` holds the image: write it when missing, of the wrong size or (with
        ``verify``) of the wrong content; True when it had to be written. A file already there
        gets a fresh mtime, so that ``gc``'s grace period counts from this import."""
        assert prepared.data is not None
        try:
            if dest.stat().st_size == len(prepared.data) and (
                not verify or hashlib.sha256(dest.read_bytes()).hexdigest() == prepared.sha256
            ):
                os.utime(dest)
                return False
        except OSError:
            pass  # missing or unreadable: write it again below
        try:
            _atomic_write(dest, prepared.data)
        except OSError as e:
            raise ProjectError(
                f"{prepared.where}: cannot store the image in {self.images_dir} "
                f"({e.strerror or e}); free disk space and import again "
                "(images already stored are kept)"
            ) from e
        return True

    def _label_if_unlabeled(self, image_id: int, label_id: int | None, who: str) -> None:
        if label_id is None:
            return
        with self.transaction() as tx:
            row = tx.execute("SELECT label_class_id FROM images WHERE id=?", (image_id,)).fetchone()
            if row[0] is None:
                self._write_label(tx, image_id, label_id, None, "imported", who, utcnow())

    def _quarantine(self, path: str, sha: str | None, reason: str, source: str) -> AddResult:
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO quarantine (path, sha256, reason, source, time) VALUES (?,?,?,?,?)",
                (path, sha or None, reason, source, utcnow()),
            )
        return AddResult("quarantined", None, sha, reason, path)

    def quarantined(self) -> list[dict[str, Any]]:
        rows = self._con().execute(
            "SELECT id, path, sha256, reason, source, time FROM quarantine ORDER BY id"
        )
        keys = ("id", "path", "sha256", "reason", "source", "time")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    _IMAGE_COLUMNS = (
        "i.id, i.sha256, i.ext, i.width, i.height, i.channels, i.bit_depth, i.source, "
        "i.original_name, i.capture_time, i.ingest_time, i.split, c.name, i.label_source, i.label_who"
    )

    def _record(self, r: Sequence[Any]) -> ImageRecord:
        return ImageRecord(
            id=r[0],
            sha256=r[1],
            path=self.image_file(r[1], r[2]),
            width=r[3],
            height=r[4],
            channels=r[5],
            bit_depth=r[6],
            source=r[7],
            original_name=r[8],
            capture_time=r[9],
            ingest_time=r[10],
            split=r[11],
            label=r[12],
            label_source=r[13],
            label_who=r[14],
        )

    def get_image(self, image_id: int) -> ImageRecord:
        row = (
            self._con()
            .execute(
                f"SELECT {self._IMAGE_COLUMNS} FROM images i LEFT JOIN classes c "
                "ON c.id = i.label_class_id WHERE i.id=?",
                (image_id,),
            )
            .fetchone()
        )
        if row is None:
            raise ProjectError(f"no image with id {image_id}")
        return self._record(row)

    def query_images(
        self,
        label: str | None = None,
        unlabeled: bool | None = None,
        split: str | None = None,
        source: str | None = None,
        ids: Iterable[int] | None = None,
        order: str = "id",
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ImageRecord]:
        """Images matching all given filters. ``order``: id, capture_time, ingest_time (prefix '-'
        for descending)."""
        where, args = [], []
        if label is not None:
            where.append("i.label_class_id=?")
            args.append(self._class_id(label))
        if unlabeled is True:
            where.append("i.label_class_id IS NULL")
        elif unlabeled is False:
            where.append("i.label_class_id IS NOT NULL")
        if split is not None:
            if split not in SPLITS:
                raise ProjectError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
            where.append("i.split=?")
            args.append(split)
        if source is not None:
            where.append("i.source=?")
            args.append(source)
        if ids is not None:
            id_list = [int(x) for x in ids]
            where.append(f"i.id IN ({','.join('?' * len(id_list)) or 'NULL'})")
            args.extend(id_list)
        desc = order.startswith("-")
        col = order.lstrip("-")
        if col not in ("id", "capture_time", "ingest_time"):
            raise ProjectError(f"cannot order images by {col!r}")
        sql = (
            f"SELECT {self._IMAGE_COLUMNS} FROM images i LEFT JOIN classes c "
            f"ON c.id = i.label_class_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY i.{col} {'DESC' if desc else 'ASC'}, i.id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args.extend([int(limit), int(offset)])
        return [self._record(r) for r in self._con().execute(sql, args)]

    def image_ids(self) -> list[int]:
        return [r[0] for r in self._con().execute("SELECT id FROM images ORDER BY id")]

    def count_images(self) -> int:
        return int(self._con().execute("SELECT COUNT(*) FROM images").fetchone()[0])

    # ----------------------------------------------------------------- labels
    def _write_label(
        self,
        tx: sqlite3.Connection,
        image_id: int,
        class_id: int | None,
        previous: int | None,
        source: str,
        who: str,
        now: str,
    ) -> None:
        tx.execute(
            "INSERT INTO label_events (image_id, class_id, previous_class_id, source, who, time)"
            " VALUES (?,?,?,?,?,?)",
            (image_id, class_id, previous, source, who, now),
        )
        if class_id is None:
            tx.execute(
                "UPDATE images SET label_class_id=NULL, label_source=NULL, label_who=NULL, "
                "label_time=NULL WHERE id=?",
                (image_id,),
            )
        else:
            stored_source = "imported" if source == "imported" else "human"
            tx.execute(
                "UPDATE images SET label_class_id=?, label_source=?, label_who=?, "
                "label_time=? WHERE id=?",
                (class_id, stored_source, who, now, image_id),
            )

    def set_label(
        self, image_id: int, class_name: str | None, who: str = "operator", source: str = "human"
    ) -> None:
        self.set_labels([image_id], class_name, who=who, source=source)

    def set_labels(
        self,
        image_ids: Iterable[int],
        class_name: str | None,
        who: str = "operator",
        source: str = "human",
    ) -> int:
        """Label (or, with None, unlabel) images in one transaction; returns how many changed.

        All or nothing: an unknown class or image id raises ProjectError and writes nothing.
        """
        return self.set_labels_each({int(i): class_name for i in image_ids}, who=who, source=source)

    def set_labels_each(
        self,
        labels: Mapping[int, str | None] | Iterable[tuple[int, str | None]],
        who: str = "operator",
        source: str = "human",
    ) -> int:
        """Give each image its own label (None unlabels) in one transaction; returns how many
        changed.

        Used for bulk changes whose images end with different labels (undo of a bulk label,
        accept-suggestion over a selection). All or nothing: an unknown class or image id
        raises ProjectError and nothing is written. Each changed image still gets its own
        append-only history event (who, time, source); unchanged images get none.
        """
        if source not in LABEL_SOURCES:
            raise ProjectError(f"unknown label source {source!r}")
        items = labels.items() if isinstance(labels, Mapping) else labels
        wanted = {int(i): name for i, name in items}
        class_ids: dict[str | None, int | None] = {None: None}
        for name in dict.fromkeys(wanted.values()):
            if name is not None:
                class_ids[name] = self._class_id(name)
        now = utcnow()
        changed = 0
        with self.transaction() as tx:
            for image_id, name in wanted.items():
                row = tx.execute(
                    "SELECT label_class_id FROM images WHERE id=?", (image_id,)
                ).fetchone()
                if row is None:
                    raise ProjectError(f"no image with id {image_id}")  # rolls back all
                class_id = class_ids[name]
                if row[0] == class_id:
                    continue
                self._write_label(tx, image_id, class_id, row[0], source, who, now)
                changed += 1
        return changed

    def label_history(self, image_id: int) -> list[LabelEvent]:
        rows = self._con().execute(
            "SELECT e.id, e.image_id, c.name, p.name, e.source, e.who, e.time FROM label_events e "
            "LEFT JOIN classes c ON c.id=e.class_id LEFT JOIN classes p ON p.id=e.previous_class_id "
            "WHERE e.image_id=? ORDER BY e.id",
            (image_id,),
        )
        return [LabelEvent(*r) for r in rows]

    def image_overview(self, version: str | None = None) -> list[ImageOverview]:
        """Every image with its label and model ``version``'s prediction (the app's grid), in
        image id order: one read-only query."""
        sql = (
            "SELECT i.id, i.sha256, i.ext, c.name, COALESCE(i.capture_time, i.ingest_time), "
            "COALESCE(i.original_name, ''), p.pred_class_id, p.confidence, p.margin, p.probs "
            "FROM images i LEFT JOIN classes c ON c.id = i.label_class_id "
            "LEFT JOIN predictions p ON p.image_id = i.id AND p.model_version = ? ORDER BY i.id"
        )
        rows = self._con().execute(sql, (version or "",)).fetchall()
        probs = iter(_parse_probs([r[9] for r in rows if r[9] is not None]))
        root = str(self.images_dir)
        return [
            ImageOverview(
                r[0],
                r[1],
                f"{root}/{image_relpath(r[1], r[2])}",
                r[3],
                r[4] or "",
                r[5],
                r[6],
                r[7],
                r[8],
                next(probs) if r[9] is not None else None,
            )
            for r in rows
        ]

    def labels_of(self, image_ids: Sequence[int]) -> dict[int, str | None]:
        """The current label (None: unlabeled) of each image; ProjectError for an unknown id."""
        ids = [int(i) for i in image_ids]
        out = self._labels_where("id", ids)
        missing = [i for i in ids if i not in out]
        if missing:
            self.get_image(missing[0])  # raises ProjectError naming the image
        return out

    def labels_of_hashes(self, hashes: Sequence[str]) -> dict[str, str | None]:
        """sha256 -> current label (None: unlabeled) for the hashes already stored."""
        return self._labels_where("sha256", sorted(set(hashes)))

    def _labels_where(self, column: str, values: Sequence[Any]) -> dict[Any, str | None]:
        assert column in ("id", "sha256")
        out: dict[Any, str | None] = {}
        con = self._con()
        for start in range(0, len(values), 500):
            chunk = list(values[start : start + 500])
            rows = con.execute(
                f"SELECT i.{column}, c.name FROM images i LEFT JOIN classes c "
                f"ON c.id = i.label_class_id WHERE i.{column} IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            out.update({r[0]: r[1] for r in rows})
        return out

    # ----------------------------------------------------------------- splits
    def assign_splits(
        self,
        val_fraction: float | None = None,
        test_fraction: float | None = None,
        seed: int = 0,
        min_labels: int | None = None,
    ) -> dict[str, int]:
        """Draw a stratified val/test hold-out from labeled images whose split is not yet frozen.

        Once an image is given a split it never moves, so test metrics stay comparable across
        retrains. A class with fewer than ``min_labels`` labeled images (default: the project's
        setting ``split.min_labels``, else ``splits.MIN_HOLDOUT_LABELS``) keeps them for
        training. Returns how many images went to each split in this call.
        """
        if min_labels is None:
            min_labels = int(self.get_setting("split.min_labels", MIN_HOLDOUT_LABELS))
        if min_labels < 0:
            raise ProjectError(f"split.min_labels must be 0 or more, got {min_labels}")
        val_fraction = float(
            self.get_setting("split.val_fraction", 0.15) if val_fraction is None else val_fraction
        )
        test_fraction = float(
            self.get_setting("split.test_fraction", 0.15)
            if test_fraction is None
            else test_fraction
        )
        if not (
            0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise ProjectError("split fractions must be in [0, 1) and sum to less than 1")
        moved = {s: 0 for s in SPLITS}
        with self.transaction() as tx:
            classes = [
                [
                    (r[0], r[1], bool(r[2]))
                    for r in tx.execute(
                        "SELECT id, split, split_frozen FROM images WHERE label_class_id=? "
                        "ORDER BY id",
                        (class_id,),
                    )
                ]
                for (class_id,) in tx.execute("SELECT id FROM classes ORDER BY id").fetchall()
            ]
            for image_id, split in stratified_holdout(
                classes, val_fraction, test_fraction, seed, min_labels
            ).items():
                tx.execute(
                    "UPDATE images SET split=?, split_frozen=1 WHERE id=?", (split, image_id)
                )
                moved[split] += 1
        return moved

    def training_data(self, assign: bool = True) -> ProjectSplits:
        """Labeled train images, the unlabeled pool, and the frozen val/test splits.

        Unlabeled = every image without a human/imported label outside val/test, the stream
        ingested since the last run included. Only ids and paths are loaded, never pixels.
        """
        if assign:
            self.assign_splits()
        classes = self.classes()
        index = {c.id: i for i, c in enumerate(classes)}
        data = ProjectSplits([c.name for c in classes], self.ok_class)
        digest = hashlib.sha256()
        rows = self._con().execute(
            "SELECT id, sha256, ext, split, label_class_id FROM images ORDER BY id"
        )
        for image_id, sha, ext, split, class_id in rows:
            path = self.image_file(sha, ext)
            if class_id is None:
                if split == "train":
                    data.unlabeled.append(path)
                    data.unlabeled_ids.append(image_id)
                    digest.update(f"u:{sha}\n".encode())
                continue
            target = {
                "train": (data.labeled, data.labeled_ids),
                "val": (data.val, data.val_ids),
                "test": (data.test, data.test_ids),
            }[split]
            target[0].append((path, index[class_id]))
            target[1].append(image_id)
            digest.update(f"{split}:{sha}:{classes[index[class_id]].name}\n".encode())
        data.data_hash = digest.hexdigest()
        return data

    # ----------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        con = self._con()
        total = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        by_class = {name: 0 for name in self.class_names()}
        for name, n in con.execute(
            "SELECT c.name, COUNT(*) FROM images i JOIN classes c ON c.id=i.label_class_id "
            "GROUP BY i.label_class_id"
        ):
            by_class[name] = n
        by_split: dict[str, dict[str, int]] = {s: {"labeled": 0, "unlabeled": 0} for s in SPLITS}
        for split, labeled, n in con.execute(
            "SELECT split, label_class_id IS NOT NULL, COUNT(*) FROM images GROUP BY 1, 2"
        ):
            by_split[split]["labeled" if labeled else "unlabeled"] = n
        labeled = sum(by_class.values())
        quarantined = con.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        models = con.execute("SELECT COUNT(*) FROM models").fetchone()[0]
        return {
            "project": self.name,
            "path": str(self.root),
            "images": total,
            "labeled": labeled,
            "unlabeled": total - labeled,
            "by_class": by_class,
            "by_split": by_split,
            "quarantined": quarantined,
            "ok_class": self.ok_class,
            "models": models,
            "production_model": self.production_model(),
        }

    # ----------------------------------------------------------------- settings
    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self._con().execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_setting(self, key: str, value: Any) -> None:
        with self.transaction() as tx:
            self._set_setting_tx(tx, key, value)

    @staticmethod
    def _setting_tx(tx: sqlite3.Connection, key: str) -> Any:
        row = tx.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    @staticmethod
    def _set_setting_tx(tx: sqlite3.Connection, key: str, value: Any) -> None:
        tx.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) "
            "DO UPDATE SET value=excluded.value",
            (key, json.dumps(value)),
        )

    # ----------------------------------------------------------------- hot-folder bookkeeping
    def seen_file(self, path: str, size: int, mtime_ns: int) -> str | None:
        path = safe_text(path)
        row = (
            self._con()
            .execute(
                "SELECT outcome FROM seen_files WHERE path=? AND size=? AND mtime_ns=?",
                (path, size, mtime_ns),
            )
            .fetchone()
        )
        return row[0] if row else None

    def mark_seen(self, path: str, size: int, mtime_ns: int, outcome: str) -> None:
        path = safe_text(path)
        with self.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO seen_files VALUES (?,?,?,?,?)",
                (path, size, mtime_ns, outcome, utcnow()),
            )

    # ----------------------------------------------------------------- maintenance
    def gc(self, grace_s: float | None = None) -> int:
        """Remove orphan image files and stale temporary files; returns how many were removed.

        Only files older than ``grace_s`` (default ``check.GC_GRACE_S``) and never while an
        importer holds the store lock; see ``defectssft.check.collect_garbage``.
        """
        from defectssft.check import collect_garbage

        return collect_garbage(self, grace_s).removed


def _atomic_write(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` via a temp file + fsync + rename: never a half file."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
