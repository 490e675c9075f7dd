"""The region of interest: which pixels of a camera frame the model inspects (numpy/OpenCV only).

A project declares one or more rectangles ``x,y,w,h`` in the pixels of its images (and, if
wanted, a mask image the size of the images: non-zero pixels are inspected). The model sees the
bounding box of the rectangles; pixels of that box outside every rectangle, or where the mask is
zero, are set to black. The ROI is stored in the project (``defectssft roi``) and in the model's
metadata (``input.roi``), and ``defectssft_line.preprocess.prepare`` applies it before anything
else, so training, evaluation and the line crop the same pixels. An image that does not contain
the ROI is an error naming the image (``RoiError``, one line), never a silent clamp.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from defectssft_line.preprocess import ImageDecodeError

Rect = tuple[int, int, int, int]  # x, y, width, height (pixels of the original image)


class RoiError(ImageDecodeError):
    """An ROI that is malformed, or an image it does not fit: one line."""


def parse_rect(text: str) -> Rect:
    """'x,y,w,h' (integers, w and h >= 1, x and y >= 0) -> a rectangle; RoiError otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise RoiError(
            f"ROI rectangle must be x,y,w,h in pixels (4 integers), got {text!r}"
        ) from None
    return check_rect((x, y, w, h))


def check_rect(rect: Sequence[Any]) -> Rect:
    if len(rect) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in rect):
        raise RoiError(f"ROI rectangle must be 4 integers x,y,w,h, got {list(rect)!r}")
    x, y, w, h = (int(v) for v in rect)
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise RoiError(f"ROI rectangle {x},{y},{w},{h}: x and y must be >= 0, w and h >= 1")
    return x, y, w, h


def encode_mask(mask: np.ndarray) -> str:
    """A mask as base64 PNG (0 = ignore, 255 = inspect): how the metadata carries it."""
    ok, buf = cv2.imencode(".png", np.where(mask > 0, 255, 0).astype(np.uint8))
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise RoiError("cannot encode the ROI mask")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def decode_mask(text: str) -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise RoiError("input.roi.mask is not base64 PNG data") from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise RoiError("input.roi.mask is not a readable PNG image")
    return img


def mask_from_image(img: np.ndarray) -> np.ndarray:
    """A decoded mask file (any depth/colour) -> uint8 HxW, 255 where any channel is non-zero."""
    a = img if img.ndim == 2 else img.max(axis=2)
    return np.where(a > 0, 255, 0).astype(np.uint8)


@dataclass(frozen=True)
class Roi:
    """Rectangles (at least one) and an optional full-image mask (uint8 HxW, non-zero: inspect)."""

    rects: tuple[Rect, ...]
    mask: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.rects:
            raise RoiError("an ROI needs at least one rectangle")
        object.__setattr__(self, "rects", tuple(check_rect(r) for r in self.rects))
        if self.mask is not None:
            m = np.asarray(self.mask)
            if m.ndim != 2 or m.size == 0:
                raise RoiError("the ROI mask must be a single-channel image")
            object.__setattr__(self, "mask", np.where(m > 0, 255, 0).astype(np.uint8))
        object.__setattr__(self, "_keep", None)

    @property
    def bbox(self) -> Rect:
        """The bounding box of the rectangles: what the model sees."""
        x0 = min(r[0] for r in self.rects)
        y0 = min(r[1] for r in self.rects)
        x1 = max(r[0] + r[2] for r in self.rects)
        y1 = max(r[1] + r[3] for r in self.rects)
        return x0, y0, x1 - x0, y1 - y0

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the cropped image."""
        return self.bbox[3], self.bbox[2]

    def describe(self) -> str:
        rects = " + ".join(f"{x},{y},{w},{h}" for x, y, w, h in self.rects)
        return rects + (" with a mask" if self.mask is not None else "")

    def fits(self, width: int, height: int) -> str | None:
        """None when an image of ``width`` x ``height`` contains the ROI, else why not."""
        x, y, w, h = self.bbox
        if x + w > width or y + h > height:
            return (
                f"region of interest {x},{y},{w},{h} (x,y,w,h) lies outside the "
                f"{width}x{height} image"
            )
        if self.mask is not None and self.mask.shape != (height, width):
            mh, mw = self.mask.shape
            return f"the ROI mask is {mw}x{mh} but the image is {width}x{height}"
        return None

    def check(self, width: int, height: int, name: str = "image") -> None:
        reason = self.fits(width, height)
        if reason:
            raise RoiError(f"{name}: {reason}")

    def _keep_mask(self) -> np.ndarray | None:
        """uint8 mask over the bounding box (None: every pixel of the box is inspected)."""
        if len(self.rects) == 1 and self.mask is None:
            return None
        cached = self._keep
        if cached is not None:
            return cached
        bx, by, bw, bh = self.bbox
        keep = np.zeros((bh, bw), np.uint8)
        for x, y, w, h in self.rects:
            keep[y - by : y - by + h, x - bx : x - bx + w] = 1
        if self.mask is not None:
            keep &= (self.mask[by : by + bh, bx : bx + bw] > 0).astype(np.uint8)
        object.__setattr__(self, "_keep", keep)
        return keep

    def apply(self, img: np.ndarray, name: str = "image") -> np.ndarray:
        """Crop a decoded image (any depth, any channels) to the ROI; black outside it."""
        h, w = img.shape[:2]
        self.check(w, h, name)
        x, y, bw, bh = self.bbox
        out = img[y : y + bh, x : x + bw]
        keep = self._keep_mask()
        if keep is None:
            return out
        k = keep if out.ndim == 2 else keep[:, :, None]
        return out * k.astype(out.dtype)

    # ---- the metadata form: {"rects": [[x, y, w, h], ...], "mask": base64 PNG (optional)}

    def to_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"rects": [list(r) for r in self.rects]}
        if self.mask is not None:
            meta["mask"] = encode_mask(self.mask)
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> Roi | None:
        """The ROI of ``input.roi`` (None when absent); RoiError naming the field if malformed."""
        if meta is None:
            return None
        if not isinstance(meta, Mapping):
            raise RoiError(f"input.roi must be an object, got {meta!r}")
        rects = meta.get("rects")
        if not isinstance(rects, list) or not rects:
            raise RoiError("input.roi.rects must be a non-empty list of [x, y, w, h]")
        checked = []
        for r in rects:
            if not isinstance(r, list | tuple):
                raise RoiError(f"input.roi.rects: {r!r} is not [x, y, w, h]")
            checked.append(check_rect(r))
        mask = meta.get("mask")
        if mask is not None and not isinstance(mask, str):
            raise RoiError("input.roi.mask must be base64 PNG data")
        return cls(tuple(checked), decode_mask(mask) if mask else None)

    @classmethod
    def from_rects(
        cls, rects: Iterable[str | Sequence[int]], mask: np.ndarray | None = None
    ) -> Roi:
        return cls(
            tuple(parse_rect(r) if isinstance(r, str) else check_rect(list(r)) for r in rects),
            mask,
        )


def as_roi(value: Roi | Mapping[str, Any] | None) -> Roi | None:
    """An ``Roi``, its metadata form or None -> an ``Roi`` or None."""
    if value is None or isinstance(value, Roi):
        return value
    return Roi.from_meta(value)
