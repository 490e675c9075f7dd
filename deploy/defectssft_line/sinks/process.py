"""A server sink (OPC UA, Modbus) in a process of its own (``--servers process``; the default,
``thread``, runs it in the line's process).

A PLC that polls a server in the line's process is answered by Python code that needs the
same GIL as the thread that scores parts (``lineio`` holds the requests that arrive while a
part is scored, so they cost the part nothing, but they still take the GIL between parts).
Here each server runs in a child process of the runtime, with its own interpreter, and a
server library that hangs or crashes cannot take the line with it; the line hands it each
result as one datagram and never waits for it. The price (BENCHMARKS.md, line end to end): the
child wakes on another CPU for each part, so a value is held later than by a server the
scoring thread writes itself (about 0.9 ms for OPC UA, 0.3 ms for Modbus on the test machine).

``ProcessServerSink`` stands in the line for one server sink. ``publish`` sends the message on
the caller's thread without blocking (``Sink.inline``): a child too far behind to take it
(its socket buffer full) drops that result, counted. The child (``python -m
defectssft_line.sinks.process FD``) builds the same server sink the line would have built
(``build_sinks`` with ``servers: thread``), starts it, and publishes what arrives, in order;
every ``STATS_S`` seconds it reports the sink's counts (``sent``, ``dropped``, ...), which the
line's summary and status show, and it forwards its log lines. The line's status goes to it on
every heartbeat (the status node / registers); ``plc_part_id`` (``--part-id plc``) asks it for
the value the PLC wrote, one round trip. A child that dies is a failed connection: one warning
line, results queued on the sink's bounded queue, and a new child after the usual backoff. The
child ends when the line closes it, or by itself when the line's process is gone (its end of
the socket pair closes); Ctrl-C and SIGTERM are for the line, which then closes the child.

Messages are JSON, one per ``SOCK_SEQPACKET`` datagram of a Unix socket pair (so a datagram is
whole or not sent at all); nothing is unpickled. Systems without ``AF_UNIX`` ``SOCK_SEQPACKET``
(Windows, macOS) keep the servers in the line's process (``supported``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from defectssft_line.sinks.base import Sink

MAX_MSG = 1 << 16  # the largest message either side sends (bytes; under the socket buffer)
STATS_S = 1.0  # the child reports its counts this often
START_TIMEOUT_S = 30.0  # for the child to import its server library and bind
CLOSE_TIMEOUT_S = 5.0  # for the child's last counts after a close


def supported() -> str | None:
    """None when this system can run servers in their own process, else why not (one line)."""
    if not hasattr(socket, "AF_UNIX") or not hasattr(socket, "SOCK_SEQPACKET"):
        return f"no Unix datagram sockets on {sys.platform}"
    try:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError as e:
        return f"Unix datagram sockets refused ({e.strerror or e})"
    a.close()
    b.close()
    return None


def _encode(msg: dict[str, Any]) -> bytes:
    data = json.dumps(msg, default=str, separators=(",", ":")).encode()
    if len(data) > MAX_MSG:
        raise ValueError(f"message of {len(data)} bytes is over the {MAX_MSG}-byte limit")
    return data


def trace_held(sink: Sink, done: dict[int, float]) -> None:
    """Note when ``sink`` holds each result (``time.perf_counter``, by its ``counter``): after
    ``write_now`` (an ``inline`` server), ``apply`` (on its loop) or ``send`` (its worker).
    Instrumentation for benchmarks (``line_e2e.py``); the clock is shared by the processes."""
    send, apply, write_now = sink.send, sink.apply, sink.write_now

    def note(msg: dict[str, Any]) -> None:
        if msg.get("type") == "result":
            done[int(msg["counter"])] = time.perf_counter()

    def timed(msg: dict[str, Any]) -> None:
        send(msg)
        note(msg)

    async def timed_apply(msg: dict[str, Any]) -> None:
        await apply(msg)
        note(msg)

    def timed_now(msg: dict[str, Any]) -> None:
        write_now(msg)
        note(msg)

    sink.send, sink.apply, sink.write_now = timed, timed_apply, timed_now  # type: ignore[method-assign]


class ProcessServerSink(Sink):
    """One server sink run by a child process (see the module docstring). ``template`` is the
    sink as the line would run it in its own process (not started): its settings, name and
    data layout; ``trace`` has the child note when it held each result (``held``, after
    ``close``)."""

    server = True
    inline = True

    def __init__(
        self, kind: str, settings: dict[str, Any], template: Sink, trace: bool = False, **kw: Any
    ) -> None:
        super().__init__(template.name, **kw)
        self.kind = template.kind
        self.wants_busy = bool(getattr(template, "wants_busy", False))
        self.url = getattr(template, "url", None)
        self.host, self.port = getattr(template, "host", None), getattr(template, "port", None)
        self._config = {
            "type": "config",
            "kind": kind,
            "settings": settings,
            "queue": self.queue_size,
            "heartbeat_s": self.heartbeat_s,
            "trace": trace,
        }
        self.held: dict[int, float] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawned: tuple[subprocess.Popen[bytes], socket.socket] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Condition()  # the child's replies and counts
        self._child: dict[str, Any] = {}  # its sink's latest counts
        self._final = False
        self._answers: dict[int, str | None] = {}
        self._asked = 0
        self._closing = False

    # ------------------------------------------------------------------ the child's life
    def _spawn(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "defectssft_line.sinks.process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return proc, ours

    def prestart(self) -> None:
        """Start the child now, so that several start at once (``LineOutputs.start``);
        ``open`` then waits for it to be ready."""
        if self._spawned is None:
            try:
                proc, sock = self._spawn()
            except OSError:  # open tries again and says why
                return
            self._spawned = (proc, sock)
            with contextlib.suppress(OSError):
                sock.sendall(_encode(self._config))

    def open(self) -> None:
        spawned, self._spawned = self._spawned, None
        self.shut()  # a child that died: its socket and process are gone for good
        if spawned is None:
            proc, sock = self._spawn()
            sock.sendall(_encode(self._config))
        else:
            proc, sock = spawned
        with self._lock:
            self._proc, self._sock = proc, sock
            self._closing, self._final = False, False
        sock.settimeout(START_TIMEOUT_S)
        try:
            reply = json.loads(sock.recv(MAX_MSG) or b"{}")
        except (OSError, ValueError) as e:
            raise OSError(f"its process did not start ({e})") from e
        finally:
            sock.settimeout(None)
        if reply.get("type") != "ready":
            code = proc.poll()
            raise OSError(
                reply.get("error")
                or f"its process did not start (exit code {code if code is not None else '?'})"
            )
        self._reader = threading.Thread(
            target=self._read, args=(sock, proc), name=f"{self.name} reader", daemon=True
        )
        self._reader.start()

    def _read(self, sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        """The child's messages: counts, log lines, part-id answers; its end (EOF)."""
        while True:
            try:
                data = sock.recv(MAX_MSG)
            except OSError:
                data = b""
            if not data:
                break
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            kind = msg.get("type")
            if kind == "log":
                self._log(str(msg.get("line")))
            elif kind == "stats":
                with self._lock:
                    self._child = msg
                    if msg.get("final"):
                        self._final = True
                        held = msg.get("held") or {}
                        self.held.update({int(k): float(v) for k, v in held.items()})
                    self._lock.notify_all()
            elif kind == "part_id":
                with self._lock:
                    self._answers[int(msg.get("seq", 0))] = msg.get("value")
                    self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()
        try:
            code = proc.wait(2)
        except subprocess.TimeoutExpired:
            code = None
        with self._lock:  # the line closed it, or the worker already saw it go
            if self._closing or self._sock is not sock:
                return
            self.connected = False  # the worker starts a new child after the backoff
            self.failures += 1
            self.last_error = f"its process ended (exit code {code})"
        self._log(f"warning: {self.name}: {self.last_error}; starting a new one")

    def process_tasks(self) -> list[int]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return []
        try:
            return [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        except OSError:
            return []

    # ------------------------------------------------------------------ the sink's hooks
    def write_now(self, msg: dict[str, Any]) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionError("its process is not running")
        try:
            sock.send(_encode(msg), socket.MSG_DONTWAIT)
        except BlockingIOError:
            raise ConnectionError("its process is behind (socket buffer full)") from None
        except OSError:
            self.connected = False
            raise

    def send(self, msg: dict[str, Any]) -> None:
        """From the worker (a queue after a restart): waits up to a second for room."""
        sock = self._sock
        if sock is None:
            raise ConnectionError("its process is not running")
        deadline = time.monotonic() + 1.0
        while True:
            try:
                sock.send(_encode(msg), socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConnectionError("its process is behind (socket buffer full)") from None
                time.sleep(0.005)

    def beat(self, status: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise ConnectionError(f"its process ended (exit code {proc.poll() if proc else None})")
        with contextlib.suppress(BlockingIOError):  # the status again in a second
            self.write_now({"type": "status", "status": status})

    def plc_part_id(self) -> str | None:
        if not self.connected or self._sock is None:
            return None
        with self._lock:
            self._asked += 1
            seq = self._asked
        try:
            self.write_now({"type": "part_id", "seq": seq})
        except (ConnectionError, OSError, ValueError):
            return None
        deadline = time.monotonic() + 0.25
        with self._lock:
            while seq not in self._answers and time.monotonic() < deadline and self.connected:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            value = self._answers.pop(seq, None)
            self._answers.clear()  # answers that came too late are nobody's
        return value

    def farewell(self, status: dict[str, Any]) -> None:
        """Close the child: it flushes its server, reports its last counts and exits."""
        sock = self._sock
        if sock is None:
            return
        self._closing = True
        try:
            sock.sendall(_encode({"type": "close", "status": status}))
        except OSError:
            return
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        with self._lock:
            while not self._final and time.monotonic() < deadline:
                if self._reader is None or not self._reader.is_alive():
                    break
                self._lock.wait(0.05)

    def shut(self) -> None:
        with self._lock:
            self._closing = True
            sock, self._sock = self._sock, None
            proc, self._proc = self._proc, None
        spawned, self._spawned = self._spawned, None
        if spawned is not None:  # started early, never opened
            spawned[1].close()
            with contextlib.suppress(OSError):
                spawned[0].kill()
            spawned[0].wait()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if proc is not None:
            try:
                proc.wait(CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(2)

    def stats(self) -> dict[str, Any]:
        """The counts of the server in the child (as of its last report) with what never
        reached it (``dropped``, ``failures`` here: a full socket, a dead child)."""
        own = super().stats()
        with self._lock:
            child = dict(self._child)
        out = dict(own)
        out["sent"] = int(child.get("sent", 0))
        out["dropped"] = own["dropped"] + int(child.get("dropped", 0))
        out["failures"] = own["failures"] + int(child.get("failures", 0))
        out["reconnects"] = own["reconnects"] + int(child.get("reconnects", 0))
        out["last_error"] = child.get("last_error") or own["last_error"]
        return out


# ---------------------------------------------------------------------- the child


def _child(fd: int) -> int:
    """The child's main loop (see the module docstring)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    out_lock = threading.Lock()

    def tell(msg: dict[str, Any]) -> None:
        with out_lock, contextlib.suppress(OSError, ValueError):
            sock.sendall(_encode(msg))

    config = json.loads(sock.recv(MAX_MSG) or b"{}")
    from defectssft_line.model import LineError
    from defectssft_line.sinks import build_sinks

    try:
        (sink,) = build_sinks(
            {
                config["kind"]: config.get("settings") or {},
                "queue": config.get("queue", 1000),
                "servers": "thread",
            },
            log=lambda line: tell({"type": "log", "line": line}),
        )
    except LineError as e:
        tell({"type": "error", "error": str(e)})
        return 2
    sink.heartbeat_s = float(config.get("heartbeat_s", sink.heartbeat_s))
    status: dict[str, Any] = {}
    sink.status = lambda: status
    held: dict[int, float] = {}
    if config.get("trace"):
        trace_held(sink, held)
    try:
        sink.start()
    except LineError:
        tell({"type": "error", "error": sink.last_error})
        return 2
    tell({"type": "ready", "pid": os.getpid()})
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(STATS_S):
            tell({"type": "stats", **sink.stats()})

    threading.Thread(target=report, name="counts", daemon=True).start()
    closed = False
    while True:
        try:
            data = sock.recv(MAX_MSG)
        except OSError:
            break
        if not data:  # the line's process is gone
            break
        msg = json.loads(data)
        kind = msg.get("type")
        if kind == "status":
            status.clear()
            status.update(msg.get("status") or {})
        elif kind == "part_id":
            try:
                value = sink.plc_part_id()
            except Exception:  # noqa: BLE001 - no value: the line uses its counter
                value = None
            tell({"type": "part_id", "seq": msg.get("seq"), "value": value})
        elif kind == "close":
            status.clear()
            status.update(msg.get("status") or {})
            closed = True
            break
        else:
            sink.publish(msg)
    stop.set()
    sink.close(2.0)
    if closed:
        tell({"type": "stats", "final": True, **sink.stats(), "held": held})
    sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print(
            "usage: python -m defectssft_line.sinks.process FD (the line starts it)",
            file=sys.stderr,
        )
        return 2
    return _child(int(args[0]))


if __name__ == "__main__":
    sys.exit(main())
