"""Tiles: a large part inspected at native resolution, one model-sized tile at a time.

Instead of resizing the whole region of interest to the model's input (which erases a defect a
few pixels wide), a tiled model cuts it, at native resolution or resized by ``scale``, into
overlapping tiles of exactly the model's input size, scores every tile and pools the tile scores
into the part's score. The rule is written once, here, and carried in the model's metadata
(``input.tiles``: ``scale``, ``overlap``, ``pool``, ``top_k``; the tile is ``input.height`` x
``input.width``); training, evaluation, export's parity check and the line runtime all tile by it.

* Grid, per image: along each side, the fewest tiles whose step is at most
  ``tile * (1 - overlap)``, spread evenly so the first starts at 0 and the last ends at the edge.
  Images of different sizes simply get different grids.
* A side shorter than one tile is padded (mirrored, at the bottom/right) up to the tile: a frame
  smaller than one tile is one tile.
* Pooling: ``max`` (the part's score and probabilities are those of its highest-scoring tile) or
  ``topk`` (the means over its ``top_k`` highest-scoring tiles).
* Tiles are cut and scored in batches of ``batch`` (``iter_tile_batches``): a 20 MP frame is
  never turned into model input all at once.
* A model with an anomaly head scores every tile too: the part's anomaly score is the maximum
  over its tiles (whatever ``pool`` says: one novel spot makes a novel part), and the tiles'
  anomaly maps are stitched into one map of the tiled image (``stitch``: the maximum where
  tiles overlap, the padding cut off), which overlays stretch over the ROI as for untiled models.

numpy and OpenCV only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from defectssft_line import preprocess

POOLS = ("max", "topk")
DEFAULT_BATCH = 16
MAX_TILES = 100_000  # a grid beyond this is a mistake in the settings, not a part


class TileError(preprocess.ImageDecodeError):
    """A tiling rule that is malformed, or an image it cannot tile: one line."""


@dataclass(frozen=True)
class TileSpec:
    """The tiling rule: tile = the model input (``height`` x ``width``)."""

    height: int
    width: int
    scale: float = 1.0  # the ROI is resized by this before tiling (1: native resolution)
    overlap: float = 0.25  # share of a tile's side its neighbour covers too (at least)
    pool: str = "max"
    top_k: int = 3

    def __post_init__(self) -> None:
        for key in ("height", "width"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TileError(f"tile {key} must be an integer >= 1, got {v!r}")
        num = (int, float)
        if not isinstance(self.scale, num) or isinstance(self.scale, bool):
            raise TileError(f"input.tiles.scale must be a number, got {self.scale!r}")
        if not (math.isfinite(self.scale) and 0.01 <= self.scale <= 4.0):
            raise TileError(f"input.tiles.scale must be between 0.01 and 4, got {self.scale!r}")
        if not isinstance(self.overlap, num) or isinstance(self.overlap, bool):
            raise TileError(f"input.tiles.overlap must be a number, got {self.overlap!r}")
        if not 0.0 <= self.overlap <= 0.9:
            raise TileError(f"input.tiles.overlap must be between 0 and 0.9, got {self.overlap!r}")
        if self.pool not in POOLS:
            raise TileError(
                f"input.tiles.pool must be one of {', '.join(POOLS)}, got {self.pool!r}"
            )
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1:
            raise TileError(f"input.tiles.top_k must be an integer >= 1, got {self.top_k!r}")

    def to_meta(self) -> dict[str, Any]:
        """``input.tiles`` of the metadata (the tile size is ``input.height``/``width``)."""
        return {
            "scale": self.scale,
            "overlap": self.overlap,
            "pool": self.pool,
            "top_k": self.top_k,
        }

    @classmethod
    def from_meta(cls, tiles: Mapping[str, Any] | None, height: int, width: int) -> TileSpec | None:
        """The rule of ``input.tiles`` (None when absent); TileError naming the field."""
        if tiles is None:
            return None
        if not isinstance(tiles, Mapping):
            raise TileError(f"input.tiles must be an object, got {tiles!r}")
        unknown = set(tiles) - {"scale", "overlap", "pool", "top_k"}
        if unknown:
            raise TileError(f"input.tiles has unknown key(s) {', '.join(sorted(unknown))}")
        return cls(
            int(height),
            int(width),
            tiles.get("scale", 1.0),
            tiles.get("overlap", 0.25),
            tiles.get("pool", "max"),
            tiles.get("top_k", 3),
        )

    def describe(self) -> str:
        pool = "max" if self.pool == "max" else f"mean of top {self.top_k}"
        return (
            f"{self.height}x{self.width} tiles at scale {self.scale:g}, overlap "
            f"{self.overlap:g}, part score = {pool} over tiles"
        )


def axis_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile start offsets along one side (see the module docstring)."""
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def scaled_size(height: int, width: int, spec: TileSpec) -> tuple[int, int]:
    """(height, width) of the image that is tiled, before padding."""
    if spec.scale == 1.0:
        return height, width
    return max(1, round(height * spec.scale)), max(1, round(width * spec.scale))


def grid(height: int, width: int, spec: TileSpec) -> list[tuple[int, int]]:
    """(y, x) of every tile of a ``height`` x ``width`` ROI (before scaling), row by row."""
    h, w = scaled_size(height, width, spec)
    h, w = max(h, spec.height), max(w, spec.width)
    ys = axis_starts(h, spec.height, spec.overlap)
    xs = axis_starts(w, spec.width, spec.overlap)
    if len(ys) * len(xs) > MAX_TILES:
        raise TileError(
            f"{width}x{height} at scale {spec.scale:g} makes {len(ys) * len(xs):,} tiles "
            f"(limit {MAX_TILES:,}): lower input.tiles.scale"
        )
    return [(y, x) for y in ys for x in xs]


def grid_shape(height: int, width: int, spec: TileSpec) -> tuple[int, int]:
    """(rows, columns) of the grid of a ``height`` x ``width`` ROI."""
    h, w = scaled_size(height, width, spec)
    return (
        len(axis_starts(max(h, spec.height), spec.height, spec.overlap)),
        len(axis_starts(max(w, spec.width), spec.width, spec.overlap)),
    )


def tile_source(
    img: np.ndarray, spec: TileSpec, bit_depth: int = 16, roi: Any = None, name: str = "image"
) -> np.ndarray:
    """A decoded image -> the RGB uint8 image its tiles are cut from: the ROI
    (``preprocess.crop_roi``), RGB 8-bit (``preprocess.to_rgb8``), resized by ``scale``, sides
    shorter than a tile mirrored up to it."""
    return sized_source(img, spec, bit_depth, roi, name)[0]


def sized_source(
    img: np.ndarray, spec: TileSpec, bit_depth: int = 16, roi: Any = None, name: str = "image"
) -> tuple[np.ndarray, tuple[int, int]]:
    """``tile_source`` and the (rows, columns) of it that are the image, before the padding."""
    rgb = preprocess.to_rgb8(preprocess.crop_roi(img, roi, name), bit_depth)
    h, w = rgb.shape[:2]
    sh, sw = scaled_size(h, w, spec)
    if (sh, sw) != (h, w):
        rgb = preprocess.resize(rgb, sh, sw)
    pad_h, pad_w = max(0, spec.height - sh), max(0, spec.width - sw)
    if pad_h or pad_w:
        rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
    return rgb, (sh, sw)


def cut(source: np.ndarray, spec: TileSpec, y: int, x: int) -> np.ndarray:
    return source[y : y + spec.height, x : x + spec.width]


def iter_tile_batches(
    source: np.ndarray, spec: TileSpec, batch: int = DEFAULT_BATCH
) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """(positions, uint8 [b, H, W, 3]) for the tiles of a ``tile_source`` image, ``batch`` at a
    time."""
    h, w = source.shape[:2]
    positions = [(y, x) for y in axis_starts(h, spec.height, spec.overlap)
                 for x in axis_starts(w, spec.width, spec.overlap)]  # fmt: skip
    if len(positions) > MAX_TILES:
        grid(h, w, TileSpec(spec.height, spec.width, 1.0, spec.overlap))  # raises the error
    batch = max(1, int(batch))
    for i in range(0, len(positions), batch):
        part = positions[i : i + batch]
        yield part, np.stack([cut(source, spec, y, x) for y, x in part])


@dataclass
class TiledScore:
    """A part's pooled result and where it came from."""

    probs: np.ndarray  # [C], pooled
    score: float  # pooled defect score
    tile: tuple[int, int]  # (y, x) of the highest-scoring tile, in the tiled image
    scores: np.ndarray  # [T] every tile's score, grid order
    positions: list[tuple[int, int]]
    # with an anomaly head: the part's anomaly score (the tiles' maximum), every tile's, and
    # the stitched map of the tiled image (None without the map)
    anomaly: float | None = None
    anomaly_scores: np.ndarray | None = None
    anomaly_map: np.ndarray | None = None


def stitch(
    maps: np.ndarray,
    positions: list[tuple[int, int]],
    source_shape: tuple[int, int],
    spec: TileSpec,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Tile maps [T, h, w] (each covering its ``height`` x ``width`` tile at ``positions``) ->
    one map of the tiled image: a cell per ``height / h`` x ``width / w`` pixels, the maximum
    where tiles overlap. ``source_shape`` is the padded image tiled (rows, columns); ``size``
    the part of it that is the image (before padding): the map is cut to it."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or len(maps) != len(positions) or not len(maps):
        raise TileError(f"cannot stitch {maps.shape} maps at {len(positions)} tile positions")
    mh, mw = maps.shape[1:]
    sy, sx = spec.height / mh, spec.width / mw
    rows = max(mh, math.ceil(source_shape[0] / sy))
    cols = max(mw, math.ceil(source_shape[1] / sx))
    out = np.full((rows, cols), -np.inf, np.float32)
    for m, (y, x) in zip(maps, positions, strict=True):
        r, c = min(round(y / sy), rows - mh), min(round(x / sx), cols - mw)
        np.maximum(out[r : r + mh, c : c + mw], m, out=out[r : r + mh, c : c + mw])
    out[~np.isfinite(out)] = float(maps.min())
    if size is not None:
        out = out[: max(1, math.ceil(size[0] / sy)), : max(1, math.ceil(size[1] / sx))]
    return out


def pool(probs: np.ndarray, scores: np.ndarray, spec: TileSpec) -> tuple[np.ndarray, float]:
    """Tile probabilities [T, C] and scores [T] -> the part's (probs [C], score)."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    if scores.size == 0:
        raise TileError("no tiles to pool")
    if spec.pool == "max":
        i = int(np.argmax(scores))
        return np.asarray(probs[i], np.float32), float(scores[i])
    k = min(spec.top_k, scores.size)
    top = np.argsort(-scores, kind="stable")[:k]
    return np.asarray(probs[top], np.float64).mean(0).astype(np.float32), float(scores[top].mean())


def score_source(
    predict: Callable[[np.ndarray], Sequence[np.ndarray]],
    source: np.ndarray,
    spec: TileSpec,
    batch: int = DEFAULT_BATCH,
    size: tuple[int, int] | None = None,
) -> TiledScore:
    """Score every tile of a ``tile_source`` image with ``predict`` (uint8 batch -> (probs [b, C],
    scores [b]), and for a model with an anomaly head also anomaly scores [b] and maybe maps
    [b, h, w]), ``batch`` tiles at a time, and pool (the anomaly: module docstring; ``size``:
    the image's size before padding, for the stitched map)."""
    outs: list[list[np.ndarray]] = []
    positions: list[tuple[int, int]] = []
    for pos, tiles in iter_tile_batches(source, spec, batch):
        outs.append([np.asarray(o, np.float32) for o in predict(tiles)])
        positions.extend(pos)
    got = [np.concatenate(parts) for parts in zip(*outs, strict=True)]
    probs, scores = got[0], got[1].reshape(-1)
    part_probs, part_score = pool(probs, scores, spec)
    best = positions[int(np.argmax(scores))]
    result = TiledScore(part_probs, part_score, best, scores, positions)
    if len(got) > 2:
        result.anomaly_scores = got[2].reshape(-1)
        result.anomaly = float(result.anomaly_scores.max())
    if len(got) > 3:
        result.anomaly_map = stitch(got[3], positions, source.shape[:2], spec, size)
    return result
