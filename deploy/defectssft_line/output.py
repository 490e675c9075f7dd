"""Result records (JSON lines or CSV) and the UNSURE hand-back folder.

One record per image: ``file, verdict, class, score, latency_ms`` plus ``model_version`` and
``error`` (verdict ``ERROR`` for an image that could not be read), and ``anomaly_score`` and
``novel`` for a model with an anomaly head (CSV: empty for one without); JSON records of a head
with a peak also carry ``anomaly_peak`` (the CSV keeps its columns, so files it appends to keep
theirs). Images the model is unsure
about are copied to a folder that the project's ``defectssft watch`` ingests, so operators
label exactly the parts the model finds hard.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from defectssft_line.hotfolder import unique_path
from defectssft_line.names import safe_text

FIELDS = (
    "file",
    "verdict",
    "class",
    "score",
    "latency_ms",
    "model_version",
    "error",
    "anomaly_score",  # models with an anomaly head only (defectssft_line.novelty)
    "novel",
)
FORMATS = ("jsonl", "csv")


def record(
    file: str,
    verdict: str,
    cls: str | None,
    score: float | None,
    latency_ms: float,
    model_version: str,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "file": safe_text(file),
        "verdict": verdict,
        "class": cls,
        # 9 significant digits: every float32 score exactly, so a verdict can be re-decided
        # from the record (rounding to decimals wrote 1.8e-7 as 0.0 beside its verdict NG).
        "score": None if score is None else float(f"{float(score):.9g}"),
        "latency_ms": round(float(latency_ms), 3),
        "model_version": model_version,
        "error": None if error is None else safe_text(error),
    }


class ResultWriter:
    """Writes records to a stream (stdout) or appends to a file, flushing after each one."""

    def __init__(self, fmt: str = "jsonl", path: str | Path | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; use jsonl or csv")
        self.fmt = fmt
        self._own = path is not None
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not path.exists() or path.stat().st_size == 0
            self._stream: IO[str] = open(
                path, "a", encoding="utf-8", errors="backslashreplace", newline=""
            )
        else:
            fresh = True
            self._stream = sys.stdout
        self._csv = csv.DictWriter(self._stream, fieldnames=FIELDS) if fmt == "csv" else None
        if self._csv is not None and fresh:
            self._csv.writeheader()
        self.counts: dict[str, int] = {}

    def write(self, rec: dict[str, Any]) -> None:
        self.counts[rec["verdict"]] = self.counts.get(rec["verdict"], 0) + 1
        if self._csv is not None:
            self._csv.writerow({k: ("" if rec.get(k) is None else rec[k]) for k in FIELDS})
        else:
            self._stream.write(json.dumps(rec) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._own:
            self._stream.close()


def _atomic_write_bytes(folder: Path, name: str, data: bytes) -> Path:
    """Write under a hidden temp name, then rename: a watcher never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        target = unique_path(folder, name)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def send_unsure_file(src: Path, folder: Path) -> Path:
    """Copy an image file unchanged (original bytes, bit depth, metadata) into ``folder``."""
    return _atomic_write_bytes(folder, src.name, src.read_bytes())


def send_unsure_frame(frame: np.ndarray, folder: Path, name: str) -> Path:
    """Save a camera frame losslessly (PNG) into ``folder``."""
    ok, buf = cv2.imencode(".png", frame)
    if not ok:
        raise OSError(f"cannot encode frame {name} as PNG")
    return _atomic_write_bytes(folder, name, io.BytesIO(buf.tobytes()).getvalue())
