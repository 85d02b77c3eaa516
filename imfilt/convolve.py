"""Convolution of each colour channel with a kernel: direct, separable or by FFT.

Everything is reduced to one correlation: out[i] = sum_m c[m] · x[i + m - anchor], with
c = the kernel (``correlate=True``, anchor = n // 2) or the flipped kernel (true convolution,
anchor = n - 1 - n // 2, which is scipy.ndimage.convolve's placement for even sizes too).
The three methods compute that same sum, so they give the same numbers to float32 rounding.
"""

from __future__ import annotations

import functools

import numpy as np

from .engine import Engine, get_engine
from .errors import UsageError, check_choice
from .kernels import Kernel

MODES = ("reflect", "mirror", "nearest", "wrap", "constant")
SIZES = ("same", "valid", "full")
METHODS = ("auto", "direct", "separable", "fft")

_PAD_MODE = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap", "constant": "constant"}


@functools.lru_cache(maxsize=64)
def _rank_one(shape: tuple[int, int], data: bytes, rtol: float) -> tuple[np.ndarray, np.ndarray] | None:
    weights = np.frombuffer(data, dtype=np.float64).reshape(shape)
    # A rank-1 matrix is the outer product of its column and row through any non-zero entry;
    # the largest one keeps the division well conditioned. O(kh·kw), where an SVD is O(n³).
    i, j = np.unravel_index(np.argmax(np.abs(weights)), shape)
    pivot = weights[i, j]
    if pivot == 0:
        return None
    column, row = weights[:, j].copy(), weights[i] / pivot
    if np.abs(np.outer(column, row) - weights).max() > rtol * abs(pivot):
        return None
    return column, row


def rank_one_factors(weights: np.ndarray, rtol: float = 1e-9) -> tuple[np.ndarray, np.ndarray] | None:
    """(column, row) with weights = outer(column, row) when the kernel has rank 1, else None.

    Remembered for the last kernels: a run asks once per kernel, however many times it resolves.
    """
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    return _rank_one(weights.shape, weights.tobytes(), rtol)


def separable_could_win(shape: tuple[int, int], crossovers: dict) -> bool:
    """Whether two 1-D passes would be chosen for a rank-1 kernel of this shape: only then
    does --method auto ask for the rank."""
    taps_2d, taps_1d = shape[0] * shape[1], shape[0] + shape[1]
    return min(shape) > 1 and crossovers["separable_min_taps"] <= taps_2d and taps_1d <= crossovers["separable_max_taps"]


def check_method(parts, method: str) -> None:
    """Refuse a method that cannot run: separable needs every part of the kernel to have rank 1."""
    check_choice("method", method, METHODS)
    if method == "separable" and any(rank_one_factors(part) is None for part in parts):
        raise UsageError("--method separable needs a kernel of rank 1 (an outer product of two vectors)")


def resolve_method(weights: np.ndarray, method: str, engine: Engine) -> str:
    """The method that will run on this engine: auto by the cost model of its filters."""
    check_method([weights], method)
    if method != "auto":
        return method
    shape, crossovers = np.shape(weights), engine.filters.CROSSOVERS
    return choose_method(shape, separable_could_win(shape, crossovers) and rank_one_factors(weights) is not None,
                         crossovers)


def choose_method(shape: tuple[int, int], separable: bool, crossovers: dict) -> str:
    """The cost model behind --method auto; each filter backend measured its own crossovers."""
    if separable and separable_could_win(shape, crossovers):
        return "separable"
    if shape[0] * shape[1] <= crossovers["direct_max_taps"]:
        return "direct"
    return "fft"


def _pad(engine: Engine, planes, before: tuple[int, int], after: tuple[int, int], mode: str, cval: float,
         keep_layout: bool = False):
    """The planes extended by the boundary mode: planar, or with ``keep_layout`` interleaved if they are.

    (--size full keeps the layout: OpenCV's rows are then as long as a tiled window's, and round alike.)
    """
    xp = engine.xp
    interleaved = keep_layout and planes.shape[0] > 1 and xp.moveaxis(planes, 0, -1).flags.c_contiguous
    width = [(before[0], after[0]), (before[1], after[1])]
    width = width + [(0, 0)] if interleaved else [(0, 0)] + width
    extra = {"constant_values": cval} if mode == "constant" else {}
    padded = xp.pad(xp.moveaxis(planes, 0, -1) if interleaved else planes, width, mode=_PAD_MODE[mode], **extra)
    return xp.moveaxis(padded, -1, 0) if interleaved else padded


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


def _correlate(engine, planes, weights, correlate, method, anchor, mode, cval):
    """Run one method; a separable kernel's factors are flipped with it (its rank checked once)."""
    c = weights if correlate else weights[::-1, ::-1]
    if method == "separable":
        column, row = rank_one_factors(weights)
        if not correlate:
            column, row = column[::-1], row[::-1]
        return engine.filters.correlate_separable(engine, planes, column, row, anchor, mode, cval)
    if method == "direct":
        return engine.filters.correlate(engine, planes, c, anchor, mode, cval)
    return _fft(engine, planes, c, anchor, mode, cval)


def correlate_planes(engine: Engine, planes, weights: np.ndarray, *, mode="reflect", cval=0.0,
                     size="same", method="auto", correlate=False):
    """Planes (C, H, W) of the engine -> filtered planes; the core that every method shares."""
    weights = np.asarray(weights, dtype=np.float64)
    kh, kw = weights.shape
    method = resolve_method(weights, method, engine)
    if size == "full":
        planes = _pad(engine, planes, (kh - 1, kw - 1), (kh - 1, kw - 1), mode, cval, keep_layout=True)
    if size == "same":
        anchor = (kh - 1 - kh // 2, kw - 1 - kw // 2) if not correlate else (kh // 2, kw // 2)
        return _correlate(engine, planes, weights, correlate, method, anchor, mode, cval)
    h, w = planes.shape[1] - kh + 1, planes.shape[2] - kw + 1
    if h < 1 or w < 1:
        raise UsageError(f"--size valid: the {kh}x{kw} kernel does not fit in the {planes.shape[1]}x{planes.shape[2]} image")
    # anchor 0: out[i] = sum_m c[m] x[i + m]; the first h x w values are the valid ones
    return _correlate(engine, planes, weights, correlate, method, (0, 0), mode, cval)[:, :h, :w]


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
    out = engine.filters.magnitude(engine, responses) if kernel.magnitude else responses[0]
    return engine.image(out, flat=np.ndim(image) == 2)
