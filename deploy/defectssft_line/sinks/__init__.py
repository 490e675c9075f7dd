"""Verdict sinks for PLCs and plant systems: OPC UA, Modbus TCP, MQTT (each an optional extra).

Any number at once, from flags or a sinks YAML (``--sinks line.yaml``); flags add to the file::

    queue: 1000                       # messages each sink may hold while its peer is away
    opcua_server: {host: 127.0.0.1, port: 4840, security: {...}}
    opcua_client: {url: "opc.tcp://plc:4840", nodes: {Verdict: "ns=3;s=Cam1.Verdict"}}
    modbus_server: {host: 127.0.0.1, port: 5020}
    modbus_client: {host: 192.168.0.10, port: 502, unit: 1, coil_base: 0, register_base: 0}
    mqtt: {host: broker, port: 1883, topic: defectssft/line}
    servers: thread                   # or process: where the OPC UA / Modbus servers run

See ``base`` for the queueing and reconnect rules, each module for its data layout, and
``process`` for ``servers: process`` (each server in a child process; the default is
``thread``: in the line's process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectssft_line.model import LineError
from defectssft_line.sinks.base import DEFAULT_QUEUE, Sink

KINDS = ("opcua_server", "opcua_client", "modbus_server", "modbus_client", "mqtt")
MODES = ("process", "thread")  # where the server sinks run (``servers``)

__all__ = ["KINDS", "Sink", "build_sinks", "host_port", "load_config"]


def host_port(text: str, default_host: str | None, default_port: int, what: str) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` or ``PORT`` -> (host, port); LineError with one line if bad."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = ("", text) if text.isdigit() else (text, str(default_port))
    host = host or (default_host or "")
    if not host:
        raise LineError(f"{what}: give HOST:PORT, got {text!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise LineError(f"{what}: bad port in {text!r}")
    return host, int(port)


def load_config(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise LineError(f"sinks file {p}: cannot read ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise LineError(f"sinks file {p}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict):
        raise LineError(f"sinks file {p}: expected a mapping")
    unknown = set(raw) - {*KINDS, "queue", "servers"}
    if unknown:
        raise LineError(
            f"sinks file {p}: unknown key(s) {', '.join(sorted(unknown))} "
            f"(known: queue, servers, {', '.join(KINDS)})"
        )
    if raw.get("servers", "thread") not in MODES:
        raise LineError(f"sinks file {p}: servers must be one of {', '.join(MODES)}")
    for k in KINDS:
        if k in raw and not isinstance(raw[k], dict):
            raise LineError(f"sinks file {p}: {k} must be a mapping of settings")
    return raw


def build_sinks(config: dict[str, Any], log: Any = None) -> list[Sink]:
    """The sinks a merged config asks for (not started). LineError for a bad setting or a
    missing extra. ``servers: process`` puts each server sink in a child process of its own
    (``process.py``); ``trace_held`` (benchmarks) has those children note when they held
    each result."""
    kw: dict[str, Any] = {"queue_size": int(config.get("queue", DEFAULT_QUEUE))}
    if log is not None:
        kw["log"] = log
    mode = config.get("servers", "thread")
    if mode not in MODES:
        raise LineError(f"sinks: servers must be one of {', '.join(MODES)}, not {mode!r}")
    sinks: list[Sink] = []

    def server(kind: str, template: Sink) -> Sink:
        if mode != "process":
            return template
        from defectssft_line.sinks.process import ProcessServerSink

        trace = bool(config.get("trace_held"))
        return ProcessServerSink(kind, dict(config[kind]), template, trace=trace, **kw)

    try:
        if "opcua_server" in config:
            from defectssft_line.sinks.opcua import OpcUaServerSink, _asyncua

            _asyncua()
            sinks.append(server("opcua_server", OpcUaServerSink(**config["opcua_server"], **kw)))
        if "opcua_client" in config:
            from defectssft_line.sinks.opcua import OpcUaClientSink, _asyncua

            _asyncua()
            sinks.append(OpcUaClientSink(**config["opcua_client"], **kw))
        if "modbus_server" in config:
            from defectssft_line.sinks.modbus import ModbusServerSink, _pymodbus

            _pymodbus()
            sinks.append(server("modbus_server", ModbusServerSink(**config["modbus_server"], **kw)))
        if "modbus_client" in config:
            from defectssft_line.sinks.modbus import ModbusClientSink, _pymodbus

            _pymodbus()
            sinks.append(ModbusClientSink(**config["modbus_client"], **kw))
        if "mqtt" in config:
            from defectssft_line.sinks.mqtt import MqttSink, _paho

            _paho()
            sinks.append(MqttSink(**config["mqtt"], **kw))
    except TypeError as e:  # an unknown setting name in the YAML
        raise LineError(f"sinks: {e}") from e
    return sinks
