"""Score a project's images with a model version and store the predictions (the app's filters,
queue and "Predict all"; ``python -m defectssft_gui.predict`` runs it in a child process).

Images go through the one inference path (``defectssft.inspection``): the shared preprocessing at
the model's input size and bit depth, then the ``InspectionModel`` that is also exported. For a
version with an anomaly head the exported graph with the head scores them in the same pass, and
their anomaly scores are stored too (``defectssft.verdicts.store_anomaly_scores``), so the app's
verdicts apply the novelty rule as the line does.
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
    from defectssft.tiling import score_image, score_paths
    from defectssft.verdicts import store_anomaly_scores

    version = version or current_model(project)
    if version is None:
        raise ProjectError(f"{project.root}: no trained model yet (train one first)")
    model_dir = Path(project.get_model(version)["path"])
    wrapper, spec = load_inspection(
        model_dir / "model.pt", default_bit_depth=project.get_setting("input.bit_depth", None)
    )
    inp = spec.input
    graph = _head_graph(model_dir, wrapper)
    roi = Roi.from_meta(inp.roi)  # once, not per image
    if image_ids is not None:
        records = [project.get_image(i) for i in image_ids]
    else:
        records = project.query_images(unlabeled=True if only_unlabeled else None)
    done, skipped = 0, 0
    for start in range(0, len(records), batch_size):
        if should_stop and should_stop():
            break
        batch, ids, tiled_anomaly = [], [], []
        for rec in records[start : start + batch_size]:
            try:
                if inp.tiles is not None and graph is not None:  # tiles and the head, pooled
                    t = score_image(wrapper, rec.path, spec, graph=graph)
                    batch.append(t.probs)
                    tiled_anomaly.append(t.anomaly)
                elif inp.tiles is not None:  # scored tile by tile, pooled (defectssft.tiling)
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
            if tiled_anomaly:
                store_anomaly_scores(model_dir, dict(zip(ids, tiled_anomaly, strict=True)))
        elif batch and graph is not None:
            probs, anomaly = _with_head(graph, np.stack(batch))
            project.save_predictions(version, zip(ids, probs.tolist(), strict=True))
            store_anomaly_scores(model_dir, dict(zip(ids, anomaly.tolist(), strict=True)))
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


def _head_graph(model_dir: Path, wrapper):
    """The classifier + anomaly head graph (as exported, without the map), None without a head."""
    from defectssft.anomaly import load_anomaly

    head = load_anomaly(model_dir)
    if head is None:
        return None
    graph = head.wrap(wrapper)
    graph.with_map = False
    return graph


def _with_head(graph, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probs, anomaly scores) of uint8 NHWC images in one pass of the graph."""
    import torch

    with torch.inference_mode():
        probs, _, _, anomaly = graph(torch.from_numpy(np.ascontiguousarray(images)))
    return probs.numpy(), anomaly.numpy()
