"""Reading torch files that a user or another machine can write, without running code from them.

A ``.pt`` file is a pickle: loaded with ``weights_only=False`` it can run anything its author
wanted (``os.system`` in ``__reduce__``) as whoever opens the project. Every torch file defectssft
reads (``last.pt``, ``best.pt``, ``model.pt``, ``.pth`` weights) goes through ``torch.load`` with
``weights_only=True``, which only rebuilds tensors and plain containers (dict, list, tuple, str,
numbers, None). Nothing is allow-listed: what defectssft writes is kept to those types, and the
one thing that was not (NumPy's RNG state, an ndarray) is stored as a tensor by
``plain_rng_state`` and turned back by ``rng_state_from_plain``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectssft.errors import ModelFileError


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        line = line.strip()
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.removeprefix("WeightsUnpickler error: ")[:200]
    return (text.splitlines()[0][:200] if text else "") or type(e).__name__


def load_torch_file(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; ModelFileError with one line if the
    file is missing, unreadable, or holds anything but tensors and plain values."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, or refused by the safe unpickler
        if "Weights only load failed" in str(e) or "Unsupported" in str(e):
            raise ModelFileError(
                f"{path}: refused to load this {what}: it holds more than tensors and plain "
                f"values ({_first_line(e)}); it was written by an older defectssft or changed "
                "by someone else"
            ) from None
        raise ModelFileError(
            f"{path}: not a readable {what} (corrupt or truncated: {_first_line(e)})"
        ) from None


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A training checkpoint (``last.pt`` / ``best.pt``) loaded safely: a dict with ``required``."""
    obj = load_torch_file(path, "checkpoint")
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path}: not a defectssft training checkpoint")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ModelFileError(
            f"{path}: not a defectssft training checkpoint (no {', '.join(missing)})"
        )
    return obj


def plain_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    """An RNG state (torch / numpy / python / cuda) with NumPy's key array as a tensor."""
    out = dict(state)
    np_state = state.get("numpy")
    if np_state is not None:
        name, keys, pos, has_gauss, cached = np_state
        out["numpy"] = (
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        )
    return out


def rng_state_from_plain(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``plain_rng_state``: NumPy's key tensor back to a uint32 array."""
    out = dict(state)
    np_state = state.get("numpy")
    if np_state is not None:
        name, keys, pos, has_gauss, cached = np_state
        if isinstance(keys, torch.Tensor):
            keys = keys.numpy()
        out["numpy"] = (name, np.asarray(keys).astype(np.uint32), pos, has_gauss, cached)
    return out
