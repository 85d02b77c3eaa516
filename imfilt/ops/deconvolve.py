"""Deconvolution: undo a known blur, by a Wiener filter or by Richardson-Lucy iterations.

The blur is apply's model: blurred = apply(sharp, K) with a boundary mode. Both methods honour
that mode, because a deconvolution that treats the image as periodic (or zero outside) rings
at its borders when it is not:

- wiener: the image is extended by the boundary mode by ``margin`` pixels on every side (none
  for wrap; a few more after, to a length the FFT likes), then, per frequency,
  X = conj(H) · Y / (|H|² + balance), H being the kernel's transfer function (the rfft2 of the
  kernel with its anchor moved to the origin); the extension is cropped off again. ``balance``
  is the noise-to-signal power ratio, one number for all frequencies: the larger, the less the
  noise is amplified (and the less is restored).
- richardson-lucy: x <- x · K^T(y / K(x)) / sum(K), starting from x = y; K is apply's
  convolution with the boundary mode (any method apply has: direct, separable, FFT), K^T its
  transpose (the turned kernel, the same mode; zeros outside for constant). Where K(x) is
  below 1e-12 the ratio counts as 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .convolution import MODES, correlate_planes, pad_planes, resolve_method
from ..engine.engine import Engine, cpu_engine, get_engine
from ..errors import UsageError, check_choice
from .kernels import Kernel
from .operations import Image, Result, luminance, split_alpha

METHODS = ("wiener", "richardson-lucy")
EPSILON = 1e-12  # K(x) below this: the ratio y / K(x) is taken as 0 (as scikit-image's filter_epsilon)


def margin(shape: tuple[int, int], image_shape: tuple[int, int]) -> tuple[int, int]:
    """How far the Wiener filter extends the image before: two kernel sizes, at most the image's own
    size (one kernel size measured as good as eight on a photo blurred by a Gaussian)."""
    return tuple(min(2 * k, n) for k, n in zip(shape, image_shape))


def _weights(kernel) -> np.ndarray:
    if isinstance(kernel, Kernel):
        if kernel.magnitude:
            raise UsageError(f"kernel {kernel.name} is a gradient magnitude, not a linear blur: it cannot be deconvolved")
        if kernel.summed:
            raise UsageError(f"kernel {kernel.name} sums over {kernel.channels} channels (a convolutional layer's): "
                             "deconvolve undoes one 2-D blur of each channel")
        kernel = kernel.weights
    weights = np.asarray(kernel, dtype=np.float64)
    if weights.ndim != 2 or weights.size == 0 or not np.isfinite(weights).all():
        raise UsageError(f"a kernel to deconvolve must be a finite 2-D matrix, got shape {weights.shape}")
    return weights


def placed_kernel(weights: np.ndarray, shape: tuple[int, int], correlate: bool = False) -> np.ndarray:
    """apply's convolution by ``weights`` as a periodic (shape) kernel: its anchor at the origin.

    Its rfft2 is the transfer function H. apply convolves as out[i] = sum_k K[k] · x[i - k + n // 2]
    (scipy.ndimage.convolve), and correlates as a convolution with the kernel turned 180°, whose
    anchor is then n - 1 - n // 2.
    """
    kh, kw = weights.shape
    if correlate:
        weights, anchor = weights[::-1, ::-1], (kh - 1 - kh // 2, kw - 1 - kw // 2)
    else:
        anchor = (kh // 2, kw // 2)
    placed = np.zeros(shape)
    rows, cols = (np.arange(kh) - anchor[0]) % shape[0], (np.arange(kw) - anchor[1]) % shape[1]
    np.add.at(placed, (rows[:, None], cols[None, :]), weights)  # a kernel larger than the image wraps
    return placed


def wiener(image: np.ndarray, kernel, *, balance: float = 0.01, mode: str = "reflect", cval: float = 0.0,
           correlate: bool = False, engine: Engine | str = "cpu") -> np.ndarray:
    """Undo apply's blur by ``kernel`` with a Wiener filter: X = conj(H) Y / (|H|² + balance); float32."""
    check_choice("mode", mode, MODES)
    _check_balance(balance)
    weights = _weights(kernel)
    engine = get_engine(engine) if isinstance(engine, str) else engine
    planes = engine.planes(image)
    height, width = planes.shape[1:]
    if mode != "wrap":  # extended by the margin before, and after to a length the FFT likes
        pad = margin(weights.shape, (height, width))
        after = tuple(engine.fft.next_fast_len(n + 2 * p) - n - p for n, p in zip((height, width), pad))
        planes = pad_planes(engine, planes, pad, after, mode, cval)
    else:
        pad = (0, 0)
    shape = planes.shape[1:]
    h = engine.fft.rfft2(engine.asarray(placed_kernel(weights, shape, correlate).astype(np.float32)))
    gain = (engine.xp.conj(h) / (h.real**2 + h.imag**2 + balance)).astype(np.complex64)
    spectrum = engine.fft.rfft2(planes, axes=(-2, -1))
    spectrum *= gain
    out = engine.fft.irfft2(spectrum, s=shape, axes=(-2, -1))[:, pad[0] : pad[0] + height, pad[1] : pad[1] + width]
    return engine.image(out, flat=np.ndim(image) == 2)  # a view of the cropped planes: no copy to fault in


def richardson_lucy(image: np.ndarray, kernel, *, iterations: int = 30, mode: str = "reflect", cval: float = 0.0,
                    correlate: bool = False, start: np.ndarray | float | None = None,
                    engine: Engine | str = "cpu") -> np.ndarray:
    """Undo apply's blur by ``kernel`` with Richardson-Lucy iterations from ``start`` (default: the image)."""
    check_choice("mode", mode, MODES)
    _check_iterations(iterations)
    weights = _weights(kernel)
    total = _check_positive_sum(weights)
    engine = get_engine(engine) if isinstance(engine, str) else engine
    xp = engine.xp
    observed = engine.planes(image)
    if start is None:
        estimate = xp.array(observed, dtype=np.float32)
    else:
        estimate = xp.empty(observed.shape, dtype=np.float32)
        estimate[...] = engine.asarray(np.moveaxis(np.atleast_3d(start), -1, 0)) if np.ndim(start) else start
    adjoint_cval = 0.0 if mode == "constant" else cval  # the transpose of x -> K(x extended by cval) - K(cval)
    ratio = xp.empty(observed.shape, dtype=np.float32)  # reused: a fresh 200 MB array costs 0.3 s to touch
    for _ in range(iterations):
        blurred = correlate_planes(engine, estimate, weights, mode=mode, cval=cval, correlate=correlate)
        small = blurred < EPSILON
        xp.copyto(blurred, 1, where=small)
        xp.divide(observed, blurred, out=ratio)
        xp.copyto(ratio, 0, where=small)
        estimate *= correlate_planes(engine, ratio, weights / total, mode=mode, cval=adjoint_cval,
                                     correlate=not correlate)
    return engine.image(estimate, flat=np.ndim(image) == 2)


def _check_balance(balance: float) -> None:
    if not (balance > 0 and math.isfinite(balance)):
        raise UsageError(f"--balance must be a number > 0 (the noise-to-signal power ratio), got {balance}")


def _check_iterations(iterations: int) -> None:
    if not (isinstance(iterations, int) and iterations >= 1):
        raise UsageError(f"--iterations must be a whole number >= 1, got {iterations}")


def _check_positive_sum(weights: np.ndarray) -> float:
    total = float(weights.sum())
    if not total > 1e-12 * max(float(np.abs(weights).sum()), 1e-300):
        raise UsageError(f"richardson-lucy undoes a blur: the kernel's sum must be > 0, got {total:g}; use --method wiener")
    return total


@dataclass(frozen=True)
class Deconvolve:
    """`imfilt deconvolve`: undo a known blur of each channel (alpha is carried through)."""

    kernel: Kernel
    method: str = "wiener"
    balance: float = 0.01
    iterations: int = 30
    mode: str = "reflect"
    cval: float = 0.0
    correlate: bool = False
    gray: bool = False

    def __post_init__(self):  # a bad option is refused when the operation is made, before any image
        check_choice("method", self.method, METHODS)
        check_choice("mode", self.mode, MODES)
        _weights(self.kernel)
        if not math.isfinite(self.cval):
            raise UsageError(f"cval must be a finite number, got {self.cval}")
        if self.method == "wiener":
            _check_balance(self.balance)
        else:
            _check_iterations(self.iterations)
            _check_positive_sum(self.kernel.weights)

    runner = None  # the whole image at once (its FFT, or its iterations)

    @property
    def name(self) -> str:
        return f"{self.method}-{self.kernel.name}"

    @property
    def auto_scale(self) -> str:
        return "clip"

    @property
    def work(self) -> str:
        """What --engine auto weighs: wiener is FFTs; richardson-lucy is the convolutions apply would run."""
        if self.method == "wiener":
            return "fft"
        return "fft" if resolve_method(self.kernel.weights, "auto", cpu_engine()) == "fft" else "spatial"

    def explain(self) -> tuple[str, str]:
        """The method and how it runs, for --dry-run."""
        if self.method == "wiener":
            return "fft", f"rfft2 of the image extended by --boundary {self.mode}, times conj(H)/(|H|² + {self.balance:g}), irfft2"
        return "richardson-lucy", f"{self.iterations} iterations of two --boundary {self.mode} convolutions"

    def facts(self) -> dict:
        extra = {"balance": self.balance} if self.method == "wiener" else {"iterations": self.iterations}
        return {"kernel": self.kernel.name, "method": self.method, **extra, "boundary": self.mode}

    def run(self, loaded: Image, engine: Engine) -> Result:
        colour, alpha = split_alpha(loaded)
        if self.gray:
            colour = luminance(colour)
        if self.method == "wiener":
            out = wiener(colour, self.kernel, balance=self.balance, mode=self.mode, cval=self.cval,
                         correlate=self.correlate, engine=engine)
        else:
            out = richardson_lucy(colour, self.kernel, iterations=self.iterations, mode=self.mode, cval=self.cval,
                                  correlate=self.correlate, engine=engine)
        if alpha is not None:
            out = np.concatenate([out, alpha], axis=-1)
        return Result(out, alpha is not None, self.auto_scale, self.facts())
