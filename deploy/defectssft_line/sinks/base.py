"""What every verdict sink shares: a bounded queue, a worker thread, reconnect with backoff.

A sink never stops inspection. ``publish`` only appends to the sink's queue (``queue_size``
messages); when the queue is full the oldest message is dropped, and counted when it is a
result (``sent`` and ``dropped`` count results, not busy or status messages). The worker thread
sends in order; a send that fails closes the connection, logs one line, and the same message is
sent again after a reconnect (backoff doubling from ``first_wait`` to ``max_wait`` seconds, as
for the cameras), so a short drop-out loses nothing. The worker also sends a heartbeat
every ``heartbeat_s`` seconds.

A subclass implements ``open`` (connect or bind; raise on failure), ``send`` (one message),
``beat`` (the heartbeat and status), ``shut`` (close the connection) and, for a server the PLC
writes to, ``plc_part_id``.

A client that can read the part id the PLC wrote before the trigger (``--part-id plc``)
sets ``reads_part_id`` and implements ``read_part_id``: ``request_part_id`` (when a frame
arrives) queues the read behind the messages already waiting, the worker thread does it,
and ``plc_part_id`` (when the verdict is ready) waits for that read at most
``PART_ID_WAIT_S``; a read that comes too late, or fails, gives no part id (the line then
uses its counter) and is never taken for the next part's.

A server in this process that runs on an asyncio loop (OPC UA, Modbus) also implements
``direct_loop`` and ``apply`` (the send, as a coroutine on that loop): ``publish`` then hands
each message straight to that loop, one thread hop from the scoring thread instead of two (no
worker-thread wake-up in between). The loop keeps the order and the same bound: past
``queue_size`` waiting messages the oldest is dropped and counted. The worker thread then only
beats (and takes over again, with the queue, if the loop goes away).

A server whose data lives in this process in a store that any thread may write at once
(Modbus's datastore: plain lists, no lock, no I/O) sets ``inline`` and implements
``write_now``: ``publish`` then writes the message on the caller's thread, no hop at all, so
the value is there when ``publish`` returns. A write that fails is counted (``failures``,
the result ``dropped``) and logged, never raised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from defectssft_line.camera import DEFAULT_FIRST_WAIT, DEFAULT_MAX_WAIT, backoff
from defectssft_line.model import LineError

DEFAULT_QUEUE = 1000
HEARTBEAT_S = 1.0
PART_ID_WAIT_S = 0.25  # how long a verdict waits for the PLC's part id (client sinks)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _results(msgs: Any) -> int:
    """How many of ``msgs`` are results (what ``sent`` and ``dropped`` count)."""
    return sum(1 for m in msgs if m.get("type", "result") == "result")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else "") or type(e).__name__


class Sink:
    """Base class: see the module docstring."""

    kind = "sink"
    #: True for a server (bind): failing to start stops the run. A client whose peer (PLC,
    #: broker) is not up yet keeps retrying in the background instead.
    server = False
    #: True for a client that reads the PLC's part id (``read_part_id``).
    reads_part_id = False
    #: True for a server written on the caller's thread (``write_now``; module docstring).
    inline = False

    def __init__(
        self,
        name: str,
        queue_size: int = DEFAULT_QUEUE,
        first_wait: float = DEFAULT_FIRST_WAIT,
        max_wait: float = DEFAULT_MAX_WAIT,
        heartbeat_s: float = HEARTBEAT_S,
        log: Callable[[str], None] = _stderr,
    ) -> None:
        self.name = name
        self.queue_size = max(1, int(queue_size))
        self.first_wait, self.max_wait = first_wait, max(max_wait, first_wait)
        self.heartbeat_s = heartbeat_s
        self._log = log
        self._q: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self.reconnects = 0
        self.last_error = ""
        self.status: Callable[[], dict[str, Any]] = dict  # the line's status (set by the hub)
        self._direct: asyncio.AbstractEventLoop | None = None  # see the module docstring
        self._lq: deque[dict[str, Any]] = deque()  # waiting on the loop (touched there only)
        self._wake: asyncio.Event | None = None
        self._consumer: concurrent.futures.Future[None] | None = None
        self._inflight = 0  # handed to the loop, not yet applied or dropped (under _cond)
        self._part_seq = 0  # the latest part-id read asked for (under _cond)
        self._part: tuple[int, str | None] = (0, None)  # (read number, value) last read

    # ---------------------------------------------------------------- subclass hooks
    def prestart(self) -> None:
        """Begin what ``open`` will wait for (a child process), so sinks start together."""

    def open(self) -> None:
        raise NotImplementedError

    def send(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    def beat(self, status: dict[str, Any]) -> None:
        """Heartbeat and status, every heartbeat_s seconds (default: nothing)."""

    def shut(self) -> None:
        """Close the connection (or stop the server); must not raise."""

    def farewell(self, status: dict[str, Any]) -> None:
        """Last words on a clean exit, while still connected (default: nothing)."""

    def plc_part_id(self) -> str | None:
        """A part id the PLC wrote before the trigger, if this sink offers one (a client:
        the value of the read ``request_part_id`` asked for, waited for a short while)."""
        if not self.reads_part_id:
            return None
        deadline = time.monotonic() + PART_ID_WAIT_S
        with self._cond:
            if self._part[0] != self._part_seq:
                if not self.connected:
                    return None
            while self._part[0] != self._part_seq and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            seq, value = self._part
            return value if seq == self._part_seq else None

    def read_part_id(self) -> str | None:
        """Read the part id from the PLC (clients with ``reads_part_id``); raise on failure."""
        raise NotImplementedError

    def request_part_id(self) -> None:
        """A frame arrived: read the PLC's part id for it (on the worker thread)."""
        if not self.reads_part_id:
            return
        with self._cond:
            self._part_seq += 1
            seq = self._part_seq
        self.publish({"type": "part_id", "seq": seq})

    def _read_part(self, msg: dict[str, Any]) -> None:
        """On the worker thread: do a requested read (a failure raises: reconnect)."""
        value = self.read_part_id()
        with self._cond:
            self._part = (int(msg["seq"]), value)
            self._cond.notify_all()

    def process_tasks(self) -> list[int]:
        """The thread ids of a child process this sink runs (``process.py``), for the line's
        CPU placement (default: none)."""
        return []

    def direct_loop(self) -> asyncio.AbstractEventLoop | None:
        """The running loop ``apply`` runs on, for a server in this process (default: none)."""
        return None

    async def apply(self, msg: dict[str, Any]) -> None:
        """``send`` as a coroutine on ``direct_loop`` (sinks that have one)."""
        raise NotImplementedError

    def write_now(self, msg: dict[str, Any]) -> None:
        """``send`` on the caller's thread, at once (``inline`` sinks)."""
        raise NotImplementedError

    def _write_inline(self, msg: dict[str, Any]) -> None:
        result = msg.get("type", "result") == "result"
        try:
            self.write_now(msg)
        except Exception as e:  # noqa: BLE001 - one line, counted; inspection goes on
            self.failures += 1
            self.dropped += int(result)
            self.last_error = first_line(e)
            if self.failures <= 10 or self.failures % 100 == 0:
                self._log(f"warning: {self.name}: write failed ({self.last_error})")
            return
        if result:
            self.sent += 1

    # ---------------------------------------------------------------- the direct path
    def _go_direct(self) -> None:
        loop = self.direct_loop()
        if loop is not None:
            self._lq = lq = deque()
            self._consumer = asyncio.run_coroutine_threadsafe(self._consume(lq), loop)
            self._direct = loop

    def _settle(self, dropped: int = 0) -> None:
        with self._cond:
            self._inflight = max(0, self._inflight - 1)
            self.dropped += dropped
            self._cond.notify_all()

    def _arrive(self, msg: dict[str, Any]) -> None:
        """On the loop: queue ``msg`` for ``_consume`` (bounded like the worker's queue)."""
        if len(self._lq) >= self.queue_size:
            self._settle(dropped=_results([self._lq.popleft()]))
        self._lq.append(msg)
        if self._wake is not None:
            self._wake.set()

    async def _consume(self, lq: deque[dict[str, Any]]) -> None:
        """On the loop: apply the messages in order (cancelled when the loop goes away)."""
        wake = self._wake = asyncio.Event()
        while True:
            while not lq:
                wake.clear()
                await wake.wait()
            msg = lq.popleft()
            try:
                await self.apply(msg)
                if msg.get("type", "result") == "result":
                    self.sent += 1
            except Exception as e:  # noqa: BLE001 - one line, counted; the server goes on
                self.failures += 1
                self.last_error = first_line(e)
                if self.failures <= 10 or self.failures % 100 == 0:
                    self._log(f"warning: {self.name}: send failed ({self.last_error})")
            finally:
                self._settle()

    def _leave_direct(self) -> None:
        """The loop is going away: what it still holds counts as dropped."""
        self._direct = None
        if self._consumer is not None:
            self._consumer.cancel()
            self._consumer = None
        with self._cond:
            self.dropped += _results(list(self._lq))  # (those still on their way: not seen)
            self._inflight = 0
            self._cond.notify_all()
        self._lq, self._wake = deque(), None

    # ---------------------------------------------------------------- life cycle
    def start(self) -> None:
        """Connect or bind now. A server that cannot bind raises LineError (one line); a
        client that cannot connect logs one warning line and keeps retrying."""
        try:
            self.open()
            self.connected = True
            self._go_direct()
        except Exception as e:  # noqa: BLE001 - every failure is one line
            self.shut()
            self.last_error = first_line(e)
            if self.server:
                raise LineError(f"{self.name}: cannot start ({self.last_error})") from e
            self.failures += 1
            self._log(
                f"warning: {self.name}: cannot connect ({self.last_error}); inspection goes on, "
                "retrying in the background"
            )
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()

    def publish(self, msg: dict[str, Any]) -> None:
        """Queue ``msg``; never blocks. A full queue drops its oldest message (counted).
        While the queue holds messages (a reconnect drains them on the worker), new ones join
        it rather than take the inline or direct path, so none overtakes an older one."""
        with self._cond:
            behind = bool(self._q)
        if self.inline and self.connected and not behind:
            self._write_inline(msg)
            return
        loop = self._direct
        if loop is not None and not behind:
            with self._cond:
                self._inflight += 1
            try:
                loop.call_soon_threadsafe(self._arrive, msg)
                return
            except RuntimeError:  # the loop was closed meanwhile: the worker's queue
                with self._cond:
                    self._inflight -= 1
        with self._cond:
            if len(self._q) >= self.queue_size:
                self.dropped += _results([self._q.popleft()])
            self._q.append(msg)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._q) + self._inflight

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the queue to empty; True when it did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._q or self._inflight) and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            return not self._q and not self._inflight

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (up to ``timeout`` s), then stop; the rest counts as dropped."""
        if self._thread is not None:
            self.flush(timeout)
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            self._thread.join(timeout=max(1.0, timeout))
        with self._cond:
            self.dropped += _results(self._q)
            self._q.clear()
        if self.connected:
            try:
                self.farewell(self.status())
            except Exception:  # noqa: BLE001 - best effort
                pass
        self._leave_direct()
        self.shut()
        self.connected = False

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "sent": self.sent,
            "dropped": self.dropped,
            "pending": self.pending(),
            "reconnects": self.reconnects,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    # ---------------------------------------------------------------- worker
    def _status(self) -> dict[str, Any]:
        """The line's status; a failure to assemble it never costs the connection."""
        try:
            return self.status()
        except Exception:  # noqa: BLE001
            return {}

    def _fail(self, what: str, e: BaseException) -> None:
        self.failures += 1
        self.last_error = first_line(e)
        self.connected = False
        self._leave_direct()
        self.shut()
        if self.failures <= 10 or self.failures % 100 == 0:
            self._log(f"warning: {self.name}: {what} failed ({self.last_error}); reconnecting")

    def _reconnect(self) -> bool:
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            if self._stop.wait(backoff(attempt, self.first_wait, self.max_wait)):
                return False
            try:
                self.open()
            except Exception as e:  # noqa: BLE001
                self.failures += 1
                self.last_error = first_line(e)
                self.shut()
                continue
            self.connected = True
            self.reconnects += 1
            self._go_direct()
            self._log(f"{self.name}: reconnected after {attempt} attempt(s)")
            return True
        return False

    def _work(self) -> None:
        next_beat = time.monotonic()
        while not self._stop.is_set():
            with self._cond:
                if not self._q:
                    self._cond.wait(max(0.0, next_beat - time.monotonic()))
                msg = self._q[0] if self._q else None
            if self._stop.is_set():
                return
            if not self.connected and not self._reconnect():
                return
            if time.monotonic() >= next_beat:  # also while parts keep the queue busy
                next_beat = time.monotonic() + self.heartbeat_s
                try:
                    self.beat(self._status())
                except Exception as e:  # noqa: BLE001
                    self._fail("heartbeat", e)
                    continue
            if msg is None:
                continue
            try:
                if msg.get("type") == "part_id":
                    if msg["seq"] == self._part_seq:  # a read nobody waits for is skipped
                        self._read_part(msg)
                else:
                    self.send(msg)
            except Exception as e:  # noqa: BLE001 - kept in the queue, sent after reconnect
                self._fail("send", e)
                continue
            result = msg.get("type", "result") == "result"  # sent counts results only
            with self._cond:
                if self._q and self._q[0] is msg:
                    self._q.popleft()
                elif result:  # pushed out of a full queue while it was on its way: it arrived
                    self.dropped -= 1
                self._cond.notify_all()
            if result:
                self.sent += 1
