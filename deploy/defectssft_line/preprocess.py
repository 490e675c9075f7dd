"""Image decoding and normalisation shared by training and the line runtime.

One definition of how a camera file becomes the model's input, so that a model scores the
same image the same way in training, in evaluation and on the line. numpy and OpenCV only.
See docs/ARCHITECTURE.md ("Image normalisation") for the rules and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
# The sensor depth 16-bit files are scaled from when neither the model nor the project says.
DEFAULT_BIT_DEPTH = 16
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


def crop_roi(img: np.ndarray, roi: Any, name: str = "image") -> np.ndarray:
    """The region of interest of a decoded image (``defectssft_line.roi``; None: all of it).
    Applied first, on the decoded pixels, by every path below."""
    if roi is None:
        return img
    from defectssft_line.roi import as_roi

    return as_roi(roi).apply(img, name)


def prepare(
    img: np.ndarray, height: int, width: int, bit_depth: int = 16, roi: Any = None
) -> np.ndarray:
    """Decoded image -> the model input: its ROI as HxWx3 RGB uint8 at (height, width)."""
    return resize(to_rgb8(crop_roi(img, roi), bit_depth), height, width)


def load_for_model(
    path: str | Path, height: int, width: int, bit_depth: int = 16, roi: Any = None
) -> np.ndarray:
    """Read a file and return the model input (HxWx3 RGB uint8; ``roi``: see ``prepare``)."""
    img = read_image(path)
    return prepare(crop_roi(img, roi, str(path)), height, width, bit_depth)


# GenICam pixel formats (SFNC names) -> (bits per sample, layout). Unpacked formats only: a
# 10/12-bit sample arrives in a 16-bit word, LSB-aligned, and keeps its value (0..1023/4095)
# so that the model's ``bit_depth`` (the sensor's depth) scales it exactly as it scales a
# 16-bit file from the same sensor.
_BAYER_TO_CV = {  # GenICam names the top-left 2x2 cell; OpenCV names the cell one pixel in
    "RG": cv2.COLOR_BayerBG2BGR,
    "BG": cv2.COLOR_BayerRG2BGR,
    "GR": cv2.COLOR_BayerGB2BGR,
    "GB": cv2.COLOR_BayerGR2BGR,
}
_PIXEL_FORMATS: dict[str, tuple[int, str]] = {
    "Mono8": (8, "mono"),
    "Mono10": (10, "mono"),
    "Mono12": (12, "mono"),
    "Mono14": (14, "mono"),
    "Mono16": (16, "mono"),
    "RGB8": (8, "rgb"),
    "BGR8": (8, "bgr"),
    "RGBa8": (8, "rgba"),
    "BGRa8": (8, "bgra"),
    **{f"Bayer{p}{b}": (b, f"bayer{p}") for p in _BAYER_TO_CV for b in (8, 10, 12, 16)},
}
PIXEL_FORMATS = tuple(_PIXEL_FORMATS)


def pixel_format_depth(pixel_format: str) -> int:
    """Bits per sample of a supported GenICam pixel format (8 for Mono8, 12 for Mono12...)."""
    if pixel_format not in _PIXEL_FORMATS:
        raise ImageDecodeError(
            f"pixel format {pixel_format} is not supported (use one of {', '.join(PIXEL_FORMATS)})"
        )
    return _PIXEL_FORMATS[pixel_format][0]


def from_pixel_format(data: np.ndarray, pixel_format: str, height: int, width: int) -> np.ndarray:
    """A camera buffer -> an image in the decoded-file convention (uint8 or uint16; HxW mono,
    HxWx3 BGR or HxWx4 BGRA), so ``prepare`` treats a camera frame exactly like a file.

    Bayer mosaics are demosaiced with OpenCV (to BGR, same depth). The result is a copy: the
    camera's buffer can be handed back at once.
    """
    bits, layout = _PIXEL_FORMATS.get(pixel_format, (0, ""))
    if not bits:
        pixel_format_depth(pixel_format)  # raises the one-line error
    dtype = np.uint8 if bits == 8 else np.uint16
    buf = np.asarray(data)
    if buf.dtype != dtype:
        buf = np.frombuffer(np.ascontiguousarray(buf).tobytes(), dtype=dtype)
    channels = {"rgb": 3, "bgr": 3, "rgba": 4, "bgra": 4}.get(layout, 1)
    need = height * width * channels
    if buf.size < need:
        raise ImageDecodeError(
            f"{pixel_format} frame {width}x{height}: {buf.size} samples, need {need}"
        )
    img = buf.reshape(-1)[:need].reshape(
        (height, width, channels) if channels > 1 else (height, width)
    )
    if layout == "rgb":
        return cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if layout == "rgba":
        return cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    if layout.startswith("bayer"):
        return cv2.cvtColor(img, _BAYER_TO_CV[layout[5:]])
    return img.copy()
