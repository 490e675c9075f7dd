"""Score images with a model version and store the predictions (for the grid's filters/queue).

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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from defectssft.errors import DefectssftError, ProjectError
from defectssft.project import Project
from defectssft_line.preprocess import ImageDecodeError, load_for_model


def predict_images(
    project: Project,
    version: str | None = None,
    only_unlabeled: bool = True,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, object]:
    """Predict with ``version`` (None: production, else newest); returns a small summary.

    Each batch is saved (one transaction) before the next starts; ``should_stop`` is asked
    before each batch, so a stop loses nothing already computed (``cancelled`` in the summary).
    """
    import torch

    from defectssft.modeling import load_model_file
    from defectssft_gui.queries import current_model

    version = version or current_model(project)
    if version is None:
        raise ProjectError(f"{project.root}: no trained model yet (train one first)")
    model_file = Path(project.get_model(version)["path"]) / "model.pt"
    model, meta = load_model_file(model_file)
    inp = meta.get("input", {})
    h, w = int(inp.get("height", 224)), int(inp.get("width", 224))
    depth = int(inp.get("bit_depth") or project.get_setting("input.bit_depth", 16))
    mean = torch.tensor(meta["mean"], dtype=torch.float32)
    std = torch.tensor(meta["std"], dtype=torch.float32)
    records = project.query_images(unlabeled=True if only_unlabeled else None)
    done, skipped = 0, 0
    for start in range(0, len(records), batch_size):
        if should_stop and should_stop():
            break
        batch, ids = [], []
        for rec in records[start : start + batch_size]:
            try:
                batch.append(load_for_model(rec.path, h, w, depth))
                ids.append(rec.id)
            except ImageDecodeError:
                skipped += 1
        if batch:
            x = torch.from_numpy(np.stack(batch)).float().div(255.0)
            x = ((x - mean) / std).permute(0, 3, 1, 2).contiguous()
            with torch.inference_mode():
                probs = torch.softmax(model(x), dim=1).numpy()
            project.save_predictions(version, zip(ids, probs.tolist(), strict=True))
        done = min(len(records), start + batch_size)
        if progress:
            progress(done, len(records))
    return {
        "version": version,
        "predicted": done - skipped,
        "skipped": skipped,
        "done": done,
        "total": len(records),
        "cancelled": done < len(records),
    }


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
