"""``defectssft-line``: OK/NG/UNSURE verdicts on a line PC from an exported model.onnx.

    defectssft-line run --model model.onnx --input PATH...     files and folders, then exit
    defectssft-line run --model model.onnx --watch DIR         hot folder, until stopped
    defectssft-line run --model model.onnx --camera SRC        OpenCV camera index/URL/file
                                                              (live sources reconnect)
    defectssft-line run --model model.onnx --camera genicam://0 --opcua-server 4840
                                               GenICam camera, verdicts to a PLC (lineio)
    defectssft-line bench --model model.onnx                   latency and images/s

Results go to stdout (or ``--output``) as JSON lines or CSV; a summary goes to stderr.
The model file is re-checked while running and a newly promoted model is swapped in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from defectssft_line import __version__, argtypes
from defectssft_line.camera import (
    AUTO,
    DEFAULT_FIRST_WAIT,
    DEFAULT_MAX_WAIT,
    DEFAULT_STREAM_READ_TIMEOUT,
    CameraStream,
    Opener,
)
from defectssft_line.decision import Prediction
from defectssft_line.genicam import is_genicam, opener_for
from defectssft_line.hotfolder import HotFolder
from defectssft_line.hotswap import ModelHolder
from defectssft_line.keepwarm import KeepWarm
from defectssft_line.lineio import LineOutputs, add_arguments, outputs_from_args
from defectssft_line.model import LineError, LineModel
from defectssft_line.names import safe_text
from defectssft_line.novelty import ON_NOVEL_CHOICES, peak_in_image, save_map_overlay
from defectssft_line.output import (
    FORMATS,
    ResultWriter,
    record,
    send_unsure_file,
    send_unsure_frame,
)
from defectssft_line.placement import Placement, scoring_cpu
from defectssft_line.prefetch import FramePrefetcher
from defectssft_line.preprocess import (
    ImageDecodeError,
    decode_image,
    is_image_name,
    pixel_format_depth,
)
from defectssft_line.stopping import StopOnSignal, end_by_sigterm


def _verdict_record(
    name: str,
    pred: Prediction,
    t0: float,
    model: LineModel,
    image: np.ndarray,
    ahead_ms: float = 0.0,
) -> dict:
    """The output record of a scored image or frame (latency counted from ``t0``, plus the
    preprocessing done ahead on the read-ahead thread)."""
    latency_ms = (time.perf_counter() - t0) * 1000 + ahead_ms
    rec = record(name, pred.verdict, pred.cls, pred.score, latency_ms, model.version)
    if pred.anomaly_score is not None:  # a model with an anomaly head (novelty.py)
        rec["anomaly_score"] = round(float(pred.anomaly_score), 6)
        rec["novel"] = bool(pred.novel)
    if pred.rechecked:  # an INT8 file's fp32 graph decided it (defectssft_line.recheck)
        rec["rechecked"] = True
    if pred.anomaly_peak is not None:  # where it is, in the image's pixels
        peak = peak_in_image(pred.anomaly_peak, (model.height, model.width), image.shape, model.roi)
        if peak is not None:
            rec["anomaly_peak"] = peak
    return rec


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- run


@dataclass
class Prepared:
    """A camera frame made into one model's input on the read-ahead thread
    (``Runner.prepare_ahead``), and how long that took."""

    model: LineModel
    batch: np.ndarray  # uint8 [1, H, W, 3]
    ms: float


class Runner:
    """Scores images with the current model and writes one record per image."""

    def __init__(
        self,
        holder: ModelHolder,
        writer: ResultWriter,
        send_unsure: Path | None,
        outputs: LineOutputs | None = None,
    ):
        self.holder, self.writer, self.send_unsure = holder, writer, send_unsure
        self.outputs = outputs  # sinks, archive, health (lineio)
        self.errors = 0
        self.skipped_frames = 0
        self.stopped_by: int | None = None  # the signal that stopped a camera run
        self.save_maps: Path | None = None  # --save-maps: anomaly overlays of NG/UNSURE parts
        self.placement: Placement | None = None  # --scoring-cpu: kept between parts
        self.on_scoring: Callable[[], None] | None = None  # the read-ahead's ``scoring``

    def _save_map(self, model: LineModel, name: str, image: np.ndarray, pred: Prediction) -> None:
        if self.save_maps is None or pred.anomaly_map is None or model.novelty is None:
            return
        if pred.verdict not in ("NG", "UNSURE"):
            return
        try:
            save_map_overlay(
                self.save_maps,
                name,
                image,
                pred.anomaly_map,
                model.novelty.threshold,
                model.bit_depth,
                pred.anomaly_peak,
                (model.height, model.width),
                model.roi,
            )
        except (OSError, ValueError) as e:
            _log(f"warning: cannot save the anomaly map of {safe_text(name)}: {e}")

    def score_bytes(self, name: str, data: bytes, source: Path | None = None) -> dict:
        if self.placement is not None:
            self.placement.keep()
        model = self.holder.current()
        t0 = time.perf_counter()
        shown = safe_text(name)  # a newline in a file name must not split the error line
        try:
            image = decode_image(data, shown, model.max_pixels)
            pred = model.classify([image])[0]
        except (ImageDecodeError, ValueError) as e:
            return self._error(name, model.version, t0, str(e))
        except Exception as e:  # noqa: BLE001 - one odd image must never stop the line
            return self._error(name, model.version, t0, f"{shown}: {type(e).__name__}: {e}")
        rec = _verdict_record(name, pred, t0, model, image)
        self._save_map(model, Path(name).name, image, pred)
        if pred.verdict == "UNSURE" and self.send_unsure is not None and source is not None:
            try:
                send_unsure_file(source, self.send_unsure)
            except OSError as e:
                _log(f"warning: cannot copy {name} to {self.send_unsure}: {e.strerror or e}")
        if self.outputs is not None:
            self.outputs.handle(rec, data=data)
        self.writer.write(rec)
        return rec

    def _error(self, name: str, version: str, t0: float, message: str) -> dict:
        self.errors += 1
        rec = record(
            name,
            "ERROR",
            None,
            None,
            (time.perf_counter() - t0) * 1000,
            version,
            message.splitlines()[0] if message else "error",
        )
        if self.outputs is not None:
            self.outputs.handle(rec)
        self.writer.write(rec)
        return rec

    def prepare_ahead(self, image: np.ndarray) -> Prepared | None:
        """On the read-ahead thread: ``image`` as the running model's input, by the one
        preprocessing definition (``LineModel.prepare``), timed; None for a tiled model
        (scored tile by tile). An error is raised to the caller (the frame is then prepared
        again, and reported, by ``score_frame``)."""
        model = self.holder.model
        if model.tiles is not None:
            return None
        t0 = time.perf_counter()
        batch = model.prepare(image)[None]
        return Prepared(model, batch, (time.perf_counter() - t0) * 1000)

    def score_frame(
        self,
        name: str,
        frame: np.ndarray,
        extra: dict | None = None,
        prepared: Prepared | None = None,
    ) -> dict:
        """Score one camera frame. A frame that cannot be preprocessed or scored gets an ERROR
        record and a (rate-limited) warning; the stream goes on. ``extra`` (the camera's
        frame id and timestamp) goes into the record. ``prepared``: the frame already made
        into the model's input on the read-ahead thread (``prepare_ahead``); used when the
        model is still the one it was prepared for, its time counted in the record's
        ``latency_ms``. The CPU placement is kept after the part, not on its path (its look
        at the process's threads is a system call, which lets other threads take the GIL)."""
        try:
            return self._score_frame(name, frame, extra, prepared)
        finally:
            if self.placement is not None:
                self.placement.keep()

    def _score_frame(
        self, name: str, frame: np.ndarray, extra: dict | None, prepared: Prepared | None
    ) -> dict:
        model = self.holder.current()
        if prepared is not None and prepared.model is not model:
            prepared = None  # prepared for a model swapped out since: prepared again
        if self.outputs is not None:
            self.outputs.begin()  # the PLC's busy coil
        t0 = time.perf_counter()
        try:
            batch = prepared.batch if prepared is not None else None
            if batch is None and model.tiles is None:
                batch = model.prepare(frame)[None]  # here, on this (idle) thread's CPU
            if self.on_scoring is not None:
                # the model runs next, Python's GIL free for milliseconds: the read-ahead
                # goes on now (its GIL-holding work overlaps the model, not this part's path)
                self.on_scoring()
            if batch is not None:
                pred = model.classify_inputs(batch)[0]
            else:  # a tiled model: prepared and scored tile by tile
                pred = model.classify([frame])[0]
        except Exception as e:  # noqa: BLE001 - one odd frame must never stop the line
            self.skipped_frames += 1
            message = f"{name}: {type(e).__name__}: {e}".splitlines()[0]
            n = self.skipped_frames
            if n <= 10 or n % 100 == 0:
                _log(f"warning: frame skipped ({n} so far): {message}")
            return self._error(name, model.version, t0, message)
        rec = _verdict_record(name, pred, t0, model, frame, prepared.ms if prepared else 0.0)
        if extra:
            rec.update(extra)
        if self.outputs is not None:  # the PLC first; images to disk after
            self.outputs.handle(rec, frame=frame, camera=True)
        self._save_map(model, name, frame, pred)
        if pred.verdict == "UNSURE" and self.send_unsure is not None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            write = partial(self._send_unsure_frame, frame, f"cam-{stamp}-{name}", name)
            images = self.outputs.images if self.outputs is not None else None
            if images is not None:
                images.put(write, droppable=False)  # off this thread, never dropped
            else:
                write()
        self.writer.write(rec)
        return rec

    def _send_unsure_frame(self, frame: np.ndarray, file_name: str, name: str) -> None:
        assert self.send_unsure is not None
        try:
            send_unsure_frame(frame, self.send_unsure, file_name)
        except OSError as e:
            _log(f"warning: cannot save {name} to {self.send_unsure}: {e.strerror or e}")

    def score_file(self, path: Path) -> dict:
        try:
            data = path.read_bytes()
        except OSError as e:
            self.errors += 1
            rec = record(
                str(path),
                "ERROR",
                None,
                None,
                0.0,
                self.holder.model.version,
                f"{path}: cannot read ({e.strerror or e})",
            )
            self.writer.write(rec)
            return rec
        return self.score_bytes(str(path), data, path)


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (recursively, sorted)."""
    out: list[Path] = []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f.name)))
        elif p.exists():
            out.append(p)
        else:
            raise LineError(f"input not found: {p}")
    return out


def _run_inputs(runner: Runner, inputs: list[str]) -> int:
    files = expand_inputs(inputs)
    if not files:
        raise LineError(f"no image files in {', '.join(inputs)}")
    for f in files:
        runner.score_file(f)
    return 1 if runner.errors else 0


def _run_watch(runner: Runner, args: argparse.Namespace) -> int:
    try:
        folder = HotFolder(
            args.watch,
            args.processed,
            args.failed,
            settle_s=args.settle,
            give_up_s=args.give_up,
            mark=args.mark,
        )
    except FileNotFoundError as e:
        raise LineError(str(e)) from e
    _log(f"watching {folder.folder} (model {runner.holder.model.version or '?'}); Ctrl+C to stop")
    handled, last_activity = 0, time.monotonic()
    while True:
        ready = folder.poll()
        for path in ready:
            rec = runner.score_file(path)
            if rec["verdict"] == "ERROR":
                folder.failed_file(path, rec["error"] or "unreadable")
            else:
                folder.done(path)
            handled += 1
            last_activity = time.monotonic()
            if args.max_files and handled >= args.max_files:
                return 0
        if args.idle_exit and time.monotonic() - last_activity >= args.idle_exit:
            return 0
        if not ready:
            runner.holder.current()  # poll for a promoted model while idle
            time.sleep(args.poll)


def _run_camera(
    runner: Runner,
    args: argparse.Namespace,
    opener: Opener | None = None,
    sleep: Callable[[float], None] | None = None,
) -> int:
    """Score frames until the source ends (a file), --max-frames, Ctrl+C / SIGTERM, or
    --max-reconnects failed reopen attempts in a row. The camera is read ahead on its own
    thread (prefetch.py); a signal stops the reading and the frames already read are scored
    (stopping.py). Exit status 1 when frames were skipped or the source was given up;
    LineError (status 2) when not a single frame was read."""
    read_timeout = AUTO if args.read_timeout is None else args.read_timeout
    meta: Callable[[], dict] = dict
    if opener is None and is_genicam(args.camera):
        gopener = opener_for(args.camera, args.cti, args.camera_settings)
        gopener.preflight(args.camera)  # no producer/camera, a missing node: one line, exit 2
        opener, meta = gopener, lambda: gopener.last_meta
        _check_depth(gopener.pixel_format, runner.holder.model.bit_depth)
    stream = CameraStream(
        args.camera,
        reconnect=args.reconnect,
        first_wait=args.reconnect_wait,
        max_wait=args.reconnect_max_wait,
        max_attempts=args.max_reconnects,
        opener=opener,
        sleep=sleep,
        log=_log,
        read_timeout=read_timeout,
    )
    mode = "reconnects when lost" if stream.reconnect else "ends when the source ends"
    if stream.read_timeout:
        mode += f", read timeout {stream.read_timeout:g} s"
    _log(
        f"camera {args.camera} ({stream.kind}, {mode}; model "
        f"{runner.holder.model.version or '?'}); Ctrl+C to stop"
    )
    n = 0
    prefetch = read_ahead(runner, stream, meta, args.max_frames, getattr(opener, "stop", None))
    stop = StopOnSignal(prefetch.stop)
    try:
        with stop:
            prefetch.start()
            for frame in prefetch:
                n += 1
                runner.score_frame(f"frame{n:06d}.png", frame.image, frame.meta, frame.prepared)
    finally:  # also on a second Ctrl+C; a read may be left hung in the driver
        prefetch.close()
        runner.stopped_by = stop.signum
        hung = stream.hung_reads
        if stream.reconnects or stream.failed_attempts or stream.timeouts or hung:
            summary = (
                f"camera {args.camera}: {stream.reconnects} reconnect(s), "
                f"{stream.failed_attempts} failed attempt(s)"
            )
            if stream.timeouts:
                summary += f", {stream.timeouts} hung open/read(s) abandoned"
            if hung:
                summary += f", {hung} still hung in the driver"
            _log(summary)
    if n == 0 and stop.signum is None:
        raise LineError(f"no frames from camera/video source {args.camera!r}")
    return 1 if stream.gave_up or runner.skipped_frames else 0


def read_ahead(
    runner: Runner,
    stream: CameraStream,
    meta: Callable[[], dict],
    limit: int = 0,
    on_stop: Callable[[], None] | None = None,
) -> FramePrefetcher:
    """The camera's read-ahead as ``run --camera`` sets it up (not started): frames read and
    prepared for the model on its own thread, paced by the scoring (prefetch.py)."""
    prefetch = FramePrefetcher(
        stream, meta, limit=limit, on_stop=on_stop, prepare=runner.prepare_ahead, pace=True
    )
    runner.on_scoring = prefetch.scoring
    return prefetch


def _check_depth(pixel_format: str | None, bit_depth: int) -> None:
    """Warn when a >8-bit camera format does not match the model's sensor bit depth."""
    if pixel_format and pixel_format_depth(pixel_format) > 8:
        depth = pixel_format_depth(pixel_format)
        if depth != bit_depth:
            _log(
                f"warning: camera sends {pixel_format} ({depth}-bit) but the model was trained "
                f"with bit_depth {bit_depth}; set the project's bit depth to {depth} and re-export"
            )


def _placement(args: argparse.Namespace) -> Placement:
    """The --scoring-cpu plan, logged once (placement.py)."""
    choice = args.scoring_cpu
    if args.threads > 1:
        if isinstance(choice, int):
            raise LineError(
                f"--scoring-cpu {choice} gives scoring one CPU: use it with --threads 1 "
                f"(got --threads {args.threads})"
            )
        if choice == "auto":
            _log(f"CPU placement off: --threads {args.threads} runs ONNX on several CPUs")
            return Placement("off", log=_log)
    placement = Placement(choice, log=_log)
    _log(placement.summary())
    return placement


def _keep_warm(args: argparse.Namespace, placement: Placement) -> KeepWarm | None:
    """--keep-warm: the spinner on the scoring CPU (keepwarm.py), or None with one line why."""
    if not args.keep_warm:
        return None
    if placement.scoring is None:
        _log(
            "warning: --keep-warm needs the scoring thread on a CPU of its own "
            "(--scoring-cpu); not used"
        )
        return None
    warm = KeepWarm(placement.scoring, log=_log)
    if not warm.start():
        return None
    placement.on_give_up = warm.stop  # the scoring thread no longer has that CPU
    return warm


def cmd_run(args: argparse.Namespace) -> int:
    def load(path: Path) -> LineModel:
        return LineModel.load(
            path,
            threads=args.threads,
            threshold=args.threshold,
            unsure_low=args.unsure_low,
            unsure_high=args.unsure_high,
            max_pixels=args.max_pixels,
            on_novel=args.on_novel,
        )

    holder = ModelHolder(args.model, load, poll_s=args.reload_poll, log=_log)
    m = holder.model
    _log(
        f"model {m.version or '?'} ({m.meta.get('backbone', '?')}, {m.meta.get('precision', '?')}) "
        f"classes {m.classes}; thresholds ng={m.thresholds.ng:.4g} "
        f"unsure=[{m.thresholds.unsure_low:.4g}, {m.thresholds.unsure_high:.4g})"
    )
    if m.novelty is not None:
        _log(f"anomaly head: novel at score >= {m.novelty.threshold:.4g} -> {m.novelty.on_novel}")
    elif args.save_maps or args.on_novel:
        _log("warning: this model has no anomaly head; --save-maps / --on-novel do nothing")
    send_unsure = Path(args.send_unsure) if args.send_unsure else None
    placement = _placement(args)
    outputs = outputs_from_args(args, m.classes, log=_log)
    outputs.start()  # a sink that cannot start: one line, exit 2, before any part is scored
    writer = ResultWriter(args.format, args.output)
    runner = Runner(holder, writer, send_unsure, outputs)
    runner.save_maps = Path(args.save_maps) if args.save_maps else None
    runner.placement = placement
    placement.extra_tasks = outputs.process_tasks  # servers' processes: off the scoring CPU
    warm = _keep_warm(args, placement)
    try:
        placement.apply()  # this thread scores; the sinks' threads go to the other CPUs
        if args.watch:
            rc = _run_watch(runner, args)
        elif args.camera is not None:
            rc = _run_camera(runner, args)
        else:
            rc = _run_inputs(runner, args.input)
    except KeyboardInterrupt:
        rc = 0
    finally:
        if warm is not None:
            warm.stop()
        placement.release()
        writer.close()
        for line in outputs.close():
            _log(line)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(writer.counts.items())) or "no images"
    _log(f"done: {counts}")
    if runner.stopped_by == signal.SIGTERM:
        end_by_sigterm()
    return rc


# --------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    from defectssft_line.bench import default_threads, format_table, run_bench

    LineModel.load(args.model)  # refuse a bad file before timing anything
    threads = args.threads or default_threads()
    rows = run_bench(
        Path(args.model),
        [Path(p) for p in args.images or []],
        args.batch,
        threads,
        args.iters,
        args.warmup,
    )
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model), "rows": rows}, indent=2))
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="defectssft-line", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"defectssft-line {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="verdicts for files, a hot folder or a camera")
    run.add_argument("--model", required=True, help="exported defectssft model.onnx")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH", help="image files and/or folders")
    src.add_argument("--watch", metavar="DIR", help="hot folder to score new files from")
    src.add_argument(
        "--camera",
        metavar="SRC",
        help="OpenCV source: index (0), URL or video file; or genicam://SERIAL_OR_INDEX",
    )
    run.add_argument("--format", choices=FORMATS, default="jsonl", help="output format")
    run.add_argument("--output", metavar="FILE", help="append results here instead of stdout")
    run.add_argument(
        "--threshold", type=argtypes.fraction, help="override the model's NG threshold"
    )
    run.add_argument(
        "--unsure-low", type=argtypes.fraction, help="scores from here to --unsure-high are UNSURE"
    )
    run.add_argument("--unsure-high", type=argtypes.fraction, help="scores at or above this are NG")
    run.add_argument(
        "--send-unsure", metavar="DIR", help="copy UNSURE images here (a project's watch folder)"
    )
    run.add_argument(
        "--on-novel",
        choices=ON_NOVEL_CHOICES,
        default=None,
        help="verdict of a part the classifier passes but the anomaly head finds novel "
        "(default: the model's own, UNSURE); models with an anomaly head only",
    )
    run.add_argument(
        "--save-maps",
        metavar="DIR",
        help="write an anomaly-map overlay PNG of each NG/UNSURE part here "
        "(models exported with the anomaly map)",
    )
    run.add_argument("--threads", type=argtypes.positive_int, default=1, help="onnxruntime threads")
    run.add_argument(
        "--scoring-cpu",
        type=scoring_cpu,
        default="auto",
        metavar="auto|off|N",
        help="pin the thread that scores parts to one CPU and the runtime's other threads "
        "(camera read-ahead, sinks, servers) to the rest (default auto: an isolated CPU, "
        "else the last one; Linux, 2+ CPUs, --threads 1)",
    )
    run.add_argument(
        "--keep-warm",
        action="store_true",
        help="keep the scoring CPU awake between parts with a lowest-priority spinner process "
        "(a triggered line's part starts on warm caches; costs that CPU's idle time; Linux, "
        "with --scoring-cpu)",
    )
    run.add_argument(
        "--max-pixels",
        type=argtypes.positive_int,
        default=None,
        metavar="N",
        help="refuse (ERROR record) images whose header declares more pixels, before decoding "
        "(default: the model's input.max_pixels, else 200,000,000)",
    )
    run.add_argument(
        "--reload-poll",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between checks of the model file for a new version",
    )
    hot = run.add_argument_group("hot folder (--watch)")
    hot.add_argument(
        "--processed", metavar="DIR", help="where scored files go (default DIR/processed)"
    )
    hot.add_argument(
        "--failed", metavar="DIR", help="where unreadable files go (default DIR/failed)"
    )
    hot.add_argument(
        "--mark", action="store_true", help="leave scored files in place, list them in a ledger"
    )
    hot.add_argument(
        "--settle", type=float, default=1.0, metavar="S", help="a file must be unchanged this long"
    )
    hot.add_argument(
        "--give-up",
        type=float,
        default=60.0,
        metavar="S",
        help="an incomplete file unchanged this long goes to failed/",
    )
    hot.add_argument(
        "--poll", type=float, default=0.2, metavar="S", help="seconds between folder scans"
    )
    hot.add_argument(
        "--max-files", type=int, default=0, help="stop after this many files (0: never)"
    )
    hot.add_argument(
        "--idle-exit",
        type=float,
        default=0.0,
        metavar="S",
        help="stop after this many idle seconds (0: never)",
    )
    cam = run.add_argument_group("camera (--camera)")
    cam.add_argument(
        "--max-frames", type=int, default=0, help="stop after this many frames (0: never)"
    )
    cam.add_argument(
        "--reconnect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reopen the source when it fails or ends (default: yes for a camera "
        "index, /dev/video*, URL or pipeline; no for a video file, which then "
        "plays once; --reconnect on a file loops it)",
    )
    cam.add_argument(
        "--reconnect-wait",
        type=argtypes.positive_float,
        default=DEFAULT_FIRST_WAIT,
        metavar="S",
        help="first wait before reopening; doubles after each failure "
        f"(default {DEFAULT_FIRST_WAIT:g})",
    )
    cam.add_argument(
        "--reconnect-max-wait",
        type=argtypes.positive_float,
        default=DEFAULT_MAX_WAIT,
        metavar="S",
        help=f"cap on the wait between attempts (default {DEFAULT_MAX_WAIT:g})",
    )
    cam.add_argument(
        "--max-reconnects",
        type=argtypes.count,
        default=0,
        metavar="N",
        help="give up after N reopen attempts in a row without a frame (0: never)",
    )
    cam.add_argument(
        "--read-timeout",
        type=argtypes.non_negative_float,
        default=None,
        metavar="S",
        help="abandon an open or a read that hangs in the driver for S seconds, "
        "and reconnect (default: "
        f"{DEFAULT_STREAM_READ_TIMEOUT:g} for a URL or pipeline; off for a "
        "camera index or /dev/video* (a hardware-triggered camera may wait "
        "in a read until a part arrives) and for a video file; 0: off)",
    )
    add_arguments(run)
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="p50/p95/p99 latency and images/s")
    bench.add_argument("--model", required=True)
    bench.add_argument(
        "--images", nargs="*", metavar="PATH", help="real images (default: random pixels)"
    )
    bench.add_argument("--batch", nargs="+", type=argtypes.positive_int, default=[1, 8])
    bench.add_argument(
        "--threads", nargs="+", type=argtypes.positive_int, help="thread counts (default 1..cores)"
    )
    bench.add_argument("--iters", type=argtypes.positive_int, default=50)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 never crashes a print
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        if (
            getattr(args, "unsure_low", None) is not None
            and getattr(args, "unsure_high", None) is not None
            and args.unsure_low > args.unsure_high
        ):
            raise LineError("--unsure-low must not be above --unsure-high")
        return int(args.func(args) or 0)
    except LineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
