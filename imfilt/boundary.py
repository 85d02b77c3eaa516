"""The boundary modes as index arithmetic: which source position each position past an edge reads.

Below both the operations (operations.py carries a channel through --size by indexing) and the tile
layer (tiles.py reads a window's halo by indexing): neither imports the other.
"""

from __future__ import annotations

import numpy as np


def extend_index(start: int, stop: int, n: int, mode: str) -> np.ndarray:
    """Source index of positions start..stop-1 of a line of n values extended past both ends.

    As numpy.pad extends it (also for halos wider than the line); -1 marks cval (``constant``).
    """
    i = np.arange(start, stop)
    if mode == "constant":
        return np.where((i >= 0) & (i < n), i, -1)
    if mode == "nearest":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return i % n
    if mode == "mirror" and n == 1:
        return np.zeros_like(i)
    period = 2 * n if mode == "reflect" else 2 * n - 2  # reflect repeats edge values, mirror does not
    m = i % period
    return np.where(m < n, m, period - 1 - m if mode == "reflect" else period - m)
