"""OPC UA: verdicts as variables a PLC or SCADA reads or subscribes to (``asyncua``).

Server mode (``--opcua-server [HOST:]PORT``, default host 127.0.0.1) publishes, under
Objects, an ``Inspection`` object (namespace ``urn:defectssft:line``)::

    Verdict (String)  Class (String)  Score (Double)  PartId (String)  FrameId (Int64)
    Counter/{Total, OK, NG, UNSURE, ERROR} (UInt32)   ModelVersion (String)
    Heartbeat (UInt32, +1 a second)  LastError (String)  Alarm (Boolean)
    Status (String, JSON: sinks' dropped counts, alarm, archive)  PartIdIn (String, writable)

Per part the values are written first and ``Counter/Total`` last, so a client that watches
the counter reads a consistent set; the server skips values that did not change (the counters
of the other verdicts, the model version), which no client can tell apart. A result is held
at once, on the thread that publishes it (``Sink.inline``): each node's Value attribute in the
server's address space is replaced by one assignment (atomic under the GIL, so the loop that
answers a client's read sees the old value or the new one), and the subscribers are then
notified on the server's loop, in order, with those values, as asyncua's own write would. With
an asyncua that keeps values elsewhere the sink falls back to writing on the loop. A PLC that wants its own part id writes ``PartIdIn`` before
it triggers the camera (``--part-id plc``). Security: ``security: {policy:
Basic256Sha256_SignAndEncrypt, certificate: cert.der, private_key: key.pem}`` in the sinks
YAML (default: no security, which suits a cell network only).

Client mode (``--opcua-client URL``) writes the same values to existing nodes of a PLC's
server: node ids ``<prefix><Name>`` (``--opcua-nodes``, default ``ns=2;s=defectssft.``) or
a ``nodes:`` map in the sinks YAML; a name without a node is skipped. The value is written
with the node's own data type. With ``--part-id plc`` the line reads the PLC's part id from
its node ``PartIdIn`` (``<prefix>PartIdIn``, or ``PartIdIn`` in the map) when a frame arrives. ``security: "Basic256Sha256,SignAndEncrypt,cert.der,key.pem"``
(asyncua's security string) signs and encrypts the session.

Needs the ``opcua`` extra.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from defectssft_line.model import LineError
from defectssft_line.sinks.base import Sink

NAMESPACE = "urn:defectssft:line"
VERDICT_NAMES = ("OK", "NG", "UNSURE", "ERROR")
FIELDS = (
    "Verdict",
    "Class",
    "Score",
    "PartId",
    "FrameId",
    "ModelVersion",
    "LastError",
    "Alarm",
    "Status",
    "Heartbeat",
) + tuple(f"Counter/{v}" for v in ("Total", *VERDICT_NAMES))


def _asyncua() -> Any:
    try:
        import asyncua  # noqa: F401
    except ImportError as e:
        raise LineError(
            "OPC UA sinks need the opcua extra: pip install 'defectssft-line[opcua]'"
        ) from e
    for name in ("asyncua", "asyncua.server", "asyncua.client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from asyncua import ua

    return ua


def values(msg: dict[str, Any]) -> dict[str, Any]:
    """The node values for one result message, Counter/Total last."""
    counts = msg.get("counts") or {}
    out: dict[str, Any] = {
        "Verdict": msg.get("verdict") or "",
        "Class": msg.get("class") or "",
        "Score": float(msg["score"]) if msg.get("score") is not None else -1.0,
        "PartId": str(msg.get("part_id") or ""),
        "FrameId": int(msg.get("frame_id") or 0),
        "ModelVersion": msg.get("model_version") or "",
    }
    if msg.get("error"):
        out["LastError"] = str(msg["error"])
    for v in VERDICT_NAMES:
        out[f"Counter/{v}"] = int(counts.get(v, 0))
    out["Counter/Total"] = int(msg.get("counter") or 0)
    return out


def status_values(status: dict[str, Any], beat: int) -> dict[str, Any]:
    return {
        "Heartbeat": beat,
        "Alarm": bool(status.get("alarm")),
        "Status": json.dumps(status, sort_keys=True),
    }


def endpoint_url(host: str, port: int) -> str:
    return f"opc.tcp://{host}:{port}/defectssft/"


class OpcUaServerSink(Sink):
    """An OPC UA server in this process (see the module docstring)."""

    kind = "opcua-server"
    server = True
    inline = True  # values held at once (``write_now``); off when asyncua is not as expected

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4840,
        security: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(f"OPC UA server {host}:{port}", **kw)
        self.host, self.port = host, int(port)
        self.url = endpoint_url(host, port)
        self.security = security or {}
        self._server: Any = None
        self._nodes: dict[str, Any] = {}
        self._types: dict[str, Any] = {}
        self._shown: dict[str, Any] = {}  # the value each node holds (written by this sink)
        self._held: dict[str, Any] | None = None  # each node's Value attribute (write_now)
        self._notifying: set[Any] = set()  # subscriber notifications under way (on the loop)
        self._notify_lock: asyncio.Lock | None = None  # made on the loop, at first use
        self._beat = 0

    def open(self) -> None:
        ua = _asyncua()
        from asyncua.sync import Server

        server = Server()
        self._server = server
        server.tloop.name = f"{self.name} loop"  # the thread that answers clients
        server.set_endpoint(self.url)
        server.set_server_name("defectssft-line")
        sec = self.security
        if sec:
            policy = sec.get("policy", "Basic256Sha256_SignAndEncrypt")
            try:
                server.set_security_policy([getattr(ua.SecurityPolicyType, policy)])
            except AttributeError:
                raise LineError(f"unknown OPC UA security policy {policy!r}") from None
            for key, load in (
                ("certificate", server.load_certificate),
                ("private_key", server.load_private_key),
            ):
                if sec.get(key):
                    try:
                        load(str(sec[key]))
                    except Exception as e:  # noqa: BLE001
                        raise LineError(f"OPC UA {key} {sec[key]}: {e}") from e
        idx = server.register_namespace(NAMESPACE)
        obj = server.nodes.objects.add_object(idx, "Inspection")
        vt = ua.VariantType
        kinds = {
            "Verdict": ("", vt.String),
            "Class": ("", vt.String),
            "Score": (-1.0, vt.Double),
            "PartId": ("", vt.String),
            "FrameId": (0, vt.Int64),
            "ModelVersion": ("", vt.String),
            "Heartbeat": (0, vt.UInt32),
            "LastError": ("", vt.String),
            "Alarm": (False, vt.Boolean),
            "Status": ("{}", vt.String),
        }
        self._shown = {}
        for name, (init, t) in kinds.items():
            self._nodes[name] = obj.add_variable(idx, name, init, varianttype=t)
            self._types[name] = t
            self._shown[name] = init
        counter = obj.add_object(idx, "Counter")
        for v in ("Total", *VERDICT_NAMES):
            self._nodes[f"Counter/{v}"] = counter.add_variable(idx, v, 0, varianttype=vt.UInt32)
            self._types[f"Counter/{v}"] = vt.UInt32
            self._shown[f"Counter/{v}"] = 0
        self._nodes["PartIdIn"] = obj.add_variable(idx, "PartIdIn", "", varianttype=vt.String)
        self._nodes["PartIdIn"].set_writable()
        server.start()
        self._held = self._value_attributes(server)
        self.inline = self._held is not None

    def _value_attributes(self, server: Any) -> dict[str, Any] | None:
        """Each node's Value attribute in the server's address space (what a client's read
        returns), or None when this asyncua keeps it otherwise (the loop path then)."""
        from asyncua import ua

        try:
            aspace = server.aio_obj.iserver.aspace
            held = {
                name: aspace[node.nodeid].attributes[ua.AttributeIds.Value]
                for name, node in self._nodes.items()
            }
        except (AttributeError, KeyError, TypeError):
            return None
        ok = all(
            hasattr(a, "value") and isinstance(getattr(a, "datachange_callbacks", None), dict)
            for a in held.values()
        )
        return held if ok else None

    def _changed(self, vals: dict[str, Any]) -> list[tuple[str, Any]]:
        """(name, DataValue) of the values that changed, in order (Counter/Total last)."""
        from asyncua import ua

        shown = self._shown
        out = [
            (name, ua.DataValue(ua.Variant(value, self._types[name])))
            for name, value in vals.items()
            if name not in shown or shown[name] != value or type(shown[name]) is not type(value)
        ]
        shown.update(vals)
        return out

    def write_now(self, msg: dict[str, Any]) -> None:
        """A result's values held at once, on the calling thread (module docstring): each
        node's Value attribute is replaced by one assignment, Counter/Total last, so a client's
        read answered by the server's loop sees the old or the new value, never half of one;
        subscribers are then notified on the loop, in order, with these values."""
        if msg.get("type") != "result":
            return
        server, held = self._server, self._held
        if server is None or held is None:
            raise ConnectionError("the OPC UA server is not running")
        writes = [(held[name], dv) for name, dv in self._changed(values(msg))]
        for attribute, dv in writes:
            attribute.value = dv
        watched = [(a, dv) for a, dv in writes if a.datachange_callbacks]
        if watched:
            server.tloop.loop.call_soon_threadsafe(self._notify_soon, watched)

    def _notify_soon(self, watched: list[tuple[Any, Any]]) -> None:
        """On the loop: start notifying; the task is kept until done (the loop holds only a
        weak reference to it)."""
        task = asyncio.ensure_future(self._notify(watched))
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    async def _notify(self, watched: list[tuple[Any, Any]]) -> None:
        """On the loop: the subscribers of each written value, as asyncua's own write does;
        one part after the other (the lock is first come, first served)."""
        if self._notify_lock is None:
            self._notify_lock = asyncio.Lock()
        async with self._notify_lock:
            for attribute, dv in watched:
                for handle, callback in list(attribute.datachange_callbacks.items()):
                    try:
                        await callback(handle, dv)
                    except Exception:  # noqa: BLE001 - a subscriber's failure: asyncua logs it
                        logging.getLogger("asyncua").debug("datachange callback failed")

    async def _write_async(self, vals: dict[str, Any]) -> None:
        """The values that changed, in order (Counter/Total last), on the server's loop."""
        server = self._server
        for name, dv in self._changed(vals):
            await server.aio_obj.write_attribute_value(self._nodes[name].nodeid, dv)

    def _write(self, vals: dict[str, Any]) -> None:
        """All values in one hop to the server's loop (from the worker thread)."""
        self._server.tloop.post(self._write_async(vals))

    def send(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "result":
            self._write(values(msg))

    def direct_loop(self) -> Any:
        return self._server.tloop.loop if self._server is not None else None

    async def apply(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "result":
            await self._write_async(values(msg))

    def beat(self, status: dict[str, Any]) -> None:
        self._beat = (self._beat + 1) % 2**32
        self._write(status_values(status, self._beat))

    def plc_part_id(self) -> str | None:
        node = self._nodes.get("PartIdIn")
        if node is None or not self.connected:
            return None
        value = node.read_value()
        return str(value) if value not in (None, "") else None

    def shut(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - a server that never started
            pass
        try:  # the sync wrapper's loop thread when start() failed
            server.tloop.stop()
        except Exception:  # noqa: BLE001
            pass


class OpcUaClientSink(Sink):
    """Writes the values to nodes of an existing OPC UA server (a PLC's)."""

    kind = "opcua-client"
    reads_part_id = True

    def __init__(
        self,
        url: str,
        prefix: str = "ns=2;s=defectssft.",
        nodes: dict[str, str] | None = None,
        timeout: float = 4.0,
        security: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(f"OPC UA client {url}", **kw)
        self.url, self.timeout = url, timeout
        self.security = security  # "Basic256Sha256,SignAndEncrypt,cert.der,key.pem"
        self.node_ids = (
            dict(nodes) if nodes else {f: f"{prefix}{f.replace('/', '.')}" for f in FIELDS}
        )
        self.part_node_id = self.node_ids.pop("PartIdIn", f"{prefix}PartIdIn")
        self._client: Any = None
        self._nodes: dict[str, tuple[Any, Any]] = {}
        self._part_node: Any = None
        self._beat = 0

    def open(self) -> None:
        _asyncua()
        from asyncua.sync import Client

        client = Client(self.url, timeout=self.timeout)
        self._client = client
        if self.security:
            client.set_security_string(self.security)
        client.connect()
        self._nodes = {}
        for name, nid in self.node_ids.items():
            node = client.get_node(nid)
            try:
                vtype = node.read_data_type_as_variant_type()
            except Exception:  # noqa: BLE001 - the PLC has no such node: that field is skipped
                continue
            self._nodes[name] = (node, vtype)
        if not self._nodes:
            raise LineError(f"{self.url}: none of the configured nodes exist")

    def _write(self, vals: dict[str, Any]) -> None:
        from asyncua import ua

        for name, value in vals.items():
            got = self._nodes.get(name)
            if got is not None:
                node, vtype = got
                node.write_value(ua.DataValue(ua.Variant(value, vtype)))

    def send(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "result":
            self._write(values(msg))

    def read_part_id(self) -> str | None:
        if self._part_node is None:
            self._part_node = self._client.get_node(self.part_node_id)
        value = self._part_node.read_value()
        return str(value) if value not in (None, "", 0) else None

    def beat(self, status: dict[str, Any]) -> None:
        self._beat = (self._beat + 1) % 2**32
        self._write(status_values(status, self._beat))

    def shut(self) -> None:
        self._part_node = None
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001
            pass
        try:
            client.tloop.stop()
        except Exception:  # noqa: BLE001
            pass
