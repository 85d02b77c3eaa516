"""Convolution of each colour channel with a kernel: direct, separable or by FFT.

Everything is reduced to one correlation: out[i] = sum_m c[m] · x[i + m - anchor], with
c = the kernel (``correlate=True``, anchor = n // 2) or the flipped kernel (true convolution,
anchor = n - 1 - n // 2, which is scipy.ndimage.convolve's placement for even sizes too).
The three methods compute that same sum, so they give the same numbers to float32 rounding.
"""

from __future__ import annotations

import numpy as np

from .engine import Engine, get_engine
from .errors import UsageError, check_choice
from .kernels import Kernel

MODES = ("reflect", "mirror", "nearest", "wrap", "constant")
SIZES = ("same", "valid", "full")
METHODS = ("auto", "direct", "separable", "fft")

# For filters scipy's 'wrap' and 'grid-wrap' are the same; cupyx.scipy.ndimage knows only 'wrap'.
_NDIMAGE_MODE = {"reflect": "reflect", "mirror": "mirror", "nearest": "nearest", "wrap": "wrap", "constant": "constant"}
_PAD_MODE = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap", "constant": "constant"}

# Crossovers measured with `benchmarks/bench.py crossover` on a 2-core machine (README, "Speed"):
# on 2048x2048 RGB, direct 3x3 took 0.09 s and 5x5 0.18 s against FFT's flat ~0.18 s; two 1-D
# passes took 0.15-0.19 s up to 11x11 and 0.23 s at 15x15, where FFT was 0.19 s.
DIRECT_MAX_TAPS = 25  # dense kernels up to 5x5 run direct; larger ones by FFT
SEPARABLE_MIN_TAPS = 10  # a rank-1 3x3 is still faster direct than as two passes
SEPARABLE_MAX_TAPS = 22  # rank-1 kernels run as two passes up to 11x11 (kh + kw taps), then FFT


def rank_one_factors(weights: np.ndarray, rtol: float = 1e-9) -> tuple[np.ndarray, np.ndarray] | None:
    """(column, row) with weights = outer(column, row) when the kernel has rank 1, else None."""
    u, s, vt = np.linalg.svd(weights)
    if s[0] == 0 or (len(s) > 1 and s[1] > rtol * s[0]):
        return None
    return u[:, 0] * s[0], vt[0]


def resolve_method(weights: np.ndarray, method: str = "auto") -> str:
    """The method that will run: auto by the cost model; separable only for a rank-1 kernel."""
    check_choice("method", method, METHODS)
    separable = rank_one_factors(np.asarray(weights, dtype=np.float64)) is not None
    if method == "auto":
        return choose_method(np.shape(weights), separable)
    if method == "separable" and not separable:
        raise UsageError("--method separable needs a kernel of rank 1 (an outer product of two vectors)")
    return method


def choose_method(shape: tuple[int, int], separable: bool) -> str:
    """The cost model behind --method auto."""
    taps_2d, taps_1d = shape[0] * shape[1], shape[0] + shape[1]
    if separable and taps_2d >= SEPARABLE_MIN_TAPS and taps_1d <= SEPARABLE_MAX_TAPS and min(shape) > 1:
        return "separable"
    if taps_2d <= DIRECT_MAX_TAPS:
        return "direct"
    return "fft"


def _pad(engine: Engine, planes, before: tuple[int, int], after: tuple[int, int], mode: str, cval: float):
    width = ((0, 0), (before[0], after[0]), (before[1], after[1]))
    if mode == "constant":
        return engine.xp.pad(planes, width, mode="constant", constant_values=cval)
    return engine.xp.pad(planes, width, mode=_PAD_MODE[mode])


def _in_bands(engine: Engine, planes, halo: tuple[int, int], mode: str, filter_one):
    """Run filter_one(source, target) over row bands of each plane, one band per thread.

    A band reads ``halo`` extra rows above and below, so its rows see exactly what they would
    in the whole plane; the boundary mode still applies at the image's true edges. (Wrap
    reaches across the image, so it runs on whole planes.)
    """
    channels, height, width = planes.shape
    out = engine.xp.empty_like(planes)
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


def _direct(engine, planes, c, anchor, mode, cval):
    origin = (anchor[0] - c.shape[0] // 2, anchor[1] - c.shape[1] // 2)
    weights = engine.asarray(c.astype(np.float32))

    def filter_one(source, target):
        engine.ndi.correlate(source, weights, output=target, mode=_NDIMAGE_MODE[mode], cval=cval, origin=origin)

    return _in_bands(engine, planes, (anchor[0], c.shape[0] - 1 - anchor[0]), mode, filter_one)


def _separable(engine, planes, c, anchor, mode, cval):
    column, row = rank_one_factors(c)
    origin = (anchor[0] - c.shape[0] // 2, anchor[1] - c.shape[1] // 2)
    column, row = engine.asarray(column.astype(np.float32)), engine.asarray(row.astype(np.float32))
    # Outside the image the first pass sees cval everywhere, so the second must see cval·sum(column).
    cval_rows = cval * float(column.sum())
    ndmode = _NDIMAGE_MODE[mode]

    def filter_one(source, target):
        columns = engine.ndi.correlate1d(source, column, axis=0, mode=ndmode, cval=cval, origin=origin[0])
        engine.ndi.correlate1d(columns, row, axis=1, output=target, mode=ndmode, cval=cval_rows, origin=origin[1])

    return _in_bands(engine, planes, (anchor[0], c.shape[0] - 1 - anchor[0]), mode, filter_one)


def _fft(engine, planes, c, anchor, mode, cval):
    """Linear correlation by FFT of the padded planes: the boundary is the padding, never the FFT's wrap."""
    kh, kw = c.shape
    padded = _pad(engine, planes, anchor, (kh - 1 - anchor[0], kw - 1 - anchor[1]), mode, cval)
    ph, pw = padded.shape[1:]
    shape = (engine.fft.next_fast_len(ph), engine.fft.next_fast_len(pw))
    flipped = engine.asarray(np.ascontiguousarray(c[::-1, ::-1], dtype=np.float32))
    spectrum = engine.fft.rfft2(padded, s=shape, axes=(-2, -1))
    spectrum *= engine.fft.rfft2(flipped, s=shape)
    full = engine.fft.irfft2(spectrum, s=shape, axes=(-2, -1))
    # circular convolution with the flipped kernel: index i + n - 1 holds the valid sum at i
    return engine.xp.ascontiguousarray(full[:, kh - 1 : ph, kw - 1 : pw], dtype=np.float32)


_METHODS = {"direct": _direct, "separable": _separable, "fft": _fft}


def correlate_planes(engine: Engine, planes, weights: np.ndarray, *, mode="reflect", cval=0.0,
                     size="same", method="auto", correlate=False):
    """Planes (C, H, W) of the engine -> filtered planes; the core that every method shares."""
    c = np.asarray(weights, dtype=np.float64)
    if not correlate:
        c = c[::-1, ::-1]
    kh, kw = c.shape
    method = resolve_method(c, method)
    if size == "full":
        planes = _pad(engine, planes, (kh - 1, kw - 1), (kh - 1, kw - 1), mode, cval)
    if size == "same":
        anchor = (kh - 1 - kh // 2, kw - 1 - kw // 2) if not correlate else (kh // 2, kw // 2)
        return _METHODS[method](engine, planes, c, anchor, mode, cval)
    h, w = planes.shape[1] - kh + 1, planes.shape[2] - kw + 1
    if h < 1 or w < 1:
        raise UsageError(f"--size valid: the {kh}x{kw} kernel does not fit in the {planes.shape[1]}x{planes.shape[2]} image")
    # anchor 0: out[i] = sum_m c[m] x[i + m]; the first h x w values are the valid ones
    return _METHODS[method](engine, planes, c, (0, 0), mode, cval)[:, :h, :w]


def convolve(image: np.ndarray, kernel: Kernel | np.ndarray, *, mode: str = "reflect", cval: float = 0.0,
             size: str = "same", method: str = "auto", correlate: bool = False, normalize: str = "none",
             engine: Engine | str = "cpu") -> np.ndarray:
    """Convolve each channel of an (H, W, C) or (H, W) image with a kernel; float32 out.

    ``mode`` is the boundary (scipy's names; ``wrap`` = scipy's 'grid-wrap'), ``size`` the output
    extent (same | valid | full), ``method`` auto | direct | separable | fft.
    """
    check_choice("mode", mode, MODES)
    check_choice("size", size, SIZES)
    engine = get_engine(engine) if isinstance(engine, str) else engine
    if not isinstance(kernel, Kernel):
        kernel = Kernel("kernel", kernel)
    kernel = kernel.normalized(normalize)
    planes = engine.planes(image)
    responses = [correlate_planes(engine, planes, part, mode=mode, cval=cval, size=size, method=method,
                                  correlate=correlate) for part in kernel.parts]
    if kernel.magnitude:
        out = engine.xp.sqrt(sum(r * r for r in responses))
    else:
        out = responses[0]
    return engine.image(out, flat=np.ndim(image) == 2)
