"""Ingest benchmark: import speed on real data sets and `status` time on a 100,000-image project.

    python benchmarks/ingest.py [--neu ../shared/datasets/neu-det] [--kolektor ../shared/datasets/kolektorsdd]
                                [--rows 100000] [--quick]

Prints a table and writes benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from defectssft.ingest import import_paths
from defectssft.project import Project, utcnow

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def bench_import(folder: Path, label_from: str | None, limit: int | None) -> dict:
    files = sorted(p for p in folder.rglob("*.jpg"))
    if limit:
        files = files[:limit]
    with tempfile.TemporaryDirectory() as tmp:
        project = Project.create(Path(tmp) / "p")
        start = time.perf_counter()
        summary = import_paths(project, files, label_from=label_from)
        seconds = time.perf_counter() - start
        project.close()
    mb = sum(f.stat().st_size for f in files) / 1e6
    return {
        "files": len(files),
        "added": summary.added,
        "quarantined": summary.quarantined,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(files) / seconds, 1),
        "mb_per_s": round(mb / seconds, 1),
    }


def make_big_project(path: Path, rows: int) -> Project:
    """A project with ``rows`` synthetic image rows (no pixels), 6 classes, 20% labeled."""
    classes = ["ok", "scratch", "dent", "crack", "stain", "burr"]
    project = Project.create(path, classes=classes, ok_class="ok")
    rng = random.Random(0)
    now = utcnow()
    with project.transaction() as tx:
        batch = []
        for i in range(rows):
            sha = hashlib.sha256(str(i).encode()).hexdigest()
            labeled = rng.random() < 0.2
            label = rng.randint(1, 6) if labeled else None
            split = rng.choice(["train"] * 7 + ["val", "test"]) if labeled else "train"
            batch.append(
                (
                    sha,
                    ".jpg",
                    200,
                    200,
                    1,
                    8,
                    10000,
                    "bench",
                    f"{i}.jpg",
                    now,
                    now,
                    split,
                    int(labeled),
                    label,
                    "human" if labeled else None,
                )
            )
        tx.executemany(
            "INSERT INTO images (sha256, ext, width, height, channels, bit_depth, file_size, source,"
            " original_name, capture_time, ingest_time, split, split_frozen, label_class_id,"
            " label_source) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            batch,
        )
        for i in range(rows // 50):
            tx.execute(
                "INSERT INTO quarantine (path, reason, time) VALUES (?,?,?)",
                (f"bad{i}.jpg", "truncated JPEG", now),
            )
    return project


def bench_status(rows: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big"
        t0 = time.perf_counter()
        project = make_big_project(path, rows)
        build = time.perf_counter() - t0
        project.close()
        times = []
        for _ in range(5):
            p = Project.open(path)  # a cold connection each time, as a CLI call has
            t = time.perf_counter()
            st = p.status()
            times.append(time.perf_counter() - t)
            p.close()
        cli_times = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "defectssft", "status", str(path), "--json"],
                check=True,
                capture_output=True,
            )
            cli_times.append(time.perf_counter() - t)
    return {
        "rows": rows,
        "images_reported": st["images"],
        "build_seconds": round(build, 2),
        "status_median_s": round(statistics.median(times), 4),
        "status_max_s": round(max(times), 4),
        "cli_status_median_s": round(statistics.median(cli_times), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neu", type=Path, default=DATASETS / "neu-det")
    ap.add_argument("--kolektor", type=Path, default=DATASETS / "kolektorsdd")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="fewer files and rows (under a minute)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ingest.json")
    args = ap.parse_args()
    limit = 300 if args.quick else None
    rows = 20_000 if args.quick else args.rows
    results: dict = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "quick": args.quick,
    }
    if args.neu.exists():
        results["neu_det"] = bench_import(args.neu / "images", r"filename:^(.*)_\d+\.jpg$", limit)
    if args.kolektor.exists():
        results["kolektorsdd"] = bench_import(args.kolektor / "images", "yolo", limit)
    results["status"] = bench_status(rows)

    print(f"{'benchmark':<28} {'files/rows':>10} {'seconds':>9} {'rate':>14}")
    for key in ("neu_det", "kolektorsdd"):
        if key in results:
            r = results[key]
            print(
                f"{'import ' + key:<28} {r['files']:>10} {r['seconds']:>9.2f} "
                f"{r['images_per_s']:>8.0f} img/s"
            )
    s = results["status"]
    print(
        f"{'status() (library)':<28} {s['rows']:>10} {s['status_median_s']:>9.3f} {'median of 5':>14}"
    )
    print(
        f"{'defectssft status (CLI)':<28} {s['rows']:>10} {s['cli_status_median_s']:>9.3f} "
        f"{'median of 3':>14}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
