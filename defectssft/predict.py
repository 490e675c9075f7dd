"""Score a project's images with a model version and store the predictions (the app's filters,
queue and "Predict all"; ``python -m defectssft_gui.predict`` runs it in a child process).

Images go through the one inference path (``defectssft.inspection``): the shared preprocessing at
the model's input size and bit depth, then the ``InspectionModel`` that is also exported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from defectssft.errors import ProjectError
from defectssft.project import Project
from defectssft_line.preprocess import ImageDecodeError, load_for_model
from defectssft_line.roi import Roi


def predict_images(
    project: Project,
    version: str | None = None,
    only_unlabeled: bool = True,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    image_ids: Sequence[int] | None = None,
) -> dict[str, object]:
    """Predict with ``version`` (None: production, else newest); returns a small summary.
    ``image_ids``: only these images (``only_unlabeled`` is then ignored).

    Each batch is saved (one transaction) before the next starts; ``should_stop`` is asked
    before each batch, so a stop loses nothing already computed (``cancelled`` in the summary).
    """
    from defectssft.inspection import load_inspection, predict_arrays
    from defectssft.queries import current_model
    from defectssft.tiling import score_paths

    version = version or current_model(project)
    if version is None:
        raise ProjectError(f"{project.root}: no trained model yet (train one first)")
    model_file = Path(project.get_model(version)["path"]) / "model.pt"
    wrapper, spec = load_inspection(
        model_file, default_bit_depth=project.get_setting("input.bit_depth", None)
    )
    inp = spec.input
    roi = Roi.from_meta(inp.roi)  # once, not per image
    if image_ids is not None:
        records = [project.get_image(i) for i in image_ids]
    else:
        records = project.query_images(unlabeled=True if only_unlabeled else None)
    done, skipped = 0, 0
    for start in range(0, len(records), batch_size):
        if should_stop and should_stop():
            break
        batch, ids = [], []
        for rec in records[start : start + batch_size]:
            try:
                if inp.tiles is not None:  # scored tile by tile, pooled (defectssft.tiling)
                    batch.append(score_paths(wrapper, [rec.path], spec, batch_size)[0][0])
                else:
                    batch.append(
                        load_for_model(rec.path, inp.height, inp.width, inp.bit_depth, roi)
                    )
                ids.append(rec.id)
            except ImageDecodeError:
                skipped += 1
        if batch and inp.tiles is not None:
            project.save_predictions(version, zip(ids, np.stack(batch).tolist(), strict=True))
        elif batch:
            probs, _ = predict_arrays(wrapper, np.stack(batch), batch_size)
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
