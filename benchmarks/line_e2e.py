"""Line end to end: simulated GenICam camera -> preprocess -> ONNX -> a value a PLC can read.

Every part runs the line runtime's own camera loop (``defectssft-line run --camera``): the
simulated GenTL producer of PyPI ``genicam`` (``viky.cti``, RGBa8 400x400) read ahead on its
own thread as the runtime sets it up (``cli.read_ahead``: paced by the model, preparing the
frames that arrive while the scoring thread is busy), ``Runner.score_frame`` (the one
preprocessing definition, the ONNX model at 1 thread), the record to a JSON-lines file and to
the sinks.

Part 1, latency: the camera free-runs at ``--latency-fps`` (default 10 fps, well below what the PC
can score, as on a triggered line), into an OPC UA server and a Modbus TCP server sink at once
(in the line's process, as the runtime runs them by default; ``--servers process``: each in a
process of its own).
Two separate processes stand in for PLCs: one reads ``Inspection/Counter/Total`` over OPC UA,
the other registers 2-3 over Modbus, every ``--poll-ms`` (default 1 ms) plus the read itself.
Latency per part = the first read that shows the part's counter minus the moment the camera
driver handed the frame over (harvesters' ``try_fetch`` returned it; ``perf_counter`` is
CLOCK_MONOTONIC, shared by the processes). Also timed where each server runs: the moment it held
the value. Against bare ``LineModel.classify`` (preprocess + ONNX) of the camera's own frames,
before and after, and against each part's own inference time (its record's ``latency_ms``).

Part 2, throughput: the camera free-runs at 200 fps (the PC is the bottleneck); blocks of 20
frames of bare ``classify`` alternate with blocks of 20 frames through the whole line (sinks
on, nobody polling), so the load of a shared machine hits both alike. Frames/s and the
process's CPU time per frame (``time.process_time``: all its threads, the simulated camera's
included; not the servers' own processes) for each.

Part 3, soak: N frames from the camera at ``--soak-fps`` into a Modbus *client* sink that writes
into a PLC stand-in (a Modbus TCP server that records every write) which drops all
connections and refuses new ones for ``--drop-for-s`` seconds every ``--drop-every-s``
seconds. Checked: every camera frame id read has its record, every record's counter reached
the PLC or is counted dropped by the sink's bounded queue; RSS at start and end. Torch never
enters this process (the model is exported in a child process), so RSS is the line's.

    python benchmarks/line_e2e.py --quick                  # 200 + 200 frames, soak 300 (~2 min)
    python benchmarks/line_e2e.py                          # 1000 + 1000 frames, soak 3000
    python benchmarks/line_e2e.py --soak-only --soak-frames 5400 --soak-fps 3   # 30 min soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import genicam
import numpy as np

from defectssft_line.placement import Placement, scoring_cpu

CTI = str(Path(genicam.__file__).parent / "viky.cti")
RESULTS = Path(__file__).resolve().parent / "results"
WARMUP = 20  # first parts of the latency phase not timed (the camera's backlog, warm caches)
BLOCK = 20  # frames per block in the interleaved throughput phase
STANDINS_PINNED = True  # --standins: the stand-in PLCs on the CPUs the line leaves free
SERVERS = "thread"  # --servers: where the OPC UA / Modbus servers run (as the runtime)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def stats(v: list[float]) -> dict[str, float]:
    return {"median": pct(v, 50), "p99": pct(v, 99), "n": len(v)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- PLC stand-ins


def pin_self(cpus: list[int] | None) -> None:
    """A stand-in for another machine runs on the CPUs the line leaves free of scoring, in a
    session of its own: with the kernel's autogroup scheduling a session shares the CPUs
    fairly with the others, so it does not count against the line's share."""
    with contextlib.suppress(OSError):
        os.setsid()
    if cpus:
        os.sched_setaffinity(0, set(cpus))


def paused(gate: Any) -> bool:
    """A stand-in's or the control's gate (``--paired``): polling while ``gate[0]`` is 1;
    while it is 0, the stand-in sleeps (it polls nothing, as if the PLC were off)."""
    if gate is None or gate[0] == 1:
        return False
    time.sleep(0.005)
    return True


def poll_counter(
    read: Any, n: int, poll_s: float, gate: Any = None
) -> dict[int, tuple[float, float]]:
    """A stand-in's loop: ``read()`` (the line's part counter) every ``poll_s`` until it shows
    ``n`` (or 900 s, or ``gate[1]`` is 1), polling only while ``paused`` says so; {counter:
    (the first read showing it returned, the read before it started)}."""
    seen: dict[int, tuple[float, float]] = {}
    deadline, last, prev_start = time.monotonic() + 900, 0, time.perf_counter()
    while last < n and time.monotonic() < deadline:
        if gate is not None and gate[1] == 1:
            break
        if paused(gate):
            continue
        start = time.perf_counter()
        v = read()
        if v > last:
            seen[v] = (time.perf_counter(), prev_start)
            last = v
        prev_start = start
        time.sleep(poll_s)
    return seen


def poll_opcua(
    url: str,
    n: int,
    poll_s: float,
    out: Any,
    ready: Any,
    cpus: list[int] | None = None,
    gate: Any = None,
) -> None:
    """Read Counter/Total every poll_s; {counter: (first read showing it returned, the read
    before it started)}. With ``gate`` (a shared array: [poll?, stop?]) until gate[1] is 1,
    polling only while gate[0] is 1."""
    pin_self(cpus)
    from asyncua.sync import Client

    client = Client(url, timeout=10)
    client.connect()
    idx = client.get_namespace_index("urn:defectssft:line")
    total = client.nodes.objects.get_child([f"{idx}:Inspection", f"{idx}:Counter", f"{idx}:Total"])
    ready.set()
    seen = poll_counter(lambda: int(total.read_value()), n, poll_s, gate)
    client.disconnect()
    seen[0] = (time.process_time(), 0.0)  # the stand-in's own CPU time
    out.put(seen)


def poll_modbus(
    port: int,
    n: int,
    poll_s: float,
    out: Any,
    ready: Any,
    cpus: list[int] | None = None,
    gate: Any = None,
) -> None:
    """As poll_opcua, over Modbus (holding registers 2-3: the counter)."""
    pin_self(cpus)
    from pymodbus.client import ModbusTcpClient

    mb = ModbusTcpClient("127.0.0.1", port=port, timeout=10)
    mb.connect()
    ready.set()

    def counter() -> int:
        r = mb.read_holding_registers(2, count=2).registers
        return r[0] | (r[1] << 16)

    seen = poll_counter(counter, n, poll_s, gate)
    mb.close()
    seen[0] = (time.process_time(), 0.0)
    out.put(seen)


def busy_control(gate: Any, cpus: list[int] | None) -> None:
    """The paired protocol's control: a process of its own (its own GIL, nothing of the line)
    that keeps the CPUs the line leaves free of scoring busy with Python while ``gate[0]`` is
    1, until ``gate[1]`` is 1. If bare classify on the scoring CPU slows while it runs, the
    other CPU's load alone slows the model (the host shares more than the VM shows)."""
    pin_self(cpus)
    while gate[1] != 1:
        if paused(gate):
            continue
        x = 0
        for _ in range(20_000):  # ~1 ms of the interpreter's own work
            x += 1


class RecordingPlc:
    """A PLC stand-in for the soak: a minimal Modbus TCP server (function codes 3, 5, 6, 15,
    16) that records every result write (holding registers from 0: counter in 2-3, frame id
    low word in 5). ``drop(s)`` closes every connection and refuses new ones for s seconds."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[int, int]] = []  # (counter, frame id low word), in order
        self.connections = 0
        self.drops = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None
        self._writers: set[asyncio.StreamWriter] = set()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def start(self) -> RecordingPlc:
        self._thread.start()
        self._call(self._listen())
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        regs = [0] * 64
        try:
            while True:
                tid, _pid, length, uid = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                fc = pdu[0]
                if fc == 16:
                    addr, qty = struct.unpack(">HH", pdu[1:5])
                    vals = struct.unpack(f">{qty}H", pdu[6 : 6 + 2 * qty])
                    regs[addr : addr + qty] = vals
                    if addr == 0 and qty >= 6:  # a result (a heartbeat writes from 7)
                        self.received.append((vals[2] | (vals[3] << 16), vals[5]))
                    resp = struct.pack(">BHH", 16, addr, qty)
                elif fc in (5, 6):
                    resp = pdu[:5]
                elif fc == 15:
                    resp = pdu[:5]
                elif fc == 3:
                    addr, qty = struct.unpack(">HH", pdu[1:5])
                    resp = struct.pack(f">BB{qty}H", 3, 2 * qty, *regs[addr : addr + qty])
                else:
                    resp = struct.pack(">BB", fc | 0x80, 1)
                writer.write(struct.pack(">HHHB", tid, 0, len(resp) + 1, uid) + resp)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _drop(self) -> None:
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    def drop(self, seconds: float) -> None:
        """The PLC goes away (cable, reboot) and comes back after ``seconds``."""
        self.drops += 1
        self._call(self._drop())
        time.sleep(seconds)
        self._call(self._listen())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._drop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


# --------------------------------------------------------------------------- the line


def make_runner(
    model_path: Path, outputs: Any, out_file: Path, placement: Any = None
) -> tuple[Any, Any]:
    from defectssft_line.cli import Runner
    from defectssft_line.hotswap import ModelHolder
    from defectssft_line.model import LineModel
    from defectssft_line.output import ResultWriter

    holder = ModelHolder(model_path, lambda p: LineModel.load(p, threads=1), poll_s=3600)
    writer = ResultWriter("jsonl", out_file)
    runner = Runner(holder, writer, None, outputs)
    runner.placement = placement  # as ``defectssft-line run --scoring-cpu``
    return runner, writer


def camera(
    fps: float, stamps: dict[int, float] | None = None, requeue_ms: list[float] | None = None
) -> tuple[Any, Any]:
    """(opener, stream) of the simulated camera free-running at ``fps``; with ``stamps``,
    the moment the driver handed each frame over, by frame id; with ``requeue_ms``, how long
    each hand-back of a buffer to the producer took (the simulated producer draws the next
    image there, holding the GIL)."""
    from defectssft_line.camera import CameraStream
    from defectssft_line.genicam import CameraSettings, GenICamOpener

    opener = GenICamOpener(CTI, CameraSettings(nodes={"AcquisitionFrameRate": float(fps)}))
    cap = opener.preflight("genicam://0")  # a bad setting is an error here, not a reconnect
    if stamps is not None:
        fetch = cap.ia.try_fetch

        def timed_fetch(*a: Any, **k: Any) -> Any:
            buffer = fetch(*a, **k)
            if buffer is not None:
                stamps[int(buffer.frame_id)] = time.perf_counter()
            return buffer

        cap.ia.try_fetch = timed_fetch
    if requeue_ms is not None:
        from harvesters.core import Buffer

        queue = Buffer.queue

        def timed_queue(buffer: Any) -> None:
            t0 = time.perf_counter()
            queue(buffer)
            requeue_ms.append((time.perf_counter() - t0) * 1000)

        timed_queue.__wrapped__ = queue  # type: ignore[attr-defined]

        Buffer.queue = timed_queue  # until untime_requeue()
    return opener, CameraStream("genicam://0", opener=opener, log=lambda m: None)


def untime_requeue() -> None:
    from harvesters.core import Buffer

    Buffer.queue = getattr(Buffer.queue, "__wrapped__", Buffer.queue)


def prefetcher(opener: Any, stream: Any, limit: int = 0, runner: Any = None) -> Any:
    """The read-ahead exactly as ``defectssft-line run --camera`` sets it up for ``runner``
    (``cli.read_ahead``); without one, frames only (``grab``)."""
    from defectssft_line.cli import read_ahead
    from defectssft_line.prefetch import FramePrefetcher

    if runner is not None:
        return read_ahead(runner, stream, lambda: opener.last_meta, limit, opener.stop).start()
    return FramePrefetcher(
        stream, lambda: opener.last_meta, limit=limit, on_stop=opener.stop
    ).start()


def server_sinks(
    placement: Any = None,
) -> tuple[int, int, dict[int, float], dict[int, float], Any]:
    """The line's two server sinks, started as the runtime starts them (``SERVERS``: in
    processes of their own, or in this one): an OPC UA and a Modbus TCP server on free ports,
    each noting when it held each part's values (``trace_held``; a server in its own process
    hands its notes over when it closes), behind ``LineOutputs``; their processes' threads
    placed with the line's other threads, as ``defectssft-line run`` does.
    Returns (OPC UA port, Modbus port, held OPC UA, held Modbus, outputs)."""
    from defectssft_line.lineio import LineOutputs
    from defectssft_line.sinks import build_sinks
    from defectssft_line.sinks.process import trace_held

    opc_port, mb_port = free_port(), free_port()
    config = {
        "opcua_server": {"port": opc_port},
        "modbus_server": {"port": mb_port},
        "servers": SERVERS,
        "trace_held": True,
    }
    opc, mbs = build_sinks(config, log=lambda m: None)
    held_opc: dict[int, float] = getattr(opc, "held", {})
    held_mb: dict[int, float] = getattr(mbs, "held", {})
    if SERVERS == "thread":
        trace_held(opc, held_opc)
        trace_held(mbs, held_mb)
    outputs = LineOutputs([opc, mbs], part_id="counter", classes=["ok", "ng"], log=lambda m: None)
    outputs.start()
    if placement is not None:
        placement.extra_tasks = outputs.process_tasks
    return opc_port, mb_port, held_opc, held_mb, outputs


def schedstat() -> tuple[float, float]:
    """(ms on a CPU, ms waiting in a run queue) of the calling thread so far (Linux). On a CPU
    is the thread's CPU clock (``time.thread_time``, brought up to date when read), not
    schedstat's first field: the kernel updates that one only at a tick (4 ms at HZ=250) or a
    switch, so for a running thread it lags by up to a tick (it read 0.02 ms for a 1 ms
    ``prepare``). The run-queue wait is schedstat's second field, complete once the thread
    runs (it is added when a wait ends)."""
    on = time.thread_time() * 1000
    try:
        with open("/proc/thread-self/schedstat") as f:
            queued = f.read().split()[1]
        return on, int(queued) / 1e6
    except OSError:
        return on, float("nan")


class Split:
    """Where the scoring thread's time per part goes: on a CPU, waiting for a CPU (run
    queue), and asleep, which for a part being scored is waiting for the GIL."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, float]] = []

    def __enter__(self) -> Split:
        self._t = time.perf_counter()
        self._s = schedstat()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = (time.perf_counter() - self._t) * 1000
        on, queued = (b - a for a, b in zip(self._s, schedstat(), strict=True))
        self.rows.append((on, queued, wall - on - queued))

    def medians(self, skip_warmup: bool = True) -> dict[str, float]:
        warm = skip_warmup and len(self.rows) > 2 * WARMUP
        a = np.asarray(self.rows[WARMUP:] if warm else self.rows)
        keys = ("on_cpu_ms", "run_queue_ms", "asleep_gil_ms")
        return {k: float(np.median(a[:, i])) for i, k in enumerate(keys)} if len(a) else {}


def thread_cpus() -> dict[str, list[int]]:
    """The CPUs each thread of this process may run on, by name (native threads by id)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, list[int]] = {}
    for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
        with contextlib.suppress(OSError):
            out[f"{names.get(tid, 'native')} {tid}"] = sorted(os.sched_getaffinity(tid))
    return out


def thread_cpu_ms() -> dict[str, float]:
    """ms on a CPU so far of each thread of this process, by name and id (Linux schedstat;
    native threads by their ``comm`` name)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                on = int(f.read().split()[0]) / 1e6
            name = names.get(tid)
            if name is None:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    name = f"native:{f.read().strip()}"
            out[f"{name} {tid}"] = on
    return out


def per_part(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """CPU ms per part of each thread between two ``thread_cpu_ms`` (busiest first)."""
    d = {k: (v - before.get(k, 0.0)) / max(1, n) for k, v in after.items()}
    return dict(sorted(((k, round(v, 3)) for k, v in d.items() if v > 0), key=lambda kv: -kv[1]))


def bare_run(
    model: Any, frames: list[np.ndarray], n: int, split: Split | None = None
) -> tuple[list[float], float, float]:
    """(ms per classify, frames/s, process CPU ms per frame) of bare classify, on the calling
    thread (pinned to the scoring CPU when the placement is on, as the line's)."""
    times = []
    c0, t_start = time.process_time(), time.perf_counter()
    split = split or Split()
    for i in range(n):
        t0 = time.perf_counter()
        with split:
            model.classify([frames[i % len(frames)]])
        times.append((time.perf_counter() - t0) * 1000)
    wall = time.perf_counter() - t_start
    return times, n / wall, (time.process_time() - c0) * 1000 / n


def grab(n: int) -> list[np.ndarray]:
    opener, stream = camera(200.0)
    p = prefetcher(opener, stream, limit=n)
    frames = [f.image for f in p]
    p.close()
    return frames


def part_latency(
    model_path: Path, frames: int, fps: float, poll_s: float, work: Path, placement: Any
) -> dict:
    from defectssft_line.model import LineModel
    from defectssft_line.sinks.opcua import endpoint_url

    grabbed = grab(50)
    model = LineModel.load(model_path, threads=1)
    placement.apply()  # this thread scores, bare and in the line alike
    for f in grabbed[:10]:
        model.classify([f])
    load_start = load()
    split_bare, split_line = Split(), Split()
    bare, rate_before, cpu_before = bare_run(model, grabbed, frames // 2, split_bare)

    opc_port, mb_port, held_opc, held_mb, outputs = server_sinks(placement)
    t_publish: dict[int, float] = {}
    handle = outputs.handle

    def timed_handle(rec: dict[str, Any], **kw: Any) -> dict[str, Any]:
        t_publish[outputs.counter + 1] = time.perf_counter()
        return handle(rec, **kw)

    outputs.handle = timed_handle
    runner, writer = make_runner(model_path, outputs, work / "e2e.jsonl", placement)
    n_parts = frames + WARMUP
    ctx = mp.get_context("spawn")
    q_opc, q_mb, r_opc, r_mb = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    url = endpoint_url("127.0.0.1", opc_port)
    free = (sorted(placement.others) or None) if STANDINS_PINNED else None  # other machines
    procs = [
        ctx.Process(target=poll_opcua, args=(url, n_parts, poll_s, q_opc, r_opc, free)),
        ctx.Process(target=poll_modbus, args=(mb_port, n_parts, poll_s, q_mb, r_mb, free)),
    ]
    for p in procs:
        p.start()
    r_opc.wait(60)
    r_mb.wait(60)
    stamps: dict[int, float] = {}
    requeue_ms: list[float] = []
    opener, stream = camera(fps, stamps, requeue_ms)
    p = prefetcher(opener, stream, limit=n_parts, runner=runner)
    c0, w0, th0 = time.process_time(), time.perf_counter(), time.thread_time()
    threads: list[dict[str, float]] = []  # at parts WARMUP and n_parts - 2 (reader alive)
    n = 0
    t_read: dict[int, float] = {}
    t_score: dict[int, float] = {}
    t_prep: dict[int, float] = {}  # preprocessing on the read-ahead thread (own inference)
    for frame in p:
        n += 1
        t_read[n], t_score[n] = frame.t_read, time.perf_counter()
        t_prep[n] = frame.prepared.ms if frame.prepared is not None else 0.0
        with split_line:
            runner.score_frame(f"f{n}", frame.image, frame.meta, frame.prepared)
        if n in (WARMUP, n_parts - 2):
            threads.append(thread_cpu_ms())
    cpu_line = (time.process_time() - c0) * 1000 / n
    threads_line = per_part(*threads, n_parts - 2 - WARMUP) if len(threads) == 2 else {}
    thread_line = (time.thread_time() - th0) * 1000 / n
    placed = thread_cpus()  # while the line still runs
    placement_end = placement.summary()  # "given up" if the scoring CPU was busy
    wall = time.perf_counter() - w0
    p.close()
    untime_requeue()
    seen_opc, seen_mb = q_opc.get(timeout=120), q_mb.get(timeout=120)
    standin_cpu_s = [seen_opc.pop(0)[0], seen_mb.pop(0)[0]]
    for proc in procs:
        proc.join(30)
    outputs.close(timeout=2)
    writer.close()
    th0 = time.thread_time()
    bare_after, rate_after, cpu_after = bare_run(model, grabbed, frames // 2, split_bare)
    thread_bare = (time.thread_time() - th0) * 1000 / (frames // 2)
    bare += bare_after
    load_end = load()
    placement.release()

    recs = [json.loads(line) for line in (work / "e2e.jsonl").read_text().splitlines()]
    # counter k is the k-th record; time from the driver's hand-over of that record's frame
    t_frame = {k: stamps[r["frame_id"]] for k, r in enumerate(recs, 1) if k > WARMUP}
    infer = {k: recs[k - 1]["latency_ms"] for k in t_frame}

    def since_frame(d: dict[int, Any], first: bool = True) -> list[float]:
        return [((d[k][0] if first else d[k]) - t_frame[k]) * 1000 for k in t_frame if k in d]

    lat = {
        "opcua_seen_ms": since_frame(seen_opc),
        "modbus_seen_ms": since_frame(seen_mb),
        "opcua_held_ms": since_frame(held_opc, first=False),
        "modbus_held_ms": since_frame(held_mb, first=False),
    }

    # a part whose counter the poller never saw (two parts between two reads) is not timed
    def over_own(d: dict[int, Any], first: bool = True) -> list[float]:
        return [
            ((d[k][0] if first else d[k]) - t_frame[k]) * 1000 - infer[k] for k in t_frame if k in d
        ]

    over = {
        "opcua_seen_over_own_ms": over_own(seen_opc),
        "modbus_seen_over_own_ms": over_own(seen_mb),
        "opcua_held_over_own_ms": over_own(held_opc, first=False),
        "modbus_held_over_own_ms": over_own(held_mb, first=False),
    }
    ids = [r["frame_id"] for r in recs]
    ms = 1000.0
    # where the time over the part's own inference goes (medians; the counter k is part k)
    stages = {
        "driver_to_read_ahead_done": [(t_read[k] - t_frame[k]) * ms for k in t_frame],
        "of_which_preprocessing_ahead": [t_prep[k] for k in t_frame],
        "read_ahead_to_scoring": [(t_score[k] - t_read[k]) * ms for k in t_frame],
        "scoring_minus_inference_to_sinks": [
            (t_publish[k] - t_score[k]) * ms - (infer[k] - t_prep[k]) for k in t_frame
        ],
        "sinks_to_opcua_held": [
            (held_opc[k] - t_publish[k]) * ms for k in t_frame if k in held_opc
        ],
        "sinks_to_modbus_held": [(held_mb[k] - t_publish[k]) * ms for k in t_frame if k in held_mb],
        "opcua_held_to_seen": [
            (seen_opc[k][0] - held_opc[k]) * ms for k in t_frame if k in seen_opc and k in held_opc
        ],
        "modbus_held_to_seen": [
            (seen_mb[k][0] - held_mb[k]) * ms for k in t_frame if k in seen_mb and k in held_mb
        ],
    }
    stages["of_which_simulated_camera_requeue"] = requeue_ms[WARMUP:]
    return {
        "frames": frames,
        "camera_fps": fps,
        "stages_ms": {k: stats(v) for k, v in stages.items()},
        "poll_ms": poll_s * 1000,
        "load_start_end": [load_start, load_end],
        "bare_ms": stats(bare),
        "bare_rate_fps_before_after": [rate_before, rate_after],
        "bare_cpu_ms_per_frame": (cpu_before + cpu_after) / 2,
        "inference_in_run_ms": stats(list(infer.values())),
        **{k: stats(v) for k, v in {**lat, **over}.items()},
        "line_cpu_ms_per_frame": cpu_line,
        "scoring_thread_cpu_ms_per_frame_line_bare": [thread_line, thread_bare],
        "thread_cpus": placed,
        "thread_cpu_ms_per_part": threads_line,
        "placement_at_end": placement_end,
        "scoring_thread_per_part_bare": split_bare.medians(),
        "scoring_thread_per_part_line": split_line.medians(),
        "standin_cpu_share_opcua_modbus": [c / wall for c in standin_cpu_s],
        "line_wall_s": wall,
        "records": len(recs),
        "frame_ids_in_order": ids == sorted(ids) and len(set(ids)) == len(ids),
    }


def throughput(model_path: Path, frames: int, work: Path, placement: Any) -> dict:
    from defectssft_line.model import LineModel

    grabbed = grab(50)
    model = LineModel.load(model_path, threads=1)
    *_, outputs = server_sinks(placement)
    runner, writer = make_runner(model_path, outputs, work / "tp.jsonl", placement)
    placement.apply()
    opener, stream = camera(200.0)
    p = prefetcher(opener, stream, runner=runner)
    it = iter(p)
    for i in range(10):  # warm-up
        model.classify([grabbed[i]])
        frame = next(it)
        runner.score_frame(f"w{i}", frame.image, {}, frame.prepared)
    load_start = load()
    t_bare = t_line = c_bare = c_line = 0.0
    n_bare = n_line = 0
    threads_line: dict[str, float] = {}  # CPU ms of each thread in the line's blocks
    for r in range(max(1, frames // (2 * BLOCK))):
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(BLOCK):
            model.classify([grabbed[(r * BLOCK + i) % len(grabbed)]])
        t_bare += time.perf_counter() - t0
        c_bare += time.process_time() - c0
        n_bare += BLOCK
        threads0 = thread_cpu_ms()  # outside the timed block
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(BLOCK):
            frame = next(it)
            runner.score_frame(f"q{r}-{i}", frame.image, frame.meta, frame.prepared)
        t_line += time.perf_counter() - t0
        c_line += time.process_time() - c0
        n_line += BLOCK
        for k, v in per_part(threads0, thread_cpu_ms(), 1).items():
            threads_line[k] = threads_line.get(k, 0.0) + v
    p.close()
    outputs.close(timeout=2)
    writer.close()
    placement.release()
    return {
        "frames_each": n_bare,
        "load_start_end": [load_start, load()],
        "bare_fps": n_bare / t_bare,
        "line_fps": n_line / t_line,
        "ratio": (n_line / t_line) / (n_bare / t_bare),
        "bare_cpu_ms_per_frame": c_bare * 1000 / n_bare,
        "line_cpu_ms_per_frame": c_line * 1000 / n_line,
        "line_thread_cpu_ms_per_frame": per_part({}, threads_line, n_line),
    }


class ModelSplit:
    """The split (``Split``) of the part's own inference alone, on the scoring thread: from
    the start of ``LineModel.prepare`` (when the scoring thread prepares the frame) to the end
    of ``classify_inputs`` (ONNX and the decision), bare and in the line alike, in two parts:
    the preparation and the model. Wraps the methods of one ``LineModel`` instance."""

    def __init__(self, model: Any) -> None:
        self.thread = threading.get_ident()
        self.cur: dict[str, list[float]] = {}
        prepare, classify_inputs = model.prepare, model.classify_inputs

        def timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*a: Any, **k: Any) -> Any:
                if threading.get_ident() != self.thread:  # prepared ahead by the reader
                    return fn(*a, **k)
                t0, s0 = time.perf_counter(), schedstat()
                try:
                    return fn(*a, **k)
                finally:
                    wall = (time.perf_counter() - t0) * 1000
                    on, queued = (b - a for a, b in zip(s0, schedstat(), strict=True))
                    self.cur[key] = [wall, on, queued, wall - on - queued]

            return call

        model.prepare = timed("prepare", prepare)
        model.classify_inputs = timed("model", classify_inputs)

    def take(self) -> dict[str, list[float]]:
        """The last part's split: {"prepare"|"model": [wall, on a CPU, run queue, asleep]}."""
        cur, self.cur = self.cur, {}
        return cur


SPLIT_KEYS = ("wall_ms", "on_cpu_ms", "run_queue_ms", "asleep_ms")
BARE_KINDS = "CPK"  # paired blocks of bare classify (the others run the whole line)


def split_medians(rows: list[dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in ("prepare", "model"):
        a = np.asarray([r[key] for r in rows if key in r])
        if len(a):
            out[key] = {k: round(float(np.median(a[:, i])), 3) for i, k in enumerate(SPLIT_KEYS)}
    return out


def own_totals(rows: list[dict[str, list[float]]]) -> dict[str, float]:
    """Medians over parts of the whole own inference's split (preparation + model)."""
    a = np.asarray([np.sum([r[k] for k in r], axis=0) for r in rows if r])
    return {k: round(float(np.median(a[:, i])), 3) for i, k in enumerate(SPLIT_KEYS)}


def med(v: list[float]) -> float:
    return float(np.median(v)) if v else float("nan")


def paired_latency(
    model_path: Path,
    rounds: int,
    block: int,
    fps: float,
    poll_s: float,
    work: Path,
    placement: Any,
    kinds: str = "LQCWPK",
    skip: int = 2,
) -> dict:
    """The paired protocol: short blocks, back to back, so that the host's drift (bare
    ``classify`` moved 13.6 -> 19.9 ms between runs on the idle VM) hits both sides of a pair
    alike. Blocks, each ``block`` parts at the camera's pace ``fps``:

    * B: bare ``classify`` of the camera's frames, nothing of the line running (camera
      closed, stand-ins paused, the servers idle): the model alone, at the line's pace;
    * L: the whole line (the camera opened, ``skip`` parts untimed, then ``block`` parts),
      the stand-ins polling every ``poll_s``;
    * Q: the whole line with the stand-ins paused (nobody reads the servers): L against Q is
      what answering the polls costs the part;
    * C: bare ``classify`` while a separate busy Python process (its own GIL, nothing of the
      line) runs on the CPUs the line leaves free of scoring: the other CPU's load alone;
    * W: as L, with the runtime's ``--keep-warm`` spinner on the scoring CPU (a lever);
    * P: bare ``classify`` back to back (no pause between parts: what the old protocol's
      bare phases measured);
    * K: bare ``classify`` at the camera's pace with the ``--keep-warm`` spinner.

    A round is each of ``kinds`` followed by a B; one B starts. Each non-B block is paired
    with the mean of the medians of the B blocks either side."""
    from defectssft_line.sinks.opcua import endpoint_url

    grabbed = grab(50)
    opc_port, mb_port, held_opc, held_mb, outputs = server_sinks(placement)
    runner, writer = make_runner(model_path, outputs, work / "paired.jsonl", placement)
    model = runner.holder.current()  # one ONNX session for bare and line parts alike
    placement.apply()  # this thread scores, bare and in the line alike
    msplit = ModelSplit(model)
    for f in grabbed[:10]:
        model.classify([f])
    msplit.take()
    ctx = mp.get_context("spawn")
    gate = ctx.RawArray("b", 2)  # [stand-ins poll?, stop?]
    busy = ctx.RawArray("b", 2)  # [control busy?, stop?]
    q_opc, q_mb, r_opc, r_mb = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    url = endpoint_url("127.0.0.1", opc_port)
    free = (sorted(placement.others) or None) if STANDINS_PINNED else None
    big = 10**9
    procs = [
        ctx.Process(target=poll_opcua, args=(url, big, poll_s, q_opc, r_opc, free, gate)),
        ctx.Process(target=poll_modbus, args=(mb_port, big, poll_s, q_mb, r_mb, free, gate)),
    ]
    if "C" in kinds:
        procs.append(ctx.Process(target=busy_control, args=(busy, free)))
    for proc in procs:
        proc.start()
    r_opc.wait(60)
    r_mb.wait(60)
    period = 1.0 / fps
    load_start = load()

    def bare_block(paced: bool = True) -> dict[str, Any]:
        times, splits = [], []
        tick = time.perf_counter()
        for i in range(block):
            tick += period
            if paced:
                time.sleep(max(0.0, tick - time.perf_counter()))
            t0 = time.perf_counter()
            model.classify([grabbed[i % len(grabbed)]])
            times.append((time.perf_counter() - t0) * 1000)
            splits.append(msplit.take())
        return {
            "kind": "B",
            "classify_ms": med(times),
            "split": split_medians(splits),
            "own": own_totals(splits),
        }

    def control_block() -> dict[str, Any]:
        busy[0] = 1
        time.sleep(0.2)
        try:
            out = bare_block()
        finally:
            busy[0] = 0
        out["kind"] = "C"
        return out

    warm_cpu = placement.scoring  # W, K blocks: the runtime's --keep-warm on this CPU
    if ("W" in kinds or "K" in kinds) and warm_cpu is None:
        print("paired protocol: no scoring CPU (--scoring-cpu), so no W or K blocks")
        kinds = kinds.replace("W", "").replace("K", "")

    def warm_bare_block() -> dict[str, Any]:
        from defectssft_line.keepwarm import KeepWarm

        spinner = KeepWarm(warm_cpu, log=lambda m: None)  # type: ignore[arg-type]
        if spinner.start():
            time.sleep(0.2)
        try:
            out = bare_block()
        finally:
            spinner.stop()
        out["kind"] = "K"
        return out

    def back_to_back_block() -> dict[str, Any]:
        out = bare_block(paced=False)
        out["kind"] = "P"
        return out

    def line_block(polled: bool = True, warm: bool = False) -> dict[str, Any]:
        from defectssft_line.keepwarm import KeepWarm

        stamps: dict[int, float] = {}
        gate[0] = 1 if polled else 0
        spinner = KeepWarm(warm_cpu, log=lambda m: None) if warm and warm_cpu is not None else None
        if spinner is not None and spinner.start():
            time.sleep(0.2)  # the spinner's interpreter has started
        opener, stream = camera(fps, stamps)
        p = prefetcher(opener, stream, limit=skip + block, runner=runner)
        rows: list[tuple[int, float, float]] = []  # (counter, frame stamp, own inference)
        splits = []
        path = Split()  # the whole scoring step: inference, record, sinks
        n = 0
        for frame in p:
            n += 1
            with path:
                rec = runner.score_frame(
                    f"r{outputs.counter + 1}", frame.image, frame.meta, frame.prepared
                )
            sp = msplit.take()
            if n <= skip:
                path.rows.pop()
            elif "frame_id" in rec:
                rows.append((outputs.counter, stamps[rec["frame_id"]], rec["latency_ms"]))
                splits.append(sp)
        p.close()
        time.sleep(0.05)  # the stand-ins read the last part
        gate[0] = 0
        if spinner is not None:
            spinner.stop()
        return {
            "kind": "W" if warm else "L" if polled else "Q",
            "rows": rows,
            "split": split_medians(splits),
            "own": own_totals(splits),
            "path": {k: round(v, 3) for k, v in path.medians(skip_warmup=False).items()},
        }

    seq: list[dict[str, Any]] = [bare_block()]
    blocks = {
        "L": line_block,
        "Q": lambda: line_block(polled=False),
        "W": lambda: line_block(warm=True),
        "C": control_block,
        "P": back_to_back_block,
        "K": warm_bare_block,
    }
    for _ in range(rounds):
        for kind in kinds:
            seq.append(blocks[kind]())
            seq.append(bare_block())
    gate[1] = busy[1] = 1
    seen_opc, seen_mb = q_opc.get(timeout=120), q_mb.get(timeout=120)
    seen_opc.pop(0)
    seen_mb.pop(0)
    for proc in procs:
        proc.join(30)
    outputs.close(timeout=2)
    writer.close()
    load_end = load()
    placement.release()

    ms = 1000.0
    pairs: list[dict[str, Any]] = []
    pooled: dict[str, list[float]] = {
        "opcua_seen": [],
        "modbus_seen": [],
        "opcua_held": [],
        "modbus_held": [],
    }  # the L blocks' parts
    for i, b in enumerate(seq):
        if b["kind"] == "B":
            continue
        ref = (seq[i - 1]["classify_ms"] + seq[i + 1]["classify_ms"]) / 2
        pair: dict[str, Any] = {"kind": b["kind"], "bare_ms": round(ref, 3), "split": b["split"]}
        pair["bare_split"] = seq[i - 1]["split"]
        # where the part's own inference time goes, this block against the B blocks around
        pair["own_split"] = b["own"]
        pair["bare_own_split"] = {
            k: (seq[i - 1]["own"][k] + seq[i + 1]["own"][k]) / 2 for k in SPLIT_KEYS
        }
        pair["on_cpu_over_bare"] = b["own"]["on_cpu_ms"] / pair["bare_own_split"]["on_cpu_ms"] - 1
        for k in ("run_queue_ms", "asleep_ms"):
            pair[f"{k}_over_bare"] = b["own"][k] - pair["bare_own_split"][k]
        if b["kind"] in BARE_KINDS:
            pair["classify_ms"] = round(b["classify_ms"], 3)
            pair["classify_over_bare"] = b["classify_ms"] / ref - 1
        else:
            pair["path_split"] = b["path"]
            own = [r[2] for r in b["rows"]]
            pair["own_ms"] = round(med(own), 3)
            pair["own_over_bare"] = med(own) / ref - 1
            for name, d, first in (
                ("opcua_held", held_opc, False),
                ("modbus_held", held_mb, False),
                *(
                    (("opcua_seen", seen_opc, True), ("modbus_seen", seen_mb, True))
                    if b["kind"] in "LW"
                    else ()
                ),
            ):
                v = [((d[k][0] if first else d[k]) - t) * ms for k, t, _ in b["rows"] if k in d]
                if b["kind"] == "L":
                    pooled[name] += v
                pair[f"{name}_by_part_ms"] = [round(x, 2) for x in v]  # where a tail falls
                pair[f"{name}_ms"] = round(med(v), 3)
                pair[f"{name}_over_bare"] = med(v) / ref - 1
                pair[f"{name}_over_own"] = med(v) / med(own) - 1
            del b["rows"]
        pairs.append(pair)

    def paired(kind: str, key: str) -> float:
        return med([p[key] for p in pairs if p["kind"] == kind and key in p])

    summary = {
        k: paired("L", k)
        for k in (
            "own_over_bare",
            "opcua_held_over_bare",
            "modbus_held_over_bare",
            "opcua_seen_over_bare",
            "modbus_seen_over_bare",
            "opcua_held_over_own",
            "modbus_held_over_own",
            "opcua_seen_over_own",
            "modbus_seen_over_own",
        )
    }
    for kind in kinds:
        for k in ("on_cpu_over_bare", "run_queue_ms_over_bare", "asleep_ms_over_bare"):
            summary[f"{kind}_{k}"] = paired(kind, k)
        if kind in "QW":
            for k in ("own_over_bare", "opcua_held_over_bare", "modbus_held_over_bare"):
                summary[f"{kind}_{k}"] = paired(kind, k)
        if kind not in BARE_KINDS:
            for k in ("asleep_ms", "run_queue_ms", "on_cpu_ms"):
                summary[f"{kind}_path_{k}"] = med(
                    [
                        p["path_split"][k.replace("asleep_ms", "asleep_gil_ms")]
                        for p in pairs
                        if p["kind"] == kind
                    ]
                )
        else:
            summary[f"{kind}_classify_over_bare"] = paired(kind, "classify_over_bare")
    return {
        "rounds": rounds,
        "block": block,
        "skip": skip,
        "camera_fps": fps,
        "poll_ms": poll_s * 1000,
        "kinds": kinds,
        "load_start_end": [load_start, load_end],
        "pairs": pairs,
        "median_of_paired": summary,
        "seen_p99_over_median": {
            k: pct(v, 99) / pct(v, 50) if v else float("nan")
            for k, v in pooled.items()
            if k.endswith("seen")
        },
        "held_p99_over_median": {
            k: pct(v, 99) / pct(v, 50) if v else float("nan")
            for k, v in pooled.items()
            if k.endswith("held")
        },
    }


def soak(
    model_path: Path,
    frames: int,
    fps: float,
    drop_every_s: float,
    drop_for_s: float,
    queue: int,
    work: Path,
    progress: Callable[[str], None] = print,
) -> dict:
    from defectssft_line.lineio import LineOutputs
    from defectssft_line.sinks.modbus import ModbusClientSink

    port = free_port()
    plc = RecordingPlc(port).start()
    sink = ModbusClientSink(
        "127.0.0.1", port=port, queue_size=queue, log=lambda m: None, timeout=2.0
    )
    outputs = LineOutputs([sink], part_id="counter", classes=["ok", "ng"], log=lambda m: None)
    outputs.start()
    runner, writer = make_runner(model_path, outputs, work / "soak.jsonl")
    opener, stream = camera(fps)
    stop = threading.Event()

    def dropper() -> None:
        while not stop.wait(drop_every_s):
            plc.drop(drop_for_s)

    threading.Thread(target=dropper, daemon=True).start()
    rss: list[tuple[int, float]] = []
    p = prefetcher(opener, stream, limit=frames, runner=runner)
    c0, t_start = time.process_time(), time.perf_counter()
    n = 0
    for frame in p:
        n += 1
        runner.score_frame(f"s{n}", frame.image, frame.meta, frame.prepared)
        # RSS while the camera is open (the reader ends a frame or two before the last)
        if n == 20 or (n % max(1, frames // 10) == 0 and n < frames - 5) or n == frames - 5:
            rss.append((n, round(rss_mb(), 1)))
            progress(
                f"soak: {n}/{frames} frames, RSS {rss[-1][1]} MB, sink sent {sink.sent} "
                f"dropped {sink.dropped} reconnects {sink.reconnects}, PLC drops {plc.drops}"
            )
    wall = time.perf_counter() - t_start
    cpu = time.process_time() - c0
    p.close()
    stop.set()
    sink.flush(30)  # the PLC may be away right now: what is queued goes once it is back
    outputs.close(timeout=10)
    writer.close()
    plc.close()
    recs = [json.loads(line) for line in (work / "soak.jsonl").read_text().splitlines()]
    ids = [r["frame_id"] for r in recs]
    counters = [c for c, _ in plc.received]
    got = set(counters)
    # the PLC saw counter k with the frame id of the k-th record
    mismatched = sum(1 for c, fid in plc.received if fid != ids[c - 1] & 0xFFFF)
    missing = [k for k in range(1, len(recs) + 1) if k not in got]
    return {
        "frames": frames,
        "camera_fps": fps,
        "frames_read": p.read,
        "records": len(recs),
        "camera_frame_ids_missed": int(
            sum(max(0, b - a - 1) for a, b in zip(ids, ids[1:], strict=False))
        ),
        "frame_ids_in_order": ids == sorted(ids) and len(set(ids)) == len(ids),
        "plc_drops": plc.drops,
        "plc_connections": plc.connections,
        "plc_results_received": len(counters),
        "plc_distinct_counters": len(got),
        "plc_duplicates": len(counters) - len(got),  # re-sent after a lost reply
        "plc_frame_id_mismatches": mismatched,
        "records_not_at_plc": len(missing),
        "sink_sent": sink.sent,
        "sink_dropped": sink.dropped,
        "sink_reconnects": sink.reconnects,
        "every_record_at_plc_or_counted_dropped": len(missing) == sink.dropped,
        "rss_mb": rss,  # (frames scored, MB) while the camera is open
        "rss_mb_start_end": [rss[0][1], rss[-1][1]],
        "wall_s": wall,
        "cpu_ms_per_frame": cpu * 1000 / max(1, n),
        "load_end": load(),
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Like benchmarks/common.py's, without importing torch into this process."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    body = {
        "benchmark": name,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **payload,
    }
    out.write_text(json.dumps(body, indent=2))
    return out


def report_paired(pl: dict) -> None:
    """The paired protocol's pairs and the medians of the paired differences."""
    names = {
        "L": "with the line",
        "Q": "with the line, nobody polling",
        "W": "with the line and --keep-warm",
        "C": "with the other CPUs busy",
        "P": "back to back (no pause between parts)",
        "K": "with --keep-warm",
    }
    order = " ".join(f"{k} B" for k in pl["kinds"])
    print(
        f"paired protocol: {pl['rounds']} rounds of {pl['block']} parts a block at "
        f"{pl['camera_fps']:g} fps (B {order}), load at start/end {pl['load_start_end']}"
    )
    for p in pl["pairs"]:
        o, b = p["own_split"], p["bare_own_split"]
        own = (
            f"own inference on a CPU {o['on_cpu_ms']:.2f} vs {b['on_cpu_ms']:.2f}, waiting "
            f"{o['run_queue_ms']:.2f} vs {b['run_queue_ms']:.2f}, asleep {o['asleep_ms']:.2f} "
            f"vs {b['asleep_ms']:.2f} ms"
        )
        if p["kind"] in BARE_KINDS:
            print(
                f"  {p['kind']}: bare {p['bare_ms']:.2f} ms, bare {names[p['kind']]} "
                f"{p['classify_ms']:.2f} ms ({100 * p['classify_over_bare']:+.1f} %); " + own
            )
            continue
        seen = (
            f", seen {p['opcua_seen_ms']:.2f} / {p['modbus_seen_ms']:.2f} ms"
            if p["kind"] in "LW"
            else ""
        )
        print(
            f"  {p['kind']}: bare {p['bare_ms']:.2f} ms, own {p['own_ms']:.2f} "
            f"({100 * p['own_over_bare']:+.1f} %), held {p['opcua_held_ms']:.2f} / "
            f"{p['modbus_held_ms']:.2f} ({100 * p['opcua_held_over_bare']:+.1f} / "
            f"{100 * p['modbus_held_over_bare']:+.1f} %){seen}; " + own
        )
    m = pl["median_of_paired"]
    for kind in pl["kinds"]:
        print(
            f"  own inference {names[kind]}, paired against bare (medians of the pairs): "
            f"on a CPU {100 * m[f'{kind}_on_cpu_over_bare']:+.1f} %, waiting for a CPU "
            f"{m[f'{kind}_run_queue_ms_over_bare']:+.2f} ms, asleep (the GIL) "
            f"{m[f'{kind}_asleep_ms_over_bare']:+.2f} ms"
        )
    for kind in (k for k in pl["kinds"] if k not in BARE_KINDS):
        print(
            f"  whole scoring step per part, {names[kind]} (medians): on a CPU "
            f"{m[f'{kind}_path_on_cpu_ms']:.2f} ms, waiting for a CPU "
            f"{m[f'{kind}_path_run_queue_ms']:.2f} ms, asleep (the GIL) "
            f"{m[f'{kind}_path_asleep_ms']:.2f} ms"
        )
    parts = [f"own inference over bare: line {100 * m['own_over_bare']:+.1f} %"]
    for kind in pl["kinds"]:
        if kind in "QW":
            parts.append(
                f"{names[kind].removeprefix('with the ')} {100 * m[f'{kind}_own_over_bare']:+.1f} % "
                f"(held {100 * m[f'{kind}_opcua_held_over_bare']:+.1f} / "
                f"{100 * m[f'{kind}_modbus_held_over_bare']:+.1f} % over bare)"
            )
    for kind in (k for k in pl["kinds"] if k in BARE_KINDS):
        parts.append(f"bare, {names[kind]} {100 * m[f'{kind}_classify_over_bare']:+.1f} %")
    print("  medians of the paired differences: " + ", ".join(parts))


def report(lat: dict, tp: dict) -> None:
    b = lat["bare_ms"]["median"]
    print(f"load (1/5/15 min) at start/end: {lat['load_start_end']} / {tp['load_start_end']}")
    print(f"placement at the end of the latency phase: {lat['placement_at_end']}")
    print(f"bare classify: median {b:.2f} ms, p99 {lat['bare_ms']['p99']:.2f} ms")
    print(f"inference in the run (records): median {lat['inference_in_run_ms']['median']:.2f} ms")
    for k in ("opcua_seen", "modbus_seen", "opcua_held", "modbus_held"):
        s = lat[f"{k}_ms"]
        print(
            f"frame -> {k.replace('_', ' ')}: median {s['median']:.2f} ms "
            f"(+{100 * (s['median'] / b - 1):.1f} % over bare), p99 {s['p99']:.2f} ms "
            f"({s['p99'] / s['median']:.2f} x median), n {s['n']}"
        )
    own = lat["inference_in_run_ms"]["median"]
    for k in ("opcua_seen", "modbus_seen", "opcua_held", "modbus_held"):
        s = lat[f"{k}_over_own_ms"]
        print(
            f"{k.replace('_', ' ')} minus the part's own inference: median {s['median']:.2f} ms "
            f"({100 * s['median'] / own:.1f} % of the median inference), p99 {s['p99']:.2f} ms"
        )
    print(
        "stages, median ms: "
        + ", ".join(f"{k} {v['median']:.2f}" for k, v in lat["stages_ms"].items())
    )
    print(
        f"CPU per frame (process): line {lat['line_cpu_ms_per_frame']:.2f} ms at "
        f"{lat['camera_fps']:g} fps while polled, bare {lat['bare_cpu_ms_per_frame']:.2f} ms"
    )
    th_line, th_bare = lat["scoring_thread_cpu_ms_per_frame_line_bare"]
    print(f"scoring thread CPU per frame: line {th_line:.2f} ms, bare {th_bare:.2f} ms")
    for k in ("bare", "line"):
        sp = lat[f"scoring_thread_per_part_{k}"]
        print(
            f"scoring thread per part, {k} (medians): on a CPU {sp['on_cpu_ms']:.2f} ms, "
            f"waiting for a CPU {sp['run_queue_ms']:.2f} ms, asleep (the GIL) "
            f"{sp['asleep_gil_ms']:.2f} ms"
        )
    busiest = list(lat["thread_cpu_ms_per_part"].items())[:6]
    print(
        "CPU ms per part by thread, while polled: "
        + ", ".join(f"{k.rsplit(' ', 1)[0]} {v:.2f}" for k, v in busiest)
    )
    so, sm = lat["standin_cpu_share_opcua_modbus"]
    print(
        f"process CPU while polled: line {lat['line_cpu_ms_per_frame'] / (1000 / lat['camera_fps']):.0%}"
        f" of a CPU; stand-ins OPC UA {so:.0%}, Modbus {sm:.0%}"
    )
    print(
        f"throughput (interleaved blocks): bare {tp['bare_fps']:.1f} fps, line "
        f"{tp['line_fps']:.1f} fps = {tp['ratio']:.2f} x; CPU per frame bare "
        f"{tp['bare_cpu_ms_per_frame']:.2f} ms, line {tp['line_cpu_ms_per_frame']:.2f} ms"
    )
    busiest = list(tp["line_thread_cpu_ms_per_frame"].items())[:4]
    print(
        "throughput, line: CPU ms per frame by thread: "
        + ", ".join(f"{k.rsplit(' ', 1)[0]} {v:.2f}" for k, v in busiest)
    )
    print("aims (issue #18):")
    for k in ("held", "seen"):
        o, m = lat[f"opcua_{k}_ms"]["median"], lat[f"modbus_{k}_ms"]["median"]
        oo, mo = lat[f"opcua_{k}_over_own_ms"]["median"], lat[f"modbus_{k}_over_own_ms"]["median"]
        print(
            f"  frame -> value {k} (OPC UA / Modbus), added to the median: over bare "
            f"{100 * (o / b - 1):+.1f} / {100 * (m / b - 1):+.1f} %, over the part's own "
            f"inference {100 * oo / own:+.1f} / {100 * mo / own:+.1f} % (aim <= 10 %)"
        )
    ratios = [
        lat[f"{k}_ms"]["p99"] / lat[f"{k}_ms"]["median"] for k in ("opcua_seen", "modbus_seen")
    ]
    held = [lat[f"{k}_ms"]["p99"] / lat[f"{k}_ms"]["median"] for k in ("opcua_held", "modbus_held")]
    print(
        f"  p99 / median, frame -> held: {held[0]:.2f} / {held[1]:.2f}, frame -> seen: "
        f"{ratios[0]:.2f} / {ratios[1]:.2f} (aim <= 2)"
    )
    print(f"  throughput line / bare: {tp['ratio']:.2f} (aim >= 0.9)")


def aims_paired(pl: dict) -> None:
    m = pl["median_of_paired"]
    for k in ("held", "seen"):
        print(
            f"  paired (median over {pl['rounds']} pairs of blocks): frame -> value {k} "
            f"(OPC UA / Modbus) over bare {100 * m[f'opcua_{k}_over_bare']:+.1f} / "
            f"{100 * m[f'modbus_{k}_over_bare']:+.1f} % (aim <= 10 %), over the part's own "
            f"inference {100 * m[f'opcua_{k}_over_own']:+.1f} / "
            f"{100 * m[f'modbus_{k}_over_own']:+.1f} %"
        )
    r = pl["seen_p99_over_median"]
    h = pl.get("held_p99_over_median") or {"opcua_held": float("nan"), "modbus_held": float("nan")}
    print(
        f"  paired: p99 / median of the L blocks' parts, frame -> held: {h['opcua_held']:.2f} / "
        f"{h['modbus_held']:.2f}, frame -> seen: {r['opcua_seen']:.2f} / {r['modbus_seen']:.2f}"
        " (aim <= 2)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--frames", type=int, default=None, help="timed parts per phase")
    ap.add_argument("--latency-fps", type=float, default=10.0)
    ap.add_argument("--poll-ms", type=float, default=1.0)
    ap.add_argument(
        "--paired-rounds",
        type=int,
        default=None,
        help="rounds of the paired protocol (default 8 with --quick, else 20; 0: not run)",
    )
    ap.add_argument("--paired-block", type=int, default=20, help="parts per paired block")
    ap.add_argument(
        "--paired-kinds",
        default="LQCWPK",
        help="the blocks of a paired round besides bare: L line, Q line with nobody polling, "
        "C bare with the other CPUs busy, W line with --keep-warm, P bare back to back, K bare with --keep-warm (default LQCWPK)",
    )
    ap.add_argument(
        "--paired-only",
        action="store_true",
        help="only the paired protocol (no continuous latency and throughput phases)",
    )
    ap.add_argument("--soak-only", action="store_true")
    ap.add_argument("--no-soak", action="store_true")
    ap.add_argument("--soak-frames", type=int, default=None)
    ap.add_argument("--soak-fps", type=float, default=20.0)
    ap.add_argument("--drop-every-s", type=float, default=None, help="PLC drop period")
    ap.add_argument("--drop-for-s", type=float, default=None, help="how long the PLC is away")
    ap.add_argument("--sink-queue", type=int, default=1000)
    ap.add_argument("--model", type=Path, help="an exported lite0 ONNX (default: export one)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--name", help="results file name (default by mode)")
    ap.add_argument(
        "--scoring-cpu",
        type=scoring_cpu,
        default="auto",
        help="as defectssft-line run --scoring-cpu (auto|off|N); the stand-in PLCs and the "
        "line's other threads go to the other CPUs, bare classify runs on the scoring CPU",
    )
    ap.add_argument(
        "--servers",
        choices=("process", "thread"),
        default="thread",
        help="as defectssft-line run --servers: the OPC UA / Modbus servers in the line's "
        "process (default, as the runtime) or each in a process of its own",
    )
    ap.add_argument(
        "--switch-interval-ms",
        type=float,
        default=None,
        help="sys.setswitchinterval for this run (default: Python's, 5 ms)",
    )
    ap.add_argument(
        "--standins",
        choices=("rest", "free"),
        default="rest",
        help="stand-in PLCs on the CPUs other than the scoring one (default) or anywhere",
    )
    ap.add_argument(
        "--helpers",
        choices=("rest", "all"),
        default="rest",
        help="the line's other threads on the CPUs other than the scoring one (default, as "
        "the runtime does) or on all CPUs (the scoring thread alone is pinned)",
    )
    args = ap.parse_args()
    if "L" not in args.paired_kinds or set(args.paired_kinds) - set("LQCWPK"):
        ap.error(f"--paired-kinds: L and any of Q, C, W, P, K, got {args.paired_kinds!r}")
    global STANDINS_PINNED, SERVERS
    STANDINS_PINNED = args.standins == "rest"
    SERVERS = args.servers
    placement = Placement(args.scoring_cpu, log=print)
    if args.helpers == "all" and placement.active:
        placement.others = placement.others | {placement.scoring}  # type: ignore[operator]
    print(placement.summary())
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    frames = args.frames or (200 if args.quick else 1000)
    soak_frames = args.soak_frames or (300 if args.quick else 3000)
    drop_every = args.drop_every_s or (5.0 if args.quick else 60.0)
    drop_for = args.drop_for_s or (1.0 if args.quick else 5.0)
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "size": args.size,
        "placement": placement.summary(),
        "standins": args.standins,
        "servers": args.servers,
        "helpers": args.helpers,
        "switch_interval_ms": sys.getswitchinterval() * 1000,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_path = args.model
        if model_path is None:  # exported in a child process: torch never enters this one
            model_path = work / "lite0.onnx"
            child = mp.get_context("spawn").Process(
                target=export_lite0, args=(model_path, args.size)
            )
            child.start()
            child.join(600)
        rounds = args.paired_rounds
        if rounds is None:
            rounds = 8 if args.quick else 20
        if not args.soak_only:
            lat = tp = pl = None
            if not args.paired_only:
                lat = part_latency(
                    model_path, frames, args.latency_fps, args.poll_ms / 1000, work, placement
                )
                tp = throughput(model_path, frames, work, placement)
                result.update(latency=lat, throughput=tp)
            if rounds > 0:
                pl = paired_latency(
                    model_path,
                    rounds,
                    args.paired_block,
                    args.latency_fps,
                    args.poll_ms / 1000,
                    work,
                    placement,
                    kinds=args.paired_kinds,
                )
                result["paired"] = pl
            if pl is not None:
                report_paired(pl)
            if lat is not None and tp is not None:
                report(lat, tp)  # ends with the aims, continuous protocol
            elif pl is not None:
                print("aims (issue #18):")
            if pl is not None:
                aims_paired(pl)
        if not args.no_soak:
            s = soak(
                model_path,
                soak_frames,
                args.soak_fps,
                drop_every,
                drop_for,
                args.sink_queue,
                work,
                progress=lambda m: print(m, flush=True),
            )
            result["soak"] = s
            print(f"soak: {json.dumps(s)}", flush=True)
    name = args.name or (
        "line_soak" if args.soak_only else "line_e2e_quick" if args.quick else "line_e2e"
    )
    print(f"wrote {write_results(name, result)}")


if __name__ == "__main__":
    main()
