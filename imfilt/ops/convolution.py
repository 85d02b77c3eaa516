"""Convolution of each colour channel with a kernel: direct, separable or by FFT.

Everything is reduced to one correlation: out[i] = sum_m c[m] · x[i + m - anchor], with
c = the kernel (``correlate=True``, anchor = n // 2) or the flipped kernel (true convolution,
anchor = n - 1 - n // 2, which is scipy.ndimage.convolve's placement for even sizes too).
The three methods compute that same sum, so they give the same numbers to float32 rounding.
A summed kernel (C, kh, kw) correlates each of C planes with its own matrix and adds the C
responses, in channel order, into one plane: a convolutional layer's feature map (PyTorch's
conv2d is the cross-correlation, ``correlate=True``). By FFT the planes are transformed once
for all the kernels that share them (``memo``), and the sum is taken before the one inverse.
"""

from __future__ import annotations

import functools

import numpy as np

from ..engine.engine import Engine, get_engine
from ..errors import UsageError, check_choice
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


def _matrices(weights: np.ndarray) -> np.ndarray:
    return np.reshape(weights, (-1, *np.shape(weights)[-2:]))


def check_method(parts, method: str) -> None:
    """Refuse a method that cannot run: separable needs every matrix of the kernel to have rank 1."""
    check_choice("method", method, METHODS)
    if method == "separable" and any(rank_one_factors(m) is None for part in parts for m in _matrices(part)):
        raise UsageError("--method separable needs a kernel of rank 1 (an outer product of two vectors)")


def resolve_method(weights: np.ndarray, method: str, engine: Engine) -> str:
    """The method that will run on this engine: auto by the cost model of its filters.

    (A summed kernel's C matrices each cost what one kernel costs: the choice is the same.)
    """
    check_method([weights], method)
    if method != "auto":
        return method
    shape, crossovers = np.shape(weights)[-2:], engine.filters.CROSSOVERS
    separable = separable_could_win(shape, crossovers) and all(rank_one_factors(m) is not None for m in _matrices(weights))
    return choose_method(shape, separable, crossovers)


def choose_method(shape: tuple[int, int], separable: bool, crossovers: dict) -> str:
    """The cost model behind --method auto; each filter backend measured its own crossovers."""
    if separable and separable_could_win(shape, crossovers):
        return "separable"
    if shape[0] * shape[1] <= crossovers["direct_max_taps"]:
        return "direct"
    return "fft"


def pad_planes(engine: Engine, planes, before: tuple[int, int], after: tuple[int, int], mode: str, cval: float,
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
    padded = pad_planes(engine, planes, anchor, (kh - 1 - anchor[0], kw - 1 - anchor[1]), mode, cval)
    ph, pw = padded.shape[1:]
    shape = (engine.fft.next_fast_len(ph), engine.fft.next_fast_len(pw))
    flipped = engine.asarray(np.ascontiguousarray(c[::-1, ::-1], dtype=np.float32))
    spectrum = engine.fft.rfft2(padded, s=shape, axes=(-2, -1))
    spectrum *= engine.fft.rfft2(flipped, s=shape)
    full = engine.fft.irfft2(spectrum, s=shape, axes=(-2, -1))
    # circular convolution with the flipped kernel: index i + n - 1 holds the valid sum at i
    return engine.xp.ascontiguousarray(full[:, kh - 1 : ph, kw - 1 : pw], dtype=np.float32)


def _fft_summed(engine, planes, c, anchor, mode, cval, memo):
    """sum_c planes[c] ⋆ c[c] by FFT: the padded planes' transforms come from ``memo`` when another
    kernel over the same planes made them; the products are summed before one inverse transform."""
    kh, kw = c.shape[-2:]
    key = ("fft", tuple(planes.shape), anchor, (kh, kw), mode, cval)  # --size full's planes are padded: larger
    if memo is None or key not in memo:
        padded = pad_planes(engine, planes, anchor, (kh - 1 - anchor[0], kw - 1 - anchor[1]), mode, cval)
        ph, pw = padded.shape[1:]
        shape = (engine.fft.next_fast_len(ph), engine.fft.next_fast_len(pw))
        found = (engine.fft.rfft2(padded, s=shape, axes=(-2, -1)), (ph, pw), shape)
        del padded
        if memo is not None:
            memo[key] = found
    spectra, (ph, pw), shape = memo[key] if memo is not None else found
    flipped = engine.asarray(np.ascontiguousarray(c[:, ::-1, ::-1], dtype=np.float32))
    # the kernel's rows first (kh of them, not the padded height), then its columns
    kernel = engine.fft.fft(engine.fft.rfft(flipped, n=shape[1], axis=-1), n=shape[0], axis=-2)
    total = spectra[0] * kernel[0]
    for channel in range(1, len(c)):
        total += spectra[channel] * kernel[channel]
    full = engine.fft.irfft2(total, s=shape, axes=(-2, -1))
    return engine.xp.ascontiguousarray(full[None, kh - 1 : ph, kw - 1 : pw], dtype=np.float32)


def _correlate(engine, planes, weights, correlate, method, anchor, mode, cval, memo=None, out=None):
    """Run one method; a separable kernel's factors are flipped with it (its rank checked once).
    ``out``: where the result goes (planar, the planes' shape), else a new array.

    A summed kernel (C, kh, kw) runs each channel's matrix on its plane and adds the responses in
    channel order (by FFT: in Fourier space), so a window gives the whole image's bits.
    """
    if weights.ndim == 3:
        if method == "fft":
            return _fft_summed(engine, planes, weights if correlate else weights[:, ::-1, ::-1], anchor, mode, cval, memo)
        total = _correlate(engine, planes[:1], weights[0], correlate, method, anchor, mode, cval)
        # the other channels' responses go through one scratch plane, kept for the bank's next kernel
        key = ("scratch", total.shape)
        scratch = memo[key] if memo is not None and key in memo else engine.xp.empty_like(total)
        if memo is not None:
            memo[key] = scratch
        for channel in range(1, len(weights)):
            _correlate(engine, planes[channel : channel + 1], weights[channel], correlate, method, anchor, mode, cval,
                       out=scratch)
            total += scratch
        return total
    c = weights if correlate else weights[::-1, ::-1]
    if method == "separable":
        column, row = rank_one_factors(weights)
        if not correlate:
            column, row = column[::-1], row[::-1]
        return engine.filters.correlate_separable(engine, planes, column, row, anchor, mode, cval, out=out)
    if method == "direct":
        return engine.filters.correlate(engine, planes, c, anchor, mode, cval, out=out)
    result = _fft(engine, planes, c, anchor, mode, cval)
    if out is not None:
        out[...] = result
    return result if out is None else out


def correlate_planes(engine: Engine, planes, weights: np.ndarray, *, mode="reflect", cval=0.0,
                     size="same", method="auto", correlate=False, memo: dict | None = None):
    """Planes (C, H, W) of the engine -> filtered planes; the core that every method shares.

    ``weights`` (kh, kw) filters each plane; (C, kh, kw) sums over the C planes into one. ``memo``
    (a dict per set of planes) keeps their FFTs for the next kernel over the same planes.
    """
    weights = np.asarray(weights, dtype=np.float64)
    kh, kw = weights.shape[-2:]
    check_channels(weights, planes.shape[0])
    method = resolve_method(weights, method, engine)
    if size == "full":
        planes = pad_planes(engine, planes, (kh - 1, kw - 1), (kh - 1, kw - 1), mode, cval, keep_layout=True)
    if size == "same":
        anchor = (kh - 1 - kh // 2, kw - 1 - kw // 2) if not correlate else (kh // 2, kw // 2)
        return _correlate(engine, planes, weights, correlate, method, anchor, mode, cval, memo)
    h, w = planes.shape[1] - kh + 1, planes.shape[2] - kw + 1
    if h < 1 or w < 1:
        raise UsageError(f"--size valid: the {kh}x{kw} kernel does not fit in the {planes.shape[1]}x{planes.shape[2]} image")
    # anchor 0: out[i] = sum_m c[m] x[i + m]; the first h x w values are the valid ones
    return _correlate(engine, planes, weights, correlate, method, (0, 0), mode, cval, memo)[:, :h, :w]


def check_channels(weights: np.ndarray, channels: int, gray: bool = False, name: str = "") -> None:
    """A summed kernel (C, kh, kw) takes an image of exactly C channels (alpha is not one)."""
    if np.ndim(weights) == 3 and np.shape(weights)[0] != channels:
        after = " (after --gray)" if gray else ""
        raise UsageError(f"kernel {name or 'of the bank'} takes {np.shape(weights)[0]} input channel{'s' * (np.shape(weights)[0] > 1)} "
                         f"(its shape is (N, {np.shape(weights)[0]}, kh, kw)), the image has {channels}{after}")


def convolve(image: np.ndarray, kernel: Kernel | np.ndarray, *, mode: str = "reflect", cval: float = 0.0,
             size: str = "same", method: str = "auto", correlate: bool = False, normalize: str = "none",
             engine: Engine | str = "cpu") -> np.ndarray:
    """Convolve each channel of an (H, W, C) or (H, W) image with a kernel; float32 out.

    ``mode`` is the boundary (scipy's names; ``wrap`` = scipy's 'grid-wrap'), ``size`` the output
    extent (same | valid | full), ``method`` auto | direct | separable | fft. A summed kernel
    (one of a 4-D bank's, C input channels) gives one map, (H, W, 1): the sum over channels plus
    its bias; with ``correlate=True`` these are PyTorch's conv2d numbers.
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
    if kernel.bias:
        out += np.float32(kernel.bias)
    return engine.image(out, flat=np.ndim(image) == 2)
