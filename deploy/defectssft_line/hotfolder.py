"""A hot folder: a camera or PLC drops image files, the runtime scores each whole file once.

A file is taken only when it is whole: its size and mtime have not changed for ``settle_s``
seconds AND its bytes pass ``preprocess.check_complete`` (a JPEG still being written has no
end marker yet). A file that stays incomplete for ``give_up_s`` is moved to ``failed/`` with a
reason file, as is any file that cannot be decoded: one bad file never stops the line.

Scored files are moved to ``processed/`` (or, with ``mark=True``, left in place and listed in
``.defectssft-line-done.jsonl``), so a restart continues with what is left and scores nothing
twice. Hidden files and names without an image suffix (``x.jpg.part``) are ignored.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from defectssft_line.names import safe_text
from defectssft_line.preprocess import check_complete, is_image_name

LEDGER = ".defectssft-line-done.jsonl"


@dataclass
class _Seen:
    signature: tuple[int, int]
    since: float


def unique_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem-N.suffix`` when that name is taken."""
    target = folder / name
    stem, suffix, n = Path(name).stem, Path(name).suffix, 1
    while target.exists():
        target = folder / f"{stem}-{n}{suffix}"
        n += 1
    return target


class HotFolder:
    """Polls ``folder`` for whole image files; the caller scores them and calls done/failed."""

    def __init__(
        self,
        folder: str | Path,
        processed: str | Path | None = None,
        failed: str | Path | None = None,
        settle_s: float = 1.0,
        give_up_s: float = 60.0,
        mark: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"watch folder not found: {self.folder}")
        self.processed = Path(processed) if processed else self.folder / "processed"
        self.failed = Path(failed) if failed else self.folder / "failed"
        self.settle_s, self.give_up_s, self.mark = settle_s, give_up_s, mark
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._done: set[tuple[str, int, int]] = self._read_ledger() if mark else set()

    def _read_ledger(self) -> set[tuple[str, int, int]]:
        done = set()
        try:
            lines = (self.folder / LEDGER).read_text(encoding="utf-8").splitlines()
        except OSError:
            return done
        for line in lines:
            try:
                rec = json.loads(line)
                done.add((rec["name"], int(rec["size"]), int(rec["mtime_ns"])))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: that file is simply scored again
        return done

    def _candidates(self) -> list[os.DirEntry]:
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return []
        return sorted(
            (
                e
                for e in entries
                if e.is_file(follow_symlinks=False)
                and not e.name.startswith(".")
                and is_image_name(e.name)
            ),
            key=lambda e: e.name,
        )

    def poll(self) -> list[Path]:
        """Files that are whole now, oldest name first. Incomplete ones are retried later."""
        now = self._clock()
        ready: list[Path] = []
        present = set()
        for entry in self._candidates():
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished between scandir and stat
            present.add(entry.name)
            sig = (st.st_size, st.st_mtime_ns)
            if self.mark and (entry.name, *sig) in self._done:
                continue
            seen = self._seen.get(entry.name)
            if seen is None or seen.signature != sig:
                self._seen[entry.name] = _Seen(sig, now)
                continue
            if now - seen.since < self.settle_s:
                continue
            path = Path(entry.path)
            reason = self._incomplete(path)
            if reason is None:
                ready.append(path)
            elif now - seen.since >= self.give_up_s:
                self.failed_file(path, f"{reason}; unchanged for {self.give_up_s:.0f} s")
        for name in list(self._seen):
            if name not in present:
                del self._seen[name]
        return ready

    @staticmethod
    def _incomplete(path: Path) -> str | None:
        try:
            return check_complete(path.read_bytes())
        except OSError as e:
            return f"cannot read ({e.strerror})"

    def done(self, path: Path) -> Path | None:
        """Mark a scored file; returns where it went (None when marked in place)."""
        self._seen.pop(path.name, None)
        if self.mark:
            st = path.stat()
            rec = {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            with open(self.folder / LEDGER, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            self._done.add((path.name, st.st_size, st.st_mtime_ns))
            return None
        return self._move(path, self.processed)

    def failed_file(self, path: Path, reason: str) -> Path | None:
        """Move a bad file to ``failed/`` with ``<name>.reason.txt`` next to it."""
        self._seen.pop(path.name, None)
        target = self._move(path, self.failed)
        if target is not None:
            target.with_name(target.name + ".reason.txt").write_text(
                safe_text(reason) + "\n", encoding="utf-8"
            )
        return target

    @staticmethod
    def _move(path: Path, folder: Path) -> Path | None:
        folder.mkdir(parents=True, exist_ok=True)
        target = unique_path(folder, path.name)
        try:
            os.replace(path, target)
        except OSError:
            try:
                shutil.move(str(path), str(target))  # another file system
            except OSError:
                return None  # gone already or locked: the next poll sees it again if present
        return target
