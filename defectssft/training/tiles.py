"""Training on tiles with image-level labels only (multiple-instance learning), ``tiles.enabled``.

Each training sample is one tile (the model's input size) cut by the model's tiling rule
(``defectssft_line.tiles``) from the ROI of a project image:

* a good part (the OK class): any of its tiles carries the OK label (a good part's tiles are
  all good): in half its samples a random one, in the other half its highest-scoring one
  (a hard negative: the part's score is its highest tile's);
* a labeled part of another class: one of its ``tiles.mil_top`` highest-scoring tiles (the
  probability of its label, scored by the shipped network, EMA teacher or student) carries the
  label; the choice is refreshed every ``tiles.mil_every`` steps (``MilSelection.refresh``); at
  the start of a run, with an untrained head, the tile least like any good part's tile (in the
  ImageNet backbone's features) is chosen instead;
* an unlabeled image: a random tile, whose weak and strong views must agree (the usual
  consistency loss, per tile).

Validation scores whole parts: every tile, pooled by the rule (``TiledVal``), so the checkpoint
is chosen on the number the line computes. The loop calls this module through three small
hooks: ``make_streams`` (``tile_streams``), ``predict`` (``TiledVal.predict_pooled``) and the
step loop (``MilSelection.refresh``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from defectssft.inspection import to_model_input
from defectssft.training.augment import weak_transform
from defectssft.training.data import DataError, ImageDataset, TrainData, infinite_loader
from defectssft_line import tiles as T
from defectssft_line.preprocess import ImageDecodeError, read_image
from defectssft_line.roi import Roi
from defectssft_line.tiles import TileSpec

log = logging.getLogger("defectssft.training")


def tile_spec(cfg: Any) -> TileSpec | None:
    """The tiling rule of a config (``Config`` or its dict form); None when tiles are off."""
    if isinstance(cfg, dict):
        t, inp = cfg.get("tiles") or {}, cfg["input"]
        if not t.get("enabled"):
            return None
        side = inp.get("side") or 128
        h, w = inp["height"] or side, inp["width"] or side  # a side left empty: a square tile
        return TileSpec(h, w, float(t["scale"]), float(t["overlap"]), t["pool"], int(t["top_k"]))
    if not cfg.tiles.enabled:
        return None
    t, inp = cfg.tiles, cfg.input
    h, w = inp.height or inp.side, inp.width or inp.side
    return TileSpec(h, w, t.scale, t.overlap, t.pool, t.top_k)


def tiles_meta(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """``input.tiles`` of the model a config trains (None: not tiled)."""
    spec = tile_spec(cfg)
    return None if spec is None else spec.to_meta()


class TileDataset(ImageDataset):
    """One tile per item -> (uint8 tensor [3, H, W], label); see the module docstring."""

    def __init__(
        self,
        items: Sequence[tuple[str, int]],
        spec: TileSpec,
        bit_depth: int,
        roi: Roi | None,
        transform: Any = None,
        skip_unreadable: bool = False,
        random_labels: Sequence[int] = (),
        mil_top: int = 1,
    ) -> None:
        super().__init__(items, spec.height, spec.width, bit_depth, transform, skip_unreadable)
        self.spec, self.roi = spec, roi
        self.random_labels = set(random_labels)
        # MIL choice per item: up to mil_top (y, x) positions; -1 = not chosen yet. In shared
        # memory, so loader worker processes see each refresh.
        self.selected = torch.full((len(self.items), mil_top, 2), -1, dtype=torch.int32)
        self.selected.share_memory_()
        self._seed = 0

    def source(self, i: int) -> np.ndarray:
        path = self.items[i][0]
        return T.tile_source(read_image(path), self.spec, self.bit_depth, self.roi, path)

    def _load(self, i: int) -> np.ndarray:
        src = self.source(i)
        rng = np.random.default_rng(self._seed)
        chosen = [tuple(p) for p in self.selected[i].tolist() if p[0] >= 0]
        label = self.items[i][1]
        # a good part's chosen tile is a hard negative for half its samples (MilSelection)
        if chosen and label >= 0 and (label not in self.random_labels or rng.random() < 0.5):
            y, x = chosen[int(rng.integers(len(chosen)))]
        else:
            ys = T.axis_starts(src.shape[0], self.spec.height, self.spec.overlap)
            xs = T.axis_starts(src.shape[1], self.spec.width, self.spec.overlap)
            y, x = int(rng.choice(ys)), int(rng.choice(xs))
        return np.ascontiguousarray(T.cut(src, self.spec, y, x))

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        self._seed = 0 if isinstance(index, int) else int(index[1])
        return super().__getitem__(index)


def _scores(
    model: torch.nn.Module,
    source: np.ndarray,
    spec: TileSpec,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    dtype: torch.dtype | None,
    batch: int,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Softmax probabilities [T, C] of every tile of a tile source, and the tiles' positions."""
    probs, positions = [], []
    for pos, tiles in T.iter_tile_batches(source, spec, batch):
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).to(device)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            logits = model(to_model_input(x, mean, std))
        probs.append(logits.float().softmax(1).cpu().numpy())
        positions.extend(pos)
    return np.concatenate(probs), positions


def defect_score(probs: np.ndarray, ok_index: int | None) -> np.ndarray:
    """``decision.defect_scores`` of tile probabilities [T, C]."""
    if ok_index is None:
        return 1.0 - probs.max(axis=1)
    return 1.0 - probs[:, ok_index]


class MilSelection:
    """Which tile of each labeled part carries its label, refreshed by the network.

    A labeled non-OK part: its tile(s) with the highest probability of its label, except at the
    very start of a run, when the head is untrained: then the tile(s) least like any tile of
    the good parts (cosine distance of the backbone's pooled features to a bank of good
    tiles). A good part: its highest-scoring tile among ``sample`` random ones, which stands in
    for a random tile in half its samples (hard negatives: the part's score is its highest tile,
    so that is the tile to teach).
    """

    def __init__(self, dataset: TileDataset, every: int, batch: int, sample: int = 16) -> None:
        self.dataset, self.every, self.batch, self.sample = dataset, every, batch, sample
        self.refreshed_at: int | None = None

    def due(self, step: int) -> bool:
        return self.refreshed_at is None or (step % self.every == 0 and step != self.refreshed_at)

    def _tiles(self, i: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        ds = self.dataset
        try:
            src = ds.source(i)
        except ImageDecodeError as e:
            raise DataError(str(e)) from e
        ys = T.axis_starts(src.shape[0], ds.spec.height, ds.spec.overlap)
        xs = T.axis_starts(src.shape[1], ds.spec.width, ds.spec.overlap)
        return src, [(y, x) for y in ys for x in xs]

    def _choose(self, i: int, positions: list[tuple[int, int]], score: np.ndarray) -> None:
        k = self.dataset.selected.shape[1]
        chosen = torch.full((k, 2), -1, dtype=torch.int32)
        for j, t in enumerate(np.argsort(-score, kind="stable")[:k]):
            chosen[j] = torch.tensor(positions[int(t)], dtype=torch.int32)
        self.dataset.selected[i].copy_(chosen)

    @torch.no_grad()
    def refresh(
        self,
        step: int,
        model: torch.nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        dtype: torch.dtype | None = None,
    ) -> None:
        ds = self.dataset
        was_training = model.training
        model.eval()
        first = self.refreshed_at is None and step == 0
        use_features = first and hasattr(model, "forward_features")
        rng = np.random.default_rng(step)
        bank = []
        run = _Runner(model, mean, std, device, dtype, self.batch)
        for i, (_, label) in enumerate(ds.items):
            if label not in ds.random_labels or label < 0:
                continue
            src, positions = self._tiles(i)
            pick = rng.choice(len(positions), min(self.sample, len(positions)), replace=False)
            positions = [positions[int(j)] for j in sorted(pick)]
            tiles = np.stack([T.cut(src, ds.spec, y, x) for y, x in positions])
            probs, feats = run(tiles, use_features)
            self._choose(i, positions, 1.0 - probs[:, label])
            if feats is not None:
                bank.append(feats)
        bank_t = torch.from_numpy(np.concatenate(bank)) if bank else None
        for i, (_, label) in enumerate(ds.items):
            if label in ds.random_labels or label < 0:
                continue
            src, positions = self._tiles(i)
            tiles = np.stack([T.cut(src, ds.spec, y, x) for y, x in positions])
            probs, feats = run(tiles, bank_t is not None)
            if bank_t is not None and feats is not None:  # least like any good tile
                sim = torch.from_numpy(feats) @ bank_t.T
                score = -sim.max(dim=1).values.numpy()
            else:
                score = probs[:, label]
            self._choose(i, positions, score)
        model.train(was_training)
        self.refreshed_at = step


class _Runner:
    """Tiles (uint8 NHWC) -> softmax probabilities, and L2-normalised pooled backbone
    features when asked (timm's ``forward_features``), ``batch`` at a time."""

    def __init__(self, model, mean, std, device, dtype, batch) -> None:  # noqa: ANN001
        self.model, self.mean, self.std = model, mean, std
        self.device, self.dtype, self.batch = device, dtype, batch

    def __call__(self, tiles: np.ndarray, features: bool) -> tuple[np.ndarray, Any]:
        probs, feats = [], []
        for i in range(0, len(tiles), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(tiles[i : i + self.batch]))
            x = to_model_input(x.permute(0, 3, 1, 2).to(self.device), self.mean, self.std)
            with (
                torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()
            ):
                if features:
                    f = self.model.forward_features(x)
                    logits = self.model.forward_head(f)
                    pooled = f.float().mean(dim=(2, 3)) if f.ndim == 4 else f.float()
                    feats.append(torch.nn.functional.normalize(pooled, dim=1).cpu().numpy())
                else:
                    logits = self.model(x)
            probs.append(logits.float().softmax(1).cpu().numpy())
        return np.concatenate(probs), (np.concatenate(feats) if features else None)


class TiledVal:
    """Validation of whole parts: every tile scored, pooled by the rule."""

    def __init__(
        self, items: Sequence[tuple[str, int]], spec: TileSpec, bit_depth: int, roi: Roi | None,
        ok_index: int | None, batch: int,
    ) -> None:  # fmt: skip
        self.dataset = TileDataset(items, spec, bit_depth, roi)
        self.ok_index, self.batch = ok_index, batch

    def __len__(self) -> int:
        return len(self.dataset)

    @torch.no_grad()
    def predict_pooled(
        self,
        model: torch.nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        dtype: torch.dtype | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(pooled probabilities [N, C], labels [N]) of the val parts."""
        was_training = model.training
        model.eval()
        out, labels = [], []
        ds = self.dataset
        for i, (_, label) in enumerate(ds.items):
            try:
                src = ds.source(i)
            except ImageDecodeError as e:
                raise DataError(str(e)) from e
            probs, _ = _scores(model, src, ds.spec, mean, std, device, dtype, self.batch)
            pooled, _ = T.pool(probs, defect_score(probs, self.ok_index), ds.spec)
            out.append(pooled)
            labels.append(label)
        model.train(was_training)
        return np.stack(out), np.asarray(labels)


def tile_streams(
    data: TrainData, cfg: Any, use_unlabeled: bool, start_step: int, info: Any, pin: bool
) -> tuple[Any, MilSelection]:
    """``loop.make_streams`` for a tiled run: the same ``Streams``, of tiles; and the MIL
    selection the loop refreshes."""
    from defectssft.training.loop import Streams

    spec = tile_spec(cfg)
    assert spec is not None
    roi = Roi.from_meta(data.roi)
    bit_depth = cfg.input.bit_depth or data.bit_depth
    a, tc = cfg.augment, cfg.train
    weak = weak_transform(a.hflip, a.vflip, a.shift)
    ok = data.ok_index()
    batch, seed, workers = tc.batch_size, tc.seed, tc.num_workers
    labeled_ds = TileDataset(
        data.labeled, spec, bit_depth, roi, weak,
        random_labels=() if ok is None else (ok,), mil_top=cfg.tiles.mil_top,
    )  # fmt: skip
    labeled_workers = min(workers, 1) if use_unlabeled else workers
    labeled = infinite_loader(labeled_ds, batch, seed, start_step, labeled_workers, info.rank,
                              info.world, pin)  # fmt: skip
    unlabeled = None
    unlabeled_batch = batch * cfg.ssl.mu
    if use_unlabeled:
        items = (
            list(zip(data.unlabeled, data.unlabeled_truth, strict=True))
            if data.unlabeled_truth is not None
            else [(str(p), -1) for p in data.unlabeled]
        )
        unlabeled_ds = TileDataset(items, spec, bit_depth, roi, weak, skip_unreadable=True,
                                   random_labels=(-1,))  # fmt: skip
        unlabeled = infinite_loader(unlabeled_ds, unlabeled_batch, seed + 1, start_step, workers,
                                    info.rank, info.world, pin)  # fmt: skip
    val = TiledVal(data.val, spec, bit_depth, roi, ok, cfg.tiles.batch) if data.val else None
    streams = Streams(labeled, unlabeled, val, unlabeled_batch, data.unlabeled_truth is not None)
    return streams, MilSelection(labeled_ds, cfg.tiles.mil_every, cfg.tiles.batch)


def describe_input(cfg: dict[str, Any], data: TrainData, project: Any = None) -> str:
    """The line ``train`` prints: ROI, input size, and with tiles the grid per image size."""
    from defectssft.inputsize import image_sizes
    from defectssft.inspection import InputSpec, ModelSpec
    from defectssft.tiling import describe

    inp = cfg["input"]
    spec = ModelSpec("", ["a"], input=InputSpec(inp["height"], inp["width"], 16, data.roi,
                                                tiles_meta(cfg)))  # fmt: skip
    sizes = image_sizes(project) if project is not None else []
    return describe(spec, sizes)
