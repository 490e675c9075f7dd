"""Store a model version's predictions (``defectssft.predict.predict_images``) in a child process.

Run by the app as a separate process, so the window never waits on torch:
``python -m defectssft_gui.predict PROJECT [--version V] [--all] [--batch-size N]`` prints one JSON
object per line (``{"event": "progress", "done": n, "total": m}`` ... ``{"event": "done", ...}``)
and ``error: <message>`` with exit status 2 for a problem the user can fix.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from defectssft.errors import DefectssftError, ProjectError
from defectssft.predict import predict_images
from defectssft.project import Project


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m defectssft_gui.predict",
        description="Store a model's predictions for the app.",
    )
    parser.add_argument("project")
    parser.add_argument("--version", default=None, help="model version (default: current)")
    parser.add_argument("--all", action="store_true", help="labeled images too")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))

    def emit(obj: dict[str, object]) -> None:
        print(json.dumps(obj), flush=True)

    try:
        import torch

        torch.set_num_threads(max(1, args.threads))
        if args.batch_size < 1:
            raise ProjectError("--batch-size must be 1 or more")
        project = Project.open(args.project)
        summary = predict_images(
            project,
            args.version,
            only_unlabeled=not args.all,
            batch_size=args.batch_size,
            progress=lambda d, t: emit({"event": "progress", "done": d, "total": t}),
            should_stop=lambda: stop["now"],
        )
    except DefectssftError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    emit({"event": "done", **summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
