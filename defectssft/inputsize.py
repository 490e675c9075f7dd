"""The model's input height x width proposed from the images' shape (no Qt here).

A long, thin part (KolektorSDD's 500 x 1240 strips) squeezed into a square loses the detail a
defect lives in; the proposal keeps about the preset's pixel count and the images' median aspect
ratio, in multiples of 32 (what the backbones' strides divide evenly).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

MULTIPLE = 32


def propose_input_size(
    sizes: Iterable[tuple[int, int]], side: int, multiple: int = MULTIPLE
) -> tuple[int, int]:
    """(height, width) with about ``side * side`` pixels and the median width/height ratio of
    ``sizes`` ((width, height) pairs); (side, side) without images. ValueError for side < 1."""
    if side < 1 or multiple < 1:
        raise ValueError(f"side and multiple must be 1 or more, got {side}, {multiple}")
    ratios = sorted(w / h for w, h in sizes if w > 0 and h > 0)
    if not ratios:
        return side, side
    mid = len(ratios) // 2
    aspect = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2

    def snap(x: float) -> int:
        return max(multiple, int(round(x / multiple)) * multiple)

    return snap(side / math.sqrt(aspect)), snap(side * math.sqrt(aspect))


def image_sizes(project) -> list[tuple[int, int]]:
    """(width, height) of every image of a project."""
    return [(int(w), int(h)) for w, h in project._con().execute("SELECT width, height FROM images")]
