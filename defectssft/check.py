"""Is the project whole? ``defectssft check`` and ``defectssft gc``.

``check_project`` reads everything once and reports what is wrong: an image row whose stored
file is missing or whose bytes no longer hash to its name (re-import the original file to
restore it), a registered model version whose ``model.pt`` is missing or unreadable, a
production model whose ``exports/production.onnx`` is missing, unloadable or of another
version, and a damaged database. Orphan files (no row) and stale temporary files are only
noted: ``gc`` removes them.

``collect_garbage`` removes orphan image files and the ``.tmp`` files of killed imports, model
writes and exports, but only files older than a grace period and only under the exclusive store
lock (``storelock``), so a concurrent import never loses a file it is about to commit.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defectssft.project import Project
from defectssft.storelock import LOCK_NAME, store_lock

# gc leaves files younger than this alone: an import writes a file a moment before its row.
GC_GRACE_S = 3600.0


@dataclass
class GcReport:
    orphan_images: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    empty_model_dirs: list[str] = field(default_factory=list)
    kept_recent: int = 0  # unknown files younger than the grace period, left for later
    bytes_freed: int = 0

    @property
    def removed(self) -> int:
        return len(self.orphan_images) + len(self.temp_files) + len(self.empty_model_dirs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "orphan_images": self.orphan_images,
            "temp_files": self.temp_files,
            "empty_model_dirs": self.empty_model_dirs,
            "kept_recent": self.kept_recent,
            "bytes_freed": self.bytes_freed,
        }

    def summary(self) -> str:
        text = (
            f"removed {len(self.orphan_images)} orphan image file(s), "
            f"{len(self.temp_files)} temporary file(s) and {len(self.empty_model_dirs)} empty "
            f"model folder(s) ({self.bytes_freed / 1e6:.1f} MB)"
        )
        if self.kept_recent:
            text += f"; kept {self.kept_recent} recent file(s) a running writer may still commit"
        return text


def _temp_files(project: Project) -> Iterator[Path]:
    """Temporary files of atomic writes (``.NAME.XXXX.tmp``) and of the image store."""
    yield from project.images_dir.glob("*/*.tmp")
    for d in (project.models_dir, project.exports_dir, project.runs_dir):
        if d.is_dir():
            yield from (f for f in d.rglob(".*.tmp") if f.is_file())
    yield from project.root.glob(".*.tmp")


def _old(path: Path, cutoff: float) -> tuple[bool, int]:
    """(older than cutoff, size); (False, 0) when it vanished."""
    try:
        st = path.stat()
    except OSError:
        return False, 0
    return st.st_mtime <= cutoff, st.st_size


def collect_garbage(project: Project, grace_s: float | None = None) -> GcReport:
    """Remove orphan image files, stale temporary files and empty unregistered model folders.

    Files are listed *before* the rows are read (a row committed after the listing is seen),
    only files older than ``grace_s`` are candidates, and each is re-checked against the
    database and deleted under the exclusive store lock.
    """
    grace = GC_GRACE_S if grace_s is None else max(0.0, float(grace_s))
    report = GcReport()
    cutoff = time.time() - grace
    listed = [f for f in project.images_dir.glob("*/*") if not f.name.endswith(".tmp")]
    con = project._con()
    known = {r[0] + r[1] for r in con.execute("SELECT sha256, ext FROM images")}
    candidates = []
    for f in listed:
        if f.name in known:
            continue
        old, _ = _old(f, cutoff)
        if old:
            candidates.append(f)
        elif f.exists():
            report.kept_recent += 1
    temps = []
    for f in _temp_files(project):
        old, _ = _old(f, cutoff)
        if old:
            temps.append(f)
        else:
            report.kept_recent += 1
    with store_lock(project.root, exclusive=True):
        for f in candidates:
            sha = f.name.split(".", 1)[0]
            if con.execute("SELECT 1 FROM images WHERE sha256=?", (sha,)).fetchone():
                continue  # its row was committed since the listing
            old, size = _old(f, cutoff)
            if old and _unlink(f):
                report.orphan_images.append(str(f))
                report.bytes_freed += size
        for f in temps:
            old, size = _old(f, cutoff)
            if old and _unlink(f):
                report.temp_files.append(str(f))
                report.bytes_freed += size
    registered = {r[0] for r in con.execute("SELECT version FROM models")}
    for d in sorted(project.models_dir.glob("v[0-9]*")):
        if d.is_dir() and d.name not in registered and _old(d, cutoff)[0]:
            try:
                d.rmdir()  # only when empty: a killed training run reserved it, wrote nothing
            except OSError:
                continue
            report.empty_model_dirs.append(str(d))
    return report


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# --------------------------------------------------------------------------- check


@dataclass
class CheckReport:
    images: int = 0
    models: int = 0
    problems: list[str] = field(default_factory=list)  # each one line; any -> exit status 1
    notes: list[str] = field(default_factory=list)  # harmless leftovers that gc removes
    missing_files: list[int] = field(default_factory=list)  # image ids
    bad_hashes: list[int] = field(default_factory=list)
    orphan_files: int = 0
    temp_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "images": self.images,
            "models": self.models,
            "missing_files": self.missing_files,
            "bad_hashes": self.bad_hashes,
            "orphan_files": self.orphan_files,
            "temp_files": self.temp_files,
            "problems": self.problems,
            "notes": self.notes,
        }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def missing_image_files(project: Project) -> list[int]:
    """Ids of image rows whose stored file is gone (a stat per row; used by ``status``)."""
    rows = project._con().execute("SELECT id, sha256, ext FROM images ORDER BY id")
    return [i for i, sha, ext in rows if not project.image_file(sha, ext).is_file()]


def check_project(
    project: Project,
    verify_hashes: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Everything ``defectssft check`` verifies; never changes the project."""
    rep = CheckReport()
    con = project._con()
    integrity = con.execute("PRAGMA quick_check").fetchone()[0]
    if integrity != "ok":
        rep.problems.append(f"database: {integrity}")
    rows = con.execute("SELECT id, sha256, ext, file_size FROM images ORDER BY id").fetchall()
    rep.images = len(rows)
    known = set()
    for n, (image_id, sha, ext, size) in enumerate(rows, 1):
        path = project.image_file(sha, ext)
        known.add(path.name)
        try:
            actual = path.stat().st_size
        except OSError:
            rep.missing_files.append(image_id)
            continue
        if actual != size or (verify_hashes and _sha256_file(path) != sha):
            rep.bad_hashes.append(image_id)
        if progress and (n % 500 == 0 or n == len(rows)):
            progress(n, len(rows))
    if rep.missing_files:
        rep.problems.append(
            f"{len(rep.missing_files)} image(s) without their stored file (ids "
            f"{_ids(rep.missing_files)}): import the original files again to restore them"
        )
    if rep.bad_hashes:
        rep.problems.append(
            f"{len(rep.bad_hashes)} stored image file(s) changed on disk (ids "
            f"{_ids(rep.bad_hashes)}): import the original files again to restore them"
        )
    rep.orphan_files = sum(
        1
        for f in project.images_dir.glob("*/*")
        if f.name not in known and not f.name.endswith(".tmp")
    )
    rep.temp_files = sum(1 for _ in _temp_files(project))
    if rep.orphan_files or rep.temp_files:
        rep.notes.append(
            f"{rep.orphan_files} orphan image file(s) and {rep.temp_files} temporary file(s) "
            "left by interrupted writes: `defectssft gc` removes them"
        )
    _check_models(project, rep)
    return rep


def _ids(ids: list[int], limit: int = 10) -> str:
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f", ... {len(ids) - limit} more" if len(ids) > limit else "")


def _check_models(project: Project, rep: CheckReport) -> None:
    from defectssft.errors import DefectssftError
    from defectssft.modeling import read_model_meta

    models = project.models()
    rep.models = len(models)
    for m in models:
        path = Path(m["path"]) / "model.pt"
        try:
            read_model_meta(path)
        except DefectssftError as e:
            rep.problems.append(f"model {m['version']}: {e}")
    registered = {m["version"] for m in models}
    for d in sorted(project.models_dir.glob("v[0-9]*")):
        if d.is_dir() and d.name not in registered:
            what = "empty" if not any(d.iterdir()) else "not registered (training was stopped)"
            rep.notes.append(f"model folder {d.name} is {what}")
    production = project.production_model()
    if production is None:
        return
    onnx_path = project.exports_dir / "production.onnx"
    try:
        from defectssft_line.model import LineError, LineModel

        line_model = LineModel.load(onnx_path)
    except LineError as e:
        rep.problems.append(f"production model {production}: {e}")
        return
    if line_model.version != production:
        rep.problems.append(
            f"{onnx_path} holds model {line_model.version or '?'}, but the project's "
            f"production model is {production}: promote again (`defectssft promote --force`)"
        )


__all__ = [
    "GC_GRACE_S",
    "LOCK_NAME",
    "CheckReport",
    "GcReport",
    "check_project",
    "collect_garbage",
    "missing_image_files",
]
