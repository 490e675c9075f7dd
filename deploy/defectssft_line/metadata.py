"""The schema of the ``defectssft`` metadata in an exported model.onnx, checked in full at load.

A model file whose metadata lacks ``input.height``, has ``"abc"`` for a size, ``"high"`` for a
threshold or ``0`` for a bit depth is refused here with one line naming the field, before it
can reach the line (at start-up: exit status 2; on a hot swap: the old model keeps running).
No onnxruntime or torch (the decision contract's constants and threshold rule).
"""

from __future__ import annotations

import math
from typing import Any

from defectssft_line.decision import (
    FORMAT,
    NEWEST_FORMAT_VERSION,
    ThresholdError,
    resolve_thresholds,
)
from defectssft_line.novelty import NoveltyMetadataError, validate_anomaly_metadata
from defectssft_line.recheck import RecheckError, RecheckRule

MAX_SIDE = 16384  # model input height/width
THRESHOLD_KEYS = ("ng", "unsure_low", "unsure_high")


class MetadataError(ValueError):
    """Metadata that does not follow the schema; the message names the field."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(obj: dict[str, Any], key: str, where: str, lo: int, hi: int | None = None) -> int:
    v = obj[key]
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        rule = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
        raise MetadataError(f"{where}{key} must be {rule}, got {v!r}")
    return int(v)


def _fraction(obj: dict[str, Any], key: str) -> float:
    v = obj[key]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise MetadataError(f"thresholds.{key} must be a number, got {v!r}")
    if not 0.0 <= v <= 1.0:
        raise MetadataError(f"thresholds.{key} must be between 0 and 1, got {v!r}")
    return float(v)


def validate_metadata(meta: Any) -> dict[str, Any]:
    """Check ``meta`` (the parsed JSON) against the schema; returns it with its fields checked.

    MetadataError('<field> ...') for the first field that is missing or wrong.
    """
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MetadataError(f"not a defectssft model (metadata format is not '{FORMAT}')")
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        raise MetadataError("defectssft metadata without a valid format_version")
    if version > NEWEST_FORMAT_VERSION:
        raise MetadataError(
            f"model format_version {version} is newer than this runtime supports "
            f"({NEWEST_FORMAT_VERSION}); upgrade defectssft-line"
        )
    for key in ("classes", "input"):
        if key not in meta:
            raise MetadataError(f"defectssft metadata lacks '{key}'")
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes:
        raise MetadataError("defectssft metadata lists no classes")
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise MetadataError(f"classes must be distinct non-empty names, got {classes!r}")
    ok_class = meta.get("ok_class")
    if ok_class is not None and ok_class not in classes:
        raise MetadataError(f"ok_class {ok_class!r} is not one of the classes {classes}")
    inp = meta["input"]
    if not isinstance(inp, dict):
        raise MetadataError(f"input must be an object, got {inp!r}")
    for key in ("height", "width"):
        if key not in inp:
            raise MetadataError(f"defectssft metadata lacks 'input.{key}'")
        _int(inp, key, "input.", 1, MAX_SIDE)
    if inp.get("bit_depth") is not None:
        _int(inp, "bit_depth", "input.", 8, 16)
    if inp.get("max_pixels") is not None:
        _int(inp, "max_pixels", "input.", 1)
    for key, want in (("channels", 3), ("dtype", "uint8"), ("layout", "NHWC")):
        if key in inp and inp[key] != want:
            raise MetadataError(f"input.{key} must be {want!r}, got {inp[key]!r}")
    _check_roi_tiles(inp)
    thresholds = meta.get("thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, dict):
            raise MetadataError(f"thresholds must be an object, got {thresholds!r}")
        values = {k: _fraction(thresholds, k) for k in THRESHOLD_KEYS if k in thresholds}
        try:
            resolve_thresholds(values)  # the order the decision contract needs
        except ThresholdError as e:
            raise MetadataError(str(e)) from None
    try:
        validate_anomaly_metadata(meta.get("anomaly"))
    except NoveltyMetadataError as e:
        raise MetadataError(str(e)) from None
    try:
        RecheckRule.from_metadata(meta)
    except RecheckError as e:
        raise MetadataError(str(e)) from None
    for key in ("model_version", "backbone", "precision", "project"):
        v = meta.get(key)
        if v is not None and (not isinstance(v, (str, int)) or isinstance(v, bool)):
            raise MetadataError(f"{key} must be a string, got {v!r}")
    return meta


def _check_roi_tiles(inp: dict[str, Any]) -> None:
    """``input.roi`` and ``input.tiles`` (optional): their own modules read them."""
    from defectssft_line.roi import Roi, RoiError
    from defectssft_line.tiles import TileError, TileSpec

    try:
        Roi.from_meta(inp.get("roi"))
        TileSpec.from_meta(inp.get("tiles"), inp["height"], inp["width"])
    except (RoiError, TileError) as e:
        raise MetadataError(str(e)) from None
