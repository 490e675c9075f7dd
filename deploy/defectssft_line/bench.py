"""Latency and throughput of a model on this PC: p50/p95/p99 per batch and images/s.

Measures ``session.run`` on preprocessed uint8 inputs (real images when given, else random
pixels of the model's size) for each batch size and thread count, after a warm-up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from defectssft_line.model import LineModel
from defectssft_line.preprocess import ImageDecodeError, is_image_name, read_image


def default_threads() -> list[int]:
    n = os.cpu_count() or 1
    out = [t for t in (1, 2, 4, 8, 16) if t < n]
    return [*out, n]


def sample_inputs(model: LineModel, paths: list[Path], count: int) -> np.ndarray:
    """``count`` model inputs: the given images (cycled) or seeded random pixels."""
    arrays = []
    for p in paths:
        files = sorted(f for f in p.iterdir() if is_image_name(f.name)) if p.is_dir() else [p]
        for f in files:
            try:
                arrays.append(model.prepare(read_image(f)))
            except ImageDecodeError:
                continue
            if len(arrays) >= count:
                break
    if not arrays:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (count, model.height, model.width, 3), dtype=np.uint8)
    reps = -(-count // len(arrays))
    return np.stack((arrays * reps)[:count])


def measure(
    model: LineModel, inputs: np.ndarray, batch: int, iters: int, warmup: int, exact: bool = False
) -> dict:
    """Latency of ``iters`` runs of one batch: p50/p95/p99/mean ms and images/s; ``exact``:
    through the fp32 graph of an INT8 file with the re-check (``LineModel.predict``)."""
    times = []
    n = len(inputs)
    for i in range(warmup + iters):
        start = (i * batch) % max(1, n - batch + 1)
        x = np.ascontiguousarray(inputs[start : start + batch])
        t0 = time.perf_counter()
        model.predict(x, exact)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000.0)
    t = np.asarray(times)
    return {
        "batch": batch,
        "p50_ms": float(np.percentile(t, 50)),
        "p95_ms": float(np.percentile(t, 95)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "images_per_s": float(batch * 1000.0 / t.mean()),
        "iters": iters,
    }


def run_bench(
    model_path: Path,
    images: list[Path],
    batches: list[int],
    threads: list[int],
    iters: int,
    warmup: int,
) -> list[dict]:
    """One row per thread count, batch size and graph: the file's own, and for an INT8 file
    with the re-check also its fp32 graph (what each re-checked part costs on top)."""
    rows = []
    for n_threads in threads:
        model = LineModel.load(model_path, threads=n_threads)
        inputs = sample_inputs(model, images, max(max(batches) * 2, 16))
        graphs = [(str(model.meta.get("precision", "?")), False)]
        if model.recheck is not None:
            graphs.append(("fp32 (re-check)", True))
        for batch in batches:
            for graph, exact in graphs:
                row = measure(model, inputs, batch, iters, warmup, exact)
                rows.append({"threads": n_threads, "graph": graph, **row})
    return rows


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'threads':>7} {'graph':>15} {'batch':>5} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} "
        f"{'img/s':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['threads']:>7} {r.get('graph', ''):>15} {r['batch']:>5} {r['p50_ms']:>9.2f} "
            f"{r['p95_ms']:>9.2f} "
            f"{r['p99_ms']:>9.2f} {r['images_per_s']:>9.1f}"
        )
    return "\n".join(lines)
