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


# From this shrink factor on (the smaller of height and width), ``init --like`` and ``train`` say
# what the resize erases: KolektorSDD's parts shrink 5x at the proposed 192 x 96, and what the
# default path passes there on every seed is its thinnest cracks (BENCHMARKS.md, "Which parts
# escape").
SHRINK_WARN = 3.0


def shrink_note(sizes: Iterable[tuple[int, int]], height: int, width: int) -> str | None:
    """What resizing the images of ``sizes`` ((width, height) pairs; their median size) to
    ``height`` x ``width`` erases, when it shrinks them ``SHRINK_WARN`` times or more; else None."""
    sizes = list(sizes)
    if not sizes or height < 1 or width < 1:
        return None
    ws, hs = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
    shrink = min(hs[len(hs) // 2] / height, ws[len(ws) // 2] / width)
    if shrink < SHRINK_WARN:
        return None
    return (
        f"the resize shrinks the parts {shrink:.1f}x or more: a defect thinner than about "
        f"{shrink:.0f} px (a fine crack, a scratch) is under one input pixel and may vanish; "
        "a larger input (input.side, or input.height / input.width) keeps more of it, tiles "
        "(--preset tiles) keep every pixel (BENCHMARKS.md compares them)"
    )


def image_sizes(project) -> list[tuple[int, int]]:
    """(width, height) of every image of a project."""
    return [(int(w), int(h)) for w, h in project._con().execute("SELECT width, height FROM images")]
