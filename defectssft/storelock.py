"""A lock between writers of the image store and ``gc``, so gc never deletes what a writer commits.

An importer holds the lock *shared* while it writes an image file and commits its row; ``gc``
holds it *exclusive* while it re-checks and deletes orphan files. Many importers run at once;
gc waits for the image in flight. POSIX ``flock`` on ``PROJECT/.store.lock``; where that is not
available (Windows) the lock is a no-op and gc's grace period alone protects new files.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".store.lock"
_local = threading.local()


class _LockFile:
    """An open lock file; closed when its thread ends (the thread-local dict is dropped)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def _fd(root: Path) -> int | None:
    """One open lock file per thread and project (flock locks belong to an open file)."""
    files: dict[str, _LockFile] = getattr(_local, "files", None) or {}
    _local.files = files
    key = str(root)
    if key not in files:
        try:
            files[key] = _LockFile(os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666))
        except OSError:
            return None  # a read-only project folder: nothing is deleted or written there anyway
    return files[key].fd


@contextlib.contextmanager
def store_lock(root: str | Path, exclusive: bool = False) -> Iterator[None]:
    """Hold the project's store lock (shared for writers, exclusive for gc) in the block."""
    fd = _fd(Path(root)) if fcntl is not None else None
    if fd is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
