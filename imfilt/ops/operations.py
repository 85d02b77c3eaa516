"""Per-image operations: what one command does to one loaded image, on an engine.

An operation is a small frozen dataclass (so it can travel to worker processes and Dask
workers); ``run`` takes an image (``Image``: its pixels and whether the last channel is alpha,
as io.Loaded holds them) and returns the result with its alpha and a few facts for the --json
record. Operations import nothing of the image layer (io, tiles): the runner hands them pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ..boundary import extend_index
from .convolution import (MODES, SIZES, check_channels, check_method, convolve, correlate_planes, rank_one_factors,
                          resolve_method)
from ..engine.engine import Engine, cpu_engine
from ..errors import UsageError, check_choice
from .kernels import Kernel

ALPHA_MODES = ("premultiply", "keep", "drop")
LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class Image(Protocol):
    """What an operation reads of an image (io.Loaded is one): float32 (H, W, C) pixels, alpha last when ``alpha``;
    ``memo``: what operations derive from the pixels and share (a 4-D bank's planes and their FFTs)."""

    pixels: np.ndarray
    alpha: bool
    memo: dict


@dataclass(frozen=True)
class Result:
    pixels: np.ndarray  # float32 (H, W, C), alpha last when ``alpha``
    alpha: bool
    auto_scale: str  # what --scale auto means for this result
    facts: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # secondary arrays the pipeline may write (the mask)


def split_alpha(loaded: Image) -> tuple[np.ndarray, np.ndarray | None]:
    if loaded.alpha:
        return loaded.pixels[..., :-1], loaded.pixels[..., -1:]
    return loaded.pixels, None


def luminance(colour: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of RGB; a single channel is returned as it is."""
    if colour.shape[2] == 1:
        return colour
    # term by term, not a matrix product: BLAS rounds differently with the array's shape, and a
    # window of an image must get the same bits as the whole image
    r, g, b = (colour[..., i : i + 1] for i in range(3))
    return r * LUMA_601[0] + g * LUMA_601[1] + b * LUMA_601[2]


@dataclass(frozen=True)
class Apply:
    """`imfilt apply`: convolve each channel with one kernel, or sum a 4-D bank's kernel over the channels."""

    kernel: Kernel
    mode: str = "reflect"
    cval: float = 0.0
    size: str = "same"
    method: str = "auto"
    correlate: bool = False
    gray: bool = False
    alpha: str = "premultiply"

    def __post_init__(self):  # a bad option is refused when the operation is made, before any image
        check_choice("alpha", self.alpha, ALPHA_MODES)
        check_choice("mode", self.mode, MODES)
        check_choice("size", self.size, SIZES)
        if not math.isfinite(self.cval):
            raise UsageError(f"cval must be a finite number, got {self.cval}")
        check_method(self.kernel.parts, self.method)  # separable on a rank > 1 kernel raises
        if self.gray and self.kernel.summed:  # --gray makes one channel: the bank must take one
            check_channels(self.kernel.weights, 1, gray=True, name=self.kernel.name)

    runner = "windows"  # how an image larger than memory runs it: window by window (tiled.py)

    @property
    def name(self) -> str:
        return self.kernel.name

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """The result's (height, width) for an image of ``height`` x ``width`` (--size)."""
        kh, kw = self.kernel.shape
        if self.size == "same":
            return height, width
        grow = 1 if self.size == "full" else -1
        shape = (height + grow * (kh - 1), width + grow * (kw - 1))
        if min(shape) < 1:
            raise UsageError(f"--size valid: the {kh}x{kw} kernel does not fit in the {height}x{width} image")
        return shape

    def explain(self) -> tuple[str, str]:
        """The method --method auto picks and why, in the CPU engine's cost model's numbers (--dry-run)."""
        method = self.resolved_method
        if self.method != "auto":
            return method, f"--method {self.method}"
        kh, kw = self.kernel.shape
        rank_one = all(rank_one_factors(np.asarray(m, dtype=np.float64)) is not None for m in self.kernel.matrices)
        crossovers = cpu_engine().filters.CROSSOVERS  # the CPU engine's measured cost model
        min_taps, max_passes = crossovers["separable_min_taps"], crossovers["separable_max_taps"]
        taps, passes = kh * kw, kh + kw
        if method == "separable":
            return method, (f"rank 1: two 1-D passes of {kh} + {kw} = {passes} taps instead of {taps} "
                            f"(separable from {min_taps} taps, up to {max_passes} in the passes)")
        if method == "direct":
            why = f"{kw}x{kh} = {taps} taps <= {crossovers['direct_max_taps']}: direct beats FFT"
            return method, why + (f" (rank 1, but under {min_taps} taps two passes cost more)"
                                  if rank_one and taps < min_taps else "")
        return method, f"{kw}x{kh} = {taps} taps > {crossovers['direct_max_taps']}" + (
            f", and two 1-D passes would be {passes} > {max_passes} taps" if rank_one else ", rank > 1")

    def peak_bytes(self, shape: tuple[int, int, int]) -> int:
        """Peak memory above Python's for an (H, W, C) image, from the max RSS of runs on a 2048x2048
        RGB PNG (GNU time): per sample, direct 12-13 B, separable 15, FFT 24; each further kernel of
        a gradient pair (sobel) 10 more."""
        samples = shape[0] * shape[1] * shape[2]
        per_sample = {"direct": 13, "separable": 15, "fft": 24}[self.resolved_method]
        return (per_sample + 10 * (len(self.kernel.parts) - 1)) * samples

    # --- what the windows runner (tiled.py) asks -------------------------------------------

    @property
    def reach(self) -> int:
        """How far one output position reads, at most, along either axis (the window's halo)."""
        return max(self.kernel.shape)

    def window_reads(self, start: int, stop: int, n: int, axis: int) -> tuple[np.ndarray, slice]:
        """Input indices that output positions start..stop-1 read along ``axis`` (0: rows, 1:
        columns) of an image n long, and which part of the window's result to keep.

        Output o reads the input from o - before to o + after. The window is cut at the image's true
        edges, where the operation extends the image itself as it does whole (with one reach of
        margin, so reflections near an edge find their rows); wrap reaches across the image, so its
        halo is index-mapped.
        """
        k = self.kernel.shape[axis]
        before = {"valid": 0, "full": k - 1}.get(self.size, k // 2 if self.correlate else k - 1 - k // 2)
        after = k - 1 - before
        if self.mode == "wrap" and self.size != "valid":
            keep = slice(before, before + stop - start) if self.size == "same" else slice(None)
            return extend_index(start - before, stop + after, n, "wrap"), keep
        margin = max(before, after) + 1
        low, high = max(0, start - before - margin), min(n, stop + after + margin)
        return np.arange(low, high), slice(start - low, stop - low)

    def for_windows(self) -> Apply:
        """The operation each window runs: --method auto resolved once for the image, never per
        window. wrap's halo is index-mapped, so the window holds all the kernel reaches: "same"
        runs as the whole image's padded copy runs (with a border never read), "full" as its
        "valid" part."""
        op = replace(self, method=self.resolved_method)
        if self.mode == "wrap" and self.size != "valid":
            op = replace(op, mode="nearest") if self.size == "same" else replace(op, size="valid")
        return op

    @property
    def work(self) -> str:
        """What --engine auto weighs: "fft" when the FFT method runs, else "spatial"."""
        return "fft" if self.resolved_method == "fft" else "spatial"

    def method_on(self, engine: Engine) -> str:
        """What --method auto becomes for this kernel on this engine."""
        return resolve_method(self.kernel.parts[0], self.method, engine)

    @property
    def resolved_method(self) -> str:
        """What --method auto becomes on the CPU engine, the default (--dry-run shows it)."""
        return self.method_on(cpu_engine())

    def _filter(self, pixels: np.ndarray, engine: Engine) -> np.ndarray:
        return convolve(pixels, self.kernel, mode=self.mode, cval=self.cval, size=self.size,
                        method=self.method, correlate=self.correlate, engine=engine)

    def _carry(self, plane: np.ndarray, engine: Engine) -> np.ndarray:
        """A channel passed through unchanged, but cropped or extended as --size makes the result.

        What convolving with a centred delta gives, by indexing: exact, where OpenCV's filter2D
        of a large delta goes through its DFT and moves values by 1e-16.
        """
        if self.size == "same":
            return plane.copy()
        kh, kw = self.kernel.shape
        at = (kh // 2, kw // 2) if self.correlate else (kh - 1 - kh // 2, kw - 1 - kw // 2)
        shift = (0, 0) if self.size == "valid" else (kh - 1, kw - 1)  # "full" reaches k - 1 past each edge
        height, width = plane.shape[:2]
        grow = -1 if self.size == "valid" else 1
        rows = extend_index(at[0] - shift[0], at[0] - shift[0] + height + grow * (kh - 1), height, self.mode)
        cols = extend_index(at[1] - shift[1], at[1] - shift[1] + width + grow * (kw - 1), width, self.mode)
        out = plane[np.clip(rows, 0, None)][:, np.clip(cols, 0, None)]
        out[rows < 0] = self.cval
        out[:, cols < 0] = self.cval
        return out.astype(np.float32)

    def check(self, channels: int) -> None:
        """Whether this operation can run on an image of ``channels`` colour channels (alpha not counted)."""
        check_channels(self.kernel.weights if self.kernel.summed else None, 1 if self.gray else channels, self.gray,
                       self.kernel.name)

    def _feature_map(self, loaded: Image, engine: Engine) -> np.ndarray:
        """One map of a 4-D bank: sum over the colour channels (alpha is none) plus the bias.

        The planes (planar, on the engine) and their FFTs are made once per image, for all the
        kernels of the bank (``loaded.memo``).
        """
        memo = loaded.memo.setdefault(("planes", self.gray, engine.name), {})  # --engine auto picks per operation
        if "planes" not in memo:
            colour, _ = split_alpha(loaded)
            colour = luminance(colour) if self.gray else colour
            memo["planes"] = engine.xp.ascontiguousarray(engine.planes(colour))
        check_channels(self.kernel.weights, memo["planes"].shape[0], self.gray, self.kernel.name)
        out = correlate_planes(engine, memo["planes"], self.kernel.weights, mode=self.mode, cval=self.cval,
                               size=self.size, method=self.method, correlate=self.correlate, memo=memo)
        if self.kernel.bias:
            out += np.float32(self.kernel.bias)
        return engine.image(out)

    def run(self, loaded: Image, engine: Engine) -> Result:
        auto_scale = "clip" if self.kernel.sum > 1e-9 and not self.kernel.magnitude else "abs"
        facts = {"kernel": self.kernel.name, "method": self.method_on(engine)}
        if self.kernel.summed:  # a feature map: one channel, no alpha
            return Result(self._feature_map(loaded, engine), False, auto_scale, facts)
        colour, alpha = split_alpha(loaded)
        if self.gray:
            colour = luminance(colour)
        if alpha is None or self.alpha == "drop":
            return Result(self._filter(colour, engine), False, auto_scale, facts)
        if self.alpha == "keep":
            out = np.concatenate([self._filter(colour, engine), self._carry(alpha, engine)], axis=-1)
            return Result(out, True, auto_scale, facts)
        # premultiply: colour·α and α are filtered together and divided back, so colour
        # hidden under transparent pixels does not bleed out. A kernel whose sum is not
        # positive (an edge detector) has no meaningful filtered α: divide by α itself.
        filtered = self._filter(np.concatenate([colour * alpha, alpha], axis=-1), engine)
        premultiplied, weight = filtered[..., :-1], filtered[..., -1:]
        if auto_scale == "abs":
            weight = self._carry(alpha, engine)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(weight > 1e-6, premultiplied / weight, 0.0).astype(np.float32)
        return Result(np.concatenate([out, weight], axis=-1), True, auto_scale, facts)
