"""Import with a preview: scan what an import would do, map found labels to classes, then apply.

``scan_import`` lists the files and the label each would get from the rule (parent folder name,
filename regex group, YOLO label file) and, with a project, which are already in it; nothing is
written. ``plan_import`` (pure) maps each found label to an existing class, a new class, "import
unlabeled" or "skip these files", with defaults that never invent a class from the folder that was
imported itself (``samples/neu-det`` does not become a class "neu-det") and map good/ok/pass
folders to the project's OK class. ``apply_plan`` writes it and records the import (see
``import_log`` for list and undo); with ``relabel`` images already in the project take the new
label (with history) instead of being skipped as duplicates.

Mapping targets: a class name, ``new:NAME`` (create NAME), ``:unlabeled`` or ``:ignore``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defectssft.classes import CLASS_NAME_RE
from defectssft.errors import DefectssftError
from defectssft.ingest import (
    ImportSummary,
    IngestError,
    LabelRule,
    _yolo_label_file,
    expand_paths,
    prepare_image_file,
)
from defectssft.project import DEFAULT_MAX_PIXELS, Project, utcnow

IGNORE = ":ignore"
UNLABELED = ":unlabeled"
NEW = "new:"
# Folder / label names taken to mean "good part" when the project has an OK class.
OK_SYNONYMS = frozenset(
    {"ok", "good", "pass", "passed", "normal", "nominal", "okay", "non-defective", "no-boxes"}
)
MANY_NEW_CLASSES = 30  # more new classes than this from one import: say it looks wrong
YOLO_EMPTY = "no-boxes"  # a YOLO label file without boxes
YOLO_BOXES = "boxes"  # a YOLO label file with at least one box


class ImportPlanError(DefectssftError):
    """A mapping or label that cannot be used for this import."""


@dataclass(frozen=True)
class ScanFile:
    path: Path
    label: str | None  # what the rule reads for this file (None: no label)
    sha256: str | None = None


@dataclass
class LabelGroup:
    """Files sharing one found label: how many, and how many are already in the project."""

    label: str | None
    files: int = 0
    in_project: int = 0  # same content already stored
    repeats: int = 0  # same content earlier in this import
    at_root: bool = False  # files lying directly in an imported folder (its own name)
    current: Counter[str] = field(default_factory=Counter)  # labels the stored copies carry


@dataclass
class ImportScan:
    paths: list[str]
    label_from: str | None
    files: list[ScanFile]
    groups: dict[str | None, LabelGroup]
    yolo_missing: int = 0  # yolo rule: images without a label file
    hashed: bool = False

    @property
    def duplicates(self) -> int:
        return sum(g.in_project + g.repeats for g in self.groups.values())

    def notes(self) -> list[str]:
        """Warnings a person should read before importing (one line each)."""
        out = []
        if self.yolo_missing:
            out.append(
                f"{self.yolo_missing} of {len(self.files)} images have no YOLO label file "
                "(labels/<name>.txt or <name>.txt beside the image): they import unlabeled"
            )
        roots = [g for g in self.groups.values() if g.at_root and g.label is not None]
        for g in roots:
            out.append(
                f"{g.files} images lie directly in the imported folder {g.label!r}, not in a "
                "class sub-folder: they import unlabeled unless you map them to a class"
            )
        if self.label_from and self.groups.get(None) and self.label_from.startswith("filename:"):
            out.append(f"{self.groups[None].files} file names do not match the regex: unlabeled")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "label_from": self.label_from,
            "labels": {
                str(k) if k is not None else "": {
                    "files": g.files,
                    "in_project": g.in_project,
                    "repeats": g.repeats,
                }
                for k, g in self.groups.items()
            },
            "yolo_missing": self.yolo_missing,
            "notes": self.notes(),
        }


def _file_label(rule: LabelRule, path: Path, root: Path | None) -> tuple[str | None, bool, bool]:
    """(label, at_root, yolo_missing) for one file."""
    if rule.kind is None:
        return None, False, False
    if rule.kind == "folder":
        at_root = root is not None and path.parent == root
        return path.parent.name or None, at_root, False
    if rule.kind == "filename":
        assert rule.regex is not None
        m = rule.regex.search(path.name)
        return (m.group(1) or None) if m else None, False, False
    label_file = _yolo_label_file(path)
    if label_file is None:
        return None, False, True
    try:
        text = label_file.read_text(errors="replace")
    except OSError:
        return None, False, True
    return (YOLO_BOXES if text.strip() else YOLO_EMPTY), False, False


def _hash(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def scan_import(
    paths: Iterable[str | Path],
    label_from: str | None = None,
    project: Project | None = None,
    hash_files: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ImportScan:
    """What importing ``paths`` with rule ``label_from`` finds; writes nothing.

    With ``project`` and ``hash_files`` each file is hashed to count the ones already stored
    (and the labels those carry). IngestError (one line) for a bad rule or path.
    """
    rule = LabelRule.parse(label_from)
    path_list = [str(p) for p in paths]
    if not path_list:
        raise IngestError("nothing to import: give files, folders or glob patterns")
    files: list[tuple[Path, Path | None]] = []
    seen: set[Path] = set()
    for raw in path_list:
        root = Path(raw) if Path(raw).is_dir() else None
        for f in expand_paths([raw]):
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append((f, root))
    if not files:
        raise IngestError("no image files found (JPEG, PNG, BMP or TIFF) in the given paths")
    groups: dict[str | None, LabelGroup] = {}
    out: list[ScanFile] = []
    yolo_missing = 0
    hashes: list[str | None] = [None] * len(files)
    if hash_files and project is not None:
        workers = min(4, os.cpu_count() or 2)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, digest in enumerate(pool.map(_hash, [f for f, _ in files])):
                hashes[i] = digest
                if progress and (i % 50 == 0 or i + 1 == len(files)):
                    progress(i + 1, len(files))
    stored: dict[str, str | None] = {}
    if project is not None and any(hashes):
        stored = project.labels_of_hashes({h for h in hashes if h})
    this_import: set[str] = set()
    for (path, root), digest in zip(files, hashes, strict=True):
        label, at_root, missing = _file_label(rule, path, root)
        yolo_missing += int(missing)
        g = groups.setdefault(label, LabelGroup(label))
        g.files += 1
        g.at_root = g.at_root or at_root
        if digest is not None:
            if digest in stored:
                g.in_project += 1
                g.current[stored[digest] or UNLABELED] += 1
            elif digest in this_import:
                g.repeats += 1
            this_import.add(digest)
        out.append(ScanFile(path, label, digest))
    return ImportScan(
        path_list, label_from, out, groups, yolo_missing, hashed=hash_files and project is not None
    )


# ------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class PlanRow:
    label: str | None  # found label (None: files without one)
    files: int
    in_project: int
    target: str  # class name, new:NAME, :unlabeled or :ignore

    @property
    def class_name(self) -> str | None:
        """The class these files get (None: unlabeled or skipped)."""
        if self.target in (IGNORE, UNLABELED):
            return None
        return self.target.removeprefix(NEW)


@dataclass
class ImportPlan:
    scan: ImportScan
    rows: list[PlanRow]
    new_classes: list[str]
    ok_new: str | None  # a new class that becomes the OK class (the project has none yet)
    relabel: bool = False

    @property
    def mapping(self) -> dict[str | None, str]:
        return {r.label: r.target for r in self.rows}

    def target_of(self, label: str | None) -> str:
        return self.mapping.get(label, UNLABELED)

    def counts(self) -> dict[str, int]:
        """Files per outcome: per class name, plus 'unlabeled' and 'skipped'."""
        out: Counter[str] = Counter()
        for r in self.rows:
            if r.target == IGNORE:
                out[":skipped"] += r.files
            elif r.target == UNLABELED:
                out[":unlabeled"] += r.files
            else:
                out[r.target.removeprefix(NEW)] += r.files
        return dict(out)

    def relabel_candidates(self) -> int:
        """Stored images whose label this import would change (with ``relabel``)."""
        n = 0
        for r in self.rows:
            name = r.class_name
            if name is None:
                continue
            g = self.scan.groups[r.label]
            n += sum(c for lab, c in g.current.items() if lab not in (name, UNLABELED))
        return n

    def summary_lines(self) -> list[str]:
        """The preview as text (the CLI's --dry-run prints it)."""
        lines = [f"{len(self.scan.files)} image files"]
        for r in self.rows:
            found = "(no label)" if r.label is None else r.label
            dup = f", {r.in_project} already in the project" if r.in_project else ""
            arrow = {
                IGNORE: "skipped",
                UNLABELED: "imported unlabeled",
            }.get(r.target, f"-> class {r.target.removeprefix(NEW)}")
            if r.target.startswith(NEW):
                arrow += " (new" + (", OK class" if r.class_name == self.ok_new else "") + ")"
            lines.append(f"  {found:<24} {r.files:>6} files{dup}  {arrow}")
        n = self.relabel_candidates()
        if n:
            lines.append(
                f"{n} images already in the project carry another label: "
                + ("they are relabeled (with history)" if self.relabel else "kept (--relabel)")
            )
        lines += self.warnings()
        return lines

    def warnings(self) -> list[str]:
        """The scan's notes, and a doubt when the rule would make very many classes."""
        out = self.scan.notes()
        if len(self.new_classes) > MANY_NEW_CLASSES:
            out.append(
                f"{len(self.new_classes)} new classes would be created: check the label rule "
                "(a regex group that captures the whole name makes one class per file)"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.scan.as_dict(),
            "mapping": {("" if r.label is None else r.label): r.target for r in self.rows},
            "new_classes": self.new_classes,
            "ok_class_new": self.ok_new,
            "counts": self.counts(),
            "relabel": self.relabel,
            "relabel_candidates": self.relabel_candidates(),
            "notes": self.warnings(),
        }


def sanitize_class_name(name: str) -> str | None:
    """A valid class name close to ``name`` (spaces -> '_'); None if nothing usable is left."""
    cleaned = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_.-") else "_" for ch in name)
    cleaned = cleaned.strip("_.-")[:64]
    return cleaned if cleaned and CLASS_NAME_RE.match(cleaned) else None


def default_target(
    label: str | None, classes: list[str], ok_class: str | None, at_root: bool = False
) -> str:
    """Where files with found ``label`` go unless the user says otherwise."""
    if label is None:
        return UNLABELED
    if label in classes:
        return label
    lowered = {c.lower(): c for c in classes}
    if label.lower() in lowered:
        return lowered[label.lower()]
    if label.lower() in OK_SYNONYMS and ok_class is not None:
        return ok_class
    if at_root:
        return UNLABELED  # the imported folder's own name is not a class
    if label == YOLO_BOXES:
        defect = next((c for c in classes if c != ok_class), None)
        if defect is not None:
            return defect
        return NEW + "defect"
    if label == YOLO_EMPTY:
        return NEW + "ok"
    name = sanitize_class_name(label)
    return NEW + name if name else UNLABELED


def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """``FOUND=TARGET`` strings (the CLI's --map) -> dict; ImportPlanError for a bad one."""
    out: dict[str, str] = {}
    for item in items:
        found, sep, target = item.partition("=")
        if not sep or not found.strip() or not target.strip():
            raise ImportPlanError(
                f"--map {item!r}: use FOUND=CLASS, FOUND=new:NAME, FOUND=:unlabeled or "
                "FOUND=:ignore"
            )
        out[found.strip()] = target.strip()
    return out


def plan_import(
    scan: ImportScan,
    classes: list[str],
    ok_class: str | None,
    mapping: Mapping[str | None, str] | None = None,
    relabel: bool = False,
) -> ImportPlan:
    """Map every found label to a target (defaults, overridden by ``mapping``); pure.

    ImportPlanError (one line) for a mapping key the scan did not find, a target class that does
    not exist (write ``new:NAME`` to create it) or an unusable new class name.
    """
    mapping = dict(mapping or {})
    unknown = [k for k in mapping if k not in scan.groups]
    if unknown:
        found = ", ".join(repr(k) for k in scan.groups if k is not None) or "no labels"
        raise ImportPlanError(f"--map {unknown[0]!r}: not found in this import (found: {found})")
    rows = []
    new: list[str] = []
    for label, g in sorted(scan.groups.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        target = mapping.get(label) or default_target(label, classes, ok_class, g.at_root)
        where = "files without a label" if label is None else f"{label!r}"
        if target in (IGNORE, UNLABELED):
            pass
        elif target.startswith(NEW):
            name = target.removeprefix(NEW).strip()
            if not CLASS_NAME_RE.match(name):
                raise ImportPlanError(
                    f"{where} -> new class {name!r}: invalid class name; use letters, digits, "
                    "'_', '-', '.' (at most 64)"
                )
            if name in classes:
                target = name  # already there: nothing to create
            else:
                target = NEW + name
                if name not in new:
                    new.append(name)
        elif target not in classes:
            raise ImportPlanError(
                f"{where} is mapped to class {target!r}, which does not exist; "
                f"known classes: {', '.join(classes) or '(none)'} (write new:{target} to create it)"
            )
        rows.append(PlanRow(label, g.files, g.in_project, target))
    ok_new = None
    if ok_class is None:
        ok_new = next(
            (
                r.class_name
                for r in rows
                if r.target.startswith(NEW)
                and (
                    (r.label or "").lower() in OK_SYNONYMS
                    or (r.class_name or "").lower() in OK_SYNONYMS
                )
            ),
            None,
        )
    return ImportPlan(scan, rows, new, ok_new, relabel)


# ------------------------------------------------------------------------ apply
@dataclass
class PlanSummary(ImportSummary):
    """``ImportSummary`` plus what only a recorded import knows."""

    import_id: int | None = None
    relabeled: int = 0
    skipped: int = 0  # files of labels mapped to :ignore
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            **super().as_dict(),
            "import_id": self.import_id,
            "relabeled": self.relabeled,
            "skipped": self.skipped,
            "notes": self.notes,
        }


def apply_plan(
    project: Project,
    plan: ImportPlan,
    source: str = "import",
    who: str = "import",
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> PlanSummary:
    """Write the import ``plan`` into ``project`` and record it (``defectssft imports``).

    New classes are created first; files of labels mapped to ``:ignore`` are not read. Bad files
    are quarantined and the batch goes on. Stored images with another label keep it unless the
    plan says ``relabel`` (then they take the new one, with a history event).
    """
    start = time.perf_counter()
    classes = project.class_names()
    # Re-check against the project as it is now (a class may have gone since the preview).
    plan = plan_import(
        plan.scan, classes, project.ok_class, plan.mapping, relabel=plan.relabel
    )  # raises on a stale mapping before anything is written
    summary = PlanSummary(notes=plan.scan.notes())
    for name in plan.new_classes:
        project.add_class(name, is_ok=name == plan.ok_new)
        summary.new_classes.append(name)
    class_ids = {c.name: c.id for c in project.classes()}
    targets = {r.label: r.class_name for r in plan.rows}
    ignored = {r.label for r in plan.rows if r.target == IGNORE}
    todo = [f for f in plan.scan.files if f.label not in ignored]
    summary.skipped = len(plan.scan.files) - len(todo)
    import_id = _start_record(project, plan, source, who)
    summary.import_id = import_id
    con = project._con()  # noqa: SLF001
    class_names = {cid: name for name, cid in class_ids.items()}
    workers = workers or min(4, os.cpu_count() or 2)
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(0, len(todo), 32):  # bounded: a few dozen files' bytes in memory
            chunk = todo[i : i + 32]
            prepared = pool.map(lambda f: prepare_image_file(f.path, max_pixels), chunk)
            records: list[tuple[int, int, bool, int | None, int | None]] = []
            for item, prep in zip(chunk, prepared, strict=True):
                label = targets.get(item.label)
                before = None
                if prep.error is None:
                    before = con.execute(
                        "SELECT id, label_class_id FROM images WHERE sha256=?", (prep.sha256,)
                    ).fetchone()
                result = project.add_prepared(prep, source=source, label=label, who=who)
                summary.count(result, label is not None)
                label_id = class_ids.get(label) if label else None
                if result.status == "added":
                    records.append((import_id, int(result.image_id or 0), True, None, label_id))
                elif result.status == "duplicate" and label_id is not None:
                    image_id = int(result.image_id or 0)
                    previous = before[1] if before is not None else None
                    if previous is None:  # add_prepared labeled the unlabeled stored copy
                        records.append((import_id, image_id, False, None, label_id))
                    elif previous != label_id and plan.relabel:
                        project.set_labels_each({image_id: label}, who=who, source="imported")
                        records.append((import_id, image_id, False, previous, label_id))
                        summary.relabeled += 1
                    elif previous != label_id:
                        kept = class_names.get(previous, "another class")
                        summary.conflicts.append(
                            (
                                prep.where,
                                f"stored already as {kept!r}, kept (not {label!r}; --relabel)",
                            )
                        )
                done += 1
                if progress:
                    progress(done, len(todo))
            _record_items(project, records)  # one transaction per chunk: a kill loses <= 32
    summary.seconds = time.perf_counter() - start
    if summary.conflicts:
        summary.notes.append(
            f"{len(summary.conflicts)} images already in the project carry another label: kept "
            "(import again with --relabel to change them)"
        )
    with project.transaction() as tx:
        tx.execute(
            "UPDATE imports SET summary=? WHERE id=?",
            (json.dumps(summary.as_dict()), import_id),
        )
    return summary


def _start_record(project: Project, plan: ImportPlan, source: str, who: str) -> int:
    with project.transaction() as tx:
        cur = tx.execute(
            "INSERT INTO imports (time, who, source, paths, label_from, mapping, relabel) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                utcnow(),
                who,
                source,
                json.dumps(plan.scan.paths),
                plan.scan.label_from,
                json.dumps({("" if k is None else k): v for k, v in plan.mapping.items()}),
                int(plan.relabel),
            ),
        )
        return int(cur.lastrowid or 0)


def _record_items(
    project: Project, records: list[tuple[int, int, bool, int | None, int | None]]
) -> None:
    """(import_id, image_id, added, previous_class_id, class_id) rows, in one transaction."""
    if not records:
        return
    with project.transaction() as tx:
        tx.executemany(
            "INSERT INTO import_items (import_id, image_id, added, previous_class_id, class_id) "
            "VALUES (?,?,?,?,?) ON CONFLICT(import_id, image_id) DO UPDATE SET "
            "class_id=excluded.class_id",
            [(i, m, int(a), p, c) for i, m, a, p, c in records],
        )


def import_with_plan(
    project: Project,
    paths: Iterable[str | Path],
    label_from: str | None = None,
    mapping: Mapping[str | None, str] | None = None,
    relabel: bool = False,
    **kwargs: Any,
) -> PlanSummary:
    """Scan, plan with defaults (+ ``mapping``) and apply in one call (CLI, scripts, tests)."""
    scan = scan_import(paths, label_from, project, hash_files=relabel)
    plan = plan_import(scan, project.class_names(), project.ok_class, mapping, relabel)
    return apply_plan(project, plan, **kwargs)
