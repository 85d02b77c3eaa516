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

from ..engine.engine import Engine, get_engine
from .frequency import Spectrum
from .operations import Image, Result, luminance, split_alpha

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
    """The power spectrum of the plane on rfft2's half plane, windowed, its windowed mean removed (no DC)."""
    height, width = plane.shape
    window = engine.asarray(np.outer(np.hanning(height), np.hanning(width)))
    plane = plane.astype(np.float64)
    mean = (plane * window).sum() / max(float(window.sum()), 1e-300)
    half = engine.fft.rfft2((plane - mean) * window)
    return half.real**2 + half.imag**2


@dataclass(frozen=True)
class _Oriented:
    """The frequencies whose power stands above their ring's noise floor: the half plane's, each
    with its multiplicity (an inner column stands for itself and its mirror image -f as well)."""

    rows: object  # indices into the half plane
    cols: object
    fx: object  # cycles per pixel, x right
    fy: object  # y up
    angle: object  # of the stripes they stand for, degrees in [0, 180)
    ring: object
    above: object  # power above the floor
    weight: object  # ... times the multiplicity
    rings: int


def _oriented(engine: Engine, power, height: int, width: int):
    """(_Oriented, the dense weights on the half plane without multiplicity)."""
    xp = engine.xp
    kept = power.shape[1]
    fy = -xp.fft.fftfreq(height)[:, None]  # rows in FFT order: 0, 1, ..., -1; y up
    fx = (xp.arange(kept) / width)[None, :]
    radius = xp.sqrt(fx * fx + fy * fy)
    ring = xp.rint(radius * min(height, width)).astype(np.int64)
    keep = (ring >= MIN_RING) & (radius <= 0.5)
    multiplicity = xp.full(kept, 2.0)
    multiplicity[0] = 1.0
    if width % 2 == 0:
        multiplicity[-1] = 1.0  # the Nyquist column is its own mirror image
    # each ring's noise floor from the mean of log power: one strong frequency hardly moves it
    rings = int(ring.max()) + 1
    counted = xp.broadcast_to(multiplicity, power.shape)[keep]
    counts = xp.bincount(ring[keep], weights=counted, minlength=rings)
    logs = xp.bincount(ring[keep], weights=counted * xp.log(power[keep] + 1e-300), minlength=rings)
    floor = xp.exp(logs / xp.maximum(counts, 1) + _EULER)
    dense = xp.where(keep, xp.maximum(power - NOISE_FLOOR * floor[ring], 0.0), 0.0)
    index = xp.flatnonzero(dense)
    rows, cols = index // kept, index % kept
    fx_, fy_ = fx[0, cols], fy[rows, 0]
    angle = (xp.degrees(xp.arctan2(fy_, fx_)) + 90.0) % 180.0
    above = dense.ravel()[index]
    return _Oriented(rows, cols, fx_, fy_, angle, ring.ravel()[index], above, above * multiplicity[cols], rings), dense


def orientation_plane(engine: Engine, plane) -> list[dict]:
    """The core of orientations(): one (H, W) plane on the engine."""
    height, width = plane.shape
    if min(height, width) < 2 * MIN_RING + 1:
        return []
    found, dense = _oriented(engine, _power(engine, plane), height, width)
    density = _density(engine, found)
    if float(density.sum()) <= 0:  # a flat image: nothing is oriented
        return []
    angles: list[float] = []
    for index in _peaks(density):
        placed = _place(engine, index, density, found, dense, (height, width))
        # lumps of one broad peak placed on the same spot are one orientation
        if all(_distance(placed, a) >= SEPARATION for a in angles):
            angles.append(placed)
    return _strengths(density, angles)


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


def _density(engine: Engine, found: _Oriented) -> np.ndarray:
    """The weights over [0, 180) in bins of BIN degrees, each ring smoothed by its angular resolution."""
    xp = engine.xp
    bins = int(round(180 / BIN))
    position = found.angle / BIN
    low = xp.floor(position).astype(np.int64)
    fraction = position - low
    size = found.rings * bins
    histogram = (xp.bincount(found.ring * bins + low % bins, weights=found.weight * (1 - fraction), minlength=size)
                 + xp.bincount(found.ring * bins + (low + 1) % bins, weights=found.weight * fraction, minlength=size))
    histogram = engine.to_host(histogram).reshape(found.rings, bins)
    used = histogram.any(axis=1)
    sigma = np.maximum(np.degrees(1.0 / np.maximum(np.arange(found.rings), 1)) / BIN, 1.0)[used]  # in bins
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


def _place(engine: Engine, index: int, density: np.ndarray, found: _Oriented, dense, shape) -> float:
    """The peak's angle: the centre of its compact spot of power, or a parabola through the density."""
    xp = engine.xp
    height, width = shape
    offset = (found.angle - index * BIN + 90.0) % 180.0 - 90.0
    inside = xp.abs(offset) <= 10.0
    wedge_total = float(xp.where(inside, found.weight, 0.0).sum())  # with the mirror images: the spot is in it twice
    if wedge_total > 0:
        strongest = int(xp.argmax(xp.where(inside, found.above, 0.0)))
        row, col = int(found.rows[strongest]), int(found.cols[strongest])
        u = (row + height // 2) % height - height // 2  # the signed row frequency, in bins
        steps = np.arange(-SPOT, SPOT + 1)
        du, dv = (a.ravel() for a in np.meshgrid(steps, steps, indexing="ij"))
        us, vs = u + du, col + dv  # the spot around it, on both sides of the half plane's edge
        inside = (np.abs(us) <= height // 2) & (np.abs(vs) <= width // 2)
        us, vs = us[inside], vs[inside]
        mirrored = vs < 0  # power(-f) = power(f): a column left of 0 is read at -f
        rows_at, cols_at = np.where(mirrored, -us, us) % height, np.abs(vs)
        spot = engine.to_host(dense[engine.asarray(rows_at), engine.asarray(cols_at)]).astype(np.float64)
        spot_total = float(spot.sum())
        if spot_total >= SPOT_SHARE * wedge_total / 2:
            x = float((spot * vs / width).sum()) / spot_total
            y = float((spot * -us / height).sum()) / spot_total
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

    runner = None  # the dominant orientations need the whole spectrum at once

    def run(self, loaded: Image, engine: Engine) -> Result:
        result = super().run(loaded, engine)
        colour, _ = split_alpha(loaded)
        found = orientations(luminance(colour) if self.gray else colour, engine=engine)
        note = ", ".join(f"{f['angle']:.1f}° (strength {f['strength']:.2f})" for f in found) or "none found"
        return replace(result, facts={**result.facts, "orientation": found, "note": f"orientation {note}"})
