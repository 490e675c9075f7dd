"""Results written after every case of a long benchmark (JSON + markdown table), so a run that
is stopped keeps what it measured. Torch-free: benchmarks that only drive the CLI use it."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def save_progress(
    stem: Path,
    benchmark: str,
    t0: float,
    results: list[dict[str, Any]],
    markdown: str,
    **extra: Any,
) -> dict[str, Any]:
    """Write ``stem``.json (the run's command, minutes since ``t0`` (``time.perf_counter``),
    machine, load, ``extra`` and ``results``) and ``stem``.md (``markdown``); the payload."""
    payload = {
        "benchmark": benchmark,
        "command": " ".join(sys.argv),
        **extra,
        "minutes": round((time.perf_counter() - t0) / 60, 1),
        "machine": platform.platform(),
        "load": os.getloadavg(),
        "results": results,
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    stem.with_suffix(".md").write_text(markdown)
    return payload
