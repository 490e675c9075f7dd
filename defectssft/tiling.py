"""Scoring project images with a model's ROI and tiling rule, on the torch side.

The rule itself is ``defectssft_line.roi`` / ``defectssft_line.tiles`` (the line runtime's);
this module walks it with the torch ``InspectionModel``, for evaluation, the app's predictions
and export's parity check, so every place that scores a part pools its tiles the same way.
A model without ``input.tiles`` is scored as before: its ROI resized to the model input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectssft.errors import DefectssftError
from defectssft_line import tiles as T
from defectssft_line.preprocess import ImageDecodeError, load_for_model, read_image
from defectssft_line.roi import Roi
from defectssft_line.tiles import TiledScore, TileSpec


class TilingError(DefectssftError):
    """An ROI or tiling setting that cannot be used for these images: one line."""


def roi_of(spec: Any) -> Roi | None:
    """The ``Roi`` of a ``ModelSpec`` (None: the whole image)."""
    return Roi.from_meta(spec.input.roi)


def tiles_of(spec: Any) -> TileSpec | None:
    """The ``TileSpec`` of a ``ModelSpec`` (None: not tiled)."""
    inp = spec.input
    return TileSpec.from_meta(inp.tiles, inp.height, inp.width)


def torch_predict(wrapper: Any) -> Any:
    """uint8 NHWC batch -> (probs, scores) numpy, with the torch graph."""
    from defectssft.inspection import predict_arrays

    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predict_arrays(wrapper, batch, len(batch))

    return predict


def head_predict(graph: Any) -> Any:
    """uint8 NHWC batch -> (probs, scores, anomaly scores[, maps]) numpy, with the torch graph
    of a version with an anomaly head (``defectssft.anomaly.AnomalyModel.wrap``), as exported."""
    import torch

    def predict(batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = graph(torch.from_numpy(np.ascontiguousarray(batch)))
        kept = [out[0], out[2], *out[3:5]] if graph.with_map else [out[0], out[2], out[3]]
        return [o.numpy() for o in kept]

    return predict


def score_image(
    wrapper: Any,
    path: str | Path,
    spec: Any,
    batch: int = T.DEFAULT_BATCH,
    graph: Any = None,
    raw: np.ndarray | None = None,
) -> TiledScore:
    """One image file (or its decoded ``raw`` pixels) scored tile by tile and pooled
    (ImageDecodeError if unreadable); ``graph``: the version's graph with its anomaly head
    (``head_predict``), for the part's anomaly score and map too."""
    tiling = tiles_of(spec)
    if tiling is None:
        raise TilingError("the model is not tiled (no input.tiles)")
    image = read_image(path) if raw is None else raw
    source, size = T.sized_source(image, tiling, spec.input.bit_depth, roi_of(spec), str(path))
    predict = torch_predict(wrapper) if graph is None else head_predict(graph)
    return T.score_source(predict, source, tiling, batch, size)


def score_paths(
    wrapper: Any, paths: Sequence[str | Path], spec: Any, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """(probs [N, C], scores [N]) of image files by the model's ROI and tiling rule."""
    from defectssft.inspection import predict_arrays

    inp, roi = spec.input, roi_of(spec)
    if tiles_of(spec) is None:
        probs, scores = [], []
        for i in range(0, len(paths), batch_size):
            images = np.stack(
                [
                    load_for_model(p, inp.height, inp.width, inp.bit_depth, roi)
                    for p in paths[i : i + batch_size]
                ]
            )
            p, s = predict_arrays(wrapper, images, batch_size)
            probs.append(p)
            scores.append(s)
        if not probs:
            return np.zeros((0, len(spec.classes)), np.float32), np.zeros((0,), np.float32)
        return np.concatenate(probs), np.concatenate(scores)
    results = [score_image(wrapper, p, spec, batch_size) for p in paths]
    if not results:
        return np.zeros((0, len(spec.classes)), np.float32), np.zeros((0,), np.float32)
    return (
        np.stack([r.probs for r in results]).astype(np.float32),
        np.array([r.score for r in results], np.float32),
    )


def sample_tiles(paths: Sequence[str | Path], spec: Any, per_image: int = 4) -> np.ndarray:
    """Tiles cut from project images by the model's rule (export's graph check and INT8
    calibration data for a tiled model): the first, last and evenly spaced ones of each image."""
    tiling = tiles_of(spec)
    assert tiling is not None
    out = []
    for p in paths:
        try:
            src = T.tile_source(read_image(p), tiling, spec.input.bit_depth, roi_of(spec), str(p))
        except ImageDecodeError as e:
            raise TilingError(f"cannot read project image: {e}") from e
        ys = T.axis_starts(src.shape[0], tiling.height, tiling.overlap)
        xs = T.axis_starts(src.shape[1], tiling.width, tiling.overlap)
        pos = [(y, x) for y in ys for x in xs]
        take = np.unique(np.linspace(0, len(pos) - 1, min(per_image, len(pos))).round().astype(int))
        out.extend(T.cut(src, tiling, *pos[i]).copy() for i in take)
    if not out:
        return np.zeros((0, tiling.height, tiling.width, 3), np.uint8)
    return np.stack(out)


def check_tiled_parity(
    wrapper: Any,
    onnx_path: str | Path,
    paths: Sequence[str | Path],
    spec: Any,
    tol: float,
    graph: Any = None,
) -> dict[str, Any]:
    """Whole parts scored by the torch graph here and by the line runtime (``LineModel``, which
    tiles by the file's own metadata): the pooled scores must agree within ``tol``; with the
    anomaly head's torch ``graph`` the parts' anomaly scores too, within the export check's
    bound relative to the threshold (``defectssft.anomaly.MAX_SCORE_DIFF``).

    TilingError when they do not, or when the file's tiling rule is not the model's."""
    from defectssft_line.model import LineModel

    line = LineModel.load(onnx_path, threads=1)
    if line.tiles != tiles_of(spec) or line.roi != roi_of(spec):
        raise TilingError(f"{onnx_path}: its tiling rule or ROI is not the model's")
    if (graph is None) != (line.novelty is None):
        raise TilingError(f"{onnx_path}: its anomaly head is not the version's")
    worst, worst_anomaly, n_tiles = 0.0, 0.0, 0
    for p in paths:
        raw = read_image(p)
        ref = score_image(wrapper, p, spec, graph=graph, raw=raw)
        got = line.score_tiles(raw)
        if got.positions != ref.positions:
            raise TilingError(f"{p}: the line cut {len(got.positions)} tiles, torch cut "
                              f"{len(ref.positions)}")  # fmt: skip
        worst = max(worst, abs(got.score - ref.score))
        if graph is not None:
            worst_anomaly = max(worst_anomaly, abs(float(got.anomaly) - float(ref.anomaly)))
        n_tiles += len(ref.positions)
    if worst > tol:
        raise TilingError(
            f"tiled parity check failed: part scores differ by up to {worst:.4g} between torch "
            f"and the exported file (tolerance {tol:g})"
        )
    out: dict[str, Any] = {"parts": len(paths), "tiles": n_tiles, "max_score_diff": worst}
    if graph is not None:
        from defectssft.anomaly import MAX_SCORE_DIFF, score_scale

        precision = str(line.meta.get("precision", "fp32"))
        rel = worst_anomaly / score_scale(graph.threshold, graph.anomaly_head.normalise)
        if rel > MAX_SCORE_DIFF.get(precision, MAX_SCORE_DIFF["fp32"]):
            raise TilingError(
                f"tiled parity check failed: part anomaly scores differ by {rel:.2e} of the "
                f"threshold between torch and the exported file; export fp32 or --no-anomaly"
            )
        out["max_anomaly_rel_diff"] = rel
    return out


def describe(spec: Any, sizes: Sequence[tuple[int, int]] = ()) -> str:
    """One line on what the model sees: ROI, tile grid per image size (``sizes``: (w, h))."""
    roi, tiling = roi_of(spec), tiles_of(spec)
    inp = spec.input
    parts = [f"ROI {roi.describe()}" if roi else "whole image"]
    if tiling is None:
        parts.append(f"resized to {inp.height}x{inp.width} (h x w)")
        return ", ".join(parts)
    parts.append(tiling.describe())
    seen = sorted(set(sizes))[:4]
    for w, h in seen:
        if roi is not None:
            h, w = roi.size
        rows, cols = T.grid_shape(h, w, tiling)
        parts.append(f"{w}x{h} px -> {rows}x{cols} = {rows * cols} tiles")
    return "; ".join(parts)


# part-score agreement export asks of a tiled file (whole parts, torch vs the line runtime)
PARITY_TOL = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.15}


def export_tiled(
    project: Any,
    record: dict[str, Any],
    model: Any,
    meta: dict[str, Any],
    spec: Any,
    out: Path,
    precision: str,
    thresholds: Any,
    check_paths: Sequence[str | Path],
    calib_paths: Sequence[str | Path],
    max_int8_drop: float,
    parity_parts: int = 4,
    recheck: bool = True,
    anomaly: Any = None,
    anomaly_map: bool = True,
) -> Any:
    """Export a tiled model: the graph checked on tiles cut by the rule (``export_onnx``, with
    the version's anomaly head when ``anomaly`` is given), then whole parts scored by torch and
    by the written file through the line runtime (``check_tiled_parity``: the pooled defect and
    anomaly scores); only a file that passes both replaces ``out``."""
    import os

    from defectssft.export import ExportError, export_onnx
    from defectssft.fsutil import atomic_path
    from defectssft.inspection import inspection_model

    try:
        check = sample_tiles(check_paths, spec)
        calib = sample_tiles(calib_paths, spec, 2) if precision == "int8" else None
    except TilingError as e:
        raise ExportError(str(e)) from e
    with atomic_path(out) as tmp:
        staged = tmp.with_name(tmp.name[:-4] + ".staged.tmp")
        try:
            result = export_onnx(model, meta, staged, check_images=check, calib_images=calib,
                                 precision=precision, thresholds=thresholds, project=project.name,
                                 max_int8_drop=max_int8_drop, recheck=recheck, anomaly=anomaly,
                                 anomaly_map=anomaly_map)  # fmt: skip
            wrapper = inspection_model(model, spec)
            graph = None if anomaly is None else anomaly.wrap(wrapper)
            if graph is not None:
                graph.with_map = False
            try:
                parity = check_tiled_parity(
                    wrapper, staged, check_paths[:parity_parts], spec, PARITY_TOL[precision], graph
                )
            except (TilingError, ImageDecodeError) as e:
                raise ExportError(str(e)) from e
            os.replace(staged, tmp)
        finally:
            staged.unlink(missing_ok=True)
    result.path = str(out)
    metrics = {**result.as_dict(), "tiled_parity": parity}
    project.update_model_metrics(record["version"], {f"export_{precision}": metrics})
    return result


def cam_input(wrapper: Any, raw: np.ndarray, spec: Any, name: str = "image") -> tuple[Any, Any]:
    """What a heat map explains for a model with an ROI or tiles: (the model input HxWx3, the
    box (x, y, w, h) of the original image it covers). With tiles: the part's highest-scoring
    tile, which shows which tile made the verdict and, in the map, where in it."""
    inp, roi, tiling = spec.input, roi_of(spec), tiles_of(spec)
    ox, oy = (roi.bbox[0], roi.bbox[1]) if roi is not None else (0, 0)
    if tiling is None:
        from defectssft_line.preprocess import prepare

        rgb = prepare(raw, inp.height, inp.width, inp.bit_depth, roi)
        w, h = (roi.bbox[2], roi.bbox[3]) if roi is not None else (raw.shape[1], raw.shape[0])
        return rgb, (ox, oy, w, h)
    source = T.tile_source(raw, tiling, inp.bit_depth, roi, name)
    best = T.score_source(torch_predict(wrapper), source, tiling)
    y, x = best.tile
    s = tiling.scale
    box = (ox + round(x / s), oy + round(y / s), round(tiling.width / s), round(tiling.height / s))
    return np.ascontiguousarray(T.cut(source, tiling, y, x)), box


def paste_heat(heat: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, ...]) -> Any:
    """A heat map of ``box`` placed into zeros of the original image's (height, width)."""
    import cv2

    x, y, w, h = box
    full = np.zeros(shape[:2], np.float32)
    placed = cv2.resize(heat.astype(np.float32), (max(1, w), max(1, h)))
    y1, x1 = min(shape[0], y + h), min(shape[1], x + w)
    full[y:y1, x:x1] = placed[: y1 - y, : x1 - x]  # a padded tile runs past the edge
    return full
