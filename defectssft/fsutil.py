"""Atomic file replacement: a file is either the old whole one or the new whole one, never half.

Used for everything a crash or a full disk must not corrupt: stored images, model files, ONNX
exports and the production model the line PCs read.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; write it in the ``with`` block.

    On success the file is fsynced, given ``mode`` (mkstemp makes 0600; line PCs and other users
    must read exports) and renamed over ``dest``. On any error the temporary file is removed and
    ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
