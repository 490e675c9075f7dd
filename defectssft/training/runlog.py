"""The run log of a training run: stop requests, metrics files, TensorBoard, RNG state.

``StopFlag`` turns SIGINT/SIGTERM or an external event into a clean stop; ``MetricsWriter``
appends each progress row to ``metrics.jsonl`` / ``metrics.csv`` (and TensorBoard); the RNG
helpers seed a run and capture/restore every generator for an exact resume.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectssft.errors import DefectssftError

log = logging.getLogger("defectssft.training")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopFlag:
    """Set by SIGINT/SIGTERM (main thread only) or by an external ``threading.Event``."""

    def __init__(self, stop_event: Any | None, handle_signals: bool) -> None:
        self.event = stop_event
        self.signalled: str | None = None
        self._previous: dict[int, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signalled = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint and stopping", self.signalled)

    def is_set(self) -> bool:
        return self.signalled is not None or bool(self.event is not None and self.event.is_set())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsWriter:
    """Appends one row per log step to metrics.jsonl and metrics.csv (rank 0 only). With
    ``tensorboard`` the numbers of step and eval rows also go to TensorBoard scalars
    (``train/...``, ``val/...``) under ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.jsonl, self.csv, self.enabled = (
            run_dir / "metrics.jsonl",
            run_dir / "metrics.csv",
            enabled,
        )
        self.tb: Any = (
            open_tensorboard(run_dir / "tensorboard") if enabled and tensorboard else None
        )

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if row.get("event") == "step":
            new = not self.csv.exists()
            with self.csv.open("a", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(row)
        if self.tb is not None and row.get("event") in ("step", "eval"):
            prefix = "train" if row["event"] == "step" else "val"
            for key, value in row.items():
                if key in ("event", "step", "steps", "best") or isinstance(value, bool):
                    continue
                if isinstance(value, int | float) and math.isfinite(value):
                    self.tb.add_scalar(f"{prefix}/{key}", value, row["step"])
            self.tb.flush()  # an interrupted night still shows its curves

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def open_tensorboard(log_dir: Path) -> Any:
    """A TensorBoard SummaryWriter, or a one-line error when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise DefectssftError(
            "train.tensorboard is on but the tensorboard package is not installed: "
            "pip install 'defectssft[tensorboard]' (or set train.tensorboard=false)"
        ) from e
    return SummaryWriter(log_dir=str(log_dir))


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
