"""Spatial filters through OpenCV for the CPU engine: the functions of ndfilters.py, 5-10x faster.

OpenCV's float32 filter2D and sepFilter2D compute the same correlation (kernel and anchor) as
scipy.ndimage, to float32 rounding. Its borders are scipy's for reflect (BORDER_REFLECT), mirror
(BORDER_REFLECT_101), nearest (BORDER_REPLICATE) and constant with cval 0; its filters refuse
BORDER_WRAP and know no other constant, so wrap and a non-zero cval are padded first
(copyMakeBorder), filtered and cropped. Planes that are a view of interleaved (H, W, C) memory
are filtered in that layout in one call, planar memory plane by plane: no layout copy either
way. OpenCV spreads each call over its own threads, as many as the engine's.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import ndfilters

# --method auto's crossovers for OpenCV, from `benchmarks/bench.py crossover` (docs/performance.md),
# 2048x2048 RGB on 2 shared cores: filter2D (its own blocked DFT from 50 taps) beat imfilt's
# whole-image FFT at every size up to 255x255 (0.85 s against 1.68 s there); sepFilter2D beat
# filter2D from 5x5 (4096x4096: 104 against 120 ms; at 3x3 65 against 69 ms the other way); at
# 4096x4096 (quiet machine) two passes won at 81x81 (0.30 against 0.46 s) and tied at 101x101
# (0.44 s both) and 121x121 (0.57 against 0.55 s).
CROSSOVERS = {
    "direct_max_taps": 255 * 255,
    "separable_min_taps": 25,
    "separable_max_taps": 202,  # rank-1 kernels up to 101x101 as two passes
}

_BORDER = {"reflect": cv2.BORDER_REFLECT, "mirror": cv2.BORDER_REFLECT_101, "nearest": cv2.BORDER_REPLICATE,
           "constant": cv2.BORDER_CONSTANT}
_PAD_BORDER = {"wrap": cv2.BORDER_WRAP, "constant": cv2.BORDER_CONSTANT}


def _layout(planes, out=None):
    """(sources, targets, result): 2-D planes or one interleaved (H, W, C) array, and the
    (C, H, W) view of the targets' memory that the caller gets back (``out``, planar, when given)."""
    interleaved = np.moveaxis(planes, 0, -1)
    if out is None and 1 < planes.shape[0] <= 4 and interleaved.flags.c_contiguous:  # OpenCV takes up to 512 channels; SIMD paths up to 4
        out = np.empty(interleaved.shape, np.float32)
        return [interleaved], [out], np.moveaxis(out, -1, 0)
    out = np.empty(planes.shape, np.float32) if out is None else out
    return [np.ascontiguousarray(plane) for plane in planes], list(out), out


def _run(engine, planes, shape, anchor, mode: str, cval: float, filter_one, out=None):
    """filter_one(source, target, border) over the planes; padded first where OpenCV has no border."""
    if cv2.getNumThreads() != engine.threads:  # a process-wide setting: the engine in use decides
        cv2.setNumThreads(engine.threads)
    sources, targets, result = _layout(np.asarray(planes, dtype=np.float32), out)
    padded = mode == "wrap" or (mode == "constant" and cval != 0)
    top, left = anchor
    bottom, right = shape[0] - 1 - top, shape[1] - 1 - left
    for source, target in zip(sources, targets):
        if not padded:
            filter_one(source, target, _BORDER[mode])
            continue
        # the padding holds every value the kernel reaches outside: the filter's own border is never read
        wide = cv2.copyMakeBorder(source, top, bottom, left, right, _PAD_BORDER[mode], value=(cval,) * 4)
        wide = wide.reshape(wide.shape[:2] + source.shape[2:])
        target[...] = filter_one(wide, None, cv2.BORDER_REPLICATE)[top : top + source.shape[0], left : left + source.shape[1]]
    return result


def correlate(engine, planes, weights: np.ndarray, anchor, mode: str, cval: float, out=None):
    """Correlation with weights, into ``out`` (planar float32, the planes' shape) when given."""
    kernel = np.asarray(weights, dtype=np.float32)
    point = (int(anchor[1]), int(anchor[0]))  # OpenCV's anchor is (x, y)

    def filter_one(source, target, border):
        return cv2.filter2D(source, cv2.CV_32F, kernel, dst=target, anchor=point, borderType=border)

    return _run(engine, planes, weights.shape, anchor, mode, cval, filter_one, out)


def correlate_separable(engine, planes, column: np.ndarray, row: np.ndarray, anchor, mode: str, cval: float,
                        out=None):
    """Correlation with outer(column, row): sepFilter2D's two passes."""
    column32, row32 = column.astype(np.float32), row.astype(np.float32)
    point = (int(anchor[1]), int(anchor[0]))

    def filter_one(source, target, border):
        return cv2.sepFilter2D(source, cv2.CV_32F, row32, column32, dst=target, anchor=point, borderType=border)

    return _run(engine, planes, (column.size, row.size), anchor, mode, cval, filter_one, out)


def window_sums(engine, planes, shape: tuple[int, int], out: list | None = None) -> list:
    """Sums of every ``shape`` window of each plane, float64:
    one (H - th + 1, W - tw + 1) array a plane, a view of OpenCV's (H, W) output (of ``out``'s
    arrays when given: (at least H, W) float64 buffers to reuse).

    boxFilter into CV_64F sums in double (running sums along the rows, then down the columns),
    as ndfilters.window_sums does: 3-4x its speed on a 4096-wide strip.
    """
    if cv2.getNumThreads() != engine.threads:  # a process-wide setting: the engine in use decides
        cv2.setNumThreads(engine.threads)
    th, tw = shape
    results = []
    for i, plane in enumerate(planes):
        plane = np.ascontiguousarray(plane)
        if plane.dtype not in (np.float32, np.float64):
            plane = plane.astype(np.float64)
        target = out[i][: plane.shape[0], : plane.shape[1]] if out else None
        sums = cv2.boxFilter(plane, cv2.CV_64F, (tw, th), dst=target, anchor=(0, 0), normalize=False,
                             borderType=cv2.BORDER_CONSTANT)
        results.append(sums[: plane.shape[0] - th + 1, : plane.shape[1] - tw + 1])  # the windows that fit
    return results



def window_spread(engine, planes, shape: tuple[int, int], out: list):
    """sum_c (sum_xy p_c² - (sum_xy p_c)² / n) of every ``shape`` window of the (C, H, W) planes,
    float64 (n = th·tw: the windows' squared deviations from their means, summed over the
    channels): an (H - th + 1, W - tw + 1) view of ``out[0]``; ``out`` holds three (at least
    H, W) float64 buffers to reuse.

    As ndfilters.window_spread computes it, with OpenCV's box filter and its fused passes (a
    float32's square is exact in double): 23 against 32 ms on a 432x4096 RGB strip with numpy
    between the box filters. A product and a sum may be fused (one rounding, not two) in some columns.
    """
    if cv2.getNumThreads() != engine.threads:  # a process-wide setting: the engine in use decides
        cv2.setNumThreads(engine.threads)
    th, tw = shape
    height, width = planes.shape[1:]
    total, squares, sums = (buffer[:height, :width] for buffer in out)
    planes = [np.ascontiguousarray(plane) for plane in planes]
    squares.fill(0.0)  # accumulateSquare squares a float32 in double (multiply to CV_64F rounds it to float32 first)
    for plane in planes:
        cv2.accumulateSquare(plane, squares)
    cv2.boxFilter(squares, cv2.CV_64F, (tw, th), dst=total, anchor=(0, 0), normalize=False, borderType=cv2.BORDER_CONSTANT)
    for i, plane in enumerate(planes):
        cv2.boxFilter(plane, cv2.CV_64F, (tw, th), dst=sums, anchor=(0, 0), normalize=False, borderType=cv2.BORDER_CONSTANT)
        if i == 0:
            cv2.multiply(sums, sums, dst=squares)
        else:
            cv2.accumulateSquare(sums, squares)
    cv2.scaleAdd(squares, -1.0 / (th * tw), total, dst=total)
    return total[: height - th + 1, : width - tw + 1]

def _flat(array):
    """A 2-D view of an array's whole memory when it is contiguous (planar or interleaved), else None."""
    for view in (array, np.moveaxis(array, 0, -1)):
        if view.flags.c_contiguous:
            return view.reshape(-1, view.shape[-1])
    return None


def magnitude(engine, responses: list):
    """sqrt(gx² + gy²) into the first response's memory (the second is scratch).

    Four correctly rounded passes, not cv2.magnitude: its vector loop fuses the multiply-add
    and its scalar tail does not, so its result depends on each value's position and memory
    alignment, and a window of a tiled job would round differently from the whole image.
    (+40 ms at 4096x4096x3 against the fused call.)
    """
    flat = [_flat(response) for response in responses]
    if len(responses) != 2 or any(f is None for f in flat) or flat[0].shape != flat[1].shape:
        return ndfilters.magnitude(engine, responses)
    gx, gy = flat
    cv2.multiply(gx, gx, dst=gx)
    cv2.multiply(gy, gy, dst=gy)
    cv2.add(gx, gy, dst=gx)
    cv2.sqrt(gx, dst=gx)
    return responses[0]
