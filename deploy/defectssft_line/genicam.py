"""GenICam cameras (GigE Vision, USB3 Vision) through a vendor's GenTL producer and ``harvesters``.

``genicam://SERIAL_OR_INDEX`` names a camera: its serial number, else its index in the
producer's device list. The producer (a ``.cti`` file) comes from ``--cti PATH`` or from the
standard ``GENICAM_GENTL64_PATH`` (folders or files, separated like ``PATH``).

A settings YAML is applied through GenICam (SFNC) node names, in this order::

    pixel_format: Mono8          # PixelFormat
    roi: {x: 0, y: 0, width: 640, height: 480}   # OffsetX/OffsetY/Width/Height
    exposure: 5000               # ExposureTime (us)
    gain: 2.0                    # Gain
    trigger: free-run            # free-run | software | hardware
    trigger_source: Line1        # hardware: TriggerSource (default Line1)
    trigger_activation: RisingEdge
    fetch_timeout: 2.0           # s a free-run/software frame may take before it counts as lost
    buffers: 16                  # frame buffers: a short stall of the PC loses no triggered part
    nodes: {AcquisitionFrameRate: 30.0}          # any other node, by name

A node the camera lacks, or a value it refuses, is one line naming the node. A frame becomes
an image in the decoded-file convention through ``preprocess.from_pixel_format``, so it is
scored exactly like a file. ``GenICamOpener`` plugs into ``camera.CameraStream``: a camera that
disappears is reopened with the same capped backoff as the OpenCV sources; the camera's
timestamp and frame id of the last frame are in ``opener.last_meta``. ``opener.stop()`` ends a
hardware-triggered wait for the next part at once.

Waiting for a frame never holds Python's GIL: harvesters' ``fetch`` waits inside the producer
in 1 ms calls that keep the GIL, which starves every other thread of the process (the scoring
thread, the sinks, the OPC UA / Modbus servers) for as long as the camera waits for a part.
Instead the producer is asked without waiting, every ``POLL_S`` seconds, the GIL free in
between.

A frame is handed over before its buffer goes back to the producer (``recycle``): the pixels
are copied out first (``from_pixel_format``), so the frame never aliases a buffer the producer
may refill; the buffer is queued back at the start of the next ``read``, which the read-ahead
begins once the frame is being scored (``prefetch.py``), and by ``release`` before the
acquisition stops. Handing a buffer back can take the producer a while (a simulated one draws
the next image there, holding the GIL); on the part's path it would delay every verdict.

Needs the ``genicam`` extra (``pip install defectssft-line[genicam]``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectssft_line.model import LineError
from defectssft_line.preprocess import from_pixel_format

PREFIX = "genicam://"
ENV_CTI = "GENICAM_GENTL64_PATH"
TRIGGERS = ("free-run", "software", "hardware")
POLL_S = 0.0005  # seconds between two checks for a new frame (see the module docstring)
_KEYS = {
    "pixel_format",
    "roi",
    "exposure",
    "gain",
    "trigger",
    "trigger_source",
    "trigger_activation",
    "fetch_timeout",
    "buffers",
    "nodes",
}


def is_genicam(source: str) -> bool:
    return source.startswith(PREFIX)


@dataclass
class CameraSettings:
    """What a settings YAML asks of the camera (see the module docstring)."""

    pixel_format: str | None = None
    roi: dict[str, int] | None = None
    exposure: float | None = None
    gain: float | None = None
    trigger: str = "free-run"
    trigger_source: str = "Line1"
    trigger_activation: str | None = None
    fetch_timeout: float = 2.0
    buffers: int = 16
    nodes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None) -> CameraSettings:
        if path is None:
            return cls()
        import yaml

        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise LineError(f"camera settings {p}: cannot read ({e.strerror or e})") from e
        except yaml.YAMLError as e:
            raise LineError(
                f"camera settings {p}: not valid YAML ({str(e).splitlines()[0]})"
            ) from e
        if not isinstance(raw, dict):
            raise LineError(f"camera settings {p}: expected a mapping of settings")
        unknown = set(raw) - _KEYS
        if unknown:
            raise LineError(
                f"camera settings {p}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(_KEYS))})"
            )
        s = cls(**raw)
        if s.trigger not in TRIGGERS:
            raise LineError(f"camera settings {p}: trigger must be one of {', '.join(TRIGGERS)}")
        if s.roi is not None and (
            not isinstance(s.roi, dict) or not set(s.roi) <= {"x", "y", "width", "height"}
        ):
            raise LineError(f"camera settings {p}: roi takes x, y, width, height")
        if not isinstance(s.nodes, dict):
            raise LineError(f"camera settings {p}: nodes must map node names to values")
        try:
            s.node_values()
            s.fetch_timeout, s.buffers = float(s.fetch_timeout), int(s.buffers)
        except (TypeError, ValueError) as e:
            raise LineError(f"camera settings {p}: {e}") from e
        return s

    def node_values(self) -> list[tuple[str, str, Any]]:
        """(setting, GenICam node, value) in the order they are written."""
        out: list[tuple[str, str, Any]] = []
        if self.pixel_format is not None:
            out.append(("pixel_format", "PixelFormat", self.pixel_format))
        if self.roi:
            if "x" in self.roi or "y" in self.roi:  # offsets first to 0 so any size fits
                out += [("roi", "OffsetX", 0), ("roi", "OffsetY", 0)]
            for key, node in (("width", "Width"), ("height", "Height")):
                if key in self.roi:
                    out.append(("roi", node, int(self.roi[key])))
            for key, node in (("x", "OffsetX"), ("y", "OffsetY")):
                if key in self.roi:
                    out.append(("roi", node, int(self.roi[key])))
        if self.exposure is not None:
            out.append(("exposure", "ExposureTime", float(self.exposure)))
        if self.gain is not None:
            out.append(("gain", "Gain", float(self.gain)))
        if self.trigger == "free-run":
            out.append(("trigger", "TriggerMode?", "Off"))  # '?': fine when absent
        else:
            out += [("trigger", "TriggerSelector?", "FrameStart"), ("trigger", "TriggerMode", "On")]
            source = "Software" if self.trigger == "software" else self.trigger_source
            out.append(("trigger", "TriggerSource", source))
            if self.trigger_activation and self.trigger == "hardware":
                out.append(("trigger", "TriggerActivation", self.trigger_activation))
        out += [("nodes", str(k), v) for k, v in self.nodes.items()]
        return out


def find_producers(cti: str | None = None) -> list[str]:
    """The GenTL producer files to load: ``cti`` or those on GENICAM_GENTL64_PATH."""
    if cti:
        p = Path(cti)
        if not p.is_file():
            raise LineError(f"GenTL producer (--cti) not found: {p}")
        return [str(p)]
    env = os.environ.get(ENV_CTI, "")
    found: list[str] = []
    for part in filter(None, env.split(os.pathsep)):
        p = Path(part)
        if p.is_file() and p.suffix.lower() == ".cti":
            found.append(str(p))
        elif p.is_dir():
            found += sorted(str(f) for f in p.glob("*.cti"))
    if not found:
        where = f" ({ENV_CTI}={env})" if env else f" ({ENV_CTI} is not set)"
        raise LineError(
            f"no GenTL producer (.cti) found{where}; give the camera vendor's with --cti PATH"
        )
    return found


def _harvesters() -> Any:
    try:
        from harvesters.core import Harvester
    except ImportError as e:
        raise LineError(
            "GenICam cameras need the genicam extra: pip install 'defectssft-line[genicam]'"
        ) from e
    import logging

    logging.getLogger("harvesters").setLevel(logging.CRITICAL)
    return Harvester


def _set_node(node_map: Any, uri: str, setting: str, name: str, value: Any) -> None:
    optional = name.endswith("?")
    name = name.rstrip("?")
    if not node_map.has_node(name):
        if optional:
            return
        raise LineError(
            f"camera {uri} has no GenICam node '{name}' (settings: {setting}); "
            "remove the setting or check the camera's node names"
        )
    node = node_map.get_node(name)
    try:
        node.value = value
    except Exception as e:  # noqa: BLE001 - out of range, read-only, unknown enum entry
        if optional:
            return
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise LineError(f"camera {uri}: cannot set '{name}' to {value!r} ({first})") from e


def _requeue(buffer: Any) -> None:
    """Give a fetched buffer back to the producer; a camera that is gone cannot take it (its
    acquirer is destroyed on the reconnect)."""
    try:
        buffer.queue()
    except Exception:  # noqa: BLE001
        pass


class GenICamCapture:
    """One opened camera, acquiring; ``read()`` -> (ok, frame) like cv2.VideoCapture."""

    def __init__(
        self,
        harvester: Any,
        acquirer: Any,
        settings: CameraSettings,
        uri: str,
        on_meta: Any,
        stopping: threading.Event | None = None,
    ) -> None:
        self.harvester, self.ia, self.settings, self.uri = harvester, acquirer, settings, uri
        self._on_meta = on_meta
        self._stopping = stopping or threading.Event()
        self.node_map = acquirer.remote_device.node_map
        self.pixel_format = str(self.node_map.PixelFormat.value)
        self._lock = threading.Lock()
        self._held: Any = None  # the buffer of the frame read last, until recycle()

    def _fetch(self, timeout: float) -> Any:
        """The next filled buffer, or None after ``timeout`` s or a stop (module docstring)."""
        deadline = time.monotonic() + timeout
        while True:
            buffer = self.ia.try_fetch(timeout=1e-5)  # one look, no wait in the producer
            if buffer is not None:
                return buffer
            if time.monotonic() >= deadline or self._stopping.is_set():
                return None
            time.sleep(POLL_S)

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.recycle()  # the previous frame's buffer goes back before the next is awaited
        s = self.settings
        while True:
            if s.trigger == "software":
                self.node_map.get_node("TriggerSoftware").execute()
            buffer = self._fetch(s.fetch_timeout)
            if buffer is None:
                if s.trigger != "hardware" or self._stopping.is_set():
                    return False, None  # free-run / software: a frame is overdue, camera lost
                # hardware trigger: no part yet; still reachable? (a read fails when it is gone)
                self.node_map.get_node("PixelFormat").value  # noqa: B018 - liveness probe
                continue
            try:
                comp = buffer.payload.components[0]
                frame = from_pixel_format(comp.data, str(comp.data_format), comp.height, comp.width)
                self._on_meta(
                    {"frame_id": int(buffer.frame_id), "camera_ts": int(buffer.timestamp)}
                )
            except BaseException:
                _requeue(buffer)
                raise
            with self._lock:
                self._held = buffer  # back to the producer by recycle(): the frame is a copy
            return True, frame

    def recycle(self) -> None:
        """Hand the last frame's buffer back to the producer (any thread; a no-op when none is
        held). ``read`` and ``release`` call it first; the read-ahead calls it earlier, once the
        frame is being scored (the module docstring)."""
        with self._lock:
            buffer, self._held = self._held, None
        if buffer is not None:
            _requeue(buffer)

    def release(self) -> None:
        self.recycle()  # every buffer back before the acquisition stops (harvesters' rule)
        for step in (self.ia.stop, self.ia.destroy, self.harvester.reset):
            try:
                step()
            except Exception:  # noqa: BLE001 - a camera that is gone cannot be stopped cleanly
                pass


class GenICamOpener:
    """``camera.Opener`` for ``genicam://`` sources. Configuration errors (no producer, no such
    camera, a missing node) raise LineError; ``preflight`` calls it once at start-up so they stop
    the run with one line, while later failures (cable pulled) are reconnects."""

    def __init__(self, cti: str | None = None, settings: CameraSettings | None = None) -> None:
        self.producers = find_producers(cti)
        self.settings = settings or CameraSettings()
        self.last_meta: dict[str, Any] = {}
        self.pixel_format: str | None = None
        self._ready: GenICamCapture | None = None
        self._stopping = threading.Event()

    def stop(self) -> None:
        """End a hardware-triggered wait for a part (its read returns no frame)."""
        self._stopping.set()

    def _meta(self, meta: dict[str, Any]) -> None:
        self.last_meta = meta

    def preflight(self, source: str) -> GenICamCapture:
        """Open the camera now (LineError on a configuration problem); the stream's first open
        gets this capture."""
        self._ready = self._open(source)
        return self._ready

    def __call__(self, source: str) -> GenICamCapture | None:
        if self._ready is not None:
            cap, self._ready = self._ready, None
            return cap
        return self._open(source)

    def _open(self, source: str) -> GenICamCapture:
        key = source[len(PREFIX) :] if is_genicam(source) else source
        if not key:
            raise LineError(f"{source}: give a serial number or an index: genicam://0")
        h = _harvesters()()
        try:
            for p in self.producers:
                h.add_file(p, check_existence=True)
            h.update()
            infos = list(h.device_info_list)
            serials = [str(getattr(i, "serial_number", "")) for i in infos]
            if key in serials:
                index = serials.index(key)
            elif key.isdigit() and int(key) < len(infos):
                index = int(key)
            else:
                found = ", ".join(serials) or "none"
                raise LineError(
                    f"no GenICam camera with serial or index '{key}' (cameras found: {found})"
                )
            ia = h.create(index)
        except LineError:
            h.reset()
            raise
        except Exception as e:  # noqa: BLE001 - busy (opened elsewhere), producer error
            h.reset()
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise OSError(f"cannot open {source}: {first}") from e
        try:
            node_map = ia.remote_device.node_map
            for setting, name, value in self.settings.node_values():
                _set_node(node_map, source, setting, name, value)
            if self.settings.trigger == "software" and not node_map.has_node("TriggerSoftware"):
                raise LineError(
                    f"camera {source} has no GenICam node 'TriggerSoftware' (settings: trigger)"
                )
            cap = GenICamCapture(h, ia, self.settings, source, self._meta, self._stopping)
            ia.num_buffers = max(ia.min_num_buffers, int(self.settings.buffers))
            ia.timeout_period_on_update_event_data_call = 0  # ms: GenTL looks, never waits
            ia.start()
        except BaseException:
            for step in (ia.destroy, h.reset):
                try:
                    step()
                except Exception:  # noqa: BLE001
                    pass
            raise
        self.pixel_format = cap.pixel_format
        return cap


def opener_for(source: str, cti: str | None, settings_path: str | None) -> GenICamOpener:
    """The opener for a ``genicam://`` source, configuration read and checked."""
    return GenICamOpener(cti, CameraSettings.load(settings_path))
