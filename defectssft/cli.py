"""The engineer's command line: ``defectssft <command> ...``.

Each command group lives in its own module exposing ``register(subparsers)``; this file only
collects them, so ``defectssft --help`` stays fast (heavy imports happen inside the commands).
"""

from __future__ import annotations

import argparse
import os
import sys

from defectssft import __version__, check_cli, ops_cli, project_cli
from defectssft.errors import DefectssftError
from defectssft.training import cli as training_cli

# Modules that add sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    project_cli,  # init, import, status, classes, split, watch, capture, gc
    training_cli,  # train
    ops_cli,  # evaluate, export, promote, demo
    check_cli,  # check
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
    try:
        rc = int(args.func(args) or 0)
    except DefectssftError as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a torchrun worker: see exit_process
        from defectssft.training.ddp import exit_process

        exit_process(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
