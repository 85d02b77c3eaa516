"""The dominant orientations of an image, read from its power spectrum (as Fiji's Directionality).

Stripes or edges that run in direction θ put their power on the frequencies perpendicular to
θ. The image's luminance loses its (windowed) mean and is tapered by a Hann window, so neither
the zero frequency nor the borders' cross add power; each frequency's power above its ring's
noise floor goes to the angle of the stripes it stands for, spread by that ring's angular
resolution (one frequency bin at radius r spans 1/r radians), into a density over [0, 180).
Each peak of the density is one orientation: degrees counter-clockwise from the image's x axis
(right), y pointing up, the direction along which intensity stays constant. A peak made by one
compact spot of power (periodic stripes) is placed by the power-weighted centre of that spot in
the frequency plane; a broad one (edges in a photo) by a parabola through the density's three
highest bins. Its strength is the share of the density above its baseline (the median) that
lies within 20° of it and nearer to it than to another orientation found.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .engine import Engine, get_engine
from .frequency import Spectrum, _mirror_half
from .ops import Image, Result, luminance, split_alpha

BIN = 0.25  # degrees per bin of the angle density
NOISE_FLOOR = 3.0  # power up to this many times a ring's mean noise power counts as noise
MIN_RING = 2  # frequencies nearer the centre than 2 bins are the window's own leakage
PEAK_SHARE = 0.15  # a peak lower than this share of the highest one is not reported
SEPARATION = 3.0  # degrees: of two peaks closer than this, the lower one is dropped
MIN_STRENGTH, MOST = 0.05, 8  # weaker orientations are not reported, nor more than 8
REACH = 20.0  # degrees: a strength counts the density this near its angle (and nearer to it than to another)
SPOT = 2  # a compact spot: the peak's strongest frequency and 2 bins around it ...
SPOT_SHARE = 0.5  # ... hold at least half of the power in the peak's wedge (on one side of the centre)
_EULER = 0.5772156649015329  # mean of log(power) of noise is log(mean power) - Euler's constant


def orientations(image: np.ndarray, *, engine: Engine | str = "cpu") -> list[dict]:
    """The dominant orientations of an (H, W, C) or (H, W) image, best first: [{angle, strength}].

    Colour images are read by their luminance (ITU-R 601); angles in degrees, counter-clockwise
    from the x axis with y up, in [0, 180); strengths are shares of the oriented power (they sum
    to at most 1).
    """
    engine = get_engine(engine) if isinstance(engine, str) else engine
    image = np.asarray(image, dtype=np.float32)
    gray = luminance(image)[..., 0] if image.ndim == 3 else image
    return orientation_plane(engine, engine.asarray(np.ascontiguousarray(gray)))


def _power(engine: Engine, plane):
    """The centred power spectrum of the plane, windowed, with its windowed mean removed (no DC)."""
    xp = engine.xp
    height, width = plane.shape
    window = engine.asarray(np.outer(np.hanning(height), np.hanning(width)))
    plane = plane.astype(np.float64)
    mean = (plane * window).sum() / max(float(window.sum()), 1e-300)
    half = engine.fft.rfft2((plane - mean) * window)
    power = half.real**2 + half.imag**2
    return engine.fft.fftshift(_mirror_half(power, width, xp), axes=(-2, -1))


def orientation_plane(engine: Engine, plane) -> list[dict]:
    """The core of orientations(): one (H, W) plane on the engine."""
    xp = engine.xp
    height, width = plane.shape
    if min(height, width) < 2 * MIN_RING + 1:
        return []
    power = _power(engine, plane)
    fy = -(xp.arange(height) - height // 2)[:, None] / height  # cycles per pixel, y up
    fx = (xp.arange(width) - width // 2)[None, :] / width
    radius = xp.sqrt(fx * fx + fy * fy)
    ring = xp.rint(radius * min(height, width)).astype(np.int64)
    keep = (ring >= MIN_RING) & (radius <= 0.5)
    angle = xp.broadcast_to((xp.degrees(xp.arctan2(fy, fx)) + 90.0) % 180.0, power.shape)
    # each ring's noise floor from the mean of log power: one strong frequency hardly moves it
    rings = int(ring.max()) + 1
    counts = xp.bincount(ring[keep], minlength=rings)
    logs = xp.bincount(ring[keep], weights=xp.log(power[keep] + 1e-300), minlength=rings)
    floor = xp.exp(logs / xp.maximum(counts, 1) + _EULER)
    weight = xp.where(keep, xp.maximum(power - NOISE_FLOOR * floor[ring], 0.0), 0.0)
    density = _density(engine, angle, ring, weight, rings)
    if float(density.sum()) <= 0:  # a flat image: nothing is oriented
        return []
    found: list[float] = []
    for index in _peaks(density):
        placed = _place(engine, index, density, angle, weight, fx, fy)
        # lumps of one broad peak placed on the same spot are one orientation
        if all(_distance(placed, f) >= SEPARATION for f in found):
            found.append(placed)
    return _strengths(density, found)


def _distance(a, b):
    """Degrees between two orientations (180-periodic)."""
    return np.abs((np.asarray(a) - b + 90.0) % 180.0 - 90.0)


def _strengths(density: np.ndarray, found: list[float]) -> list[dict]:
    """Each orientation's share of the density above its baseline: the bins nearer to it than to the
    others, and within REACH degrees. Best first."""
    above = np.maximum(density - np.median(density), 0.0)
    centres = np.arange(len(density)) * BIN
    if not found or above.sum() <= 0:
        return []
    distance = np.stack([_distance(centres, f) for f in found])
    nearest = distance.argmin(axis=0)
    shares = [float(above[(nearest == i) & (distance[i] <= REACH)].sum() / above.sum()) for i in range(len(found))]
    out = [{"angle": a, "strength": round(s, 4)} for a, s in zip(found, shares) if s >= MIN_STRENGTH]
    return sorted(out, key=lambda f: -f["strength"])[:MOST]


def _density(engine: Engine, angle, ring, weight, rings: int) -> np.ndarray:
    """The weights over [0, 180) in bins of BIN degrees, each ring smoothed by its angular resolution."""
    xp = engine.xp
    bins = int(round(180 / BIN))
    position = angle / BIN
    low = xp.floor(position).astype(np.int64)
    fraction = position - low
    flat = weight.ravel() > 0
    low, fraction, w, r = low.ravel()[flat], fraction.ravel()[flat], weight.ravel()[flat], ring.ravel()[flat]
    size = rings * bins
    histogram = (xp.bincount(r * bins + low % bins, weights=w * (1 - fraction), minlength=size)
                 + xp.bincount(r * bins + (low + 1) % bins, weights=w * fraction, minlength=size))
    histogram = engine.to_host(histogram).reshape(rings, bins)
    used = histogram.any(axis=1)
    sigma = np.maximum(np.degrees(1.0 / np.maximum(np.arange(rings), 1)) / BIN, 1.0)[used]  # in bins
    transfer = np.exp(-2.0 * (np.pi * sigma[:, None] * np.fft.rfftfreq(bins)[None, :]) ** 2)
    return np.maximum(np.fft.irfft((np.fft.rfft(histogram[used], axis=1) * transfer).sum(axis=0), n=bins), 0.0)


def _peaks(density: np.ndarray) -> list[int]:
    """The bins of the density's peaks, highest first: those at least PEAK_SHARE of the highest
    above the baseline, none within SEPARATION of a higher one."""
    bins = len(density)
    above = np.maximum(density - np.median(density), 0.0)
    maxima = [i for i in range(bins) if density[i] > density[i - 1] and density[i] >= density[(i + 1) % bins]]
    maxima = sorted((i for i in maxima if above[i] > 0), key=lambda i: -above[i])
    chosen: list[int] = []
    for i in maxima:
        if above[i] < PEAK_SHARE * above[maxima[0]]:
            break
        if all(min(abs(i - j), bins - abs(i - j)) * BIN >= SEPARATION for j in chosen):
            chosen.append(i)
    return chosen


def _place(engine: Engine, index: int, density: np.ndarray, angle, weight, fx, fy) -> float:
    """The peak's angle: the centre of its compact spot of power, or a parabola through the density."""
    xp = engine.xp
    centre = index * BIN
    offset = (angle - centre + 90.0) % 180.0 - 90.0
    wedge = xp.where(xp.abs(offset) <= 10.0, weight, 0.0)
    wedge_total = float(wedge.sum())
    if wedge_total > 0:
        row, col = (int(i) for i in np.unravel_index(int(xp.argmax(wedge)), wedge.shape))
        rows = slice(max(0, row - SPOT), row + SPOT + 1)
        cols = slice(max(0, col - SPOT), col + SPOT + 1)
        spot = weight[rows, cols]
        spot_total = float(spot.sum())
        if spot_total >= SPOT_SHARE * wedge_total / 2:  # the wedge holds the spot twice: at f and at -f
            x = float((spot * xp.broadcast_to(fx, weight.shape)[rows, cols]).sum()) / spot_total
            y = float((spot * xp.broadcast_to(fy, weight.shape)[rows, cols]).sum()) / spot_total
            return round(float((np.degrees(np.arctan2(y, x)) + 90.0) % 180.0), 2)
    bins = len(density)
    a, b, c = density[index - 1], density[index], density[(index + 1) % bins]
    curve = a - 2 * b + c
    shift = 0.5 * (a - c) / curve if curve < 0 else 0.0
    return round(float(((index + shift) * BIN) % 180.0), 2)


@dataclass(frozen=True)
class OrientedSpectrum(Spectrum):
    """`imfilt spectrum --orientation`: the spectrum, and the orientations found in its facts (and
    a line for people). It needs the whole image: a huge one is not streamed."""

    streams = False

    def run(self, loaded: Image, engine: Engine) -> Result:
        result = super().run(loaded, engine)
        colour, _ = split_alpha(loaded)
        found = orientations(luminance(colour) if self.gray else colour, engine=engine)
        note = ", ".join(f"{f['angle']:.1f}° (strength {f['strength']:.2f})" for f in found) or "none found"
        return replace(result, facts={**result.facts, "orientation": found, "note": f"orientation {note}"})
