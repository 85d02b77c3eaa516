"""`apply --montage`: all the feature maps of one input in one picture, a near-square grid.

Each map is first scaled as its own output is (--scale, the depth), so a cell shows what that
file shows; the grid has ``cols = ceil(sqrt(N))`` columns and as many rows as it needs, cells
the size of the largest map, a thin white separator between them. A grid that would pass
MAX_SIDE pixels a side is scaled down as a whole (each map by area averaging), and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_SIDE = 8192  # pixels a side of a montage at most
SEPARATOR = 2  # pixels between cells
# separators and empty cells are white: the largest value the maps' type stores (1.0 for floats)


@dataclass(frozen=True)
class Layout:
    rows: int
    cols: int
    cell: tuple[int, int]  # (height, width) of a cell, after scaling
    scale: float  # 1.0, or the factor that keeps the grid within MAX_SIDE

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows * self.cell[0] + (self.rows - 1) * SEPARATOR,
                self.cols * self.cell[1] + (self.cols - 1) * SEPARATOR)

    def facts(self, maps: int) -> dict:
        return {"maps": maps, "grid": [self.rows, self.cols], "cell": list(self.cell), "scale": round(self.scale, 6),
                "separator": SEPARATOR}


def layout(shapes: list[tuple[int, int]], max_side: int = MAX_SIDE) -> Layout:
    """The grid for maps of these (height, width) shapes."""
    count = len(shapes)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    height, width = max(s[0] for s in shapes), max(s[1] for s in shapes)
    scale = 1.0
    if rows * height + (rows - 1) * SEPARATOR > max_side or cols * width + (cols - 1) * SEPARATOR > max_side:
        scale = min((max_side - (rows - 1) * SEPARATOR) / (rows * height),
                    (max_side - (cols - 1) * SEPARATOR) / (cols * width))
    return Layout(rows, cols, (max(1, math.floor(height * scale)), max(1, math.floor(width * scale))), scale)


def fit(cell_map: np.ndarray, grid: Layout) -> np.ndarray:
    """One map (H, W, C), as stored (uint8, uint16) or float32, scaled to the grid (area averaging)."""
    if grid.scale == 1.0:
        return cell_map
    import cv2

    height = max(1, math.floor(cell_map.shape[0] * grid.scale))
    width = max(1, math.floor(cell_map.shape[1] * grid.scale))
    out = cv2.resize(cell_map, (width, height), interpolation=cv2.INTER_AREA)
    return out.reshape(height, width, -1)


def compose(maps: list[np.ndarray], grid: Layout) -> np.ndarray:
    """The maps (each fitted, (h, w, C), one type) row by row into one (H, W, C) picture.

    Grey maps are repeated into colour when another map has colour.
    """
    channels = max(m.shape[2] for m in maps)
    if any(m.shape[2] not in (1, channels) for m in maps):
        from .errors import InputError

        raise InputError(f"--montage: maps of {sorted({m.shape[2] for m in maps})} channels do not go in one picture")
    dtype = maps[0].dtype
    white = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    canvas = np.full((*grid.shape, channels), white, dtype=dtype)
    for index, cell_map in enumerate(maps):
        row, col = divmod(index, grid.cols)
        top, left = row * (grid.cell[0] + SEPARATOR), col * (grid.cell[1] + SEPARATOR)
        height, width = cell_map.shape[:2]
        canvas[top : top + height, left : left + width] = cell_map
    return canvas
