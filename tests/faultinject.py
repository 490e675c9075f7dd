"""Run a ``defectssft`` command and SIGKILL it at the N-th file-system or database step.

    python tests/faultinject.py --kill-at N [--count-file F] -- import PROJECT DIR ...

The steps counted are the ones a crash can split: ``os.replace`` / ``os.rename`` (publishing a
written file), ``os.fsync``, ``os.unlink``, ``os.utime``, ``shutil.copyfile`` / ``shutil.move``,
and each database transaction (just before BEGIN and just before COMMIT). At step N the process
kills itself with SIGKILL, exactly as ``kill -9`` or a power cut would: no cleanup, no atexit,
no flush. ``--kill-at 0`` never kills; ``--count-file`` then receives the number of steps the
command took (used to draw kill points uniformly over a command's whole run).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

_calls = 0


def install(kill_at: int) -> None:
    def hit() -> None:
        global _calls
        _calls += 1
        if _calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(module, name: str) -> None:  # type: ignore[no-untyped-def]
        real = getattr(module, name)

        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            hit()
            return real(*args, **kwargs)

        setattr(module, name, wrapper)

    for module, name in (
        (os, "replace"),
        (os, "rename"),
        (os, "fsync"),
        (os, "unlink"),
        (os, "utime"),
        (shutil, "copyfile"),
        (shutil, "move"),
    ):
        wrap(module, name)

    from defectssft.project import Project

    real_tx = Project.transaction

    @contextlib.contextmanager
    def transaction(self):  # type: ignore[no-untyped-def]
        hit()
        with real_tx(self) as con:
            yield con
            hit()

    Project.transaction = transaction  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--count-file")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.count_file:
        atexit.register(lambda: Path(args.count_file).write_text(str(_calls)))
    install(args.kill_at)
    from defectssft.cli import main as cli_main

    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main())
