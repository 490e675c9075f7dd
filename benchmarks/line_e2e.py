"""Line end to end: simulated GenICam camera -> preprocess -> ONNX -> a value a PLC can read.

Part 1 (latency, throughput): frames from the simulated GenTL producer of PyPI ``genicam``
(``viky.cti``, RGBa8 400x400) go through the line runtime's camera stream, ``Runner`` (the one
preprocessing definition, the ONNX model at 1 thread) and two sinks at once, an OPC UA server
and a Modbus TCP server. A separate process polls both as a PLC would (OPC UA read of
``Inspection/Counter/Total``, Modbus read of registers 2-3) and notes when each part's counter
first becomes readable. Latency = that moment minus the moment the frame left the camera
driver (``perf_counter`` is CLOCK_MONOTONIC, shared by the processes). The same frames through
``LineModel.classify`` alone give the bare inference time and rate.

Part 2 (bounded soak): N frames from the camera at a fixed rate, a Modbus *client* sink
writing into a PLC stand-in (a Modbus server) that is stopped and restarted every K frames.
Reported: frames read vs records written, camera frame ids missed, sink messages sent /
dropped, reconnects, RSS at start and end.

The model is ``tf_efficientnet_lite0`` (ImageNet weights, untrained 2-class head; its
accuracy is irrelevant here), exported to fp32 ONNX at 224 px.

    python benchmarks/line_e2e.py --quick     # 200 frames, soak 300 frames (~2 min)
    python benchmarks/line_e2e.py             # 1000 frames, soak 3000 frames
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genicam  # noqa: E402
from common import write_results  # noqa: E402

POLL_S = 0.001  # the PLC stand-in reads both every millisecond (plus the read time)
CTI = str(Path(genicam.__file__).parent / "viky.cti")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def export_lite0(path: Path, size: int) -> Path:
    import torch

    from defectssft.export import export_onnx
    from defectssft.modeling import build_model

    torch.manual_seed(0)
    model = build_model("tf_efficientnet_lite0", 2, weights="imagenet").eval()
    meta = {
        "model_name": "tf_efficientnet_lite0",
        "classes": ["ok", "ng"],
        "ok_class": "ok",
        "input": {"height": size, "width": size, "bit_depth": 8},
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "version": "bench",
        "thresholds": None,
    }
    rng = np.random.default_rng(0)
    check = rng.integers(0, 255, (2, size, size, 3), dtype=np.uint8)
    export_onnx(model, meta, path, check_images=check)
    return path


def poller(opc_url: str, modbus_port: int, n: int, out: mp.Queue, ready: mp.Event) -> None:
    """A PLC stand-in: poll the counter over OPC UA and Modbus; first-seen times per part."""
    from asyncua.sync import Client
    from pymodbus.client import ModbusTcpClient

    client = Client(opc_url, timeout=10)
    client.connect()
    idx = client.get_namespace_index("urn:defectssft:line")
    total = client.nodes.objects.get_child([f"{idx}:Inspection", f"{idx}:Counter", f"{idx}:Total"])
    mb = ModbusTcpClient("127.0.0.1", port=modbus_port, timeout=10)
    mb.connect()
    seen_opc: dict[int, float] = {}
    seen_mb: dict[int, float] = {}
    ready.set()
    deadline = time.monotonic() + 600
    last_opc = last_mb = 0
    while (last_opc < n or last_mb < n) and time.monotonic() < deadline:
        if last_opc < n:
            v = int(total.read_value())
            t = time.perf_counter()
            if v > last_opc:
                seen_opc.setdefault(v, t)
                last_opc = v
        if last_mb < n:
            r = mb.read_holding_registers(2, count=2).registers
            t = time.perf_counter()
            v = r[0] | (r[1] << 16)
            if v > last_mb:
                seen_mb.setdefault(v, t)
                last_mb = v
        time.sleep(POLL_S)
    client.disconnect()
    mb.close()
    out.put((seen_opc, seen_mb))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_runner(model_path: Path, outputs, out_file: Path):
    from defectssft_line.cli import Runner
    from defectssft_line.hotswap import ModelHolder
    from defectssft_line.model import LineModel
    from defectssft_line.output import ResultWriter

    holder = ModelHolder(model_path, lambda p: LineModel.load(p, threads=1), poll_s=3600)
    writer = ResultWriter("jsonl", out_file)
    return Runner(holder, writer, None, outputs), writer


def camera_stream(fps: float):
    from defectssft_line.camera import CameraStream
    from defectssft_line.genicam import CameraSettings, GenICamOpener

    opener = GenICamOpener(CTI, CameraSettings(nodes={"AcquisitionFrameRate": float(fps)}))
    opener.preflight("genicam://0")  # a bad setting is an error here, not a reconnect loop
    return opener, CameraStream("genicam://0", opener=opener, log=lambda m: None)


def part_latency(model_path: Path, frames: int, work: Path) -> dict:
    from defectssft_line.lineio import LineOutputs
    from defectssft_line.model import LineModel
    from defectssft_line.sinks.modbus import ModbusServerSink
    from defectssft_line.sinks.opcua import OpcUaServerSink, endpoint_url

    # bare inference on the camera's own frames, before and after the end-to-end run
    opener, stream = camera_stream(200.0)
    grabbed = []
    with contextlib.closing(stream.frames()) as it:
        for frame in it:
            grabbed.append(frame)
            if len(grabbed) >= 50:
                break
    model = LineModel.load(model_path, threads=1)
    for f in grabbed[:10]:
        model.classify([f])

    def bare_run() -> tuple[list[float], float]:
        times = []
        t_start = time.perf_counter()
        for i in range(frames // 2):
            t0 = time.perf_counter()
            model.classify([grabbed[i % len(grabbed)]])
            times.append((time.perf_counter() - t0) * 1000)
        return times, len(times) / (time.perf_counter() - t_start)

    bare, rate_before = bare_run()

    opc_port, mb_port = free_port(), free_port()
    opc = OpcUaServerSink(port=opc_port, log=lambda m: None)
    mbs = ModbusServerSink(port=mb_port, log=lambda m: None)
    outputs = LineOutputs([opc, mbs], part_id="counter", classes=["ok", "ng"], log=lambda m: None)
    outputs.start()
    runner, writer = make_runner(model_path, outputs, work / "e2e.jsonl")
    ctx = mp.get_context("spawn")
    q, ready = ctx.Queue(), ctx.Event()
    proc = ctx.Process(
        target=poller, args=(endpoint_url("127.0.0.1", opc_port), mb_port, frames, q, ready)
    )
    proc.start()
    ready.wait(60)
    opener, stream = camera_stream(200.0)
    t_frame: dict[int, float] = {}
    n = 0
    t_start = time.perf_counter()
    with contextlib.closing(stream.frames()) as it:
        for frame in it:
            t0 = time.perf_counter()
            n += 1
            t_frame[n] = t0
            runner.score_frame(f"f{n}", frame, opener.last_meta)
            if n >= frames:
                break
    seen_opc, seen_mb = q.get(timeout=120)
    wall = time.perf_counter() - t_start
    proc.join(30)
    # throughput, interleaved so that the load of a shared machine hits both alike: blocks of
    # 20 frames bare (classify on grabbed frames), then 20 through camera + runner + sinks
    # (no client polling them: a PLC on its own machine)
    block, t_bare, t_line, n_bare, n_line = 20, 0.0, 0.0, 0, 0
    with contextlib.closing(stream.frames()) as it:
        for r in range(max(1, frames // (2 * block))):
            t0 = time.perf_counter()
            for i in range(block):
                model.classify([grabbed[(r * block + i) % len(grabbed)]])
            t_bare += time.perf_counter() - t0
            n_bare += block
            t0 = time.perf_counter()
            for i, frame in enumerate(it):
                runner.score_frame(f"q{r}-{i}", frame, opener.last_meta)
                if i + 1 >= block:
                    break
            t_line += time.perf_counter() - t0
            n_line += block
    outputs.close(timeout=2)
    writer.close()
    bare_after, rate_after = bare_run()
    bare += bare_after
    # the model's own time for each part of the same run (the record's latency_ms)
    infer = {
        i + 1: json.loads(line)["latency_ms"]
        for i, line in enumerate((work / "e2e.jsonl").read_text().splitlines()[:frames])
    }
    lat_opc = [(seen_opc[k] - t_frame[k]) * 1000 for k in t_frame if k in seen_opc]
    lat_mb = [(seen_mb[k] - t_frame[k]) * 1000 for k in t_frame if k in seen_mb]
    over_opc = [(seen_opc[k] - t_frame[k]) * 1000 - infer[k] for k in t_frame if k in seen_opc]
    over_mb = [(seen_mb[k] - t_frame[k]) * 1000 - infer[k] for k in t_frame if k in seen_mb]
    # a value the poller skipped (two parts between two reads) is not timed

    def stats(v: list[float]) -> dict:
        return {"median": pct(v, 50), "p99": pct(v, 99), "n": len(v)}

    return {
        "frames": frames,
        "bare_ms": stats(bare),
        "bare_rate_fps": (rate_before + rate_after) / 2,
        "bare_rate_fps_before_after": [rate_before, rate_after],
        "inference_in_run_ms": stats(list(infer.values())),
        "opcua_ms": stats(lat_opc),
        "modbus_ms": stats(lat_mb),
        "opcua_overhead_ms": stats(over_opc),
        "modbus_overhead_ms": stats(over_mb),
        "e2e_rate_fps_polled": frames / wall,
        "interleaved_bare_fps": n_bare / t_bare,
        "interleaved_line_fps": n_line / t_line,
    }


def soak(model_path: Path, frames: int, fps: float, drop_every: int, work: Path) -> dict:
    from defectssft_line.lineio import LineOutputs
    from defectssft_line.sinks.modbus import ModbusClientSink, ModbusServerSink

    port = free_port()
    plc = ModbusServerSink(port=port, log=lambda m: None)
    plc.start()
    sink = ModbusClientSink(
        "127.0.0.1", port=port, first_wait=0.1, max_wait=0.5, log=lambda m: None
    )
    outputs = LineOutputs([sink], part_id="counter", classes=["ok", "ng"], log=lambda m: None)
    outputs.start()
    runner, writer = make_runner(model_path, outputs, work / "soak.jsonl")
    opener, stream = camera_stream(fps)
    ids: list[int] = []
    drops = 0
    rss_start = None
    holder = {"plc": plc}

    def bounce() -> None:  # the PLC drops off for half a second
        holder["plc"].close(timeout=0.2)
        time.sleep(0.5)
        p = ModbusServerSink(port=port, log=lambda m: None)
        p.start()
        holder["plc"] = p

    bouncers = []
    t_start = time.perf_counter()
    with contextlib.closing(stream.frames()) as it:
        for frame in it:
            runner.score_frame(f"s{len(ids)}", frame, opener.last_meta)
            ids.append(opener.last_meta.get("frame_id", 0))
            if len(ids) == 20:
                rss_start = rss_mb()
            if drop_every and len(ids) % drop_every == 0:
                drops += 1
                t = threading.Thread(target=bounce)
                t.start()
                bouncers.append(t)
            if len(ids) >= frames:
                break
    wall = time.perf_counter() - t_start
    for t in bouncers:
        t.join(30)
    sink.flush(30)
    rss_end = rss_mb()
    records = sum(writer.counts.values())
    outputs.close(timeout=5)
    writer.close()
    holder["plc"].close(timeout=0.5)
    missed = int(sum(max(0, b - a - 1) for a, b in zip(ids, ids[1:], strict=False)))
    return {
        "frames": frames,
        "camera_fps": fps,
        "plc_drops": drops,
        "records": records,
        "camera_frame_ids_missed": missed,
        "sink_sent": sink.sent,
        "sink_dropped": sink.dropped,
        "sink_reconnects": sink.reconnects,
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_end,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--soak-frames", type=int, default=None)
    ap.add_argument("--soak-fps", type=float, default=20.0)
    ap.add_argument("--drop-every", type=int, default=100, help="PLC drop every K soak frames")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    frames = args.frames or (200 if args.quick else 1000)
    soak_frames = args.soak_frames or (300 if args.quick else 3000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # exported in a child process: torch never enters the measured process (RSS)
        child = mp.get_context("spawn").Process(
            target=export_lite0, args=(work / "lite0.onnx", args.size)
        )
        child.start()
        child.join(600)
        model_path = work / "lite0.onnx"
        lat = part_latency(model_path, frames, work)
        print(
            f"bare ONNX: median {lat['bare_ms']['median']:.2f} ms, p99 {lat['bare_ms']['p99']:.2f}"
            f" ms, {lat['bare_rate_fps']:.1f} fps",
            flush=True,
        )
        print(
            f"inference in the same run: median {lat['inference_in_run_ms']['median']:.2f} ms",
            flush=True,
        )
        for k in ("opcua_ms", "modbus_ms", "opcua_overhead_ms", "modbus_overhead_ms"):
            print(
                f"frame -> readable ({k[:-3]}): median {lat[k]['median']:.2f} ms, p99 "
                f"{lat[k]['p99']:.2f} ms (n {lat[k]['n']})",
                flush=True,
            )
        print(
            f"throughput (interleaved blocks): bare {lat['interleaved_bare_fps']:.1f} fps, "
            f"camera + sinks {lat['interleaved_line_fps']:.1f} fps; while polled "
            f"{lat['e2e_rate_fps_polled']:.1f} fps",
            flush=True,
        )
        s = soak(model_path, soak_frames, args.soak_fps, args.drop_every, work)
        print(f"soak: {s}", flush=True)
    name = "line_e2e_quick" if args.quick else "line_e2e"
    out = write_results(
        name, {"size": args.size, "latency": lat, "soak": s, "command": " ".join(sys.argv)}
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
