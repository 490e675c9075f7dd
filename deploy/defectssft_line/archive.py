"""A bounded result archive: NG and UNSURE images (and a sample of OK) with their result JSON.

``--archive DIR --archive-max-gb N``: each kept part is ``DIR/YYYY-MM-DD/VERDICT/HHMMSS-ffffff_NAME``
(the original file bytes, or a lossless PNG of a camera frame) plus ``...NAME.json`` with its
result record. ``--archive-ok-every K`` also keeps every K-th OK part (0: none). When the
archive grows past N GB the oldest parts are deleted first (day folders sort by date, names
by time), so the disk never fills. A full or read-only disk is a warning and a counter
(``failures``), never a stop.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

KEEP = ("NG", "UNSURE")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Archive:
    def __init__(
        self,
        root: str | Path,
        max_bytes: int,
        ok_every: int = 0,
        log: Callable[[str], None] = _stderr,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.ok_every = int(ok_every)
        self._log, self._clock = log, clock
        self.saved = 0
        self.deleted = 0
        self.failures = 0
        self.last_error = ""
        self._ok_seen = 0
        self._parts: deque[tuple[list[Path], int]] = deque()  # (image + JSON, bytes), oldest first
        self.total = 0
        self._scan()

    def _scan(self) -> None:
        """What an earlier run left counts against the limit (oldest first)."""
        if not self.root.is_dir():
            return
        parts: dict[tuple[str, str], tuple[list[Path], int]] = {}
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                p = Path(dirpath) / f
                try:
                    size = p.stat().st_size
                    day = p.relative_to(self.root).parts[0]
                except (OSError, IndexError):
                    continue
                key = (day, f.removesuffix(".json"))  # an image and its JSON are one part
                paths, total = parts.get(key, ([], 0))
                parts[key] = ([*paths, p], total + size)
        for key in sorted(parts):
            self._parts.append(parts[key])
            self.total += parts[key][1]

    def wants(self, verdict: str) -> bool:
        """Whether a part with this verdict is kept (counts OK parts for the sample)."""
        if verdict in KEEP:
            return True
        if verdict == "OK" and self.ok_every > 0:
            self._ok_seen += 1
            return (self._ok_seen - 1) % self.ok_every == 0
        return False

    def save(
        self,
        rec: dict[str, Any],
        data: bytes | None = None,
        frame: np.ndarray | None = None,
        name: str | None = None,
    ) -> Path | None:
        """Keep the part if its verdict asks for it; returns the image path (None if not kept
        or the disk refused: a warning and ``failures`` + 1)."""
        if not self.wants(str(rec.get("verdict"))):
            return None
        return self.write(rec, data, frame, name)

    def now(self) -> float:
        return self._clock()

    def write(
        self,
        rec: dict[str, Any],
        data: bytes | None = None,
        frame: np.ndarray | None = None,
        name: str | None = None,
        now: float | None = None,
    ) -> Path | None:
        """Write a part ``wants`` kept (``now``: when it was inspected, default now); what
        ``save`` returns. The line runs it on the image writer's thread (imagequeue.py)."""
        verdict = str(rec.get("verdict"))
        now = self._clock() if now is None else now
        stamp = time.strftime("%H%M%S", time.localtime(now)) + f"-{int(now % 1 * 1e6):06d}"
        base = _SAFE.sub("_", Path(name or rec.get("file") or "frame").name)[-80:]
        folder = self.root / time.strftime("%Y-%m-%d", time.localtime(now)) / verdict
        try:
            if data is None:
                if frame is None:
                    return None
                ok, buf = cv2.imencode(".png", frame)
                if not ok:
                    raise OSError("cannot encode the frame as PNG")
                data = buf.tobytes()
                base = str(Path(base).with_suffix(".png"))
            folder.mkdir(parents=True, exist_ok=True)
            img = folder / f"{stamp}_{base}"
            meta = img.with_name(img.name + ".json")
            written: list[Path] = []
            size = 0
            for path, blob in ((img, data), (meta, json.dumps(rec, indent=1).encode())):
                tmp = path.with_name("." + path.name + ".partial")
                with open(tmp, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)
                written.append(path)
                size += len(blob)
        except OSError as e:
            self.failures += 1
            self.last_error = f"{e.strerror or e}"
            if self.failures <= 10 or self.failures % 100 == 0:
                self._log(
                    f"warning: archive {self.root}: cannot save ({self.last_error}); "
                    f"{self.failures} part(s) not archived so far, inspection goes on"
                )
            for p in folder.glob(".*.partial") if folder.is_dir() else []:
                p.unlink(missing_ok=True)
            return None
        self._parts.append((written, size))
        self.total += size
        self.saved += 1
        self._trim()
        return img

    def _trim(self) -> None:
        while self.total > self.max_bytes and self._parts:
            paths, size = self._parts.popleft()
            for path in paths:
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
            self.total -= size
            self.deleted += 1
            parent = paths[0].parent
            for folder in (parent, parent.parent):  # VERDICT/ then the day
                try:
                    if folder != self.root:
                        folder.rmdir()  # only when empty
                except OSError:
                    break

    def stats(self) -> dict[str, Any]:
        return {
            "saved": self.saved,
            "deleted": self.deleted,
            "failures": self.failures,
            "bytes": self.total,
            "last_error": self.last_error,
        }
