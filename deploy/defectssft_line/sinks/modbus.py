"""Modbus TCP: verdicts as coils and holding registers (``pymodbus``), as server or client.

Server mode (``--modbus-server [HOST:]PORT``, default 127.0.0.1:5020) serves the map below to
any unit id; client mode (``--modbus-client HOST[:PORT]``, default port 502) writes it into a
PLC at ``coil_base`` / ``register_base`` (sinks YAML; default 0) for unit ``--modbus-unit``.

Coils (0-based, from ``coil_base``)::

    0 OK   1 NG   2 UNSURE   3 busy (set when a frame's scoring begins, cleared with its verdict)

Holding registers (0-based, from ``register_base``; one write per part, counter included)::

    0 class index (0xFFFF: ERROR)    1 score x 1000 (0xFFFF: none)   2 counter, low word
    3 counter, high word              4 verdict (0 OK, 1 NG, 2 UNSURE, 3 ERROR)
    5 frame id (low word)             6 part id (low word, when numeric)
    7 dropped messages (all sinks)    8 alarm (0/1)                  9 heartbeat (+1 a second)
    10 part id in: the PLC writes it before the trigger (``--part-id plc``; in client mode
       the line reads it from the PLC when a frame arrives)

Coils are written before the registers: a PLC that sees the counter change reads a finished
result. Needs the ``modbus`` extra.

The server sink writes each part's values into its datastore on the scoring thread, the moment
the verdict is published (``Sink.inline``), instead of one thread hop away on the server's
loop. That is safe because of how pymodbus's datastore (``SimDevice``) works: a write is plain
list work with no ``await`` that waits (no ``action`` is set), so its coroutine runs to its end
on the calling thread; each block (the coils' word, registers 0-9) is stored by one list slice
assignment, which the GIL makes atomic, so the server's loop answering a PLC's read sees a
block before or after, never half of it; and the coils are written by this sink only, all on
the scoring thread (busy and results), so their read-modify-write has no second writer. The
heartbeat (registers 7-9) and the PLC's part id (register 10) are other slices.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from defectssft_line.model import LineError
from defectssft_line.sinks.base import Sink

VERDICT_CODE = {"OK": 0, "NG": 1, "UNSURE": 2, "ERROR": 3}
N_COILS = 4
N_REGISTERS = 11
PART_ID_IN = 10


def _pymodbus() -> None:
    try:
        import pymodbus  # noqa: F401
    except ImportError as e:
        raise LineError(
            "Modbus sinks need the modbus extra: pip install 'defectssft-line[modbus]'"
        ) from e
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)


def coils(msg: dict[str, Any]) -> list[bool]:
    v = msg.get("verdict")
    return [v == "OK", v == "NG", v == "UNSURE", False]


def registers(msg: dict[str, Any], status: dict[str, Any], beat: int) -> list[int]:
    """The holding registers 0..9 for one result message."""
    verdict = msg.get("verdict") or "ERROR"
    idx = msg.get("class_index")
    score = msg.get("score")
    counter = int(msg.get("counter") or 0) & 0xFFFFFFFF
    part = str(msg.get("part_id") or "")
    return [
        0xFFFF if idx is None else int(idx) & 0xFFFF,
        0xFFFF if score is None else min(1000, max(0, round(float(score) * 1000))),
        counter & 0xFFFF,
        counter >> 16,
        VERDICT_CODE.get(verdict, 3),
        int(msg.get("frame_id") or 0) & 0xFFFF,
        int(part) & 0xFFFF if part.isdigit() else 0,
        int(status.get("dropped_total", 0)) & 0xFFFF,
        1 if status.get("alarm") else 0,
        beat & 0xFFFF,
    ]


def _now(coro: Any) -> Any:
    """Run a datastore coroutine that never waits to its end on this thread (the module
    docstring); one that would wait is closed there, an error (the rest of it not done)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the Modbus datastore would wait; write not done")


class ModbusServerSink(Sink):
    """A Modbus TCP server in this process, on its own event-loop thread; parts are written
    into its datastore on the publishing thread (the module docstring)."""

    kind = "modbus-server"
    server = True
    wants_busy = True
    inline = True

    def __init__(self, host: str = "127.0.0.1", port: int = 5020, **kw: Any) -> None:
        super().__init__(f"Modbus server {host}:{port}", **kw)
        self.host, self.port = host, int(port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._server: Any = None
        self._beat = 0
        self._regs = [0] * 10

    def _run(self, coro: Any, timeout: float = 5.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def open(self) -> None:
        _pymodbus()
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        device = SimDevice(
            id=0,
            simdata=(
                [SimData(0, count=N_COILS, values=False, datatype=DataType.BITS)],
                [SimData(0, count=1, values=False, datatype=DataType.BITS)],
                [SimData(0, count=N_REGISTERS, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
            ),
        )
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._loop_thread = threading.Thread(
            target=loop.run_forever, name=f"{self.name} loop", daemon=True
        )
        self._loop_thread.start()

        async def serve() -> Any:
            server = ModbusTcpServer(device, address=(self.host, self.port))
            try:
                await server.serve_forever(background=True)
            except RuntimeError as e:
                raise OSError(f"cannot listen on {self.host}:{self.port} (address in use?)") from e
            return server

        self._server = self._run(serve())

    def _set(self, fc: int, address: int, vals: list[Any]) -> None:
        self._run(self._server.async_setValues(0, fc, address, vals))

    async def apply(self, msg: dict[str, Any]) -> None:
        """One message: the busy coil, or coils then registers (on the server's loop, or at
        once on the calling thread through ``write_now``)."""
        server = self._server
        if msg.get("type") == "busy":
            await server.async_setValues(0, 5, 3, [True])
        elif msg.get("type") == "result":
            self._regs = registers(msg, self._status(), self._beat)
            await server.async_setValues(0, 15, 0, coils(msg))
            await server.async_setValues(0, 16, 0, self._regs)

    def send(self, msg: dict[str, Any]) -> None:
        self._run(self.apply(msg))  # from the worker thread: one hop to the loop

    def write_now(self, msg: dict[str, Any]) -> None:
        """``apply`` on the calling thread, into the datastore at once (module docstring)."""
        if self._server is None:
            raise ConnectionError("the Modbus server is not running")
        _now(self.apply(msg))

    def direct_loop(self) -> Any:
        return self._loop if self._server is not None else None

    def beat(self, status: dict[str, Any]) -> None:
        self._beat = (self._beat + 1) & 0xFFFF
        self._set(
            16,
            7,
            [
                int(status.get("dropped_total", 0)) & 0xFFFF,
                1 if status.get("alarm") else 0,
                self._beat,
            ],
        )

    def plc_part_id(self) -> str | None:
        if not self.connected or self._server is None:
            return None
        value = _now(self._server.async_getValues(0, 3, PART_ID_IN, 1))[0]
        return str(value) if value else None

    def shut(self) -> None:
        loop, server = self._loop, self._server
        self._server = None
        if loop is None:
            return
        if server is not None:
            try:
                self._run(server.shutdown())
            except Exception:  # noqa: BLE001
                pass
        loop.call_soon_threadsafe(loop.stop)
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
        self._loop = None


class ModbusClientSink(Sink):
    """Writes the coils and registers into a PLC (Modbus TCP client)."""

    kind = "modbus-client"
    wants_busy = True
    reads_part_id = True

    def __init__(
        self,
        host: str,
        port: int = 502,
        unit: int = 1,
        coil_base: int = 0,
        register_base: int = 0,
        timeout: float = 2.0,
        **kw: Any,
    ) -> None:
        super().__init__(f"Modbus client {host}:{port}", **kw)
        self.host, self.port, self.unit = host, int(port), int(unit)
        self.coil_base, self.register_base, self.timeout = (
            int(coil_base),
            int(register_base),
            timeout,
        )
        self._client: Any = None
        self._beat = 0

    def open(self) -> None:
        _pymodbus()
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient(self.host, port=self.port, timeout=self.timeout, retries=0)
        self._client = client
        if not client.connect():
            raise ConnectionError(
                f"cannot connect to {self.host}:{self.port} (refused or unreachable)"
            )

    def _check(self, resp: Any) -> None:
        if resp is None or resp.isError():
            raise ConnectionError(f"PLC answered with an error: {resp}")

    def send(self, msg: dict[str, Any]) -> None:
        c = self._client
        if msg.get("type") == "busy":
            self._check(c.write_coil(self.coil_base + 3, True, device_id=self.unit))
            return
        if msg.get("type") != "result":
            return
        self._check(c.write_coils(self.coil_base, coils(msg), device_id=self.unit))
        regs = registers(msg, self._status(), self._beat)
        self._check(c.write_registers(self.register_base, regs, device_id=self.unit))

    def read_part_id(self) -> str | None:
        resp = self._client.read_holding_registers(
            self.register_base + PART_ID_IN, count=1, device_id=self.unit
        )
        self._check(resp)
        value = resp.registers[0]
        return str(value) if value else None

    def beat(self, status: dict[str, Any]) -> None:
        self._beat = (self._beat + 1) & 0xFFFF
        regs = [
            int(status.get("dropped_total", 0)) & 0xFFFF,
            1 if status.get("alarm") else 0,
            self._beat,
        ]
        self._check(self._client.write_registers(self.register_base + 7, regs, device_id=self.unit))

    def shut(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
