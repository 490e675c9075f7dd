"""Width and height of a JPEG, PNG, BMP or TIFF read from its header, without decoding pixels.

A 400 KB PNG can claim 20,000 x 20,000 pixels; decoding it takes seconds and gigabytes. The
pixel limit (``decode_image(..., max_pixels=)``) is checked on these numbers first. Pure Python;
``None`` when the header cannot be read (the decoder then decides, and the decoded size is
checked again).
"""

from __future__ import annotations

import struct

# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic...).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def _bmp(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    header = struct.unpack("<I", data[14:18])[0]
    if header == 12:  # OS/2 BITMAPCOREHEADER
        w, h = struct.unpack("<HH", data[18:22])
        return w, h
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def _jpeg(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in _SOF:
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if marker in (0xDA, 0xD9) or length < 2:
            return None
        i += 2 + length
    return None


def _tiff(data: bytes) -> tuple[int, int] | None:
    endian = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    offset = struct.unpack(endian + "I", data[4:8])[0]
    if offset + 2 > len(data):
        return None
    count = struct.unpack(endian + "H", data[offset : offset + 2])[0]
    size: dict[int, int] = {}
    for k in range(count):
        entry = offset + 2 + 12 * k
        if entry + 12 > len(data):
            break
        tag, typ = struct.unpack(endian + "HH", data[entry : entry + 4])
        if tag in (256, 257):
            if typ == 3:  # SHORT
                value = struct.unpack(endian + "H", data[entry + 8 : entry + 10])[0]
            elif typ == 4:  # LONG
                value = struct.unpack(endian + "I", data[entry + 8 : entry + 12])[0]
            else:
                return None
            size[tag] = value
    if 256 in size and 257 in size:
        return size[256], size[257]
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) the file's header declares; None for another format or a bad header."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return _png(data)
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg(data)
        if data[:2] == b"BM":
            return _bmp(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff(data)
    except struct.error:
        return None
    return None
