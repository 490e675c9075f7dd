"""Training data: the labeled/unlabeled/val lists of a project, decoded on the fly.

Images are read with ``defectssft_line.preprocess.load_for_model`` (the line's own decoding,
16-bit scaling, gray->RGB replication and resize), so a model trains on exactly what the line
will feed it. Nothing is cached in memory: 100,000 unlabeled stream images cost only their paths.

Sampling is infinite and reproducible: ``SeededSampler`` yields ``(index, seed)`` pairs from
per-epoch permutations of a fixed seed, and the seed drives the weak augmentation of that
sample. Resuming at step ``s`` restarts the sampler at position ``s * batch``, which gives the
same images and the same weak views as an uninterrupted run. Under DDP each rank takes every
``world``-th position of the same stream.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from defectssft.errors import DefectssftError
from defectssft.training.augment import apply_weak
from defectssft_line.preprocess import ImageDecodeError, load_for_model
from defectssft_line.roi import Roi

log = logging.getLogger(__name__)


class DataError(DefectssftError):
    """Training data that cannot be used (no labels, a class without images, unreadable files)."""


@dataclass
class TrainData:
    """What a training run consumes; built from a project or directly (benchmarks, tests)."""

    classes: list[str]
    labeled: list[tuple[str, int]]
    unlabeled: list[str] = field(default_factory=list)
    val: list[tuple[str, int]] = field(default_factory=list)
    test: list[tuple[str, int]] = field(default_factory=list)
    ok_class: str | None = None
    data_hash: str = ""
    bit_depth: int = 16
    # Benchmarks only: the hidden true class of each unlabeled image, so a run can log how often
    # its pseudo-labels are right (``pl_acc``). A project never knows these; leave it None.
    unlabeled_truth: list[int] | None = None
    # the project's image id of each labeled image (out-of-fold evidence names them); empty
    # when the data did not come from a project
    labeled_ids: list[int] = field(default_factory=list)
    # the project's region of interest, metadata form (defectssft_line.roi); None: whole image
    roi: dict[str, Any] | None = None

    def check(self, need_unlabeled: bool) -> None:
        if len(self.classes) < 2:
            raise DataError(
                f"need at least 2 classes to train, the project has {len(self.classes)}"
            )
        if not self.labeled:
            raise DataError(
                "no labeled training images: label some in the app (defectssft-gui PROJECT) "
                "or import labeled ones (defectssft import PROJECT DIR --label-from folder)"
            )
        bad = [lab for _, lab in self.labeled + self.val if not 0 <= lab < len(self.classes)]
        if bad:
            raise DataError(f"label index {bad[0]} out of range for {len(self.classes)} classes")
        counts = np.bincount([lab for _, lab in self.labeled], minlength=len(self.classes))
        empty = [c for c, n in zip(self.classes, counts, strict=True) if n == 0]
        if empty:
            log.warning("classes without labeled training images: %s", ", ".join(empty))
        if self.unlabeled_truth is not None and len(self.unlabeled_truth) != len(self.unlabeled):
            raise DataError(
                f"unlabeled_truth has {len(self.unlabeled_truth)} entries for "
                f"{len(self.unlabeled)} unlabeled images"
            )
        if need_unlabeled and not self.unlabeled:
            log.warning("no unlabeled images: the semi-supervised term has nothing to learn from")

    def ok_index(self) -> int | None:
        """Index of the OK class among ``classes`` (None: a project of defect types only)."""
        return self.classes.index(self.ok_class) if self.ok_class in self.classes else None

    def class_counts(self) -> list[int]:
        return np.bincount([lab for _, lab in self.labeled], minlength=len(self.classes)).tolist()


def from_project(project: Any) -> TrainData:
    """TrainData from a ``defectssft.project.Project`` (human labels of the train split, etc.)."""
    from defectssft.project_roi import roi_meta

    td = project.training_data()
    bit_depth = project.get_setting("input.bit_depth", 16)
    return TrainData(
        classes=list(td.classes),
        labeled=[(str(p), int(c)) for p, c in td.labeled],
        unlabeled=[str(p) for p in td.unlabeled],
        val=[(str(p), int(c)) for p, c in td.val],
        test=[(str(p), int(c)) for p, c in td.test],
        ok_class=td.ok_class,
        data_hash=td.data_hash,
        bit_depth=int(bit_depth or 16),
        labeled_ids=[int(i) for i in td.labeled_ids],
        roi=roi_meta(project),
    )


class ImageDataset(Dataset):
    """Decodes one image per item -> (uint8 tensor [3, H, W], label or -1).

    Items are ``(path, label)``; an index may be an int (evaluation) or ``(int, seed)`` from
    ``SeededSampler`` (training, weak view seeded per sample). An unreadable image is skipped
    in favour of the next one with a warning when ``skip_unreadable`` (unlabeled streams);
    otherwise it raises DataError.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, int]],
        height: int,
        width: int,
        bit_depth: int = 16,
        transform: A.Compose | None = None,
        skip_unreadable: bool = False,
        roi: Any = None,
    ) -> None:
        self.items = list(items)
        self.roi = Roi.from_meta(roi) if isinstance(roi, dict) else roi
        self.height, self.width, self.bit_depth = height, width, bit_depth
        self.transform = transform
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int) -> np.ndarray:
        path = self.items[i][0]
        return load_for_model(path, self.height, self.width, self.bit_depth, self.roi)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = (index, 0) if isinstance(index, int) else index
        for attempt in range(min(len(self.items), 20)):
            j = (i + attempt) % len(self.items)
            try:
                img = self._load(j)
                break
            except ImageDecodeError as e:
                if not self.skip_unreadable:
                    raise DataError(str(e)) from e
                log.warning("skipping unreadable image: %s", e)
        else:
            raise DataError(f"no readable image near {self.items[i][0]}")
        if self.transform is not None:
            img = apply_weak(self.transform, img, seed)
        tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
        return tensor, int(self.items[j][1])


class SeededSampler(Sampler):
    """Infinite stream of ``(index, sample_seed)``: epoch ``e`` is a permutation seeded by
    ``(seed, e)``; positions ``start, start+1, ...`` of the global stream, every ``world``-th one
    from ``rank``."""

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if n <= 0:
            raise ValueError("SeededSampler needs a non-empty dataset")
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start * self.world + self.rank
        epoch, perm = -1, []
        while True:
            e, k = divmod(pos, self.n)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield perm[k], (self.seed * 7_919 + pos * 104_729) % (2**31 - 1)
            pos += self.world

    def __len__(self) -> int:  # infinite; DataLoader only needs it for len(loader)
        return 2**62


class ClassBalancedSampler(SeededSampler):
    """``SeededSampler`` whose epochs draw every class equally often: each class's images are
    repeated (in seeded shuffles) up to the largest class's count, then the whole epoch is
    permuted. Positional like its parent, so resume stays exact."""

    def __init__(
        self, labels: Sequence[int], seed: int, start: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        by_class: dict[int, list[int]] = {}
        for i, c in enumerate(labels):
            by_class.setdefault(int(c), []).append(i)
        if not by_class:
            raise ValueError("ClassBalancedSampler needs a non-empty dataset")
        self.by_class = [by_class[c] for c in sorted(by_class)]
        self.per_class = max(len(v) for v in self.by_class)
        super().__init__(self.per_class * len(self.by_class), seed, start, rank, world)

    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        epoch_items: list[int] = []
        for idx in self.by_class:
            reps = -(-self.per_class // len(idx))
            pool = [
                idx[j] for _ in range(reps) for j in torch.randperm(len(idx), generator=g).tolist()
            ]
            epoch_items += pool[: self.per_class]
        return [epoch_items[j] for j in torch.randperm(len(epoch_items), generator=g).tolist()]


def _leave_stops_to_the_trainer(_worker_id: int) -> None:
    """Loader workers ignore SIGINT / SIGTERM: a stop sent to the whole process group (Ctrl+C,
    a service manager, ``kill -- -PGID``) reaches the trainer, which saves ``last.pt`` and shuts
    the workers down, instead of killing a worker under it (a crash with no checkpoint)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def infinite_loader(
    dataset: ImageDataset,
    batch_size: int,
    seed: int,
    start_batch: int,
    num_workers: int,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
    class_balanced: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches forever, beginning at batch ``start_batch`` of the seeded stream (exact resume);
    ``class_balanced``: each class drawn equally often (``ClassBalancedSampler``)."""
    start = start_batch * batch_size
    sampler: SeededSampler
    if class_balanced:
        labels = [int(item[1]) for item in dataset.items]
        sampler = ClassBalancedSampler(labels, seed, start=start, rank=rank, world=world)
    else:
        sampler = SeededSampler(len(dataset), seed, start=start, rank=rank, world=world)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=_leave_stops_to_the_trainer,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return iter(loader)


def eval_loader(
    items: Sequence[tuple[str, int]],
    height: int,
    width: int,
    bit_depth: int,
    batch_size: int = 64,
    num_workers: int = 0,
    roi: Any = None,
) -> DataLoader:
    ds = ImageDataset(items, height, width, bit_depth, roi=roi)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=_leave_stops_to_the_trainer,
    )


def path_items(paths: Sequence[str | Path]) -> list[tuple[str, int]]:
    """Unlabeled paths as dataset items (label -1)."""
    return [(str(p), -1) for p in paths]
