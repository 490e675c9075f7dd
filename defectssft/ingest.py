"""Getting factory images into a project: bulk import, label rules, hot folders and camera streams.

* ``import_paths`` takes files, folders and globs; labels come from the parent folder, a filename
  regex or YOLO label files. Files are read and checked on a small thread pool (OpenCV releases the
  GIL), then stored one short transaction each, in a stable order.
* ``HotFolder`` ingests files as cameras drop them, only once a file is completely written, and
  remembers what it has seen so a restart never ingests twice. Bad files never stop it.
* ``capture`` takes frames from an OpenCV source (camera index, RTSP URL, video file).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from defectssft.classes import validate_class_name
from defectssft.errors import DefectssftError
from defectssft.imagecheck import ImageInfo, inspect_image_bytes
from defectssft.project import DEFAULT_MAX_PIXELS, AddResult, Project, utcnow
from defectssft_line.names import safe_text
from defectssft_line.preprocess import check_complete, is_image_name

log = logging.getLogger(__name__)

# Names cameras and copy tools use while a file is still being written.
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")


@dataclass
class PreparedImage:
    """An image file read, hashed and checked, not yet in a project (thread-safe to make)."""

    name: str
    where: str
    sha256: str
    data: bytes | None
    info: ImageInfo | None
    error: str | None


def prepare_image_bytes(
    data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, original_path: str | None = None
) -> PreparedImage:
    name = safe_text(name)
    where = safe_text(original_path or name)
    sha = hashlib.sha256(data).hexdigest()
    try:
        info = inspect_image_bytes(data, name, max_pixels=max_pixels)
    except ValueError as e:
        return PreparedImage(name, where, sha, None, None, str(e).removeprefix(f"{name}: "))
    return PreparedImage(name, where, sha, data, info, None)


def prepare_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedImage:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        return PreparedImage(
            safe_text(p.name), safe_text(p), "", None, None, f"cannot read file ({e.strerror or e})"
        )
    return prepare_image_bytes(data, p.name, max_pixels, str(p))


class IngestError(DefectssftError):
    """A path or option given to import/watch/capture that cannot be used."""


# ------------------------------------------------------------------------ label rules
@dataclass(frozen=True)
class LabelRule:
    """How to read a label for a file: None (unlabeled), folder, filename regex or YOLO."""

    kind: str | None = None
    regex: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, spec: str | None) -> LabelRule:
        if spec is None or spec in ("", "none"):
            return cls(None)
        if spec in ("folder", "yolo"):
            return cls(spec)
        if spec.startswith("filename:"):
            pattern = spec.split(":", 1)[1]
            try:
                regex = re.compile(pattern)
            except re.error as e:
                raise IngestError(f"--label-from filename: bad regex {pattern!r} ({e})") from e
            if regex.groups < 1:
                raise IngestError(f"--label-from filename: regex {pattern!r} needs a (group)")
            return cls("filename", regex)
        raise IngestError(f"unknown --label-from {spec!r}; use folder, filename:REGEX or yolo")

    def label_for(self, path: Path, ok_class: str, defect_class: str) -> str | None:
        if self.kind is None:
            return None
        if self.kind == "folder":
            return path.parent.name
        if self.kind == "filename":
            assert self.regex is not None
            m = self.regex.search(path.name)
            return m.group(1) if m else None
        return _yolo_label(path, ok_class, defect_class)


def _yolo_label_file(path: Path) -> Path | None:
    """YOLO convention: .../images/<sub>/x.jpg -> .../labels/<sub>/x.txt; else x.txt beside it."""
    parts = list(path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            candidate = Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")
            if candidate.exists():
                return candidate
            break
    beside = path.with_suffix(".txt")
    return beside if beside.exists() else None


def _yolo_label(path: Path, ok_class: str, defect_class: str) -> str | None:
    label_file = _yolo_label_file(path)
    if label_file is None:
        return None
    try:
        text = label_file.read_text(errors="replace")
    except OSError:
        return None
    return defect_class if text.strip() else ok_class


# ------------------------------------------------------------------------ import
@dataclass
class ImportSummary:
    added: int = 0
    duplicates: int = 0
    quarantined: int = 0
    labeled: int = 0
    new_classes: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # Same bytes as an image that already has another label: (path, what happened).
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    restored: int = 0  # duplicates whose missing stored file this import wrote again
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.added + self.duplicates + self.quarantined

    def as_dict(self) -> dict[str, object]:
        return {
            "added": self.added,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "labeled": self.labeled,
            "new_classes": self.new_classes,
            "problems": [{"path": p, "reason": r} for p, r in self.problems],
            "conflicts": [{"path": p, "reason": r} for p, r in self.conflicts],
            "restored": self.restored,
            "seconds": round(self.seconds, 3),
        }

    def count(self, result: AddResult, labeled: bool) -> None:
        if result.status == "added":
            self.added += 1
            self.labeled += int(labeled)
        elif result.status == "duplicate":
            self.duplicates += 1
            self.restored += int(result.restored)
        else:
            self.quarantined += 1
            self.problems.append((result.path or "?", result.reason or "?"))


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files, folders (recursively) and glob patterns -> image files, sorted, without repeats."""
    found: list[Path] = []
    for raw in paths:
        raw_s = str(raw)
        if any(ch in raw_s for ch in "*?[") and not Path(raw_s).exists():
            matches = [Path(m) for m in sorted(glob.glob(raw_s, recursive=True))]
            if not matches:
                raise IngestError(f"{raw_s}: no file matches this pattern")
            candidates: Iterable[Path] = matches
        else:
            candidates = [Path(raw_s)]
        for p in candidates:
            if p.is_dir():
                files = sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file()
                    and is_image_name(f.name)
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                )
                found.extend(files)
            elif p.is_file():
                found.append(p)
            elif not p.exists():
                raise IngestError(f"{p}: no such file or folder")
            else:
                raise IngestError(f"{p}: not a regular file or folder")
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def import_paths(
    project: Project,
    paths: Iterable[str | Path],
    label_from: str | None = None,
    source: str = "import",
    who: str = "import",
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Import image files into ``project``; bad files are quarantined and the batch goes on."""
    start = time.perf_counter()
    rule = LabelRule.parse(label_from)
    files = expand_paths(paths)
    if not files:
        raise IngestError("no image files found (JPEG, PNG, BMP or TIFF) in the given paths")
    summary = ImportSummary()
    ok_class = project.ok_class or "ok"
    defect_class = next((c for c in project.class_names() if c != ok_class), "defect")
    known = set(project.class_names())
    # Every label is read and checked before anything is stored: a folder name that is not a
    # usable class name stops the batch with one line instead of importing part of it.
    labels = {path: rule.label_for(path, ok_class, defect_class) for path in files}
    for path, label in labels.items():
        if label is not None and label not in known:
            try:
                validate_class_name(label)
            except DefectssftError as e:
                raise IngestError(
                    f"{safe_text(path)}: {e} (label from --label-from {rule.kind}); nothing was "
                    "imported: rename it or choose another --label-from"
                ) from None
    workers = workers or min(4, (os.cpu_count() or 2))
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Bounded chunks: never more than a few dozen files' bytes in memory at once.
        for chunk in _chunks(files, 32):
            prepared = pool.map(lambda f: prepare_image_file(f, max_pixels), chunk)
            for path, prep in zip(chunk, prepared, strict=True):
                label = labels[path]
                if label is not None and label not in known and prep.error is None:
                    label = _ensure_class(
                        project,
                        label,
                        is_ok=(
                            rule.kind == "yolo" and label == ok_class and project.ok_class is None
                        ),
                    )
                    known.add(label)
                    summary.new_classes.append(label)
                result = project.add_prepared(prep, source=source, label=label, who=who)
                summary.count(result, label is not None)
                if result.status == "duplicate" and label is not None:
                    have = project.get_image(result.image_id).label
                    if have != label:
                        summary.conflicts.append(
                            (
                                prep.where,
                                f"same content as image {result.image_id}, labeled {have!r}: "
                                f"label {label!r} not applied",
                            )
                        )
                done += 1
                if progress:
                    progress(done, len(files))
    summary.seconds = time.perf_counter() - start
    return summary


def _ensure_class(project: Project, name: str, is_ok: bool) -> str:
    try:
        name = validate_class_name(name)
    except DefectssftError as e:
        raise IngestError(f"label {name!r} from the files is not a usable class name: {e}") from e
    if name not in project.class_names():
        project.add_class(name, is_ok=is_ok)
    return name


# ------------------------------------------------------------------------ hot folder
@dataclass
class _Pending:
    size: int
    mtime_ns: int
    stable_since: float
    incomplete: bool = False  # read once at this size/mtime and found truncated or empty


class HotFolder:
    """Ingest files dropped into ``folder``, each once, only after it is completely written.

    A file is taken when its size and modification time have not changed for ``settle`` seconds
    and, for JPEG/PNG, its end marker is present. A file that stays truncated or empty for the
    grace period (``max(10 * settle, 5)`` s) is quarantined with its reason; until then it is
    read once per change, not on every scan. Names ending in .tmp/.part/~ or starting with
    '.' are ignored until renamed. ``after``: 'keep' leaves files where they are (the project
    remembers path, size and mtime, so a restart does not ingest them again), 'move' moves them to
    ``_ingested/`` and bad ones to ``_quarantine/`` inside the folder, 'delete' removes them.
    A file that cannot be handled at all is reported once and skipped until it changes.
    """

    def __init__(
        self,
        project: Project,
        folder: str | Path,
        settle: float = 1.0,
        after: str = "keep",
        source: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        on_result: Callable[[Path, AddResult], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.project = project
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise IngestError(f"{safe_text(self.folder)}: no such folder to watch")
        if after not in ("keep", "move", "delete"):
            raise IngestError(f"--after must be keep, move or delete, not {after!r}")
        self.settle = settle
        self.after = after
        self.source = source or f"hotfolder:{safe_text(self.folder.resolve())}"
        self.max_pixels = max_pixels
        self.on_result = on_result
        self.clock = clock
        self._pending: dict[Path, _Pending] = {}
        self._failed: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime) that failed
        self.counts = {"added": 0, "duplicate": 0, "quarantined": 0}
        self.errors = 0

    @property
    def grace(self) -> float:
        """How long a truncated or empty file may wait for its writer before quarantine."""
        return max(10 * self.settle, 5.0)

    def _candidates(self) -> Iterator[Path]:
        for entry in os.scandir(self.folder):
            name = entry.name
            if name.startswith((".", "_ingested", "_quarantine")):
                continue
            if name.endswith(PARTIAL_SUFFIXES) or not is_image_name(name):
                continue
            if entry.is_file(follow_symlinks=False):
                yield Path(entry.path)

    def scan_once(self) -> list[tuple[Path, AddResult]]:
        """One pass over the folder: ingest every file that has settled. Never raises on a file."""
        now = self.clock()
        results = []
        present = set()
        for path in self._candidates():
            present.add(path)
            try:
                result = self._scan_file(path, now)
            except Exception as e:  # noqa: BLE001 - one file never stops the folder
                self._failed_once(path, e)
                continue
            if result is not None:
                results.append((path, result))
        for gone in set(self._pending) - present:
            del self._pending[gone]
        for gone in set(self._failed) - present:
            del self._failed[gone]
        return results

    def _failed_once(self, path: Path, error: Exception) -> None:
        try:
            st = path.stat()
            sig = (st.st_size, st.st_mtime_ns)
        except OSError:
            sig = (-1, -1)
        if self._failed.get(path) != sig:
            self.errors += 1
            log.error(
                "%s: cannot ingest (%s: %s); skipped until the file changes",
                safe_text(path),
                type(error).__name__,
                safe_text(str(error)),
            )
        self._failed[path] = sig
        self._pending.pop(path, None)

    def _scan_file(self, path: Path, now: float) -> AddResult | None:
        try:
            st = path.stat()
        except OSError:
            return None  # vanished between listing and stat
        sig = (st.st_size, st.st_mtime_ns)
        if path in self._failed:
            if self._failed[path] == sig:
                return None
            del self._failed[path]
        if self.after == "keep" and self.project.seen_file(
            str(path.resolve()), st.st_size, st.st_mtime_ns
        ):
            return None
        pending = self._pending.get(path)
        if pending is None or (pending.size, pending.mtime_ns) != sig:
            self._pending[path] = _Pending(st.st_size, st.st_mtime_ns, now)
            return None
        waited = now - pending.stable_since
        if waited < self.settle:
            return None
        if pending.incomplete and waited < self.grace:
            return None  # already found truncated at this size: no re-read until the grace ends
        return self._ingest(path, st, give_up=waited >= self.grace)

    def _ingest(self, path: Path, st: os.stat_result, give_up: bool = True) -> AddResult | None:
        try:
            data = path.read_bytes()
        except OSError as e:
            log.warning("%s: cannot read (%s); will retry", safe_text(path), e.strerror)
            return None
        if len(data) != st.st_size:
            return None  # still growing
        if check_complete(data) is not None and not give_up:
            # Looks truncated (or empty): a slow writer may still be busy. Give it time.
            self._pending[path].incomplete = True
            return None
        capture = datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat(
            timespec="milliseconds"
        )
        prep = prepare_image_bytes(data, path.name, self.max_pixels, str(path))
        result = self.project.add_prepared(prep, source=self.source, capture_time=capture)
        self.counts[result.status] += 1
        self._pending.pop(path, None)
        self._finish(path, st, result)
        if self.on_result:
            self.on_result(path, result)
        return result

    def _finish(self, path: Path, st: os.stat_result, result: AddResult) -> None:
        try:
            if self.after == "keep":
                self.project.mark_seen(
                    str(path.resolve()), st.st_size, st.st_mtime_ns, result.status
                )
            elif self.after == "delete" and result.status != "quarantined":
                path.unlink()
            else:  # move (and 'delete' keeps bad files for a person to look at)
                sub = "_quarantine" if result.status == "quarantined" else "_ingested"
                dest_dir = self.folder / sub / datetime.now().strftime("%Y-%m-%d")
                dest_dir.mkdir(parents=True, exist_ok=True)
                dest = dest_dir / path.name
                if dest.exists():
                    dest = dest_dir / f"{path.stem}-{time.time_ns()}{path.suffix}"
                shutil.move(str(path), dest)
                if result.status == "quarantined":
                    dest.with_name(dest.name + ".reason.txt").write_text(
                        f"{safe_text(result.reason or '')}\n", encoding="utf-8"
                    )
        except OSError as e:
            # The image is safely in the project; a file we could not move is only marked seen.
            log.warning(
                "%s: ingested, but could not %s it (%s)", safe_text(path), self.after, e.strerror
            )
            self.project.mark_seen(str(path.resolve()), st.st_size, st.st_mtime_ns, result.status)

    def run(
        self, stop: threading.Event | None = None, poll: float = 0.5, use_events: bool = True
    ) -> None:
        """Watch until ``stop`` is set (or Ctrl-C). File-system events that change the folder
        wake the scan early (reading a file does not); a periodic scan catches what events miss
        (network shares, restarts). The same scan error is logged once, not on every scan."""
        stop = stop or threading.Event()
        wake = threading.Event()
        observer = _start_observer(self.folder, wake) if use_events else None
        last_error = None
        try:
            while not stop.is_set():
                try:
                    self.scan_once()
                    last_error = None
                except Exception as e:  # noqa: BLE001 - a hot folder must never stop
                    if str(e) != last_error:
                        log.error("hot folder scan failed: %s; retrying", safe_text(str(e)))
                    last_error = str(e)
                wake.wait(poll if self._pending else max(poll, 1.0))
                wake.clear()
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)


# Events that change what is in the folder; reading a file (opened / closed without writing)
# must not wake the scan, or each scan's own reads would start the next one at once.
WAKE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})


def _wake_handler(wake: threading.Event):  # type: ignore[no-untyped-def]
    from watchdog.events import FileSystemEventHandler

    class _WakeOnChange(FileSystemEventHandler):
        def on_any_event(self, event) -> None:  # type: ignore[no-untyped-def]
            if event.event_type in WAKE_EVENTS:
                wake.set()

    return _WakeOnChange()


def _start_observer(folder: Path, wake: threading.Event):  # type: ignore[no-untyped-def]
    try:
        from watchdog.observers import Observer
    except ImportError:  # pragma: no cover - watchdog is a dependency; polling still works
        return None

    observer = Observer()
    observer.schedule(_wake_handler(wake), str(folder), recursive=False)
    observer.daemon = True
    observer.start()
    return observer


# ------------------------------------------------------------------------ camera / video
def open_source(source: str, camera_settings: str | None = None):  # type: ignore[no-untyped-def]
    """An OpenCV capture for a camera index ('0'), a stream URL or a video file; a GenICam
    camera for ``genicam://SERIAL_OR_INDEX`` (producer from GENICAM_GENTL64_PATH, settings
    YAML as in the line runtime)."""
    import cv2

    if source.startswith("genicam://"):
        from defectssft_line.genicam import opener_for
        from defectssft_line.model import LineError

        try:
            return opener_for(source, None, camera_settings)(source)
        except (LineError, OSError) as e:
            raise IngestError(str(e)) from e

    src: int | str = int(source) if source.isdigit() else source
    if isinstance(src, str) and "://" not in src and not Path(src).exists():
        raise IngestError(f"{src}: no such video file (or use a camera index / rtsp:// URL)")
    cap = cv2.VideoCapture(src)
    if not cap.isOpened():
        raise IngestError(f"cannot open video source {source!r}")
    return cap


def capture(
    project: Project,
    source: str,
    every: int = 1,
    max_frames: int | None = None,
    stop: threading.Event | None = None,
    reconnect: bool = True,
    on_result: Callable[[AddResult], None] | None = None,
    camera_settings: str | None = None,
) -> dict[str, int]:
    """Store every ``every``-th frame of ``source`` (lossless PNG) in the unlabeled stream.

    A video file ends at its last frame; a live camera that drops out is reopened (``reconnect``).
    """
    import cv2

    if every < 1:
        raise IngestError("--every must be 1 or more")
    stop = stop or threading.Event()
    counts = {"frames": 0, "added": 0, "duplicate": 0, "quarantined": 0}
    is_file = Path(source).exists()
    cap = open_source(source, camera_settings)
    tag = f"camera:{source}"
    try:
        while not stop.is_set():
            ok, frame = cap.read()
            if not ok:
                if is_file or not reconnect:
                    break
                log.warning("%s: no frame; reconnecting", source)
                cap.release()
                time.sleep(1.0)
                try:
                    cap = open_source(source, camera_settings)
                except IngestError:
                    continue
                continue
            counts["frames"] += 1
            if (counts["frames"] - 1) % every:
                continue
            ok, buf = cv2.imencode(".png", frame)
            if not ok:
                continue
            name = f"frame_{counts['frames']:08d}.png"
            prep = prepare_image_bytes(buf.tobytes(), name)
            result = project.add_prepared(prep, source=tag, capture_time=utcnow())
            counts[result.status] += 1
            if on_result:
                on_result(result)
            if max_frames is not None and counts["added"] + counts["duplicate"] >= max_frames:
                break
    finally:
        cap.release()
    if counts["frames"] == 0 and not stop.is_set():
        raise IngestError(
            f"{safe_text(source)}: no frames could be read (not a video, or an empty one)"
        )
    return counts
