"""Background work for the window: a function on a QThreadPool thread, a hot folder on a thread,
and JSON-lines child processes (training, export, prediction) read through QProcess.

Results come back as Qt signals on the GUI thread; nothing here blocks the window.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QRunnable, QThreadPool, Signal

from defectssft.errors import DefectssftError


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(str)
    progress = Signal(int, int)


class Task(QRunnable):
    """Run ``fn(*args, **kwargs)`` on a pool thread; ``signals.done(result)`` or ``failed(msg)``.

    When ``fn`` accepts a ``progress`` keyword, pass ``with_progress=True`` to get
    ``signals.progress(done, total)``.
    """

    def __init__(
        self, fn: Callable[..., Any], *args: Any, with_progress: bool = False, **kwargs: Any
    ) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.signals = _Signals()
        if with_progress:
            self.kwargs["progress"] = lambda d, t: self.signals.progress.emit(d, t)

    def run(self) -> None:
        try:
            result = self.fn(*self.args, **self.kwargs)
        except DefectssftError as e:
            self.signals.failed.emit(str(e))
            return
        except Exception as e:  # noqa: BLE001 - any failure must reach the user as one line
            self.signals.failed.emit(f"{type(e).__name__}: {e}".split("\n")[0])
            return
        self.signals.done.emit(result)


def start_task(
    pool: QThreadPool,
    task: Task,
    done: Callable[[Any], None] | None = None,
    failed: Callable[[str], None] | None = None,
) -> Task:
    if done is not None:
        task.signals.done.connect(done)
    if failed is not None:
        task.signals.failed.connect(failed)
    task.setAutoDelete(False)  # the Python object owns the signals; keep it until done
    pool.start(task)
    return task


class HotFolderThread(QObject):
    """``defectssft.ingest.HotFolder.run`` on a Python thread; ``ingested`` per file."""

    ingested = Signal(str, str)  # path, status
    stopped = Signal()

    def __init__(self, project: Any, folder: str | Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        from defectssft.ingest import HotFolder  # raises IngestError for a bad folder

        self.folder = Path(folder)
        self._stop = threading.Event()
        self._hot = HotFolder(
            project, folder, settle=0.5, on_result=lambda p, r: self.ingested.emit(str(p), r.status)
        )
        self._thread = threading.Thread(target=self._run, name="hot-folder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._hot.run(self._stop, poll=0.5)
        finally:
            self.stopped.emit()

    def stop(self, wait: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(wait)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


class JsonProcess(QObject):
    """A child ``python -m MODULE ARGS`` whose stdout is JSON lines.

    ``event(dict)`` per JSON line, ``text(str)`` per other line (stdout and stderr), and
    ``finished(exit_code, last_error_line)`` at the end.
    """

    event = Signal(dict)
    text = Signal(str)
    finished = Signal(int, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.proc = QProcess(self)
        self.proc.readyReadStandardOutput.connect(self._read_out)
        self.proc.readyReadStandardError.connect(self._read_err)
        self.proc.finished.connect(self._finished)
        self.proc.errorOccurred.connect(self._error)
        self._out = b""
        self._err = b""
        self._last_error = ""
        self.lines: list[str] = []

    def start(
        self,
        module: str,
        args: list[str],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self._out, self._err, self._last_error = b"", b"", ""
        self.lines = []
        environment = QProcessEnvironment.systemEnvironment()
        environment.insert("PYTHONUNBUFFERED", "1")
        for k, v in (env or {}).items():
            environment.insert(k, v)
        self.proc.setProcessEnvironment(environment)
        if cwd:
            self.proc.setWorkingDirectory(cwd)
        self.proc.start(sys.executable, ["-m", module, *args])

    def running(self) -> bool:
        return self.proc.state() != QProcess.ProcessState.NotRunning

    def terminate(self) -> None:
        """SIGTERM: the child saves what it has and exits."""
        if self.running():
            self.proc.terminate()

    def kill(self) -> None:
        if self.running():
            self.proc.kill()

    def _read_out(self) -> None:
        self._out += bytes(self.proc.readAllStandardOutput().data())
        *lines, self._out = self._out.split(b"\n")
        for raw in lines:
            self._line(raw.decode(errors="replace").rstrip("\r"))

    def _read_err(self) -> None:
        self._err += bytes(self.proc.readAllStandardError().data())
        *lines, self._err = self._err.split(b"\n")
        for raw in lines:
            self._text(raw.decode(errors="replace").rstrip("\r"))

    def _line(self, line: str) -> None:
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                self.event.emit(obj)
                return
        self._text(line)

    def _text(self, line: str) -> None:
        if not line:
            return
        self.lines.append(line)
        if line.startswith("error:"):
            self._last_error = line[len("error:") :].strip()
        self.text.emit(line)

    def _finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._read_out()
        self._read_err()
        for rest in (self._out, self._err):
            if rest.strip():
                self._line(rest.decode(errors="replace").strip())
        self._out, self._err = b"", b""
        if status == QProcess.ExitStatus.CrashExit and code == 0:
            code = -1
        self.finished.emit(int(code), self._last_error)

    def _error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._last_error = f"cannot start {sys.executable}"
            self.finished.emit(-1, self._last_error)
