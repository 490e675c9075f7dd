"""A project's region of interest: set, checked against the project's images, read for training.

The ROI is stored as the project setting ``input.roi`` in the metadata form of
``defectssft_line.roi`` (rectangles, and an optional mask as base64 PNG), so what training
writes into the model (``input.roi``) is exactly what the project holds. Setting one checks it
against every image of the project first: one that lies outside some image is refused with one
line naming how many and an example, and the ROI already stored stays. No Qt here (the app's
dialog calls these functions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectssft.errors import ProjectError
from defectssft_line.preprocess import ImageDecodeError, read_image
from defectssft_line.roi import Roi, RoiError, mask_from_image

SETTING = "input.roi"


@dataclass
class RoiCheck:
    """How an ROI fits a project's images."""

    images: int  # images checked
    outside: int  # images it does not fit
    example: str = ""  # the first of those, with why


def project_roi(project: Any) -> Roi | None:
    """The project's ROI (None: the whole image)."""
    meta = project.get_setting(SETTING)
    if not meta:
        return None
    try:
        return Roi.from_meta(meta)
    except RoiError as e:
        raise ProjectError(
            f"{project.root}: the stored region of interest is unusable ({e})"
        ) from None


def roi_meta(project: Any) -> dict[str, Any] | None:
    """The ROI in its metadata form (what training writes into the model), or None."""
    roi = project_roi(project)
    return None if roi is None else roi.to_meta()


def check_against_images(project: Any, roi: Roi) -> RoiCheck:
    """Check ``roi`` against the stored size of every image of the project."""
    rows = project._con().execute("SELECT width, height, original_name, sha256 FROM images")
    n, outside, example = 0, 0, ""
    for w, h, name, sha in rows:
        n += 1
        reason = roi.fits(int(w), int(h))
        if reason:
            outside += 1
            example = example or f"{name or sha[:12]}: {reason}"
    return RoiCheck(n, outside, example)


def load_mask(path: str | Path) -> Any:
    """A mask image file -> uint8 HxW (non-zero: inspect); ProjectError if unreadable."""
    try:
        return mask_from_image(read_image(path))
    except ImageDecodeError as e:
        raise ProjectError(f"ROI mask: {e}") from None


def set_roi(
    project: Any,
    rects: Sequence[str | Sequence[int]],
    mask_path: str | Path | None = None,
    mask: Any = None,
) -> tuple[Roi, RoiCheck]:
    """Check and store the project's ROI (``mask_path``: a mask image file; ``mask``: a mask
    array, e.g. the one already stored); ProjectError (one line, nothing changed) when a
    rectangle is malformed or the ROI lies outside any of the project's images."""
    if mask_path is not None:
        mask = load_mask(mask_path)
    if not rects and mask is not None:  # a mask alone: the rectangle is the whole mask
        rects = [(0, 0, int(mask.shape[1]), int(mask.shape[0]))]
    try:
        roi = Roi.from_rects(rects, mask)
    except RoiError as e:
        raise ProjectError(str(e)) from None
    check = check_against_images(project, roi)
    if check.outside:
        raise ProjectError(
            f"region of interest {roi.describe()} does not fit {check.outside} of "
            f"{check.images} project image(s), e.g. {check.example}; nothing changed"
        )
    project.set_setting(SETTING, roi.to_meta())
    return roi, check


def clear_roi(project: Any) -> bool:
    """Forget the ROI (models already trained keep theirs); True if there was one."""
    had = bool(project.get_setting(SETTING))
    project.set_setting(SETTING, None)
    return had
