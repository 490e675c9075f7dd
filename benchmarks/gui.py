"""Desktop app responsiveness on a large project: first thumbnails and label-to-next latency.

Builds a synthetic project (small generated PNGs, rows inserted in one transaction, predictions
of a fake model for every image), opens the real main window offscreen and measures:

* the grid query (rows for a filter/sort) for 20,000 images;
* time from creating the window to the first screenful of thumbnails, with an empty thumbnail
  cache (cold: decode + write cache) and with the cache filled (warm: a reopened project);
* time from a class hotkey press to the next image shown (label committed to SQLite, grid
  updated, image decoded or taken from the prefetch cache, set in the view and the pending paint
  events processed), median and p95, at an operator's pace (a pause between presses) and
  back-to-back.

The Models panel and the label-history viewer (which follows the current image) are open during
both measurements, as a user would have them (``--no-panels``: without them).

    python benchmarks/gui.py            # 20,000 images, 300 presses
    python benchmarks/gui.py --quick    # 5,000 images, 100 presses
    python benchmarks/gui.py --images 1000 --size 1024 --presses 100 --name gui-1024px
    python benchmarks/gui.py --quick --no-panels --name gui-quick-nopanels

Prints a table and writes benchmarks/results/gui[-quick].json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from defectssft.project import Project, utcnow  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = ["ok", "scratch", "dent", "stain"]


def build_project(root: Path, n: int, size: int, seed: int = 0) -> tuple[Project, float]:
    """A project of ``n`` distinct ``size``-px PNGs, unlabeled, with predictions of 'v0001'."""
    t0 = time.perf_counter()
    project = Project.create(root, classes=CLASSES, ok_class="ok")
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(size, size), dtype=np.uint8)
    rows, preds = [], []
    now = utcnow()
    for i in range(n):
        img = base.copy()
        img[i % size, :] = 255 - img[i % size, :]
        img[0, :8] = np.frombuffer(i.to_bytes(8, "little"), dtype=np.uint8)  # unique content
        ok, buf = cv2.imencode(".png", img)
        data = buf.tobytes()
        sha = hashlib.sha256(data).hexdigest()
        dest = project.image_file(sha, ".png")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        capture = f"2024-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}"
        rows.append(
            (sha, ".png", size, size, 1, 8, len(data), "bench", f"cam_{i:06d}.png", capture, now)
        )
        p = rng.dirichlet(np.ones(len(CLASSES)) * 0.5).tolist()
        preds.append(p)
    with project.transaction() as tx:
        tx.executemany(
            "INSERT INTO images (sha256, ext, width, height, channels, bit_depth, file_size, "
            "source, original_name, capture_time, ingest_time) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
    project.models_dir.joinpath("v0001").mkdir(exist_ok=True)
    project.register_model("v0001", {"classes": CLASSES}, {})
    project.save_predictions("v0001", zip(project.image_ids(), preds, strict=True))
    return project, time.perf_counter() - t0


def time_queries(project: Project) -> dict[str, float]:
    from defectssft import queries

    out = {}
    for spec, sort in (
        ("all", "-capture"),
        ("all", "score"),
        ("unlabeled", "-capture"),
        ("uncertain", "-capture"),
        ("useful", "-capture"),
    ):
        t0 = time.perf_counter()
        rows = queries.fetch_rows(project, spec, sort, "v0001")
        out[f"{spec}/{sort}"] = round((time.perf_counter() - t0) * 1000, 1)
        assert rows or spec == "uncertain"
    return out


def time_operating(project: Project) -> dict[str, float]:
    """The operating-point panel's work: loading the version's scores and binning them (its pool
    thread), and the rates of one candidate (on the GUI thread, per mouse move of a drag)."""
    from defectssft import operating

    t0 = time.perf_counter()
    data = operating.load_operating_data(project, "v0001")
    operating.histogram(data)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(100):
        operating.rates(data, operating.candidate(0.5, 0.2 + k / 1000, 0.8))
    return {
        "load_and_histogram_ms": round(load * 1000, 1),
        "rates_per_candidate_ms": round((time.perf_counter() - t0) * 10, 3),
        "stream": int(data.stream.size),
    }


def wait_until(app, cond, timeout: float = 60.0) -> bool:
    end = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > end:
            return False
        app.processEvents()
        time.sleep(0.0005)
    return True


def visible_rows(window) -> list[int]:
    """Rows whose cells are inside the grid's viewport now."""
    view = window.grid
    rect = view.viewport().rect()
    rows = []
    for i in range(min(window.model.rowCount(), 200)):
        r = view.visualRect(window.model.index(i))
        if r.isValid() and rect.intersects(r):
            rows.append(i)
    return rows


PANELS = True


def open_panels(window) -> None:
    """The Models panel and the label history, open beside the window (``PANELS``)."""
    if PANELS:
        window.open_models()
        window.open_history()


def first_thumbnails(app, root: Path) -> dict[str, float]:
    """Seconds from creating the window to a painted first screenful of thumbnails."""
    from defectssft_gui.window import MainWindow

    t0 = time.perf_counter()
    window = MainWindow(Project.open(root), quiet=True)
    window.resize(1280, 800)
    window.show()
    open_panels(window)
    t_window = time.perf_counter() - t0

    def done() -> bool:  # the layout may still change: look at what is visible now
        rows = visible_rows(window)
        return bool(rows) and all(window.model.has_thumbnail(i) for i in rows)

    ok = wait_until(app, done, 60)
    rows = visible_rows(window)
    t_thumbs = time.perf_counter() - t0
    window.close()
    app.processEvents()
    return {
        "window_shown_s": round(t_window, 3),
        "first_thumbnails_s": round(t_thumbs, 3),
        "visible_cells": len(rows),
        "complete": ok,
    }


def label_to_next(app, root: Path, presses: int, pause: float) -> dict[str, float]:
    """Latency of class hotkey -> next image shown, ``pause`` seconds between presses."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from defectssft_gui.window import MainWindow

    window = MainWindow(Project.open(root), quiet=True)
    window.resize(1280, 800)
    window.show()
    window.activateWindow()
    wait_until(app, lambda: app.activeWindow() is window, 5)
    loaded: list[int] = []
    window.rowsLoaded.connect(loaded.append)
    window.set_filter("unlabeled")
    wait_until(app, lambda: bool(loaded), 30)
    wait_until(app, lambda: window.viewer.raw() is not None, 30)
    open_panels(window)
    window.activateWindow()
    shown: dict[str, float] = {}
    window.viewer.imageShown.connect(lambda path: shown.setdefault(path, time.perf_counter()))
    lat = []
    keys = [Qt.Key.Key_1, Qt.Key.Key_2, Qt.Key.Key_3, Qt.Key.Key_4]
    for k in range(presses):
        end = time.perf_counter() + pause
        while time.perf_counter() < end:  # the operator looks at the image
            app.processEvents()
            time.sleep(0.002)
        before = window.current_row().image_id
        shown.clear()
        t0 = time.perf_counter()
        QTest.keyClick(window.grid, keys[k % 4])
        nxt = window.current_row()
        assert nxt.image_id != before, "the hotkey did not move to the next image"
        if not wait_until(app, lambda p=nxt.path: p in shown, 10):
            raise SystemExit("next image never shown")
        app.processEvents()  # the paint of the new image happens here
        lat.append((time.perf_counter() - t0) * 1000)
    labeled = window.project.status()["labeled"]
    window.close()
    app.processEvents()
    lat.sort()
    return {
        "presses": presses,
        "pause_s": pause,
        "median_ms": round(statistics.median(lat), 2),
        "p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 2),
        "max_ms": round(lat[-1], 2),
        "labels_in_db": labeled,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 images, 100 presses")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--presses", type=int, default=None)
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--workdir", default=None, help="keep the project here")
    parser.add_argument("--name", default=None, help="results file name (default gui or gui-quick)")
    parser.add_argument(
        "--no-panels", action="store_true", help="without the Models/history panels"
    )
    args = parser.parse_args(argv)
    global PANELS
    PANELS = not args.no_panels
    n = args.images or (5000 if args.quick else 20000)
    presses = args.presses or (100 if args.quick else 300)
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory(prefix="gui-bench-") as tmp:
        root = Path(args.workdir or tmp) / "project"
        project, build_s = build_project(root, n, args.size)
        queries_ms = time_queries(project)
        operating_ms = time_operating(project)
        project.close()
        cold = first_thumbnails(app, root)
        warm = first_thumbnails(app, root)
        paced = label_to_next(app, root, presses, pause=0.15)
        burst = label_to_next(app, root, presses, pause=0.0)
    result = {
        "benchmark": "gui",
        "images": n,
        "image_size": args.size,
        "panels_open": PANELS,
        "build_s": round(build_s, 1),
        "queries_ms": queries_ms,
        "operating_point_panel": operating_ms,
        "first_thumbnails_cold": cold,
        "first_thumbnails_warm": warm,
        "label_to_next_paced": paced,
        "label_to_next_back_to_back": burst,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": "python benchmarks/gui.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"\nGUI benchmark: {n} images of {args.size}px (project built in {build_s:.1f} s)")
    print(f"{'measure':44s} {'value':>12s}")
    for k, v in queries_ms.items():
        print(f"{'grid query ' + k:44s} {v:>9.1f} ms")
    print(
        f"{'operating point: load + histogram':44s} "
        f"{operating_ms['load_and_histogram_ms']:>9.1f} ms"
    )
    print(
        f"{'operating point: rates of a candidate':44s} "
        f"{operating_ms['rates_per_candidate_ms']:>9.3f} ms"
    )
    for name, r in (("cold cache", cold), ("warm cache", warm)):
        print(
            f"{'first thumbnails, ' + name:44s} {r['first_thumbnails_s']:>10.3f} s"
            f"  ({r['visible_cells']} cells, window shown {r['window_shown_s']:.3f} s)"
        )
    for name, r in (("paced 150 ms", paced), ("back-to-back", burst)):
        print(f"{'label -> next image, ' + name + ' median':44s} {r['median_ms']:>9.2f} ms")
        print(f"{'label -> next image, ' + name + ' p95':44s} {r['p95_ms']:>9.2f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.name or ('gui-quick' if args.quick else 'gui')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
