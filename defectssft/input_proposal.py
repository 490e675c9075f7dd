"""What ``defectssft init --like IMAGES`` proposes for the model's input (no Qt, no torch).

From the size of a sample of the images a project will hold (headers only, nothing decoded) it
proposes a height x width that keeps their aspect ratio (``inputsize.propose_input_size``, the
proposal the app's training dialog makes) and, for large parts with small defects, the tile grid
the ``tiles`` preset would cut at native resolution (``defectssft_line.tiles``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from defectssft.errors import ProjectError
from defectssft.inputsize import propose_input_size, shrink_note
from defectssft_line import tiles as T
from defectssft_line.imageheader import header_size
from defectssft_line.preprocess import is_image_name

SAMPLE = 200  # image headers read at most
HEADER_BYTES = 1 << 16


def image_files(paths: Iterable[str | Path], limit: int = SAMPLE) -> list[Path]:
    """Image files among ``paths`` (folders searched recursively), at most ``limit``."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = (f for f in sorted(p.rglob("*")) if f.is_file() and is_image_name(f))
        elif p.is_file():
            found = iter([p])
        else:
            raise ProjectError(f"--like {p}: no such file or folder")
        for f in found:
            out.append(f)
            if len(out) >= limit:
                return out
    return out


def sizes_of(files: Iterable[Path]) -> list[tuple[int, int]]:
    """(width, height) of each file whose header can be read."""
    sizes = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                size = header_size(fh.read(HEADER_BYTES))
        except OSError:
            continue
        if size is not None and size[0] > 0 and size[1] > 0:
            sizes.append(size)
    return sizes


def proposal(sizes: list[tuple[int, int]], side: int = 128, tile: int = 128) -> list[str]:
    """The lines ``init --like`` prints."""
    if not sizes:
        return ["no readable image headers found: cannot propose an input size"]
    ws, hs = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
    w, h = ws[len(ws) // 2], hs[len(hs) // 2]
    ph, pw = propose_input_size(sizes, side)
    rows, cols = T.grid_shape(h, w, T.TileSpec(tile, tile))
    distinct = len(set(sizes))
    lines = [
        f"images: {len(sizes)} read, median {w}x{h} px (w x h)"
        + (
            f", {distinct} different sizes (each image gets its own tile grid)"
            if distinct > 1
            else ""
        ),
        f"resized input keeping the aspect ratio: height {ph} x width {pw} "
        f"(defectssft train PROJECT --set input.height={ph} --set input.width={pw})",
        f"or tiles at native resolution (defectssft train PROJECT --preset tiles): "
        f"{rows}x{cols} = {rows * cols} tiles of {tile}x{tile} px per {w}x{h} image",
    ]
    note = shrink_note(sizes, ph, pw)
    if note:
        lines.insert(2, note)
    return lines
