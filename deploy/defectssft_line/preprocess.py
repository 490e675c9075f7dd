"""Image decoding and normalisation shared by training and the line runtime.

One definition of how a camera file becomes the model's input, so that a model scores the
same image the same way in training, in evaluation and on the line. numpy and OpenCV only.
See docs/ARCHITECTURE.md ("Image normalisation") for the rules and why.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from defectssft_line.imageheader import header_size

# Decode failures get a one-line reason from us; OpenCV's own log lines (``imdecode_(''): can't
# read header``) would only add noise on stderr.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_FATAL)
except AttributeError:  # pragma: no cover - an OpenCV build without the logging module
    pass

# Files a camera or a user hands us; matched case-insensitively on the suffix.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded (empty, truncated, corrupt, not an image)."""


def is_image_name(name: str | Path) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def check_complete(data: bytes) -> str | None:
    """Return a reason when ``data`` is visibly incomplete (a truncated JPEG or PNG), else None.

    Decoders often 'succeed' on a truncated JPEG and fill the rest with grey, so a file that a
    camera is still writing would silently become a bad training image.
    """
    if len(data) == 0:
        return "empty file (0 bytes)"
    if data[:3] == b"\xff\xd8\xff":
        # A complete JPEG has its end-of-image marker after the scan data; cameras may pad the
        # file after it. (An EXIF thumbnail's own marker comes before the first scan.)
        sos, eoi = data.find(b"\xff\xda"), data.rfind(b"\xff\xd9")
        if eoi < 0 or eoi < sos:
            return "truncated JPEG (no end-of-image marker)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-32:]:
            return "truncated PNG (no IEND chunk)"
    return None


def _too_large(name: str, w: int, h: int, max_pixels: int) -> ImageDecodeError:
    return ImageDecodeError(f"{name}: image too large ({w}x{h} px, limit {max_pixels:,} pixels)")


def decode_image(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Decode file bytes to an array as stored (uint8 or uint16; HxW, HxWx3 BGR or HxWx4 BGRA).

    With ``max_pixels``, an image whose header declares more pixels is refused before any
    decoding (and the decoded size is checked again). Raises ImageDecodeError with a one-line
    reason.
    """
    reason = check_complete(data)
    if reason:
        raise ImageDecodeError(f"{name}: {reason}")
    if max_pixels is not None:
        size = header_size(data)
        if size is not None and size[0] * size[1] > max_pixels:
            raise _too_large(name, size[0], size[1], max_pixels)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # e.g. a header whose width exceeds OpenCV's own limits
        detail = str(e).strip().splitlines()[-1].split(") ", 1)[-1][:120] if str(e) else ""
        raise ImageDecodeError(
            f"{name}: not a readable image (corrupt header{': ' + detail if detail else ''})"
        ) from None
    if img is None or img.size == 0:
        raise ImageDecodeError(f"{name}: not a readable image (corrupt or unsupported format)")
    if max_pixels is not None and img.shape[0] * img.shape[1] > max_pixels:
        raise _too_large(name, img.shape[1], img.shape[0], max_pixels)
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageDecodeError(f"{name}: unsupported pixel type {img.dtype} (need 8- or 16-bit)")
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        raise ImageDecodeError(f"{name}: unsupported channel count {img.shape[2]}")
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Read and decode a file; errors (missing, unreadable, corrupt) become ImageDecodeError."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"{p}: cannot read ({e.strerror or e})") from e
    return decode_image(data, str(p))


def image_info(img: np.ndarray) -> tuple[int, int, int, int]:
    """(height, width, channels, bit depth of the container) of a decoded image."""
    h, w = img.shape[:2]
    c = 1 if img.ndim == 2 else img.shape[2]
    return h, w, c, 16 if img.dtype == np.uint16 else 8


def to_rgb8(img: np.ndarray, bit_depth: int = 16) -> np.ndarray:
    """Convert a decoded image to HxWx3 RGB uint8.

    16-bit data is scaled linearly by 255 / (2**bit_depth - 1) and clipped: ``bit_depth`` is the
    sensor's depth (12 for a 12-bit camera writing 16-bit files). 8-bit data is unchanged.
    """
    if img.dtype == np.uint16:
        if not 8 <= bit_depth <= 16:
            raise ValueError(f"bit_depth must be between 8 and 16, got {bit_depth}")
        scale = 255.0 / float((1 << bit_depth) - 1)
        img = np.clip(img.astype(np.float32) * scale + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    ch = img.shape[2]
    if ch == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if ch == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to (height, width): INTER_AREA when shrinking, INTER_LINEAR when enlarging."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    interp = cv2.INTER_AREA if (height * width) < (h * w) else cv2.INTER_LINEAR
    out = cv2.resize(img, (width, height), interpolation=interp)
    if out.ndim == 2 and img.ndim == 3:
        out = out[:, :, None]
    return out


def prepare(img: np.ndarray, height: int, width: int, bit_depth: int = 16) -> np.ndarray:
    """Decoded image -> the model input: HxWx3 RGB uint8 at (height, width)."""
    return resize(to_rgb8(img, bit_depth), height, width)


def load_for_model(path: str | Path, height: int, width: int, bit_depth: int = 16) -> np.ndarray:
    """Read a file and return the model input (HxWx3 RGB uint8)."""
    return prepare(read_image(path), height, width, bit_depth)
