"""The engineer's command line: ``defectssft <command> ...``.

Each command group lives in its own module exposing ``register(subparsers)``; this file only
collects them, so ``defectssft --help`` stays fast (heavy imports happen inside the commands).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from defectssft import __version__
from defectssft.errors import DefectssftError

# Modules that add sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "defectssft.project_cli",  # init, import, status, label, split, watch, capture
    "defectssft.training.cli",  # train
    "defectssft.ops_cli",  # evaluate, export, promote, demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defectssft",
        description="Industrial defect inspection: projects, semi-supervised training, ONNX export.",
    )
    parser.add_argument("--version", action="version", version=f"defectssft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a command group not built yet in this checkout
            if e.name is None or not name.startswith(e.name):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except DefectssftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
