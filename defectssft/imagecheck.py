"""Checks an image file before it enters a project: format, completeness, size, pixel type.

A camera's half-written file, a zero-byte file, a renamed PDF or a 1-gigapixel scan each get a
one-line reason (the caller quarantines the file) instead of reaching training.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from defectssft_line.preprocess import ImageDecodeError, decode_image, image_info

# Magic numbers of the formats we accept, mapped to the extension the store uses.
_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    channels: int
    bit_depth: int
    ext: str


def sniff_format(data: bytes) -> str | None:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, without decoding pixels; None if unknown."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.MAX_IMAGE_PIXELS = None  # we apply our own limit below
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Exception:  # noqa: BLE001 - PIL cannot read every TIFF flavour; OpenCV decides then
        return None


def inspect_image_bytes(data: bytes, name: str, max_pixels: int) -> ImageInfo:
    """Validate and describe an image; raises ValueError('<name>: <reason>') when unusable."""
    if len(data) == 0:
        raise ValueError(f"{name}: empty file (0 bytes)")
    ext = sniff_format(data)
    if ext is None:
        raise ValueError(f"{name}: not an image (JPEG, PNG, BMP or TIFF expected)")
    size = _header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ValueError(
            f"{name}: image too large ({size[0]}x{size[1]} px, limit {max_pixels:,} pixels)"
        )
    try:
        img = decode_image(data, name, max_pixels)
    except ImageDecodeError as e:
        raise ValueError(str(e)) from None
    h, w, c, depth = image_info(img)
    if h * w > max_pixels:
        raise ValueError(f"{name}: image too large ({w}x{h} px, limit {max_pixels:,} pixels)")
    return ImageInfo(width=w, height=h, channels=c, bit_depth=depth, ext=ext)
