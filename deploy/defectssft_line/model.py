"""Load an exported defectssft ``model.onnx`` and turn images into OK / NG / UNSURE verdicts.

Loading checks that the file is a defectssft model this runtime understands (metadata,
format version, input/output signature) and runs it once, so a bad file is refused with one
clear line at load time, never halfway through a shift. onnxruntime, numpy, OpenCV only.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from defectssft_line import preprocess, tiles
from defectssft_line.decision import (
    METADATA_KEY,
    Prediction,
    ThresholdError,
    Thresholds,
    decide,
    decide_part,
    resolve_thresholds,
)
from defectssft_line.metadata import MetadataError, validate_metadata
from defectssft_line.novelty import NoveltyRule
from defectssft_line.recheck import RECHECK_INPUT, RecheckRule, run_rechecked
from defectssft_line.roi import Roi
from defectssft_line.tiles import TiledScore, TileSpec

__all__ = ["LineError", "LineModel", "LineModelError", "Prediction", "Thresholds", "decide"]

# Images whose header declares more pixels are refused before decoding (as import does).
DEFAULT_MAX_PIXELS = 200_000_000


class LineError(Exception):
    """An error the user can fix (bad model file, bad argument, unreadable folder): one line."""


class LineModelError(LineError):
    """A model file that is missing, corrupt, not a defectssft model, or too new."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def read_metadata(session: Any, path: Path) -> dict[str, Any]:
    """The defectssft metadata of a loaded session, validated against this runtime."""
    props = session.get_modelmeta().custom_metadata_map or {}
    raw = props.get(METADATA_KEY)
    if raw is None:
        raise LineModelError(
            f"{path}: not a defectssft model (no '{METADATA_KEY}' metadata); "
            "export one with `defectssft export`"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LineModelError(f"{path}: corrupt defectssft metadata ({e.msg})") from e
    try:
        return validate_metadata(meta)
    except MetadataError as e:
        raise LineModelError(f"{path}: {e}") from None


class LineModel:
    """One loaded, checked model: ``predict`` images, ``decide`` verdicts."""

    def __init__(
        self,
        path: Path,
        session: Any,
        meta: dict[str, Any],
        thresholds: Thresholds,
        max_pixels: int | None = None,
        on_novel: str | None = None,
    ) -> None:
        self.path = path
        self.session = session
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.ok_class: str | None = meta.get("ok_class")
        inp = meta["input"]
        self.height, self.width = int(inp["height"]), int(inp["width"])
        self.bit_depth = int(inp.get("bit_depth", preprocess.DEFAULT_BIT_DEPTH))
        # --max-pixels, else the model's input.max_pixels, else the default
        self.max_pixels = int(max_pixels or inp.get("max_pixels") or DEFAULT_MAX_PIXELS)
        self.thresholds = thresholds
        self.version = str(meta.get("model_version", ""))
        self.novelty = NoveltyRule.from_metadata(meta, on_novel)  # None: no anomaly head
        # INT8 with the exact re-check (defectssft_line.recheck); None: one graph
        self.recheck = RecheckRule.from_metadata(meta)
        # region of interest and tiling rule (defectssft_line.roi / .tiles; None: whole image,
        # resized)
        self.roi = Roi.from_meta(inp.get("roi"))
        self.tiles = TileSpec.from_meta(inp.get("tiles"), self.height, self.width)
        self.tile_batch = tiles.DEFAULT_BATCH

    @classmethod
    def load(
        cls,
        path: str | Path,
        threads: int = 1,
        threshold: float | None = None,
        unsure_low: float | None = None,
        unsure_high: float | None = None,
        max_pixels: int | None = None,
        on_novel: str | None = None,
    ) -> LineModel:
        """Open, validate and smoke-test ``path``; LineModelError with one line if unusable."""
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise LineModelError(f"model file not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - truncated, corrupt, not ONNX at all
            raise LineModelError(f"{path}: not a loadable ONNX model ({_first_line(e)})") from e
        meta = read_metadata(session, path)
        try:
            thr = resolve_thresholds(
                meta.get("thresholds"), None, threshold, unsure_low, unsure_high
            )
        except ThresholdError as e:
            raise LineError(str(e)) from e
        model = cls(path, session, meta, thr, max_pixels, on_novel)
        model._check_signature()
        return model

    def _check_signature(self) -> None:
        inputs = self.session.get_inputs()
        outputs = {o.name for o in self.session.get_outputs()}
        if len(inputs) != 1 or inputs[0].name != "image" or inputs[0].type != "tensor(uint8)":
            raise LineModelError(f"{self.path}: expected one uint8 input named 'image'")
        # the re-check's switch is an input with a default (an overridable initializer)
        switch = RECHECK_INPUT in {i.name for i in self.session.get_overridable_initializers()}
        if switch != (self.recheck is not None):
            raise LineModelError(
                f"{self.path}: the graph has the re-check input '{RECHECK_INPUT}' but its "
                "metadata no 'recheck' entry"
                if switch
                else f"{self.path}: 'recheck' in its metadata but no '{RECHECK_INPUT}' input"
            )
        missing = {"probs", "defect_score"} - outputs
        if self.novelty is not None:
            missing |= set(self.novelty.output_names()) - outputs
        if missing:
            raise LineModelError(f"{self.path}: model lacks output(s) {', '.join(sorted(missing))}")
        try:
            probs, scores = self.predict(np.zeros((1, self.height, self.width, 3), np.uint8))
            if self.recheck is not None:
                self.predict(np.zeros((1, self.height, self.width, 3), np.uint8), exact=True)
        except Exception as e:  # noqa: BLE001 - the graph does not run
            raise LineModelError(f"{self.path}: model does not run ({_first_line(e)})") from e
        if probs.shape != (1, len(self.classes)) or not np.all(np.isfinite(probs)):
            raise LineModelError(
                f"{self.path}: model outputs {probs.shape[-1]} probabilities for "
                f"{len(self.classes)} classes in its metadata"
            )

    def predict(self, batch: np.ndarray, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(probs [N, C], defect scores [N]) for uint8 [N, H, W, 3] RGB model inputs; ``exact``:
        through the fp32 graph of a file with the re-check (no re-check here: ``classify``)."""
        feed = {"image": batch}
        if exact and self.recheck is not None:
            feed[RECHECK_INPUT] = np.array(True)
        probs, scores = self.session.run(["probs", "defect_score"], feed)
        return probs, scores

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A decoded image (any depth/colour/size) -> this model's HxWx3 RGB uint8 input."""
        return preprocess.prepare(image, self.height, self.width, self.bit_depth, self.roi)

    def decide(self, probs: np.ndarray, score: float) -> Prediction:
        return decide(probs, score, self.classes, self.ok_class, self.thresholds)

    def classify(self, images: list[np.ndarray]) -> list[Prediction]:
        """Verdicts for decoded images (as read from files or a camera)."""
        if not images:
            return []
        if self.tiles is not None:
            return [self._classify_tiled(im) for im in images]
        return self.classify_inputs(np.stack([self.prepare(im) for im in images]))

    def _run(self, batch: np.ndarray, names: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """``names`` (``probs``, ``defect_score`` first) on ``batch``, and which parts the fp32
        graph decided (``defectssft_line.recheck``; none without the re-check)."""
        if self.recheck is None:
            return self.session.run(names, {"image": batch}), np.zeros(len(batch), bool)
        thr = self.novelty.threshold if self.novelty is not None else None
        return run_rechecked(self.session, batch, names, self.recheck, self.classes,
                             self.ok_class, self.thresholds, thr)  # fmt: skip

    def classify_inputs(self, batch: np.ndarray) -> list[Prediction]:
        """Verdicts for model inputs ``prepare`` made: uint8 [N, H, W, 3] (not tiled models)."""
        if self.novelty is not None:
            return self._classify_novel(batch)
        (probs, scores), again = self._run(batch, ["probs", "defect_score"])
        return [
            replace(self.decide(p, float(s)), rechecked=bool(r))
            for p, s, r in zip(probs, scores, again, strict=True)
        ]

    def _classify_novel(self, batch: np.ndarray) -> list[Prediction]:
        """Verdicts with the anomaly head's score (and map): ``decision.decide_part``."""
        rule = self.novelty
        assert rule is not None
        outs, again = self._run(batch, ["probs", "defect_score", *rule.output_names()])
        maps = outs[3] if rule.has_map else [None] * len(batch)
        peaks = outs[4] if rule.has_map and rule.has_peak else [None] * len(batch)
        return [
            replace(
                decide_part(p, float(s), self.classes, self.ok_class, self.thresholds, a, rule),
                anomaly_map=m,
                anomaly_peak=k,
                rechecked=bool(r),
            )
            for p, s, a, m, k, r in zip(outs[0], outs[1], outs[2], maps, peaks, again, strict=True)
        ]

    def _classify_tiled(self, image: np.ndarray) -> Prediction:
        """A tiled part's verdict (with an anomaly head: the novelty rule on the tiles' maximum
        anomaly score, and the stitched map); with the re-check, a part whose pooled INT8
        score lies near an edge is scored again, every tile, through the fp32 graph."""
        t = self.score_tiles(image)
        rechecked = False
        if self.recheck is not None:
            thr = self.novelty.threshold if self.novelty is not None else None
            anomaly = None if t.anomaly is None else np.array([t.anomaly])
            near = self.recheck.near(t.probs[None], self.classes, self.ok_class, self.thresholds,
                                     anomaly, thr)  # fmt: skip
            if near[0]:
                t, rechecked = self.score_tiles(image, exact=True), True
        if self.novelty is None:
            return replace(self.decide(t.probs, t.score), rechecked=rechecked)
        pred = decide_part(t.probs, t.score, self.classes, self.ok_class, self.thresholds,
                           t.anomaly, self.novelty)  # fmt: skip
        return replace(pred, anomaly_map=t.anomaly_map, rechecked=rechecked)

    def _tile_outputs(self, batch: np.ndarray, exact: bool = False) -> list[np.ndarray]:
        """``probs``, ``defect_score`` and the anomaly head's score and map (when the model has
        them; no peak: tiled heads have none) of a batch of tiles."""
        names = ["probs", "defect_score"]
        if self.novelty is not None:
            names += [n for n in self.novelty.output_names() if n != "anomaly_peak"]
        feed = {"image": batch}
        if exact and self.recheck is not None:
            feed[RECHECK_INPUT] = np.array(True)
        return self.session.run(names, feed)

    def score_tiles(self, image: np.ndarray, exact: bool = False) -> TiledScore:
        """A decoded image scored tile by tile (``self.tile_batch`` tiles a run) and pooled, by
        the model's tiling rule (``defectssft_line.tiles``); ``exact``: as ``predict``."""
        assert self.tiles is not None
        source, size = tiles.sized_source(image, self.tiles, self.bit_depth, self.roi)
        predict = partial(self._tile_outputs, exact=exact)
        return tiles.score_source(predict, source, self.tiles, self.tile_batch, size)
