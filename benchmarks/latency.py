"""Line latency: the same model on the same images in torch eager, onnxruntime fp32 and INT8.

Batch 1 latency (median and p99) at 1 and 2 threads, and the accuracy of each runtime on a fixed
NEU-DET test split (110 images per class, the split of benchmarks/common.py). The model is a
tf_efficientnet_lite0 fine-tuned (supervised, ImageNet start) on the rest of NEU-DET, unless
``--model`` gives a defectssft ``model.pt``. Every runtime gets uint8 NHWC input and does the
normalisation itself (the exported graph), so the comparison is like for like.

    python benchmarks/latency.py --quick        # ~10 min on 2 cores (100 training steps)
    python benchmarks/latency.py                # 300 training steps, 300 timing iterations
    python benchmarks/latency.py --model PROJECT/models/v0003/model.pt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import neu_split, write_results  # noqa: E402

from defectssft.export import export_onnx, ort_session, run_ort  # noqa: E402
from defectssft.inspection import inspection_model, load_images, run_torch  # noqa: E402
from defectssft.modeling import build_model, load_model_file, save_model_file  # noqa: E402


def train_model(size: int, steps: int, run_dir: Path) -> tuple[torch.nn.Module, dict]:
    """Supervised fine-tuning of tf_efficientnet_lite0 on the NEU-DET training pool."""
    from defectssft.training.config import resolve_config
    from defectssft.training.loop import train

    data = neu_split(k=1000, seed=0)  # k above the pool size: every non-test image is labeled
    cfg = resolve_config(
        overrides={
            "model": {"name": "tf_efficientnet_lite0", "weights": "imagenet"},
            "input": {"height": size, "width": size, "bit_depth": 8},
            "ssl": {"method": "supervised"},
            "train": {
                "steps": steps,
                "batch_size": 16,
                "optimizer": "sgd",  # the lr below is SGD's (the default is chosen per data)
                "lr": 0.02,
                "warmup_steps": 10,
                "eval_every": steps,
                "checkpoint_every": steps,
                "threads": 2,
                "num_workers": 1,
                "ema_decay": 0.0,
            },
        }
    )
    t0 = time.time()
    result = train(cfg, data, run_dir, handle_signals=False)
    print(f"trained {steps} steps in {time.time() - t0:.0f} s: val {result.metrics}", flush=True)
    model = build_model("tf_efficientnet_lite0", len(data.classes), weights="none")
    model.load_state_dict(result.weights)
    meta = {
        "model_name": "tf_efficientnet_lite0",
        "classes": data.classes,
        "ok_class": None,
        "input": {"height": size, "width": size, "bit_depth": 8},
        "mean": result.mean,
        "std": result.std,
        "version": "bench",
        "thresholds": None,
    }
    return model.eval(), meta


def time_interleaved(runtimes: dict, x: np.ndarray, iters: int, warmup: int) -> list[dict]:
    """Latency of each runtime, calls interleaved (A, B, C, A, B, C, ...) so that load from other
    processes on a shared machine hits all runtimes alike."""
    for _ in range(warmup):
        for fn in runtimes.values():
            fn(x)
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(iters):
        for name, fn in runtimes.items():
            t0 = time.perf_counter()
            fn(x)
            times[name].append((time.perf_counter() - t0) * 1000)
    out = []
    for name, t in times.items():
        a = np.asarray(t)
        out.append(
            {
                "runtime": name,
                "median_ms": float(np.median(a)),
                "p99_ms": float(np.percentile(a, 99)),
                "mean_ms": float(a.mean()),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", help="a defectssft model.pt (default: fine-tune one now)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, help="training steps (default 100 quick, 300 full)")
    ap.add_argument("--iters", type=int, help="timed runs per config (default 100 quick, 300 full)")
    ap.add_argument("--name", default="latency")
    args = ap.parse_args()
    steps = args.steps or (100 if args.quick else 300)
    iters = args.iters or (100 if args.quick else 300)
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="latency-"))

    if args.model:
        model, meta = load_model_file(args.model)
    else:
        model, meta = train_model(args.size, steps, work / "run")
        saved = save_model_file(work / "model.pt", model, meta)
        print(f"saved the fine-tuned model to {saved} (reuse it with --model)", flush=True)
    h, w = meta["input"]["height"], meta["input"]["width"]
    bit = meta["input"].get("bit_depth", 8)
    data = neu_split(k=1000, seed=0)
    if meta["classes"] != data.classes:
        raise SystemExit(f"model classes {meta['classes']} are not NEU-DET's {data.classes}")
    test_x = load_images([p for p, _ in data.test], h, w, bit)
    test_y = np.asarray([c for _, c in data.test])
    rng = np.random.default_rng(0)
    calib_paths = [data.labeled[i][0] for i in rng.permutation(len(data.labeled))[:64]]
    calib = load_images(calib_paths, h, w, bit)

    fp32 = export_onnx(
        model, meta, work / "fp32.onnx", check_images=test_x[:32], check_labels=test_y[:32].tolist()
    )
    int8 = export_onnx(
        model,
        meta,
        work / "int8.onnx",
        check_images=test_x[:32],
        check_labels=test_y[:32].tolist(),
        calib_images=calib,
        precision="int8",
        max_int8_drop=1.0,
    )
    print(fp32.summary(), "\n" + int8.summary(), flush=True)

    wrapper = inspection_model(model, meta)
    acc = {
        "torch_eager": float(np.mean(run_torch(wrapper, test_x).argmax(1) == test_y)),
        "ort_fp32": float(np.mean(run_ort(ort_session(fp32.path, 2), test_x).argmax(1) == test_y)),
        "ort_int8": float(np.mean(run_ort(ort_session(int8.path, 2), test_x).argmax(1) == test_y)),
    }
    x1 = test_x[:1]
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)

        def eager(x, _w=wrapper):
            with torch.inference_mode():
                return _w(torch.from_numpy(x))

        runtimes = {"torch_eager": eager}
        for name, res in (("ort_fp32", fp32), ("ort_int8", int8)):
            sess = ort_session(res.path, threads)
            runtimes[name] = lambda x, _s=sess: _s.run(["probs"], {"image": x})
        for r in time_interleaved(runtimes, x1, iters, warmup=10):
            rows.append({**r, "threads": threads, "batch": 1, "accuracy": acc[r["runtime"]]})
    torch.set_num_threads(2)

    print(
        f"\n{meta['model_name']} {h}x{w}, batch 1, {iters} runs; accuracy on {len(test_y)} "
        f"NEU-DET test images"
    )
    print(f"{'runtime':<12} {'threads':>7} {'median ms':>10} {'p99 ms':>9} {'accuracy':>9}")
    for r in rows:
        print(
            f"{r['runtime']:<12} {r['threads']:>7} {r['median_ms']:>10.2f} {r['p99_ms']:>9.2f} "
            f"{100 * r['accuracy']:>8.2f}%"
        )
    by = {(r["runtime"], r["threads"]): r["median_ms"] for r in rows}
    speed = {
        f"{t}t": {
            "fp32_vs_eager": by[("torch_eager", t)] / by[("ort_fp32", t)],
            "int8_vs_fp32": by[("ort_fp32", t)] / by[("ort_int8", t)],
        }
        for t in (1, 2)
    }
    for t, s in speed.items():
        print(
            f"speed-up at {t}: ORT fp32 vs eager {s['fp32_vs_eager']:.2f}x, "
            f"INT8 vs fp32 {s['int8_vs_fp32']:.2f}x"
        )
    print(f"INT8 accuracy change vs fp32: {100 * (acc['ort_int8'] - acc['ort_fp32']):+.2f} pt")
    out = write_results(
        args.name,
        {
            "quick": args.quick,
            "model": args.model or f"fine-tuned {steps} steps",
            "size": [h, w],
            "iters": iters,
            "n_test": len(test_y),
            "rows": rows,
            "accuracy": acc,
            "speedup": speed,
            "export": {"fp32": fp32.as_dict(), "int8": int8.as_dict()},
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
