"""argparse ``type=`` parsers for the line runtime's flags: a number, checked, one-line error."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def number(kind: type, ok: Callable[[float], bool], rule: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses ``kind`` and checks ``ok``, with a one-line error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not {'an integer' if kind is int else 'a number'}: {text!r}"
            ) from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return parse


fraction = number(float, lambda v: 0.0 <= v <= 1.0, "between 0 and 1")
positive_float = number(float, lambda v: v > 0, "> 0")
non_negative_float = number(float, lambda v: v >= 0, ">= 0")
count = number(int, lambda v: v >= 0, ">= 0")
positive_int = number(int, lambda v: v >= 1, ">= 1")
