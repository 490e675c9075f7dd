"""The line on a real line (issue #18): GenICam camera (the simulated GenTL producer shipped by
PyPI ``genicam``), OPC UA / Modbus TCP / MQTT sinks against real in-process servers, clients and
an MQTT broker on 127.0.0.1, the bounded archive, the alarm and the metrics. Bad input: unknown
serial, missing CTI, a missing node, a PLC that refuses the connection, an address in use.

Every wait is bounded (``wait_for``); nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from defectssft_line import preprocess
from defectssft_line.archive import Archive
from defectssft_line.camera import CameraStream
from defectssft_line.cli import main
from defectssft_line.genicam import CameraSettings, GenICamOpener, find_producers
from defectssft_line.health import Health
from defectssft_line.lineio import LineOutputs
from defectssft_line.model import LineError
from defectssft_line.sinks import build_sinks, host_port, load_config
from defectssft_line.sinks.base import Sink
from tests.helpers import fixed_onnx_model

genicam = pytest.importorskip("genicam")
pytest.importorskip("harvesters")
pytest.importorskip("asyncua")
pytest.importorskip("pymodbus")
pytest.importorskip("paho.mqtt")

CTI = str(Path(genicam.__file__).parent / "viky.cti")
WAIT = 20.0  # the most any single wait below may take


def wait_for(cond: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return fixed_onnx_model(tmp_path_factory.mktemp("m") / "ng.onnx", [0.0, 0.0, 0.0])


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"p{i}.png"), np.full((40, 50), 60 + i, np.uint8))
    return folder


def result_msg(n: int, verdict: str = "NG", **kw: Any) -> dict[str, Any]:
    counts = {"NG": n} if verdict == "NG" else {verdict: n}
    return {
        "type": "result",
        "file": f"p{n}.png",
        "verdict": verdict,
        "class": "scratch",
        "class_index": 1,
        "score": 0.667,
        "part_id": str(100 + n),
        "frame_id": n,
        "counter": n,
        "counts": counts,
        "model_version": "v0001",
        "error": None,
        **kw,
    }


# --------------------------------------------------------------------------- pixel formats


def mosaic(bgr: np.ndarray, pattern: str) -> np.ndarray:
    """A GenICam Bayer mosaic (pattern names the top-left 2x2 cell, e.g. RG = R G / G B)."""
    ch = {"R": 2, "G": 1, "B": 0}
    cells = {"RG": "RGGB", "BG": "BGGR", "GR": "GRBG", "GB": "GBRG"}[pattern]
    out = np.zeros(bgr.shape[:2], bgr.dtype)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = bgr[dy::2, dx::2, ch[cells[k]]]
    return out


@pytest.mark.parametrize("pattern", ["RG", "BG", "GR", "GB"])
@pytest.mark.parametrize("bits", [8, 12])
def test_bayer_demosaic_gives_the_true_colour(pattern, bits):
    dtype = np.uint8 if bits == 8 else np.uint16
    bgr = np.zeros((16, 16, 3), dtype)
    bgr[...] = (10, 50, 200) if bits == 8 else (160, 800, 3200)
    out = preprocess.from_pixel_format(
        mosaic(bgr, pattern).ravel(), f"Bayer{pattern}{bits}", 16, 16
    )
    assert out.dtype == dtype and out.shape == (16, 16, 3)
    assert np.abs(out[8, 8].astype(int) - bgr[8, 8].astype(int)).max() <= 2


def test_pixel_formats_match_the_file_convention():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    bgr = preprocess.from_pixel_format(rgb.ravel(), "RGB8", 4, 6)
    assert bgr[0, 0].tolist() == [0, 0, 200]  # BGR like a decoded file
    assert preprocess.from_pixel_format(bgr.ravel(), "BGR8", 4, 6)[0, 0].tolist() == [0, 0, 200]
    rgba = np.dstack([rgb, np.full((4, 6), 255, np.uint8)])
    out = preprocess.from_pixel_format(rgba.ravel(), "RGBa8", 4, 6)
    assert out.shape == (4, 6, 4) and preprocess.to_rgb8(out)[0, 0].tolist() == [200, 0, 0]
    # Mono12 keeps its values; the model's bit depth (12) scales them like a 16-bit file
    mono12 = np.full((4, 6), 4095, np.uint16)
    out = preprocess.from_pixel_format(mono12.ravel().view(np.uint8), "Mono12", 4, 6)
    assert out.dtype == np.uint16 and int(out.max()) == 4095
    assert preprocess.prepare(out, 4, 6, bit_depth=12)[0, 0].tolist() == [255, 255, 255]
    assert preprocess.pixel_format_depth("Mono10") == 10
    with pytest.raises(preprocess.ImageDecodeError, match="Mono12p is not supported"):
        preprocess.from_pixel_format(mono12.ravel(), "Mono12p", 4, 6)
    with pytest.raises(preprocess.ImageDecodeError, match="need 24"):
        preprocess.from_pixel_format(np.zeros(10, np.uint8), "Mono8", 4, 6)


# --------------------------------------------------------------------------- GenICam camera


def test_camera_settings_yaml(tmp_path):
    p = tmp_path / "cam.yaml"
    p.write_text(
        "pixel_format: Mono8\nexposure: 5000\nroi: {x: 8, width: 64}\ntrigger: hardware\n"
        "nodes: {AcquisitionFrameRate: 30}\n"
    )
    nodes = [n for _, n, _ in CameraSettings.load(p).node_values()]
    assert nodes[:5] == ["PixelFormat", "OffsetX", "OffsetY", "Width", "OffsetX"]
    assert "ExposureTime" in nodes and nodes[-1] == "AcquisitionFrameRate"
    p.write_text("exposur: 5000\n")
    with pytest.raises(LineError, match="unknown key.*exposur"):
        CameraSettings.load(p)
    p.write_text("trigger: sometimes\n")
    with pytest.raises(LineError, match="trigger must be one of"):
        CameraSettings.load(p)
    p.write_text("exposure: fast\n")
    with pytest.raises(LineError, match="camera settings .*fast"):
        CameraSettings.load(p)


def test_genicam_camera_scores_frames_with_their_id(model, tmp_path, capsys):
    settings = tmp_path / "cam.yaml"
    settings.write_text("pixel_format: Mono8\nnodes: {AcquisitionFrameRate: 200.0}\n")
    rc = main(
        [
            "run",
            "--model",
            str(model),
            "--camera",
            "genicam://1",
            "--cti",
            CTI,
            "--camera-settings",
            str(settings),
            "--max-frames",
            "3",
        ]
    )
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 0, err
    assert [r["verdict"] for r in rows] == ["NG"] * 3
    ids = [r["frame_id"] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all("camera_ts" in r and r["part_id"] == str(r["frame_id"]) for r in rows)


def test_genicam_bad_input_is_one_line(model, tmp_path, capsys, monkeypatch):
    base = ["run", "--model", str(model), "--max-frames", "1"]
    cases = [
        (["--camera", "genicam://0", "--cti", str(tmp_path / "no.cti")], "--cti) not found"),
        (["--camera", "genicam://SN-NOPE", "--cti", CTI], "serial or index 'SN-NOPE'"),
    ]
    settings = tmp_path / "cam.yaml"
    settings.write_text("exposure: 1000\n")
    cases.append(
        (
            ["--camera", "genicam://0", "--cti", CTI, "--camera-settings", str(settings)],
            "has no GenICam node 'ExposureTime' (settings: exposure)",
        )
    )
    settings2 = tmp_path / "cam2.yaml"
    settings2.write_text("pixel_format: Mono16\n")
    cases.append(
        (
            ["--camera", "genicam://0", "--cti", CTI, "--camera-settings", str(settings2)],
            "cannot set 'PixelFormat' to 'Mono16'",
        )
    )
    settings3 = tmp_path / "cam3.yaml"
    settings3.write_text("trigger: software\n")
    cases.append(
        (
            ["--camera", "genicam://0", "--cti", CTI, "--camera-settings", str(settings3)],
            "has no GenICam node 'TriggerMode' (settings: trigger)",
        )
    )
    monkeypatch.delenv("GENICAM_GENTL64_PATH", raising=False)
    cases.append((["--camera", "genicam://0"], "GENICAM_GENTL64_PATH is not set"))
    for extra, needle in cases:
        rc = main(base + extra)
        out, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert rc == 2 and len(lines) == 1 and needle in lines[0], err
        assert out == ""
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(Path(CTI).parent))
    assert find_producers() == [CTI]


def test_genicam_camera_that_vanishes_is_reconnected():
    opener = GenICamOpener(CTI)
    caps = []

    def open_and_keep(source):
        cap = opener(source)
        caps.append(cap)
        return cap

    logs: list[str] = []
    stream = CameraStream(
        "genicam://2", opener=open_and_keep, sleep=lambda s: None, log=logs.append
    )
    ids = []
    with __import__("contextlib").closing(stream.frames()) as frames:
        for n, frame in enumerate(frames):
            assert frame.shape == (400, 400, 4)  # RGBa8 -> BGRA
            ids.append(opener.last_meta["frame_id"])
            if n == 1:
                caps[-1].ia.destroy()  # the cable is pulled
            if n == 3:
                break
    assert len(caps) == 2 and stream.reconnects == 1
    assert any("read failed" in line for line in logs)


# --------------------------------------------------------------------------- sink queue


class FlakySink(Sink):
    kind = "flaky"

    def __init__(self, **kw):
        super().__init__("flaky", first_wait=0.01, max_wait=0.02, **kw)
        self.up = threading.Event()
        self.got: list[int] = []

    def open(self):
        if not self.up.is_set():
            raise ConnectionRefusedError("refused")

    def send(self, msg):
        if not self.up.is_set():
            raise ConnectionResetError("reset")
        self.got.append(msg["counter"])


def test_sink_queue_is_bounded_and_keeps_order_across_a_drop():
    logs: list[str] = []
    s = FlakySink(queue_size=3, log=logs.append)
    s.start()  # peer away: one warning, no exception
    assert len(logs) == 1 and "cannot connect" in logs[0] and not s.connected
    for n in range(1, 6):
        s.publish(result_msg(n))
    assert s.dropped == 2  # the oldest two
    s.publish({"type": "busy"})  # pushes out result 3
    for n in (6, 7):
        s.publish(result_msg(n))  # push out 4 and 5
    assert s.dropped == 5
    s.publish(result_msg(8))  # pushes out the busy message: not a result, not counted
    assert s.dropped == 5
    s.up.set()
    wait_for(lambda: s.got == [6, 7, 8])
    s.close(timeout=1)
    assert s.stats()["sent"] == 3 and s.reconnects >= 1


def test_a_result_pushed_out_while_on_its_way_counts_as_sent_not_dropped():
    class Slow(Sink):
        def __init__(self) -> None:
            super().__init__("slow", queue_size=2)
            self.gate, self.inside, self.got = threading.Event(), threading.Event(), []

        def open(self) -> None:
            pass

        def send(self, msg: dict[str, Any]) -> None:
            self.inside.set()
            self.gate.wait(WAIT)
            self.got.append(msg["counter"])

    s = Slow()
    s.start()
    s.publish(result_msg(1))
    wait_for(s.inside.is_set)  # 1 is on its way
    for n in (2, 3, 4):
        s.publish(result_msg(n))  # the full queue pushes out 1 (on its way), then 2
    s.gate.set()
    assert s.flush(WAIT)
    s.close(timeout=1)
    assert s.got == [1, 3, 4] and (s.sent, s.dropped) == (3, 1)


def test_an_inline_sink_does_not_overtake_its_queue_after_a_reconnect():
    class Gated(Sink):
        inline = True

        def __init__(self) -> None:
            super().__init__("gated", first_wait=0.01, max_wait=0.02)
            self.up, self.gate = threading.Event(), threading.Event()
            self.inside = threading.Event()
            self.got: list[int] = []

        def open(self) -> None:
            if not self.up.is_set():
                raise ConnectionRefusedError("refused")

        def send(self, msg: dict[str, Any]) -> None:  # the worker: the queue after a reconnect
            self.inside.set()
            self.gate.wait(WAIT)
            self.got.append(msg["counter"])

        def write_now(self, msg: dict[str, Any]) -> None:  # the caller's thread, at once
            self.got.append(msg["counter"])

    s = Gated()
    s.start()  # the peer is away: 1 waits in the queue
    s.publish(result_msg(1))
    s.up.set()
    wait_for(s.inside.is_set)  # reconnected, and 1 is on its way from the queue
    assert s.connected
    s.publish(result_msg(2))  # behind 1, not written at once ahead of it
    s.gate.set()
    assert s.flush(WAIT)
    s.publish(result_msg(3))  # the queue is empty again: written at once
    assert s.got == [1, 2, 3]
    s.close(timeout=1)
    assert (s.sent, s.dropped) == (3, 0)


# --------------------------------------------------------------------------- OPC UA


def test_opcua_server_values_readable_by_a_client_and_plc_part_id():
    from asyncua import ua
    from asyncua.sync import Client

    port = free_port()
    (sink,) = build_sinks({"opcua_server": {"port": port}})
    sink.status = lambda: {"alarm": "", "dropped_total": 0}
    sink.start()
    try:
        client = Client(f"opc.tcp://127.0.0.1:{port}/defectssft/", timeout=5)
        client.connect()
        try:
            idx = client.get_namespace_index("urn:defectssft:line")
            insp = client.nodes.objects.get_child([f"{idx}:Inspection"])
            sink.publish(result_msg(7))
            total = insp.get_child([f"{idx}:Counter", f"{idx}:Total"])
            wait_for(lambda: total.read_value() == 7)
            assert insp.get_child(f"{idx}:Verdict").read_value() == "NG"
            assert insp.get_child(f"{idx}:Class").read_value() == "scratch"
            assert insp.get_child(f"{idx}:Score").read_value() == pytest.approx(0.667)
            assert insp.get_child(f"{idx}:PartId").read_value() == "107"
            assert insp.get_child([f"{idx}:Counter", f"{idx}:NG"]).read_value() == 7
            beat = insp.get_child(f"{idx}:Heartbeat")
            wait_for(lambda: beat.read_value() >= 1)
            assert sink.plc_part_id() is None
            pin = insp.get_child(f"{idx}:PartIdIn")
            pin.write_value(ua.DataValue(ua.Variant("LOT7-0042", ua.VariantType.String)))
            assert sink.plc_part_id() == "LOT7-0042"
        finally:
            client.disconnect()
        # the same port again: one line, not a traceback
        (again,) = build_sinks({"opcua_server": {"port": port}})
        with pytest.raises(LineError, match=f"OPC UA server 127.0.0.1:{port}: cannot start"):
            again.start()
    finally:
        sink.close(timeout=1)


def test_opcua_server_holds_values_when_publish_returns_and_notifies_subscribers_in_order():
    """The server sink writes a result's values on the publishing thread: a read right after
    ``publish`` returns sees them (no wait); a subscriber still gets every part's counter, in
    order, with the values written."""
    from asyncua import ua
    from asyncua.sync import Client

    port = free_port()
    (sink,) = build_sinks({"opcua_server": {"port": port}})
    sink.status = lambda: {"alarm": "", "dropped_total": 0}
    sink.start()
    assert sink.inline  # this asyncua keeps values where the sink can hold them at once
    got: list[int] = []

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            got.append(int(val))

    client = Client(f"opc.tcp://127.0.0.1:{port}/defectssft/", timeout=5)
    client.connect()
    try:
        idx = client.get_namespace_index("urn:defectssft:line")
        insp = client.nodes.objects.get_child([f"{idx}:Inspection"])
        total = insp.get_child([f"{idx}:Counter", f"{idx}:Total"])
        verdict = insp.get_child(f"{idx}:Verdict")
        sub = client.create_subscription(10, Handler())
        sub.subscribe_data_change(total)
        wait_for(lambda: got == [0])  # the initial value
        for n in range(1, 6):
            msg = result_msg(n, "OK" if n % 2 else "NG")
            sink.publish(msg)
            assert total.read_value() == n  # held when publish returned
            assert verdict.read_value() == msg["verdict"]
        # held even while the server's loop stands still (no hop to it on the part's path)
        gate = threading.Event()
        sink._server.tloop.loop.call_soon_threadsafe(gate.wait, WAIT)
        try:
            sink.publish(result_msg(6))
            aspace = sink._server.aio_obj.iserver.aspace
            held = aspace.read_attribute_value(total.nodeid, ua.AttributeIds.Value)
            assert held.Value.Value == 6
        finally:
            gate.set()
        wait_for(lambda: got[-1:] == [6])
        assert got == sorted(got) and got[-1] == 6 and (sink.sent, sink.dropped) == (6, 0)
    finally:
        client.disconnect()
        sink.close(timeout=1)


def test_opcua_client_writes_into_a_plc_server_that_comes_up_late():
    from asyncua import ua
    from asyncua.sync import Server

    port = free_port()
    logs: list[str] = []
    (sink,) = build_sinks(
        {"opcua_client": {"url": f"opc.tcp://127.0.0.1:{port}/", "timeout": 2}}, log=logs.append
    )
    sink.first_wait, sink.max_wait = 0.05, 0.2
    sink.start()  # the PLC refuses: one warning line, inspection goes on
    assert not sink.connected and len(logs) == 1 and "cannot connect" in logs[0]
    sink.publish(result_msg(1))
    plc = Server()
    plc.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    idx = plc.register_namespace("urn:plc")
    assert idx == 2
    obj = plc.nodes.objects.add_object(idx, "Cell")
    verdict = obj.add_variable(ua.NodeId("defectssft.Verdict", idx), "Verdict", "")
    counter = obj.add_variable(
        ua.NodeId("defectssft.Counter.Total", idx), "Total", 0, varianttype=ua.VariantType.Int32
    )
    for v in (verdict, counter):
        v.set_writable()
    plc.start()
    try:
        wait_for(lambda: counter.read_value() == 1)
        assert verdict.read_value() == "NG"
        sink.publish(result_msg(2, "OK"))
        wait_for(lambda: counter.read_value() == 2)
        assert verdict.read_value() == "OK" and sink.reconnects == 1
    finally:
        sink.close(timeout=1)
        plc.stop()


# --------------------------------------------------------------------------- Modbus


def test_modbus_server_coils_registers_and_plc_part_id():
    from pymodbus.client import ModbusTcpClient

    port = free_port()
    (sink,) = build_sinks({"modbus_server": {"port": port}})
    sink.status = lambda: {"alarm": "", "dropped_total": 0}
    sink.start()
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    try:
        assert client.connect()
        sink.publish({"type": "busy"})
        wait_for(lambda: client.read_coils(0, count=4).bits[3])
        sink.publish(result_msg(70000, "UNSURE", class_index=2, score=0.5555))
        wait_for(lambda: client.read_holding_registers(2, count=2).registers == [70000 & 0xFFFF, 1])
        regs = client.read_holding_registers(0, count=10).registers
        assert regs[0] == 2 and regs[1] == 556 and regs[4] == 2
        assert client.read_coils(0, count=4).bits[:4] == [False, False, True, False]
        assert sink.plc_part_id() is None
        client.write_register(10, 4242)
        assert sink.plc_part_id() == "4242"
        (again,) = build_sinks({"modbus_server": {"port": port}})
        with pytest.raises(LineError, match="cannot start .*address in use"):
            again.start()
    finally:
        client.close()
        sink.close(timeout=1)


def test_modbus_server_holds_the_part_when_publish_returns_and_a_bad_write_is_counted():
    from pymodbus.client import ModbusTcpClient

    from defectssft_line.sinks.modbus import ModbusServerSink, _now

    port = free_port()
    logs: list[str] = []
    sink = ModbusServerSink(port=port, log=logs.append)
    sink.status = lambda: {"alarm": "", "dropped_total": 0}
    sink.start()
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    loop = sink.direct_loop()
    gate = threading.Event()
    try:
        assert client.connect()
        loop.call_soon_threadsafe(gate.wait, WAIT)  # the server's loop stands still meanwhile
        sink.publish({"type": "busy"})
        sink.publish(result_msg(7, "NG", score=0.25))  # written on this thread, no hop
        sink.publish(result_msg(8, "NG", score="not a number"))  # fails: counted, not raised
        assert sink.pending() == 0 and (sink.sent, sink.dropped, sink.failures) == (1, 1, 1)
        assert "write failed" in logs[0]
        held = _now(sink._server.async_getValues(0, 3, 2, 2))  # while the loop stands still
        assert held == [7, 0]
        gate.set()
        assert client.read_holding_registers(0, count=5).registers == [1, 250, 7, 0, 1]
        assert client.read_coils(0, count=4).bits[:4] == [False, True, False, False]
    finally:
        gate.set()
        client.close()
        sink.close(timeout=1)


def test_server_sink_applies_on_its_loop_in_order_and_bounded():
    """A server sink hands each message straight to its loop (not its worker's queue); a loop
    that falls behind keeps the newest ``queue_size`` messages and counts the rest dropped."""
    from pymodbus.client import ModbusTcpClient

    from defectssft_line.sinks.modbus import ModbusServerSink

    port = free_port()
    sink = ModbusServerSink(port=port, queue_size=3)
    sink.inline = False  # the loop path (OPC UA's; Modbus writes its datastore at once)
    sink.start()
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    gate = threading.Event()
    try:
        loop = sink.direct_loop()
        assert loop is not None
        # One part first, so the loop's consumer has started and waits (without it, the
        # consumer's first step may land between the parts below and take some early).
        sink.publish(result_msg(0))
        assert sink.flush(WAIT) and sink.sent == 1
        loop.call_soon_threadsafe(gate.wait, WAIT)  # the loop stands still meanwhile
        for n in range(1, 6):
            sink.publish(result_msg(n))
        assert sink.pending() == 5 and not sink._q  # all with the loop, none with the worker
        gate.set()
        assert sink.flush(WAIT)
        assert (sink.sent, sink.dropped) == (4, 2)  # 0, then 3, 4, 5 applied; 1, 2 dropped
        assert client.connect()
        assert client.read_holding_registers(2, count=2).registers == [5, 0]
    finally:
        gate.set()
        client.close()
        sink.close(timeout=1)
    assert sink.stats()["pending"] == 0


def test_modbus_client_writes_into_a_plc_and_survives_its_restart():
    from pymodbus.client import ModbusTcpClient

    port = free_port()
    (plc,) = build_sinks({"modbus_server": {"port": port}})  # stands in for the PLC
    plc.start()
    (sink,) = build_sinks({"modbus_client": {"host": "127.0.0.1", "port": port, "unit": 1}})
    sink.first_wait, sink.max_wait = 0.05, 0.2
    sink.start()
    reader = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    try:
        assert sink.connected
        sink.publish(result_msg(5, "OK", class_index=0, score=0.01))
        assert reader.connect()
        wait_for(lambda: reader.read_holding_registers(2, count=1).registers == [5])
        assert reader.read_coils(0, count=4).bits[:4] == [True, False, False, False]
        reader.close()
        plc.close(timeout=0.5)  # the PLC goes away ...
        sink.publish(result_msg(6))
        sink.publish(result_msg(7))
        plc2 = build_sinks({"modbus_server": {"port": port}})[0]
        plc2.start()  # ... and comes back: nothing queued is lost
        try:
            assert reader.connect()
            wait_for(lambda: reader.read_holding_registers(2, count=1).registers == [7])
            assert sink.dropped == 0 and sink.sent == 3
        finally:
            reader.close()
            plc2.close(timeout=0.5)
    finally:
        sink.close(timeout=0.5)
        plc.close(timeout=0.5)


# --------------------------------------------------------------------------- MQTT


class Broker:
    """An amqtt broker on 127.0.0.1 on its own event-loop thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.broker: Any = None

    def start(self) -> None:
        from amqtt.broker import Broker as AB

        cfg = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

        async def go():
            b = AB(cfg)
            await b.start()
            return b

        self.broker = asyncio.run_coroutine_threadsafe(go(), self.loop).result(WAIT)

    def stop(self) -> None:
        if self.broker is not None:
            asyncio.run_coroutine_threadsafe(self.broker.shutdown(), self.loop).result(WAIT)
            self.broker = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)


def subscriber(port: int, topic: str) -> tuple[Any, list]:
    import paho.mqtt.client as mqtt

    got: list = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{time.monotonic_ns()}")
    c.on_message = lambda _c, _u, m: got.append((m.topic, json.loads(m.payload), m.retain))
    c.connect("127.0.0.1", port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    return c, got


def test_mqtt_results_status_and_broker_restart():
    port = free_port()
    broker = Broker(port)
    broker.start()
    (sink,) = build_sinks({"mqtt": {"host": "127.0.0.1", "port": port, "topic": "cell1"}})
    sink.first_wait, sink.max_wait = 0.05, 0.2
    sink.status = lambda: {"alarm": "", "dropped_total": 0}
    try:
        sink.start()
        sub, got = subscriber(port, "cell1/#")
        wait_for(lambda: sub.is_connected())
        time.sleep(0.2)  # let the SUBSCRIBE settle (not asserted)
        sink.publish(result_msg(1))
        wait_for(lambda: any(t == "cell1/result" for t, _, _ in got))
        (res,) = [m for t, m, _ in got if t == "cell1/result"]
        assert res["verdict"] == "NG" and res["counter"] == 1 and "type" not in res
        sub.loop_stop()
        sub.disconnect()
        # the broker goes away and comes back: the queued message arrives after the reconnect
        broker.stop()
        sink.publish(result_msg(2))
        broker.start()
        sub, got = subscriber(port, "cell1/#")
        wait_for(lambda: any(t == "cell1/result" and m["counter"] == 2 for t, m, _ in got))
        # a new subscriber gets the retained status
        status = [m for t, m, retained in got if t == "cell1/status"]
        assert status and status[-1]["state"] == "online"
        sub.loop_stop()
        sub.disconnect()
    finally:
        sink.close(timeout=1)
    sub, got = subscriber(port, "cell1/status")
    try:
        wait_for(lambda: got)
        assert got[-1][1]["state"] == "stopped" and got[-1][2]  # retained
    finally:
        sub.loop_stop()
        sub.disconnect()
        broker.close()


# --------------------------------------------------------------------------- archive, health


def test_archive_keeps_rejects_samples_ok_and_deletes_oldest(tmp_path):
    clock = iter(float(t) for t in range(1_700_000_000, 1_700_000_100))
    arch = Archive(tmp_path / "a", max_bytes=10_000, ok_every=3, clock=lambda: next(clock))
    blob = b"\x89PNG" + b"x" * 3000
    kept = [
        arch.save({"verdict": v, "file": f"p{i}.png"}, data=blob)
        for i, v in enumerate(["NG", "OK", "OK", "OK", "OK", "UNSURE"])
    ]
    assert [k is not None for k in kept] == [True, True, False, False, True, True]
    assert arch.total <= 10_000 and arch.deleted == 1  # the oldest part: image and JSON
    left = sorted(p.name for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(left) == 6 and not any("p0.png" in n for n in left)
    js = next((tmp_path / "a").rglob("*p5.png.json"))
    assert json.loads(js.read_text())["verdict"] == "UNSURE"
    # a second run counts what is there against the limit
    assert Archive(tmp_path / "a", max_bytes=10_000).total == arch.total
    # a disk that refuses (here: the archive path is a file): warning + counter, no exception
    (tmp_path / "blocked").write_text("")
    logs: list[str] = []
    bad = Archive(tmp_path / "blocked", max_bytes=10_000, log=logs.append)
    assert bad.save({"verdict": "NG", "file": "x.png"}, frame=np.zeros((4, 4), np.uint8)) is None
    assert bad.failures == 1 and len(logs) == 1 and "inspection goes on" in logs[0]


def test_reject_rate_and_drift_alarm():
    logs: list[str] = []
    h = Health(window=10, reject_rate=0.3, score_drift=0.2, log=logs.append)
    for _ in range(10):
        h.observe({"verdict": "OK", "score": 0.1})
    assert not h.alarm
    for _ in range(4):
        h.observe({"verdict": "NG", "score": 0.9})
    assert "reject rate 40.0%" in h.alarm and logs[-1].startswith("ALARM")
    for _ in range(10):
        h.observe({"verdict": "OK", "score": 0.45})  # no rejects, but the scores moved
    assert "drifted" in h.alarm
    for _ in range(10):
        h.observe({"verdict": "OK", "score": 0.1})
    assert not h.alarm and logs[-1].startswith("alarm cleared") and h.alarms_raised >= 2


def test_part_id_modes():
    out = LineOutputs(part_id="auto", classes=["ok", "scratch"])
    assert out.handle({"verdict": "OK", "file": "a.png"})["part_id"] == "a.png"
    assert out.handle({"verdict": "OK", "file": "f", "frame_id": 9}, camera=True)["part_id"] == "9"
    out = LineOutputs(part_id="counter")
    assert out.handle({"verdict": "OK", "file": "a.png"})["part_id"] == "1"
    with pytest.raises(LineError, match="--part-id"):
        LineOutputs(part_id="barcode")


def test_the_plc_gets_the_verdict_before_the_archive_writes_the_image(tmp_path):
    order: list[str] = []

    class Recorder(Sink):
        def publish(self, msg: dict[str, Any]) -> None:
            order.append(f"sink {msg['verdict']}")

    class Disk(Archive):
        def write(self, rec: dict[str, Any], *a: Any, **kw: Any) -> Any:
            order.append(f"archive {rec['verdict']}")
            return super().write(rec, *a, **kw)

    out = LineOutputs([Recorder("plc")], archive=Disk(tmp_path / "a", 10**6), part_id="counter")
    out.handle({"verdict": "NG", "file": "f1"}, frame=np.zeros((4, 4), np.uint8), camera=True)
    assert order == ["sink NG", "archive NG"]
    assert len(list((tmp_path / "a").rglob("*.png"))) == 1


def test_sinks_written_at_once_get_the_result_before_those_a_thread_away():
    order: list[str] = []

    class Recorder(Sink):
        def publish(self, msg: dict[str, Any]) -> None:
            order.append(f"{self.name} {msg['type']}")

    class Inline(Recorder):
        inline = True
        wants_busy = True

    out = LineOutputs([Recorder("hop"), Inline("inline"), Recorder("hop2")], part_id="counter")
    out.begin()
    out.handle({"verdict": "OK", "file": "f1"})
    assert order == ["inline busy", "inline result", "hop result", "hop2 result"]
    assert [s.name for s in out.sinks] == ["hop", "inline", "hop2"]  # as configured


def test_sink_config_errors(tmp_path):
    p = tmp_path / "line.yaml"
    p.write_text("opcua_server: {port: 4840}\nmodbus: {port: 502}\n")
    with pytest.raises(LineError, match="unknown key.*modbus"):
        load_config(p)
    with pytest.raises(LineError, match="unexpected keyword"):
        build_sinks({"mqtt": {"host": "x", "qos": 2}})
    assert host_port("4840", "127.0.0.1", 1, "x") == ("127.0.0.1", 4840)
    assert host_port("plc:502", None, 1, "x") == ("plc", 502)
    with pytest.raises(LineError, match="bad port"):
        host_port("plc:99999", None, 1, "--modbus-client")
    p.write_text("servers: fork\nmodbus_server: {port: 5020}\n")  # where the servers run
    with pytest.raises(LineError, match="servers must be one of process, thread"):
        load_config(p)
    with pytest.raises(LineError, match="servers must be one of"):
        build_sinks({"modbus_server": {"port": 5020}, "servers": "fork"})
    p.write_text("servers: thread\nmodbus_server: {port: 5020}\n")
    (sink,) = build_sinks(load_config(p))
    assert type(sink).__name__ == "ModbusServerSink"  # in this process


# --------------------------------------------------------------------------- the CLI


def test_cli_with_all_sinks_archive_and_metrics(model, images, tmp_path, capsys):
    mqtt_port = free_port()
    broker = Broker(mqtt_port)
    broker.start()
    sinks = tmp_path / "line.yaml"
    sinks.write_text(f"queue: 50\nopcua_server: {{port: {free_port()}}}\n")
    metrics = free_port()
    try:
        rc = main(
            [
                "run",
                "--model",
                str(model),
                "--input",
                str(images),
                "--sinks",
                str(sinks),
                "--modbus-server",
                str(free_port()),
                "--mqtt",
                f"127.0.0.1:{mqtt_port}",
                "--archive",
                str(tmp_path / "arch"),
                "--archive-max-gb",
                "0.01",
                "--metrics-port",
                str(metrics),
                "--alarm-window",
                "2",
                "--alarm-reject-rate",
                "0.5",
            ]
        )
    finally:
        broker.close()
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 0, err
    assert [r["part_id"] for r in rows] == [r["file"] for r in rows] and len(rows) == 3
    for name in ("OPC UA server", "Modbus server", "MQTT"):
        assert "3 sent, 0 dropped" in next(ln for ln in err.splitlines() if name in ln)
    assert "archive" in err and len(list((tmp_path / "arch").rglob("*.png"))) == 3
    assert "ALARM: reject rate 100.0%" in err


def test_cli_plc_refusing_or_port_in_use(model, images, capsys):
    closed = free_port()
    rc = main(
        [
            "run",
            "--model",
            str(model),
            "--input",
            str(images),
            "--modbus-client",
            f"127.0.0.1:{closed}",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0 and len(out.splitlines()) == 3  # the line keeps running
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "inspection goes on" in warn[0]
    assert "0 sent, 3 dropped" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for flag, more in (
            ("--modbus-server", []),
            ("--opcua-server", []),
            ("--opcua-server", ["--servers", "process"]),  # in a process of its own
            ("--metrics-port", []),
        ):
            args = ["run", "--model", str(model), "--input", str(images), flag, str(port)]
            rc = main(args + more)
            out, err = capsys.readouterr()
            errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
            assert rc == 2 and out == "" and len(errors) == 1, err
            assert "cannot start" in errors[0] or "cannot listen" in errors[0], err


def test_core_capture_from_a_genicam_camera(tmp_path, capsys):
    from defectssft.cli import main as core_main

    proj = tmp_path / "proj"
    assert core_main(["init", str(proj), "--classes", "ok,scratch"]) == 0
    capsys.readouterr()
    args = ["capture", str(proj), "--camera", "genicam://0", "--cti", CTI, "--max-frames", "2"]
    assert core_main([*args, "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["frames"] == 2 and counts["added"] == 2
    args[3] = "genicam://SN-NOPE"
    assert core_main(args) != 0
    assert "serial or index 'SN-NOPE'" in capsys.readouterr().err


class FakeNode:
    def __init__(self, value: Any = None) -> None:
        self.value = value
        self.executed = 0

    def execute(self) -> None:
        self.executed += 1


class FakeNodeMap:
    """Node access as harvesters gives it; reading ``PixelFormat`` fails once ``gone``."""

    def __init__(self) -> None:
        self.nodes = {"PixelFormat": FakeNode("Mono8"), "TriggerSoftware": FakeNode()}
        self.gone = False

    @property
    def PixelFormat(self) -> FakeNode:  # noqa: N802 - the GenICam name
        return self.get_node("PixelFormat")

    def has_node(self, name: str) -> bool:
        return name in self.nodes

    def get_node(self, name: str) -> FakeNode:
        if self.gone:
            raise OSError("device removed")
        return self.nodes[name]


class FakeAcquirer:
    """``try_fetch`` plays a script: a frame (HxW uint8) or 'timeout' (None: no frame yet; with
    ``fetch_timeout: 0`` one look is one whole fetch timeout)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.remote_device = type("Dev", (), {"node_map": FakeNodeMap()})()
        self.fetches = 0
        self.queued: list[int] = []  # buffers handed back to the producer, by fetch number

    def try_fetch(self, timeout: float) -> Any:
        self.fetches += 1
        item = self.script.pop(0)
        if isinstance(item, str):
            if item == "gone":
                self.remote_device.node_map.gone = True
            return None
        comp = type(
            "C", (), {"data": item.ravel(), "data_format": "Mono8", "height": 4, "width": 6}
        )()
        buf = type("B", (), {})()
        buf.payload = type("P", (), {"components": [comp]})()
        buf.frame_id, buf.timestamp = self.fetches, 1000 * self.fetches
        buf.queue = lambda n=self.fetches: self.queued.append(n)
        return buf

    def stop(self) -> None:
        self.queued.append(-1)  # the acquisition stops (every buffer must be back by now)

    def destroy(self) -> None:
        pass


def test_software_and_hardware_trigger_reads():
    from defectssft_line.genicam import GenICamCapture

    frame = np.full((4, 6), 7, np.uint8)
    meta: list[dict] = []
    # software trigger: every read fires TriggerSoftware; an overdue frame = camera lost
    ia = FakeAcquirer([frame, "timeout"])
    soft = CameraSettings(trigger="software", fetch_timeout=0)
    cap = GenICamCapture(None, ia, soft, "genicam://x", meta.append)
    ok, got = cap.read()
    assert ok and got.tolist() == frame.tolist() and meta[-1] == {"frame_id": 1, "camera_ts": 1000}
    assert cap.read() == (False, None)
    assert ia.remote_device.node_map.nodes["TriggerSoftware"].executed == 2
    # hardware trigger: no part for a while is waiting, not a loss ...
    hard = CameraSettings(trigger="hardware", fetch_timeout=0)
    ia = FakeAcquirer(["timeout", "timeout", frame])
    cap = GenICamCapture(None, ia, hard, "genicam://x", meta.append)
    ok, got = cap.read()
    assert ok and ia.fetches == 3 and meta[-1]["frame_id"] == 3
    # ... but a camera that is gone fails the liveness read (the stream then reconnects)
    ia = FakeAcquirer(["timeout", "gone"])
    cap = GenICamCapture(None, ia, hard, "genicam://x", meta.append)
    with pytest.raises(OSError, match="device removed"):
        cap.read()


def test_a_frame_is_handed_over_before_its_buffer_goes_back():
    from defectssft_line.genicam import GenICamCapture

    frame = np.full((4, 6), 7, np.uint8)
    ia = FakeAcquirer([frame, frame, frame])
    cap = GenICamCapture(None, ia, CameraSettings(fetch_timeout=0), "genicam://x", dict)
    cap.harvester = type("H", (), {"reset": lambda self: ia.queued.append(-2)})()
    assert cap.read()[0] and ia.queued == []  # frame 1 handed over, its buffer kept
    cap.recycle()  # the read-ahead: once frame 1 is being scored
    cap.recycle()  # nothing held: nothing twice
    assert ia.queued == [1]
    assert cap.read()[0] and ia.queued == [1]
    assert cap.read()[0] and ia.queued == [1, 2]  # at the latest when the next is awaited
    cap.release()
    assert ia.queued == [1, 2, 3, -1, -2]  # every buffer back before the acquisition stops


def test_simulated_camera_frames_never_alias_a_buffer_the_producer_refills():
    from defectssft_line.camera import CameraStream

    opener = GenICamOpener(CTI, CameraSettings(buffers=2, nodes={"AcquisitionFrameRate": 200.0}))
    stream = CameraStream("genicam://0", opener=opener, log=lambda m: None)
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    with __import__("contextlib").closing(stream.frames()) as frames:
        for n, frame in enumerate(frames):
            kept.append((frame, frame.copy()))  # each buffer is refilled after its recycle
            if n == 7:
                break
    assert all(np.array_equal(f, copy) for f, copy in kept)
    assert not np.array_equal(kept[0][1], kept[-1][1])  # the producer did draw new images


def test_mqtt_last_will_when_the_line_pc_vanishes():
    port = free_port()
    broker = Broker(port)
    broker.start()
    (sink,) = build_sinks({"mqtt": {"host": "127.0.0.1", "port": port, "topic": "cell2"}})
    sink.status = lambda: {"alarm": "", "dropped_total": 0}
    sub = None
    try:
        sink.start()
        sub, got = subscriber(port, "cell2/status")
        wait_for(lambda: any(m["state"] == "online" for _, m, _ in got))
        sink._client.socket().close()  # the connection dies without a DISCONNECT
        wait_for(lambda: any(m["state"] == "offline" for _, m, _ in got))
        n = len(got)
        wait_for(lambda: any(m["state"] == "online" for _, m, _ in got[n:]))  # back by itself
    finally:
        if sub is not None:
            sub.loop_stop()
            sub.disconnect()
        sink.close(timeout=1)
        broker.close()


def test_prometheus_metrics():
    port = free_port()
    h = Health(window=2, reject_rate=0.4, log=lambda m: None)
    h.serve_metrics(port)
    try:
        for v in ("OK", "NG", "NG"):
            h.observe({"verdict": v, "score": 0.9, "latency_ms": 12.0})
        h.update_gauges({"MQTT b:1883": 4}, archive_failures=2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
    finally:
        h.close()
    assert 'defectssft_line_verdicts_total{verdict="NG"} 2.0' in body
    assert "defectssft_line_latency_seconds_count 3.0" in body
    assert "defectssft_line_alarm 1.0" in body and "defectssft_line_reject_rate 1.0" in body
    assert 'defectssft_line_sink_dropped{sink="MQTT b:1883"} 4.0' in body
    assert "defectssft_line_archive_failures 2.0" in body


def test_opcua_security_settings_are_checked(tmp_path):
    port = free_port()
    bad = {"opcua_server": {"port": port, "security": {"policy": "Rot13"}}}
    with pytest.raises(LineError, match="unknown OPC UA security policy 'Rot13'"):
        build_sinks(bad)[0].start()
    missing = {
        "opcua_server": {
            "port": port,
            "security": {"certificate": str(tmp_path / "no.der"), "private_key": "k.pem"},
        }
    }
    with pytest.raises(LineError, match="OPC UA certificate .*no.der"):
        build_sinks(missing)[0].start()


def _quiet_line(part_id: str):
    from pymodbus.client import ModbusTcpClient

    from defectssft_line.sinks.modbus import ModbusServerSink
    from defectssft_line.sinks.opcua import OpcUaServerSink

    port = free_port()
    mb = ModbusServerSink(port=port, log=lambda m: None)
    opc = OpcUaServerSink(port=free_port(), log=lambda m: None)
    out = LineOutputs([opc, mb], part_id=part_id, classes=["ok", "ng"], log=lambda m: None)
    out.start()
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=10)
    assert client.connect()
    return out, client


def _read_counter(client, got: list) -> threading.Thread:
    def read() -> None:
        r = client.read_holding_registers(2, count=2).registers
        got.append(r[0] | (r[1] << 16))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def test_servers_answer_a_read_during_scoring_with_the_part_it_waited_for(monkeypatch):
    """While a frame is scored (begin .. handle) the servers' loops wait: a PLC read issued
    meanwhile is answered after the part's values are written, with them, not with the last
    part's; with --part-id plc they never wait; and a wait ends by itself (QUIET_MAX_S)."""
    import defectssft_line.lineio as lineio

    monkeypatch.setattr(lineio, "QUIET_MAX_S", WAIT)  # no expiry within this test
    out, client = _quiet_line("counter")
    try:
        out.begin()
        got: list[int] = []
        t = _read_counter(client, got)
        t.join(0.3)
        assert t.is_alive() and not got  # the loop waits while the part is scored
        out.handle({"verdict": "NG", "class": "ng", "file": "f1"})
        t.join(WAIT)
        assert got == [1]  # this part's counter, not the previous (0)
    finally:
        client.close()
        out.close(timeout=1)

    monkeypatch.setattr(lineio, "QUIET_MAX_S", 0.01)  # a part that never ends: the cap
    out, client = _quiet_line("counter")
    try:
        out.begin()
        got = []
        _read_counter(client, got).join(WAIT)
        assert got == [0]  # answered without the part, within the cap
    finally:
        client.close()
        out.close(timeout=1)

    monkeypatch.setattr(lineio, "QUIET_MAX_S", WAIT)
    out, client = _quiet_line("plc")  # the PLC's part id must land while the part is scored
    try:
        out.begin()
        got = []
        _read_counter(client, got).join(WAIT)
        assert got == [0]  # answered at once: the loops do not wait
    finally:
        client.close()
        out.close(timeout=1)
