"""Spatial filters through an ndimage module (scipy.ndimage or cupyx.scipy.ndimage).

The GPU engine's filters, and the reference path: every function takes the engine and (C, H, W)
planes and returns filtered planes; out[i] = sum_m c[m] · x[i + m - anchor] (see convolution.py).
cvfilters.py offers the same functions through OpenCV for the CPU engine; ``window_sums`` serves
template matching (match.py).
"""

from __future__ import annotations

import numpy as np

# --method auto's crossovers for scipy.ndimage, from `benchmarks/bench.py crossover` on 2048x2048 RGB
# (2 cores): direct 3x3 0.09 s and 5x5 0.18 s against FFT's flat ~0.18 s; two 1-D passes 0.15-0.19 s
# up to 11x11 and 0.23 s at 15x15. The GPU engine uses them too until they are measured there.
CROSSOVERS = {
    "direct_max_taps": 25,  # dense kernels up to 5x5 run direct, larger ones by FFT
    "separable_min_taps": 10,  # a rank-1 3x3 is still faster direct than as two passes
    "separable_max_taps": 22,  # rank-1 kernels run as two passes up to 11x11 (kh + kw taps), then FFT
}
# For filters scipy's 'wrap' and 'grid-wrap' are the same; cupyx.scipy.ndimage knows only 'wrap'.
NDIMAGE_MODE = {"reflect": "reflect", "mirror": "mirror", "nearest": "nearest", "wrap": "wrap", "constant": "constant"}


def _origin(shape, anchor) -> tuple[int, int]:
    """ndimage places a kernel by its offset from the centre, n // 2."""
    return anchor[0] - shape[0] // 2, anchor[1] - shape[1] // 2


def _in_bands(engine, planes, halo: tuple[int, int], mode: str, filter_one, out=None):
    """Run filter_one(source, target) over row bands of each plane, one band per thread.

    A band reads ``halo`` extra rows above and below, so its rows see exactly what they would
    in the whole plane; the boundary mode still applies at the image's true edges. (Wrap
    reaches across the image, so it runs on whole planes.)
    """
    channels, height, width = planes.shape
    out = engine.xp.empty(planes.shape, dtype=planes.dtype) if out is None else out
    # Bands only when there are fewer planes than threads: a band's halo costs a copy, and with
    # 3 planes on 2 threads whole planes measured faster (0.09 s against 0.14 s, 2048x2048 3x3).
    count = 1 if mode == "wrap" else max(1, min(engine.threads // channels, height // max(8, 2 * sum(halo))))
    edges = np.linspace(0, height, count + 1).astype(int)
    tasks = [(c, top, bottom) for c in range(channels) for top, bottom in zip(edges[:-1], edges[1:])]

    def one(task):
        c, top, bottom = task
        start, stop = max(0, top - halo[0]), min(height, bottom + halo[1])
        if (start, stop) == (0, height):
            filter_one(planes[c], out[c])
            return
        band = engine.xp.empty((stop - start, width), dtype=planes.dtype)
        filter_one(planes[c, start:stop], band)
        out[c, top:bottom] = band[top - start : bottom - start]

    engine.map(one, tasks)
    return out


def correlate(engine, planes, weights: np.ndarray, anchor, mode: str, cval: float, out=None):
    """Correlation with weights, into ``out`` (the planes' shape and dtype) when given."""
    origin = _origin(weights.shape, anchor)
    weights32 = engine.asarray(weights.astype(np.float32))

    def filter_one(source, target):
        engine.ndi.correlate(source, weights32, output=target, mode=NDIMAGE_MODE[mode], cval=cval, origin=origin)

    return _in_bands(engine, planes, (anchor[0], weights.shape[0] - 1 - anchor[0]), mode, filter_one, out)


def correlate_separable(engine, planes, column: np.ndarray, row: np.ndarray, anchor, mode: str, cval: float,
                        out=None):
    """Correlation with outer(column, row) as a pass down the columns, then one along the rows."""
    origin = _origin((column.size, row.size), anchor)
    # Outside the image the first pass sees cval everywhere, so the second must see cval·sum(column).
    cval_rows = cval * float(column.sum())
    column32, row32 = engine.asarray(column.astype(np.float32)), engine.asarray(row.astype(np.float32))
    ndmode = NDIMAGE_MODE[mode]

    def filter_one(source, target):
        columns = engine.ndi.correlate1d(source, column32, axis=0, mode=ndmode, cval=cval, origin=origin[0])
        engine.ndi.correlate1d(columns, row32, axis=1, output=target, mode=ndmode, cval=cval_rows, origin=origin[1])

    return _in_bands(engine, planes, (anchor[0], column.size - 1 - anchor[0]), mode, filter_one, out)


def window_sums(engine, planes, shape: tuple[int, int], out: list | None = None) -> list:
    """Sums of every ``shape`` window of each plane, float64:
    one (H - th + 1, W - tw + 1) array a plane.

    A running sum along the rows (ndimage's uniform filter accumulates in double; its means
    times tw), then down the columns, one row of the whole stack at a time: that measured
    several times faster than a cumulative sum along a first axis (a strided walk). (``out``, the
    buffers cvfilters.window_sums may fill, is not used here.)
    """
    xp = engine.xp
    th, tw = shape
    planes = xp.asarray(planes, dtype=np.float64)
    count, height, width = planes.shape
    out_h, out_w = height - th + 1, width - tw + 1
    rows = xp.empty(planes.shape, dtype=np.float64)
    for c in range(count):
        engine.ndi.uniform_filter1d(planes[c], tw, axis=-1, output=rows[c], mode="constant")
    rows = rows[..., tw // 2 : tw // 2 + out_w]  # the runs that fit: means of tw values
    out = xp.empty((count, out_h, out_w), dtype=np.float64)
    out[:, 0] = rows[:, 0]
    for i in range(1, th):
        out[:, 0] += rows[:, i]
    for i in range(1, out_h):
        xp.add(out[:, i - 1], rows[:, i + th - 1], out=out[:, i])
        out[:, i] -= rows[:, i - 1]
    out *= tw
    return list(out)



def window_spread(engine, planes, shape: tuple[int, int], out: list | None = None):
    """sum_c (sum_xy p_c² - (sum_xy p_c)² / n) of every ``shape`` window of the (C, H, W) planes,
    float64 (n = th·tw): an (H - th + 1, W - tw + 1) array. From float64 window sums of the
    pixels as they are (double holds the difference: 1e-9 of it at a spread of 3e-4 on a base of
    0.8). (``out``, the buffers cvfilters.window_spread fills, is not used here.)
    """
    xp = engine.xp
    squares = xp.multiply(planes[0], planes[0], dtype=np.float64)  # a float32's square is exact in float64
    for more in planes[1:]:
        squares += xp.multiply(more, more, dtype=np.float64)
    (total,) = window_sums(engine, squares[None], shape)
    for plane in planes:
        (sums,) = window_sums(engine, plane[None], shape)
        sums *= sums
        sums /= shape[0] * shape[1]
        total -= sums
    return total

def magnitude(engine, responses: list):
    """sqrt(sum r²) of same-shaped responses, reusing the first one's memory."""
    total = responses[0]
    total *= total
    for response in responses[1:]:
        total += response * response
    return engine.xp.sqrt(total, out=total)
