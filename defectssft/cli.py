"""The engineer's command line: ``defectssft <command> ...``.

Each command group lives in its own module exposing ``register(subparsers)``; this file only
collects them, so ``defectssft --help`` stays fast (heavy imports happen inside the commands).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from defectssft import (
    __version__,
    anomaly_cli,
    check_cli,
    import_cli,
    ops_cli,
    project_cli,
    roi_cli,
    thresholds_cli,
)
from defectssft.errors import DefectssftError
from defectssft.training import cli as training_cli

# Modules that add sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    project_cli,  # init, import, status, classes, split, watch, capture, gc
    import_cli,  # imports (list, undo)
    training_cli,  # train
    ops_cli,  # evaluate, export, promote, demo
    thresholds_cli,  # thresholds
    anomaly_cli,  # fit-anomaly
    check_cli,  # check
    roi_cli,  # roi
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defectssft",
        description="Industrial defect inspection: projects, semi-supervised training, ONNX export.",
    )
    parser.add_argument("--version", action="version", version=f"defectssft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 never crashes a print
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()
    except DefectssftError as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    except BrokenPipeError:  # `defectssft status | head`: the reader has gone, and that is fine
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        rc = 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a torchrun worker: see exit_process
        from defectssft.training.ddp import exit_process

        exit_process(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
