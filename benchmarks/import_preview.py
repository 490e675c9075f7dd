"""Import with a preview and undo against the plain import, on the same folder of images.

    python benchmarks/import_preview.py [--folder ../shared/datasets/neu-det/images]
                                        [--rule 'filename:^(.*)_\\d+\\.jpg$'] [--repeat 3]

Per repeat, in fresh projects: ``ingest.import_paths``; ``import_plan.scan_import`` (hashing every
file, the preview); ``apply_plan`` (the recorded import the CLI and the app use); a re-scan of the
imported folder; ``import_log.undo_import`` (images). Prints the median of each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from defectssft.import_log import undo_import
from defectssft.import_plan import apply_plan, plan_import, scan_import
from defectssft.ingest import import_paths
from defectssft.project import Project

ROOT = Path(__file__).resolve().parents[1]


def once(folder: Path, rule: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        p = Project.create(Path(tmp) / "a")
        t = time.perf_counter()
        n = import_paths(p, [folder], label_from=rule).added
        out["import_paths"] = time.perf_counter() - t
        q = Project.create(Path(tmp) / "b")
        t = time.perf_counter()
        scan = scan_import([folder], rule, q)
        out["scan_import (preview)"] = time.perf_counter() - t
        t = time.perf_counter()
        result = apply_plan(q, plan_import(scan, q.class_names(), q.ok_class))
        out["apply_plan (recorded import)"] = time.perf_counter() - t
        assert result.added == n
        t = time.perf_counter()
        scan_import([folder], rule, q)
        out["re-scan, all already stored"] = time.perf_counter() - t
        t = time.perf_counter()
        undo_import(q, int(result.import_id or 0))
        out["undo_import (images)"] = time.perf_counter() - t
        out["images"] = n
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(ROOT.parent / "shared/datasets/neu-det/images"))
    parser.add_argument("--rule", default=r"filename:^(.*)_\d+\.jpg$")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = [once(Path(args.folder), args.rule) for _ in range(args.repeat)]
    n = int(runs[0]["images"])
    print(f"{n} images, median of {args.repeat}")
    for key in runs[0]:
        if key == "images":
            continue
        s = statistics.median(r[key] for r in runs)
        print(f"  {key:<32} {s:7.2f} s  {n / s:7.0f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
