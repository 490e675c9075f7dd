"""The OPC UA and Modbus servers in processes of their own (``servers: process``, the line's
default): real servers in child processes, real clients on 127.0.0.1. Values and the PLC's part
id arrive as with servers in the line's process; a child that dies is started again and the
parts published meanwhile arrive; a child ends when the line is gone; a port in use is one
line (a bad ``servers`` setting: ``test_line_integration``); the CPU placement keeps the
children's threads off the scoring CPU.

Every wait is bounded; nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import defectssft_line
from defectssft_line.lineio import LineOutputs
from defectssft_line.model import LineError
from defectssft_line.placement import Placement
from defectssft_line.sinks import build_sinks
from defectssft_line.sinks.process import ProcessServerSink, supported
from tests.test_line_integration import free_port, wait_for

pytest.importorskip("asyncua")
pytest.importorskip("pymodbus")
pytestmark = pytest.mark.skipif(supported() is not None, reason=str(supported()))


def part(outputs: LineOutputs, frame_id: int, verdict: str = "NG") -> dict[str, Any]:
    """One camera part through the outputs, as the runtime does it: begin, then handle."""
    outputs.begin()
    rec: dict[str, Any] = {
        "file": f"frame{frame_id}.png",
        "verdict": verdict,
        "class": "ng" if verdict == "NG" else "ok",
        "score": 0.75,
        "frame_id": frame_id,
    }
    return outputs.handle(rec, camera=True)


def opcua_nodes(port: int) -> tuple[Any, Any, int]:
    from asyncua.sync import Client

    client = Client(f"opc.tcp://127.0.0.1:{port}/defectssft/", timeout=5)
    client.connect()
    idx = client.get_namespace_index("urn:defectssft:line")
    return client, client.nodes.objects.get_child([f"{idx}:Inspection"]), idx


def test_servers_in_their_own_processes_serve_values_part_id_and_counts():
    from asyncua import ua
    from pymodbus.client import ModbusTcpClient

    opc_port, mb_port = free_port(), free_port()
    logs: list[str] = []
    sinks = build_sinks(
        {
            "opcua_server": {"port": opc_port},
            "modbus_server": {"port": mb_port},
            "servers": "process",
        },
        log=logs.append,
    )
    assert all(isinstance(s, ProcessServerSink) for s in sinks)
    assert [s.name for s in sinks] == [
        f"OPC UA server 127.0.0.1:{opc_port}",
        f"Modbus server 127.0.0.1:{mb_port}",
    ]
    outputs = LineOutputs(sinks, part_id="plc", classes=["ok", "ng"], log=logs.append)
    outputs.start()
    mb = ModbusTcpClient("127.0.0.1", port=mb_port, timeout=5)
    client = None
    try:
        ours = {int(t) for t in os.listdir("/proc/self/task")}
        theirs = set(outputs.process_tasks())
        assert theirs and not theirs & ours  # the servers' threads are not the line's
        client, insp, idx = opcua_nodes(opc_port)
        assert mb.connect()
        assert part(outputs, 1)["part_id"] == "1"  # nobody wrote a part id: the counter
        pin = insp.get_child(f"{idx}:PartIdIn")
        pin.write_value(ua.DataValue(ua.Variant("LOT7-0042", ua.VariantType.String)))
        assert part(outputs, 2)["part_id"] == "LOT7-0042"  # asked of the OPC UA server's child
        total = insp.get_child([f"{idx}:Counter", f"{idx}:Total"])
        wait_for(lambda: total.read_value() == 2)
        assert insp.get_child(f"{idx}:Verdict").read_value() == "NG"
        assert insp.get_child(f"{idx}:PartId").read_value() == "LOT7-0042"
        # coils OK/NG/UNSURE, registers class index, score x 1000, counter
        wait_for(lambda: mb.read_holding_registers(0, count=3).registers == [1, 750, 2])
        assert mb.read_coils(0, count=3).bits[:3] == [False, True, False]
        status = insp.get_child(f"{idx}:Status")  # the line's status reaches the child
        wait_for(lambda: json.loads(status.read_value()).get("parts") == 2)
        assert insp.get_child(f"{idx}:Heartbeat").read_value() >= 1
    finally:
        if client is not None:
            client.disconnect()
        mb.close()
        summary = outputs.close(timeout=2)
    assert f"OPC UA server 127.0.0.1:{opc_port}: 2 sent, 0 dropped, 0 reconnect(s)" in summary
    assert f"Modbus server 127.0.0.1:{mb_port}: 2 sent, 0 dropped, 0 reconnect(s)" in summary
    assert outputs.process_tasks() == [] and not logs


def test_a_server_process_that_dies_is_started_again_and_parts_still_arrive():
    port = free_port()
    logs: list[str] = []
    (sink,) = build_sinks({"opcua_server": {"port": port}, "servers": "process"}, log=logs.append)
    sink.first_wait = sink.max_wait = 0.1  # the backoff before a new child
    outputs = LineOutputs([sink], part_id="counter", classes=["ok", "ng"], log=logs.append)
    outputs.start()
    client = None
    try:
        part(outputs, 1)
        first = sink.process_tasks()[0]  # the child's main thread id is its pid
        os.kill(first, signal.SIGKILL)  # the server process crashes
        wait_for(lambda: any("its process ended" in ln for ln in logs))
        part(outputs, 2)  # published while no child runs: queued, not lost
        wait_for(lambda: sink.connected and sink.process_tasks())
        assert sink.process_tasks()[0] != first
        part(outputs, 3)
        client, insp, idx = opcua_nodes(port)
        total = insp.get_child([f"{idx}:Counter", f"{idx}:Total"])
        wait_for(lambda: total.read_value() == 3)
    finally:
        if client is not None:
            client.disconnect()
        summary = outputs.close(timeout=2)
    assert len([ln for ln in logs if ln.startswith("warning:")]) == 1, logs
    line = next(ln for ln in summary if ln.startswith("OPC UA server"))
    assert "1 reconnect(s)" in line and "dropped" in line


def test_a_port_in_use_is_one_line_and_leaves_no_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for kind, name in (("opcua_server", "OPC UA server"), ("modbus_server", "Modbus server")):
            (sink,) = build_sinks({kind: {"port": port}, "servers": "process"})
            with pytest.raises(LineError, match=f"{name} 127.0.0.1:{port}: cannot start") as e:
                LineOutputs([sink], classes=["ok"]).start()
            assert "\n" not in str(e.value)
            assert sink.process_tasks() == [] and sink._proc is None


def test_the_server_process_ends_when_the_line_is_gone():
    """A line that dies without closing (its socket end closes with it): the child exits."""
    (sink,) = build_sinks({"modbus_server": {"port": free_port()}, "servers": "process"})
    sink.start()
    proc = sink._proc
    assert proc is not None and proc.poll() is None
    sink._closing = True  # what a dead line cannot say: no restart, no warning
    sink._sock.close()
    sink._sock = None
    try:
        assert proc.wait(20) == 0
    finally:
        sink.close(timeout=0.5)


def test_the_child_refuses_to_run_by_hand():
    root = str(Path(defectssft_line.__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-m", "defectssft_line.sinks.process"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
        timeout=60,
    )
    assert out.returncode == 2 and "the line starts it" in out.stderr


def test_placement_puts_the_children_threads_with_the_other_threads():
    pinned: dict[int, set[int]] = {}
    lock = threading.Lock()

    def setter(tid: int, cpus: set[int]) -> None:
        with lock:
            pinned[tid] = set(cpus)

    me = threading.get_native_id()
    children = [9001, 9002]
    placement = Placement(
        "auto",
        allowed={0, 1},
        isolated=set(),
        platform="linux",
        setter=setter,
        getter=lambda tid: {0, 1},
        tasks=lambda: [me, 17],
    )
    placement.extra_tasks = lambda: list(children)
    placement.apply()
    assert pinned == {me: {1}, 17: {0}, 9001: {0}, 9002: {0}}
    children.append(9003)  # a new child (a restart): placed before the next part
    placement.keep()
    assert pinned[9003] == {0}
    placement.release()
    assert pinned[9001] == {0, 1}
