"""Line cost of a tiled model per full camera frame: 1, 5 and 20 MP, fp32 and INT8, 1 thread.

Exports ``tf_efficientnet_lite0`` (ImageNet weights; the cost does not depend on what it learned)
with the tiling rule of the ``tiles`` preset (128 x 128 tiles, overlap 0.25, native resolution)
and times ``LineModel.classify`` on a decoded gray frame: ROI-free tile source, tiles cut and
scored in batches, pooled, decided: what the line runtime does per part. Also the peak memory
of the process, to show the frame is never turned into model input all at once.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/tiles_line.py [--quick]

Writes benchmarks/results/tiles_line[_quick].json.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import write_results  # noqa: E402
from defectssft.export import export_onnx  # noqa: E402
from defectssft.modeling import build_model  # noqa: E402
from defectssft_line import tiles as T  # noqa: E402
from defectssft_line.model import LineModel  # noqa: E402

FRAMES = {"1MP": (1024, 1024), "5MP": (1944, 2592), "20MP": (3648, 5472)}  # (height, width)


def export(out: Path, tile: int, overlap: float, precision: str, scale: float = 1.0) -> Path:
    torch.manual_seed(0)
    model = build_model("tf_efficientnet_lite0", 2, weights="imagenet").eval()
    meta = {
        "model_name": "tf_efficientnet_lite0",
        "classes": ["ok", "defect"],
        "ok_class": "ok",
        "input": {
            "height": tile,
            "width": tile,
            "bit_depth": 8,
            "tiles": {"scale": scale, "overlap": overlap, "pool": "max", "top_k": 3},
        },
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "version": "bench",
    }
    rng = np.random.default_rng(0)
    check = rng.integers(0, 256, (16, tile, tile, 3), dtype=np.uint8)
    export_onnx(model, meta, out, check_images=check, calib_images=check, precision=precision)
    return out


def frame(h: int, w: int) -> np.ndarray:
    """A gray frame with texture (what a decoded Mono8 camera frame is)."""
    rng = np.random.default_rng(h * w)
    small = rng.integers(60, 200, (h // 16 + 1, w // 16 + 1), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(small, np.ones((16, 16), np.uint8))[:h, :w])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 and 5 MP only, one repeat")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=T.DEFAULT_BATCH)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    frames = dict(FRAMES)
    if args.quick:
        frames.pop("20MP")
        args.repeats = 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="tiles_line_") as tmp:
        for overlap in args.overlaps:
            for precision in ("fp32", "int8"):
                path = export(Path(tmp) / f"m_{overlap}_{precision}.onnx", args.tile, overlap,
                              precision)  # fmt: skip
                model = LineModel.load(path, threads=1)
                model.tile_batch = args.batch
                model.classify([frame(256, 256)])  # warm-up
                for name, (h, w) in frames.items():
                    img = frame(h, w)
                    rows_, cols = T.grid_shape(h, w, model.tiles)
                    times, cpu = [], []
                    for _ in range(args.repeats):
                        t0, c0 = time.perf_counter(), time.process_time()
                        model.classify([img])
                        times.append(time.perf_counter() - t0)
                        cpu.append(time.process_time() - c0)
                    best, best_cpu = min(times), min(cpu)
                    n = rows_ * cols
                    row = {
                        "frame": name,
                        "height": h,
                        "width": w,
                        "precision": precision,
                        "tile": args.tile,
                        "overlap": overlap,
                        "tiles": n,
                        "ms_per_frame": round(best * 1000, 1),
                        "tiles_per_s": round(n / best, 1),
                        # CPU time of the (1-thread) process: the cost without the other
                        # processes of a shared machine
                        "cpu_ms_per_frame": round(best_cpu * 1000, 1),
                        "cpu_tiles_per_s": round(n / best_cpu, 1),
                        "max_rss_mb": round(
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                        ),
                    }
                    rows.append(row)
                    print(
                        f"{name:5s} {w}x{h} {precision} overlap {overlap}: {n} tiles, "
                        f"{row['ms_per_frame']:.0f} ms/frame, {row['tiles_per_s']:.0f} tiles/s "
                        f"(CPU {row['cpu_ms_per_frame']:.0f} ms, {row['cpu_tiles_per_s']:.0f}/s), "
                        f"max RSS {row['max_rss_mb']:.0f} MB",
                        flush=True,
                    )
    # What meets 5 MP <= 200 ms at 1 thread: the tiles 200 ms allows at the INT8 rate.
    int8 = [r for r in rows if r["precision"] == "int8" and r["frame"] == "5MP"]
    budget = {
        f"overlap_{r['overlap']}": {
            "tiles_in_200ms": int(0.2 * r["cpu_tiles_per_s"]),
            "scale_for_200ms": round(min(1.0, (0.2 * r["cpu_tiles_per_s"] / r["tiles"]) ** 0.5), 3),
        }
        for r in int8
    }
    print("5 MP in 200 ms (INT8, 1 thread, CPU time):", budget)
    name = "tiles_line_quick" if args.quick else "tiles_line"
    out = write_results(name, {"args": vars(args), "rows": rows, "budget_5mp_200ms": budget})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
