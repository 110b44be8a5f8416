"""Run-length encoding in the competition's format: row-major, 1-based "start length" pairs."""

from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    """Encode a boolean HxW mask; an empty mask gives ""."""
    flat = np.asarray(mask, dtype=bool).ravel()
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])  # 0-based starts and ends of the runs
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends, strict=True))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode an RLE string to a boolean mask of `shape`; raises ValueError on a malformed string."""
    height, width = shape
    flat = np.zeros(height * width, dtype=bool)
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(f"RLE must hold start/length pairs, got {len(tokens)} numbers")
    try:
        numbers = np.asarray(tokens, dtype=np.int64).reshape(-1, 2)
    except ValueError as error:
        raise ValueError(f"RLE holds a token that is not an integer: {error}") from error
    for start, length in numbers:
        if start < 1 or length < 1 or start - 1 + length > flat.size:
            raise ValueError(f"RLE run ({start}, {length}) is outside a {height}x{width} mask")
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(height, width)
