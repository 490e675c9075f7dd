"""File names as text that can always be stored and printed, whatever bytes the disk holds.

Python hands a name that is not valid UTF-8 (Latin-1 from a Windows share, a camera's own code
page) to us with surrogate escapes (``'caf\\udce9.png'``); SQLite, a UTF-8 CSV file or a strict
stdout refuse those. ``safe_text`` keeps every valid character and writes each undecodable byte
as ``\\xNN``, so the name stays readable and recognisable. The path itself (for opening, moving)
is always kept as Python gave it; only what is stored or printed goes through here.
"""

from __future__ import annotations

import os


def safe_text(text: str | os.PathLike[str]) -> str:
    """``text`` with surrogate-escaped bytes written as ``\\xNN`` (valid UTF-8 either way)."""
    s = os.fspath(text)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no byte produced
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
