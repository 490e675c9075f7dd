"""Where each result goes besides the result file: PLC/plant sinks, the archive, health.

``LineOutputs.handle`` is called once per part, before the record is written: it gives the
record its part id (``--part-id``), updates the health counters and alarm, queues the result
to every sink (never blocking) and then archives the image when its verdict asks for it (the
PNG and the disk come after the PLC's verdict, not before). ``begin`` is called when the
scoring of a camera frame begins (the Modbus ``busy`` coil). Nothing here can stop inspection:
sinks queue and reconnect on their own, the archive warns and counts. Results go first to the
sinks written at once (``Sink.inline``), then to those a thread hop away.

The OPC UA and Modbus servers run in this process by default (``--servers thread``; with
``--servers process`` each runs in a process of its own, ``sinks/process.py``). While a camera
frame is scored (``begin`` to its result published in ``handle``), their event loops hold what
arrives (their selector is gated: ``_GatedSelector``), their threads off Python's GIL: a PLC's
read that arrives meanwhile is answered right after the part's values are written (it would
have read the previous part's values), and the scoring thread never waits for the GIL behind
the servers' per-request Python (BENCHMARKS.md, line end to end). A loop waits at most ``QUIET_MAX_S`` a part, so a line scoring back to
back still answers its PLCs between parts; with ``--part-id plc`` the loops never wait (the
PLC's part id must land while the frame is scored).

Part id (``--part-id``): ``counter`` (the camera's frame id when it has one, else a running
count), ``file`` (the file or frame name), ``plc`` (the value the PLC wrote to the OPC UA
``PartIdIn`` node or Modbus register 10 before the trigger: of this process's server, or read
from the PLC by a client sink when the frame arrives; the counter when there is none),
``auto`` (default): the file name for files, the counter for a camera.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from defectssft_line.archive import Archive
from defectssft_line.health import Health
from defectssft_line.imagequeue import DEFAULT_JOBS, ImageQueue
from defectssft_line.model import LineError
from defectssft_line.sinks import Sink

PART_IDS = ("auto", "counter", "file", "plc")
QUIET_MAX_S = 0.05  # the longest a server's loop waits for one part's scoring (module doc)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _GatedSelector:
    """A server loop's selector (asyncio's own, wrapped): while a part is scored, what it
    returns is held until the part is published, at most ``QUIET_MAX_S`` once a part, the
    loop's thread off the GIL meanwhile; everything else is the selector's own. The loop is
    woken by nothing but its own requests: the scoring thread only clears an event."""

    def __init__(self, inner: Any, outputs: LineOutputs) -> None:
        self._inner, self._outputs = inner, outputs
        self._waited = 0  # the part this loop last waited for

    def select(self, timeout: float | None = None) -> Any:
        events = self._inner.select(timeout)
        out = self._outputs
        if events and not out._scored.is_set() and self._waited != out._part:
            self._waited = out._part
            out._scored.wait(QUIET_MAX_S)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LineOutputs:
    def __init__(
        self,
        sinks: list[Sink] | None = None,
        archive: Archive | None = None,
        health: Health | None = None,
        part_id: str = "auto",
        classes: list[str] | None = None,
        log: Callable[[str], None] = _stderr,
        images: ImageQueue | None = None,
    ) -> None:
        if part_id not in PART_IDS:
            raise LineError(f"--part-id must be one of {', '.join(PART_IDS)}")
        self.sinks = list(sinks or [])
        # results go first to the sinks written at once (inline: no thread), then to those a
        # thread hop away, whose wake-up may take the GIL from the scoring thread for a while
        self._publish_order = sorted(self.sinks, key=lambda s: not s.inline)
        self.archive = archive
        self.images = images  # archive and send-unsure image writes (imagequeue.py)
        self.health = health or Health(log=log)
        self.part_mode = part_id
        self.classes = list(classes or [])
        self._log = log
        self.counter = 0
        self._requested = False  # begin() asked the client sinks for this part's id
        self.started = time.time()
        self._busy_sinks = [s for s in self._publish_order if getattr(s, "wants_busy", False)]
        self._scored = threading.Event()  # clear while a frame is scored: the loops wait
        self._scored.set()
        self._part = 0  # parts begun (a gated loop waits once a part)
        self._gated: weakref.WeakSet[Any] = weakref.WeakSet()  # loops with a gated selector
        self._part_readers = [s for s in self.sinks if s.reads_part_id] if part_id == "plc" else []
        for s in self.sinks:
            s.status = self.status

    def start(self) -> None:
        """Start every sink; a server that cannot start stops those already started and
        raises LineError (one line)."""
        started: list[Sink] = []
        try:
            for s in self.sinks:
                s.prestart()
            for s in self.sinks:
                s.start()
                started.append(s)
        except BaseException:
            for s in self.sinks:
                if s in started:
                    s.close(timeout=0.5)
                else:
                    s.shut()  # a child process started early (``prestart``) ends too
            raise
        if self.images is not None:
            self.images.start()
        if self.part_mode == "plc" and not any(s.server or s.reads_part_id for s in self.sinks):
            self._log(
                "warning: --part-id plc needs an OPC UA or Modbus sink (a server the PLC "
                "writes the part id to, or a client that reads it from the PLC); using the counter"
            )

    def begin(self) -> None:
        """A frame's scoring begins: tell the PLC the station is busy; client sinks read the
        part id the PLC wrote for it (``--part-id plc``) while the frame is scored."""
        for s in self._busy_sinks:
            s.publish({"type": "busy"})
        for s in self._part_readers:
            s.request_part_id()
        self._requested = True
        if self.part_mode != "plc":
            self._quiet()

    def _quiet(self) -> None:
        """The servers' loops wait until this part is published (module doc): a loop whose
        selector is gated (``_GatedSelector``, put in at its first part) holds a request that
        arrives meanwhile, with nothing to do here; another loop is told to wait now."""
        self._part += 1
        self._scored.clear()
        for s in self.sinks:
            loop = s.direct_loop() if s.server and s.connected else None
            if loop is None or loop in self._gated:
                continue
            gated = callable(getattr(getattr(loop, "_selector", None), "select", None))
            try:
                if gated:
                    loop.call_soon_threadsafe(self._gate, loop)
                    self._gated.add(loop)
                else:
                    loop.call_soon_threadsafe(self._scored.wait, QUIET_MAX_S)
            except RuntimeError:  # the loop closed meanwhile: nothing to quiet
                pass

    def _gate(self, loop: Any) -> None:
        """On ``loop``'s thread: its selector gated by this line's parts."""
        if not isinstance(loop._selector, _GatedSelector):
            loop._selector = _GatedSelector(loop._selector, self)

    def _part_id(self, rec: dict[str, Any], camera: bool) -> str:
        counter = rec.get("frame_id")
        counter = str(counter) if counter is not None else str(self.counter)
        mode = self.part_mode
        if mode == "plc":
            if not self._requested:  # a file: no frame arrival announced it
                for s in self._part_readers:
                    s.request_part_id()
            self._requested = False
            for s in self.sinks:
                try:
                    value = s.plc_part_id()
                except Exception:  # noqa: BLE001 - a PLC value we cannot read: the counter
                    value = None
                if value:
                    return value
            return counter
        if mode == "file" or (mode == "auto" and not camera):
            return str(rec.get("file"))
        return counter

    def handle(
        self,
        rec: dict[str, Any],
        data: bytes | None = None,
        frame: np.ndarray | None = None,
        camera: bool = False,
    ) -> dict[str, Any]:
        """Part id into ``rec``, then sinks, archive and health (see the module docstring)."""
        self.counter += 1
        rec["part_id"] = self._part_id(rec, camera)
        self.health.observe(rec)
        if self.sinks:
            cls = rec.get("class")
            msg = {
                "type": "result",
                **rec,
                "class_index": self.classes.index(cls) if cls in self.classes else None,
                "counter": self.counter,
                "counts": dict(self.health.counts),
                "time": time.time(),
            }
            for s in self._publish_order:
                s.publish(msg)
        self._scored.set()  # the servers' loops go on: reads see this part
        if self.archive is not None and self.archive.wants(str(rec.get("verdict"))):
            write = partial(
                self.archive.write,
                dict(rec),
                data=data,
                frame=frame,
                name=rec.get("file"),
                now=self.archive.now(),
            )
            if self.images is not None:
                self.images.put(write)  # off the scoring thread (imagequeue.py)
            else:
                write()
        return rec

    def process_tasks(self) -> list[int]:
        """The thread ids of the sinks' child processes (servers in a process of their own),
        which the CPU placement keeps off the scoring CPU."""
        return [tid for s in self.sinks for tid in s.process_tasks()]

    def status(self) -> dict[str, Any]:
        """The line's status for the status node/topic."""
        dropped = {s.name: s.stats()["dropped"] for s in self.sinks}
        out = {
            **self.health.status(),
            "parts": self.counter,
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            "uptime_s": round(time.time() - self.started, 1),
        }
        if self.archive is not None:
            out["archive"] = self.archive.stats()
        if self.images is not None:
            out["images_dropped"] = self.images.dropped
        self.health.update_gauges(dropped, self.archive.failures if self.archive else 0)
        return out

    def close(self, timeout: float = 2.0) -> list[str]:
        """Write the queued images, flush and stop the sinks; the summary lines for the log."""
        lines = []
        if self.images is not None:
            self.images.close()  # every image queued so far is written
            st = self.images.stats()
            if st["dropped"] or st["failed"]:
                lines.append(
                    f"image writer: {st['written']} written, {st['dropped']} dropped "
                    f"(queue full), {st['failed']} failed"
                )
        for s in self.sinks:
            s.close(timeout)
            st = s.stats()
            lines.append(
                f"{s.name}: {st['sent']} sent, {st['dropped']} dropped, "
                f"{st['reconnects']} reconnect(s)"
                + (f", last error: {st['last_error']}" if st["failures"] else "")
            )
        if self.archive is not None:
            a = self.archive.stats()
            lines.append(
                f"archive {self.archive.root}: {a['saved']} saved, {a['deleted']} deleted "
                f"(size limit), {a['failures']} failed"
            )
        if self.health.alarms_raised:
            lines.append(f"alarm raised {self.health.alarms_raised} time(s)")
        self.health.close()
        return lines


# --------------------------------------------------------------------------- command line


def add_arguments(run: Any) -> None:
    """The camera (GenICam), sink, archive and health flags of ``defectssft-line run``."""
    from defectssft_line.argtypes import count, fraction
    from defectssft_line.argtypes import positive_float as positive

    g = run.add_argument_group("GenICam camera (--camera genicam://SERIAL_OR_INDEX)")
    g.add_argument(
        "--cti",
        metavar="PATH",
        help="the vendor's GenTL producer (.cti); default: those on GENICAM_GENTL64_PATH",
    )
    g.add_argument(
        "--camera-settings",
        metavar="YAML",
        help="exposure, gain, pixel format, "
        "ROI, trigger mode (free-run/software/hardware), other nodes by name",
    )
    s = run.add_argument_group("verdicts to the PLC / plant (any number at once)")
    s.add_argument("--sinks", metavar="YAML", help="sinks file (flags below add to it)")
    s.add_argument(
        "--opcua-server",
        metavar="[HOST:]PORT",
        help="serve an OPC UA Inspection object (host default 127.0.0.1)",
    )
    s.add_argument(
        "--opcua-client",
        metavar="URL",
        help="write the values to nodes of an existing OPC UA server",
    )
    s.add_argument(
        "--opcua-nodes",
        metavar="PREFIX",
        default="ns=2;s=defectssft.",
        help="node id prefix for --opcua-client (default ns=2;s=defectssft.)",
    )
    s.add_argument(
        "--modbus-server",
        metavar="[HOST:]PORT",
        help="serve Modbus TCP coils/registers (host default 127.0.0.1)",
    )
    s.add_argument(
        "--modbus-client",
        metavar="HOST[:PORT]",
        help="write the coils/registers into a PLC (port default 502)",
    )
    s.add_argument("--modbus-unit", type=count, default=1, help="unit id for --modbus-client")
    s.add_argument("--mqtt", metavar="HOST[:PORT]", help="MQTT broker (port default 1883)")
    s.add_argument(
        "--mqtt-topic",
        default="defectssft/line",
        metavar="PREFIX",
        help="topics PREFIX/result and PREFIX/status",
    )
    s.add_argument(
        "--sink-queue",
        type=count,
        default=None,
        metavar="N",
        help="messages each sink holds while its peer is away (default 1000)",
    )
    s.add_argument(
        "--servers",
        choices=("thread", "process"),
        default=None,
        help="run the OPC UA / Modbus servers in the line's process (default: the fastest "
        "hand-over) or each in a process of its own (isolated: its polls never take the "
        "line's GIL; Linux)",
    )
    s.add_argument(
        "--part-id",
        choices=PART_IDS,
        default="auto",
        help="part id in each result: camera counter, file name, or the PLC's value",
    )
    a = run.add_argument_group("result archive and health")
    a.add_argument("--archive", metavar="DIR", help="keep NG/UNSURE images + result JSON here")
    a.add_argument(
        "--archive-max-gb",
        type=positive,
        default=10.0,
        metavar="N",
        help="oldest archived parts are deleted beyond this size (default 10)",
    )
    a.add_argument(
        "--archive-ok-every",
        type=count,
        default=0,
        metavar="K",
        help="also archive every K-th OK part (default 0: none)",
    )
    a.add_argument(
        "--image-queue",
        type=count,
        default=DEFAULT_JOBS,
        metavar="N",
        help="archive and --send-unsure images waiting to be written off the scoring thread; "
        f"when full the oldest archive image is dropped (default {DEFAULT_JOBS})",
    )
    a.add_argument(
        "--metrics-port",
        type=count,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on this port",
    )
    a.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address")
    a.add_argument(
        "--alarm-window",
        type=count,
        default=200,
        metavar="N",
        help="parts in the alarm's sliding window (default 200)",
    )
    a.add_argument(
        "--alarm-reject-rate",
        type=fraction,
        default=None,
        metavar="R",
        help="alarm when the NG+UNSURE share of the window is above R",
    )
    a.add_argument(
        "--alarm-score-drift",
        type=fraction,
        default=None,
        metavar="D",
        help="alarm when the window's mean score moves more than D from the first",
    )


def sink_config(args: Any, log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """The sinks YAML merged with the sink flags (flags win)."""
    from defectssft_line.sinks import host_port, load_config

    cfg = load_config(args.sinks)
    if args.opcua_server:
        host, port = host_port(args.opcua_server, "127.0.0.1", 4840, "--opcua-server")
        cfg["opcua_server"] = {**cfg.get("opcua_server", {}), "host": host, "port": port}
    if args.opcua_client:
        cfg["opcua_client"] = {
            **cfg.get("opcua_client", {}),
            "url": args.opcua_client,
            "prefix": args.opcua_nodes,
        }
    if args.modbus_server:
        host, port = host_port(args.modbus_server, "127.0.0.1", 5020, "--modbus-server")
        cfg["modbus_server"] = {**cfg.get("modbus_server", {}), "host": host, "port": port}
    if args.modbus_client:
        host, port = host_port(args.modbus_client, None, 502, "--modbus-client")
        cfg["modbus_client"] = {
            **cfg.get("modbus_client", {}),
            "host": host,
            "port": port,
            "unit": args.modbus_unit,
        }
    if args.mqtt:
        host, port = host_port(args.mqtt, None, 1883, "--mqtt")
        cfg["mqtt"] = {**cfg.get("mqtt", {}), "host": host, "port": port, "topic": args.mqtt_topic}
    if args.sink_queue is not None:
        cfg["queue"] = args.sink_queue
    mode = getattr(args, "servers", None) or cfg.get("servers", "thread")
    if mode == "process":
        from defectssft_line.sinks.process import supported

        why = supported() if any(k in cfg for k in ("opcua_server", "modbus_server")) else None
        if why is not None:
            log(f"servers run in the line's process: {why}")
            mode = "thread"
    cfg["servers"] = mode
    return cfg


def outputs_from_args(
    args: Any, classes: list[str], log: Callable[[str], None] = _stderr
) -> LineOutputs:
    """Sinks, archive and health from the flags (not started)."""
    from defectssft_line.sinks import build_sinks

    sinks = build_sinks(sink_config(args, log), log=log)
    archive = None
    if args.archive:
        archive = Archive(
            args.archive, int(args.archive_max_gb * 1e9), args.archive_ok_every, log=log
        )
    health = Health(
        max(1, args.alarm_window), args.alarm_reject_rate, args.alarm_score_drift, log=log
    )
    if args.metrics_port is not None:
        health.serve_metrics(args.metrics_port, args.metrics_host)
    images = None
    if args.archive or getattr(args, "send_unsure", None):
        images = ImageQueue(max(1, args.image_queue), log=log)
    return LineOutputs(sinks, archive, health, args.part_id, classes, log=log, images=images)
