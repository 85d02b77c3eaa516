"""The frequency domain: log-magnitude spectra, masks, and filtering by a mask.

Spectra are centred (fftshift): zero frequency at row H//2, column W//2, for odd sizes too.
A mask's radius is in pixels of that centred picture, so a user can read it off the
spectrum image; it is a true circle on non-square images. Masks are built by a pure function
and applied by another. Transforms are real (rfft2 / irfft2) through the engine's FFT module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..engine.engine import Engine, get_engine
from ..errors import UsageError, check_choice, check_image
from .operations import Image, Result, luminance, split_alpha

PROFILES = ("ideal", "gaussian", "butterworth")
WINDOWS = ("none", "hann")


def _mirror_half(half, width: int, xp, negate: bool = False):
    """Values on the rfft2 half-plane -> the full plane, by the symmetry F(-u, -v) = conj F(u, v)."""
    height, kept = half.shape[-2:]
    full = xp.empty(half.shape[:-1] + (width,), dtype=half.dtype)
    full[..., :kept] = half
    if width > kept:
        cols = xp.arange(kept, width)
        rows = (-xp.arange(height)) % height
        mirrored = half[..., rows[:, None], (width - cols)[None, :]]
        full[..., kept:] = -mirrored if negate else mirrored
    return full


def spectrum(image: np.ndarray, *, window: str = "none", phase: bool = False,
             engine: Engine | str = "cpu") -> np.ndarray:
    """S = log(1 + |F|) of each channel of an (H, W, C) image, centred; float32.

    ``phase=True`` gives the centred phase angle (radians) instead; ``window="hann"`` tapers
    the image first, which removes the bright cross that the image's borders cause.
    """
    check_choice("window", window, WINDOWS)
    engine = get_engine(engine) if isinstance(engine, str) else engine
    out = spectrum_planes(engine, engine.planes(image), window=window, phase=phase)
    return engine.image(out, flat=np.ndim(image) == 2)


def spectrum_planes(engine: Engine, planes, *, window: str = "none", phase: bool = False):
    """The core of spectrum(): (C, H, W) planes on the engine in, centred spectra on the engine out."""
    xp = engine.xp
    height, width = planes.shape[-2:]
    if window == "hann":
        taper = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)
        planes = planes * engine.asarray(taper)
    half = engine.fft.rfft2(planes, axes=(-2, -1))
    if phase:
        values = xp.angle(half)
    else:
        values = xp.abs(half)
        xp.log1p(values, out=values)
    # each step's input is let go before the next allocates (a 4096x4096 RGB spectrum peaked at
    # 945 MiB when the coefficients, the half and the full plane were all held to the end)
    del half
    full = _mirror_half(values, width, xp, negate=phase)
    del values
    return engine.fft.fftshift(full, axes=(-2, -1))


def check_mask_options(radius: float, profile: str = "ideal", order: float = 2.0, band: float | None = None) -> None:
    check_choice("profile", profile, PROFILES)
    for what, value in (("radius", radius), ("order", order), ("band", band)):
        if value is not None and math.isnan(value):
            raise UsageError(f"--{what} must be a number, got nan")
    if radius < 0 or (band is not None and not 0 <= band < radius):
        raise UsageError(f"need 0 <= band < radius, got radius {radius:g}, band {band:g}" if band is not None
                         else f"radius must be >= 0, got {radius:g}")
    if order <= 0:
        raise UsageError(f"order must be > 0, got {order:g}")


def frequency_mask(shape: tuple[int, int], radius: float, *, profile: str = "ideal", order: float = 2.0,
                   highpass: bool = False, band: float | None = None) -> np.ndarray:
    """A centred (H, W) float mask: 1 keeps a frequency, 0 removes it.

    ideal: 1 where u² + v² <= R²; gaussian: exp(-d² / 2R²); butterworth: 1 / (1 + (d/R)^2n).
    ``band=INNER`` keeps INNER < d <= R (a band-pass); ``highpass`` is 1 - the low-pass.
    """
    height, width = shape
    return mask_at(np.arange(height) - height // 2, np.arange(width) - width // 2, radius, profile=profile,
                   order=order, highpass=highpass, band=band)


def mask_at(u: np.ndarray, v: np.ndarray, radius: float, *, profile: str = "ideal", order: float = 2.0,
            highpass: bool = False, band: float | None = None) -> np.ndarray:
    """The mask at centred frequencies u (rows) x v (columns): any block of it, e.g. for a tiled image."""
    check_mask_options(radius, profile, order, band)
    d2 = np.asarray(u)[:, None].astype(np.float64) ** 2 + np.asarray(v)[None, :] ** 2

    def lowpass_of(r: float) -> np.ndarray:
        if profile == "ideal":
            return (d2 <= r * r).astype(np.float64)
        if r * r == 0:  # also a radius so small that r² underflows: only the zero frequency
            return (d2 == 0).astype(np.float64)
        if profile == "gaussian":
            return np.exp(-d2 / (2.0 * r * r))
        return 1.0 / (1.0 + (d2 / (r * r)) ** order)

    with np.errstate(over="ignore"):  # far beyond a tiny radius d²/r² overflows: exp(-inf), 1/inf = 0 are right
        mask = lowpass_of(radius)
        if band is not None:
            mask = mask * (1.0 - lowpass_of(band))
    return 1.0 - mask if highpass else mask


def apply_mask(image: np.ndarray, mask: np.ndarray, *, engine: Engine | str = "cpu") -> np.ndarray:
    """Multiply the centred spectrum of each channel by a centred mask; back to real pixels."""
    engine = get_engine(engine) if isinstance(engine, str) else engine
    planes = engine.planes(image)
    height, width = planes.shape[-2:]
    if mask.shape != (height, width):
        raise UsageError(f"mask shape {mask.shape} does not match the image {height}x{width}")
    return engine.image(mask_planes(engine, planes, half_plane_mask(mask)), flat=np.ndim(image) == 2)


def half_plane_mask(mask: np.ndarray) -> np.ndarray:
    """A centred (H, W) mask moved to the FFT's layout and cut to the rfft2 half-plane, float32."""
    return np.fft.ifftshift(mask)[:, : mask.shape[1] // 2 + 1].astype(np.float32)


def mask_planes(engine: Engine, planes, half_mask):
    """The core of apply_mask(): planes on the engine times a half-plane mask in Fourier space."""
    height, width = planes.shape[-2:]
    coefficients = engine.fft.rfft2(planes, axes=(-2, -1))
    coefficients *= engine.asarray(half_mask)
    # the coefficients are not needed again: the inverse may work in them (no copy of 201 MB for 4096² RGB)
    return engine.fft.irfft2(coefficients, s=(height, width), axes=(-2, -1), overwrite_x=True)


def lowpass(image: np.ndarray, radius: float, *, profile: str = "ideal", order: float = 2.0,
            highpass: bool = False, band: float | None = None, engine: Engine | str = "cpu") -> np.ndarray:
    """Frequency-domain filter of each channel by a centred circular mask of ``radius``."""
    shape = check_image(image).shape[:2]
    mask = frequency_mask(shape, radius, profile=profile, order=order, highpass=highpass, band=band)
    return apply_mask(image, mask, engine=engine)


@dataclass(frozen=True)
class Spectrum:
    """`imfilt spectrum`: the log-magnitude (or phase) picture of each channel."""

    window: str = "none"
    phase: bool = False
    gray: bool = False

    def __post_init__(self):
        check_choice("window", self.window, WINDOWS)

    work = "fft"  # what --engine auto weighs
    runner = "fft"  # how an image larger than memory runs it: the two-pass FFT (tiled_fft.py)
    inverse = False  # a picture of the coefficients, not transformed back

    def peak_bytes(self, shape: tuple[int, int, int]) -> int:
        """Peak memory above Python's: 15 B per image sample (max RSS of runs on 2048x2048 RGB; 21
        before spectrum_planes let each step's input go)."""
        return 15 * shape[0] * shape[1] * shape[2]

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def explain(self) -> tuple[str, str]:
        """The method and why, for --dry-run."""
        return "fft", "rfft2 of each channel"

    @property
    def name(self) -> str:
        return "phase" if self.phase else "spectrum"

    @property
    def auto_scale(self) -> str:
        return "phase" if self.phase else "peak"

    def run(self, loaded: Image, engine: Engine) -> Result:
        colour, _ = split_alpha(loaded)  # the alpha channel has no spectrum worth showing
        if self.gray:
            colour = luminance(colour)
        out = spectrum(colour, window=self.window, phase=self.phase, engine=engine)
        return Result(out, False, self.auto_scale, {"window": self.window})


@dataclass(frozen=True)
class Lowpass:
    """`imfilt lowpass`: keep the frequencies inside a circle (or outside, or in a band)."""

    radius: float
    profile: str = "ideal"
    order: float = 2.0
    highpass: bool = False
    band: float | None = None
    gray: bool = False

    def __post_init__(self):
        check_mask_options(self.radius, self.profile, self.order, self.band)

    work = "fft"  # what --engine auto weighs
    runner = "fft"  # how an image larger than memory runs it: the two-pass FFT (tiled_fft.py)
    inverse = True  # masked coefficients transformed back into an image
    window = "none"

    def peak_bytes(self, shape: tuple[int, int, int]) -> int:
        """Peak memory above Python's: 22 B per image sample (max RSS of runs on 2048x2048 RGB)."""
        return 22 * shape[0] * shape[1] * shape[2]

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def explain(self) -> tuple[str, str]:
        return "fft", f"rfft2, times the {self.profile} mask of radius {self.radius:g}, irfft2"

    @property
    def name(self) -> str:
        kind = "bandpass" if self.band is not None else "highpass" if self.highpass else "lowpass"
        return f"{kind}{self.radius:g}"

    @property
    def auto_scale(self) -> str:
        # high- and band-pass results have zero mean: offset shows them around mid-grey
        return "offset" if self.highpass or self.band is not None else "clip"

    def mask_at(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return mask_at(u, v, self.radius, profile=self.profile, order=self.order, highpass=self.highpass, band=self.band)

    def facts(self, kept: float) -> dict:
        # "kept": the fraction of coefficients the mask keeps, the compression-ratio view
        return {"profile": self.profile, "radius": self.radius, "kept": round(kept, 6)}

    def run(self, loaded: Image, engine: Engine) -> Result:
        colour, alpha = split_alpha(loaded)
        if self.gray:
            colour = luminance(colour)
        height, width = colour.shape[:2]
        mask = self.mask_at(np.arange(height) - height // 2, np.arange(width) - width // 2)
        out = apply_mask(colour, mask, engine=engine)
        if alpha is not None:  # alpha is carried through unfiltered
            out = np.concatenate([out, alpha], axis=-1)
        return Result(out, alpha is not None, self.auto_scale, self.facts(float(mask.mean())), extras={"mask": mask})
