"""File names as text that can always be stored and printed, whatever bytes the disk holds.

Python hands a name that is not valid UTF-8 (Latin-1 from a Windows share, a camera's own code
page) to us with surrogate escapes (``'caf\\udce9.png'``); SQLite, a UTF-8 CSV file or a strict
stdout refuse those, and a newline in a name would split a one-line message. ``safe_text`` keeps
every valid character and writes each undecodable byte and control character as ``\\xNN``, so
the name stays readable and recognisable. The path itself (for opening, moving)
is always kept as Python gave it; only what is stored or printed goes through here.
"""

from __future__ import annotations

import os

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def safe_text(text: str | os.PathLike[str]) -> str:
    """``text`` with surrogate-escaped bytes and control characters (a newline in a file name)
    written as ``\\xNN``: valid UTF-8 on one line."""
    s = os.fspath(text)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        try:
            s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that no byte produced
            s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s.translate(_CONTROL)
