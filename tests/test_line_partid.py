"""``--part-id plc`` with the PLC *client* sinks: the line reads the part id the PLC wrote
before the trigger (Modbus register 10 / OPC UA ``PartIdIn`` on the PLC) when the frame
arrives, and puts it in the record and every sink. Against real in-process PLC stand-ins
(a pymodbus server, an asyncua server); a PLC that is away gives the counter at once."""

from __future__ import annotations

from typing import Any

import pytest

from defectssft_line.lineio import LineOutputs
from defectssft_line.sinks import build_sinks
from tests.test_line_integration import free_port, wait_for

pytest.importorskip("asyncua")
pytest.importorskip("pymodbus")
pytest.importorskip("paho.mqtt")


def part(outputs: LineOutputs, frame_id: int) -> str:
    """One camera part through the outputs, as the runtime does it: begin, then handle."""
    outputs.begin()
    rec: dict[str, Any] = {"file": f"frame{frame_id}.png", "verdict": "OK", "frame_id": frame_id}
    return outputs.handle(rec, camera=True)["part_id"]


def test_modbus_client_reads_the_part_id_the_plc_wrote():
    from pymodbus.client import ModbusTcpClient

    port = free_port()
    (plc,) = build_sinks({"modbus_server": {"port": port}})  # stands in for the PLC
    plc.start()
    (sink,) = build_sinks(
        {"modbus_client": {"host": "127.0.0.1", "port": port, "register_base": 0}}
    )
    logs: list[str] = []
    outputs = LineOutputs([sink], part_id="plc", classes=["ok", "ng"], log=logs.append)
    outputs.start()
    writer = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    try:
        assert writer.connect() and sink.connected and not logs  # a client reads: no warning
        assert part(outputs, 7) == "7"  # the PLC wrote nothing yet: the counter (frame id)
        writer.write_register(10, 4711)  # the PLC, before it triggers the next part
        assert part(outputs, 8) == "4711"
        writer.write_register(10, 4712)
        rec = outputs.handle({"file": "a.png", "verdict": "NG"})  # a file: read on demand
        assert rec["part_id"] == "4712"
        wait_for(lambda: writer.read_holding_registers(6, count=1).registers == [4712])
    finally:
        writer.close()
        outputs.close(timeout=1)
        plc.close(timeout=0.5)


def test_opcua_client_reads_part_id_in_and_a_plc_away_gives_the_counter():
    from asyncua import ua
    from asyncua.sync import Server

    port = free_port()
    plc = Server()
    plc.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    idx = plc.register_namespace("urn:plc")
    obj = plc.nodes.objects.add_object(idx, "Cell")
    part_in = obj.add_variable(ua.NodeId("defectssft.PartIdIn", idx), "PartIdIn", "")
    part_out = obj.add_variable(ua.NodeId("defectssft.PartId", idx), "PartId", "")
    for v in (part_in, part_out):
        v.set_writable()
    plc.start()
    (sink,) = build_sinks({"opcua_client": {"url": f"opc.tcp://127.0.0.1:{port}/", "timeout": 2}})
    sink.first_wait, sink.max_wait = 0.05, 0.2
    outputs = LineOutputs([sink], part_id="plc", classes=["ok", "ng"], log=lambda m: None)
    outputs.start()
    try:
        part_in.write_value("A-17")
        assert part(outputs, 1) == "A-17"
        wait_for(lambda: part_out.read_value() == "A-17")  # the PLC gets its own id back
        part_in.write_value("A-18")
        assert part(outputs, 2) == "A-18"
    finally:
        plc.stop()
    wait_for(lambda: not sink.connected)  # the heartbeat found the PLC gone
    assert part(outputs, 3) == "3"  # the PLC is away: the counter, without waiting for it
    outputs.close(timeout=0.5)


def test_part_id_plc_without_a_plc_sink_warns_once():
    logs: list[str] = []
    (mqtt,) = build_sinks({"mqtt": {"host": "127.0.0.1", "port": free_port()}}, log=logs.append)
    outputs = LineOutputs([mqtt], part_id="plc", log=logs.append)
    outputs.start()
    try:
        said = [m for m in logs if "--part-id plc" in m]
        assert len(said) == 1 and "a client that reads it from the PLC" in said[0]
        assert part(outputs, 5) == "5"
    finally:
        outputs.close(timeout=0.5)
