"""Learning a kernel: the least-squares K for which `imfilt apply INPUT -k K` comes closest to TARGET.

The model is apply's: pred[i] = sum_u c[u] · P[i + u] for every channel, where P is the input
extended by the boundary mode exactly as apply extends it (or the input itself, for a target of
the valid size) and c is the kernel (--correlate) or the kernel turned 180° (a true convolution).
The normal equations G c = b need the Gram matrix G[u, v] = sum_i P[i + u] · P[i + v] over the
target's pixels i, and no (pixels x taps) design matrix is ever made: G[u, u + d] is the
autocorrelation of P at lag d summed over the window of P that offset u sees, which is the
whole-array autocorrelation (one 2-D FFT) less the border rows and columns outside that window
(1-D FFTs of those few lines) plus the border corners subtracted twice. Target samples left out
of the fit (clipped at 0 or the maximum) are taken off again explicitly, one patch each (or, when
they are most of the target, the samples kept are summed the same way instead).
Everything is float64 and runs on the engine's xp and fft.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .convolution import MODES, pad_planes
from ..engine.engine import Engine, get_engine
from ..errors import InputError, UsageError, check_choice, check_image

MAX_TAPS = 4096  # a 64x64 kernel: the normal equations are (taps x taps)
_CHUNK = 1 << 15  # left-out samples turned into patches at a time (15x15: 59 MB)
FLAT_CHECK = 1 << 16  # left-out samples above which flat patches are found by filters and summed without patches
SINGULAR = 1e-12  # smallest / largest eigenvalue of G below which the fit is not determined


@dataclass(frozen=True)
class Fit:
    """A learned kernel, as apply takes it, and how well it reproduces the target."""

    kernel: np.ndarray  # (kh, kw) float64
    rmse: float  # root mean square residual over the samples fitted, in [0, 1] units
    r2: float | None  # 1 - residual / variance of the target over those samples (None: a flat target)
    left_out: float  # fraction of the target's samples left out (clipped)
    samples: int  # samples fitted


def parse_kernel_size(text: str) -> tuple[int, int]:
    """--size N (square) or HxW (rows x columns)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise UsageError(f"--size must be N or HxW (rows x columns), e.g. 5 or 3x7; got {text!r}")
    kh = int(match.group(1))
    kw = int(match.group(2)) if match.group(2) else kh
    if kh < 1 or kw < 1:
        raise UsageError(f"--size: a kernel has at least 1x1 taps, got {kh}x{kw}")
    if kh * kw > MAX_TAPS:
        raise UsageError(f"--size {kh}x{kw}: {kh * kw} taps; at most {MAX_TAPS} are learned (64x64)")
    return kh, kw


def check_pair(image_shape: tuple[int, ...], target_shape: tuple[int, ...], shape: tuple[int, int]) -> str:
    """"same" or "valid" from the two (H, W, C) images' sizes; anything else is refused with the sizes that would do."""
    (h, w), (th, tw), (kh, kw) = image_shape[:2], target_shape[:2], shape
    if image_shape[2:] != target_shape[2:]:
        raise UsageError(f"the input has {image_shape[2]} channels and the target {target_shape[2]}: "
                         "they must match (--gray fits the luminance of both)")
    if kh > h or kw > w:
        raise UsageError(f"the {kh}x{kw} kernel is larger than the {h}x{w} input (HxW)")
    if (th, tw) == (h, w):
        return "same"
    if (th, tw) == (h - kh + 1, w - kw + 1):
        return "valid"
    raise UsageError(f"the target is {th}x{tw} but the input is {h}x{w} (HxW): a target has the input's size, "
                     f"or the valid size {h - kh + 1}x{w - kw + 1} for a {kh}x{kw} kernel")


def learn_kernel(image: np.ndarray, target: np.ndarray, shape: tuple[int, int], *, correlate: bool = False,
                 mode: str = "reflect", cval: float = 0.0, ridge: float = 0.0, left_out: np.ndarray | None = None,
                 engine: Engine | str = "cpu") -> Fit:
    """The (kh, kw) kernel whose convolution of ``image`` is closest to ``target`` in least squares.

    ``image`` and ``target`` are (H, W, C) or (H, W) float arrays with the same channels; the
    target has the image's size (the boundary ``mode`` and ``cval`` then matter at its edges) or
    the valid size. One kernel serves every channel. ``left_out`` (the target's shape, bool)
    marks samples kept out of the fit. ``ridge`` λ minimizes mean(residual²) + λ·sum(K²).
    """
    check_choice("mode", mode, MODES)
    if not (ridge >= 0 and np.isfinite(ridge)):
        raise UsageError(f"--ridge must be a number >= 0, got {ridge}")
    engine = get_engine(engine) if isinstance(engine, str) else engine
    image, target = np.atleast_3d(check_image(image)), np.atleast_3d(check_image(target, "target"))
    kh, kw = shape
    size = check_pair(image.shape, target.shape, shape)
    if float(image.max()) - float(image.min()) == 0:
        raise InputError("the input is constant: every kernel with the same sum fits it equally well")
    xp = engine.xp
    planes = xp.asarray(np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float64))  # (C, H, W)
    ys = xp.asarray(np.ascontiguousarray(np.moveaxis(target, -1, 0), dtype=np.float64))
    if size == "same":
        anchor = (kh // 2, kw // 2) if correlate else (kh - 1 - kh // 2, kw - 1 - kw // 2)
        planes = pad_planes(engine, planes, anchor, (kh - 1 - anchor[0], kw - 1 - anchor[1]), mode, cval)
    mask = None if left_out is None else xp.asarray(np.moveaxis(np.atleast_3d(left_out), -1, 0))
    if mask is not None and 2 * int(xp.count_nonzero(mask)) > mask.size:  # most left out: sum the rest directly
        gram, rhs, yy, ysum, count = _patches_of(engine, planes, ys, ~mask, kh, kw)
    else:
        gram, rhs = _normal_equations(engine, planes, ys, kh, kw)
        yy, ysum, count = float(xp.vdot(ys, ys)), float(xp.sum(ys)), ys.size
        if mask is not None:
            g, b, yy_out, ysum_out, n_out = _patches_of(engine, planes, ys, mask, kh, kw)
            gram, rhs, yy, ysum, count = gram - g, rhs - b, yy - yy_out, ysum - ysum_out, count - n_out
    if count < kh * kw:
        raise InputError(f"only {count} target samples are left to fit {kh * kw} taps (the rest are clipped)")
    c = _solve(gram / count, rhs / count, ridge)
    residual = max(yy - 2 * c @ rhs + c @ gram @ c, 0.0)
    variance = yy - ysum * ysum / count
    r2 = 1 - residual / variance if variance > 1e-12 * max(yy, 1e-300) else None
    weights = c.reshape(kh, kw)
    kernel = weights if correlate else weights[::-1, ::-1]
    return Fit(np.ascontiguousarray(kernel), float(np.sqrt(residual / count)), r2,
               1 - count / ys.size, count)


def _solve(gram: np.ndarray, rhs: np.ndarray, ridge: float) -> np.ndarray:
    eigenvalues = np.linalg.eigvalsh(gram)
    if ridge == 0 and eigenvalues[0] <= SINGULAR * eigenvalues[-1]:
        raise InputError("the input does not determine a kernel of this size (its detail is too flat or too "
                         "regular; the normal equations are singular): add --ridge, e.g. --ridge 1e-6")
    return np.linalg.solve(gram + ridge * np.eye(len(rhs)), rhs)


def _lags(n: int, reach: int) -> np.ndarray:
    """Indices of the lags -reach..reach in a circular correlation of length n."""
    return np.arange(-reach, reach + 1) % n


def _normal_equations(engine: Engine, planes, ys, kh: int, kw: int) -> tuple[np.ndarray, np.ndarray]:
    """G (taps x taps) and b (taps) over every target sample, from FFTs of P (C, Hp, Wp) and Y (C, Ht, Wt)."""
    xp, fft = engine.xp, engine.fft
    _, hp, wp = planes.shape
    rh, rw = kh - 1, kw - 1
    shape = (fft.next_fast_len(hp + rh), fft.next_fast_len(wp + rw))
    power, cross = 0, 0
    for plane, y in zip(planes, ys):  # a channel at a time: two spectra in memory, not six
        spectrum = fft.rfft2(plane, s=shape)
        power = power + spectrum.real**2 + spectrum.imag**2
        cross = cross + xp.conj(fft.rfft2(y, s=shape)) * spectrum
        del spectrum
    whole = engine.to_host(fft.irfft2(power, s=shape))  # A(d) = sum_q P[q] P[q + d]
    auto = whole[_lags(shape[0], rh)][:, _lags(shape[1], rw)]
    rhs = engine.to_host(fft.irfft2(cross, s=shape)[:kh, :kw]).reshape(-1)  # b[u] = sum_i Y[i] P[i + u]
    rows, row_sums = _line_sums(engine, planes, rh, rw)
    cols, col_sums = _line_sums(engine, xp.swapaxes(planes, 1, 2), rw, rh)
    col_sums = col_sums.transpose(0, 2, 1)
    corners = _corners(engine, planes, rows, cols, rh, rw)
    # the lines outside the window of offset u: rows [0, u0) and [u0 + Ht, Hp), the same for columns
    row_out = (rows[None, :] < np.arange(kh)[:, None]) | (rows[None, :] >= hp - rh + np.arange(kh)[:, None])
    col_out = (cols[None, :] < np.arange(kw)[:, None]) | (cols[None, :] >= wp - rw + np.arange(kw)[:, None])
    row_out, col_out = row_out.astype(np.float64), col_out.astype(np.float64)
    windowed = (auto[None, None] - np.einsum("uk,kab->uab", row_out, row_sums)[:, None]
                - np.einsum("vk,kab->vab", col_out, col_sums)[None, :]
                + np.einsum("vl,ulab->uvab", col_out, np.einsum("uk,klab->ulab", row_out, corners)))  # (kh, kw, lags, lags)
    u0, u1 = np.arange(kh), np.arange(kw)
    gram = windowed[u0[:, None, None, None], u1[None, :, None, None],
                    (u0[None, :] - u0[:, None] + rh)[:, None, :, None], (u1[None, :] - u1[:, None] + rw)[None, :, None, :]]
    return gram.reshape(kh * kw, kh * kw), rhs


def _border(length: int, reach: int) -> np.ndarray:
    """The first and last ``reach`` indices of a line (each once, when they overlap)."""
    return np.union1d(np.arange(min(reach, length)), np.arange(max(length - reach, 0), length))


def _line_sums(engine: Engine, planes, reach: int, lag_reach: int) -> tuple[np.ndarray, np.ndarray]:
    """For each border row r: S[r, d0, d1] = sum over channels and q of P[r, q] · P[r + d0, q + d1],
    P zero outside; d0 in -reach..reach, d1 in -lag_reach..lag_reach. 1-D FFTs of the rows involved."""
    xp, fft = engine.xp, engine.fft
    _, height, width = planes.shape
    rows = _border(height, reach)
    sums = np.zeros((len(rows), 2 * reach + 1, 2 * lag_reach + 1))
    if len(rows) == 0:
        return rows, sums
    n = fft.next_fast_len(width + lag_reach)
    wanted = rows[:, None] + np.arange(-reach, reach + 1)[None, :]
    inside = (wanted >= 0) & (wanted < height)
    distinct = np.unique(wanted[inside])
    spectra = fft.rfft(planes[:, xp.asarray(distinct)], n=n, axis=-1)  # (C, rows, n // 2 + 1)
    spectra = xp.concatenate([spectra, xp.zeros_like(spectra[:, :1])], axis=1)  # a zero row for "outside"
    where = np.where(inside, np.searchsorted(distinct, wanted), len(distinct))
    lags = _lags(n, lag_reach)
    for k, r in enumerate(rows):
        mine = xp.conj(spectra[:, int(np.searchsorted(distinct, r))])
        products = (mine[:, None, :] * spectra[:, xp.asarray(where[k])]).sum(axis=0)
        sums[k] = engine.to_host(fft.irfft(products, n=n, axis=-1)[:, lags])
    return rows, sums


def _corners(engine: Engine, planes, rows: np.ndarray, cols: np.ndarray, rh: int, rw: int) -> np.ndarray:
    """S[r, c, d0, d1] = sum over channels of P[r, c] · P[r + d0, c + d1] for border rows x border columns."""
    xp = engine.xp
    _, height, width = planes.shape
    if len(rows) == 0 or len(cols) == 0:
        return np.zeros((len(rows), len(cols), 2 * rh + 1, 2 * rw + 1))
    near_rows = rows[:, None] + np.arange(-rh, rh + 1)  # (rows, lags): the neighbours each border row needs
    near_cols = cols[:, None] + np.arange(-rw, rw + 1)
    inside = xp.asarray(((near_rows >= 0) & (near_rows < height))[:, :, None, None]
                        & ((near_cols >= 0) & (near_cols < width))[None, None, :, :])
    r, c = xp.asarray(np.clip(near_rows, 0, height - 1)), xp.asarray(np.clip(near_cols, 0, width - 1))
    near = planes[:, r[:, :, None, None], c[None, None, :, :]] * inside  # (C, rows, lags0, cols, lags1), 0 outside
    centre = planes[:, xp.asarray(rows)[:, None], xp.asarray(cols)[None, :]]  # (C, rows, cols)
    products = (centre[:, :, None, :, None] * near).sum(axis=0)  # (rows, lags0, cols, lags1)
    return engine.to_host(products.transpose(0, 2, 1, 3))


def _flat_patches(engine: Engine, planes, kh: int, kw: int):
    """(C, Ht, Wt) bool: whether the patch under each target sample holds one value (a saturated or
    flat region), from a maximum and a minimum filter of each plane."""
    _, height, width = planes.shape
    inner = (slice(None), slice(kh // 2, kh // 2 + height - kh + 1), slice(kw // 2, kw // 2 + width - kw + 1))
    size = (1, kh, kw)
    return (engine.ndi.maximum_filter(planes, size=size) == engine.ndi.minimum_filter(planes, size=size))[inner]


def _patches_of(engine: Engine, planes, ys, mask, kh: int, kw: int):
    """G, b, sum y², sum y and the count over the masked target samples: their patches, a chunk at a time.

    Many samples are usually left out because a region is saturated: where the patch is flat
    (every tap the same value v) its product is v²·ones, so those are summed without their patch.
    """
    xp = engine.xp
    windows = xp.lib.stride_tricks.sliding_window_view(planes, (kh, kw), axis=(1, 2))  # (C, Ht, Wt, kh, kw)
    taps_first = xp.moveaxis(windows, (3, 4), (0, 1))  # gathered as (taps, samples): Y @ Y.T ran 2.5x X.T @ X
    where = xp.nonzero(mask)
    gram, rhs, yy, ysum = np.zeros((kh * kw, kh * kw)), np.zeros(kh * kw), 0.0, 0.0
    count = int(where[0].shape[0])
    if count > FLAT_CHECK and kh * kw > 1:
        flat = _flat_patches(engine, planes, kh, kw)[where]
        at = tuple(w[flat] for w in where)
        v, y = planes[at], ys[at]
        gram += float(xp.vdot(v, v))
        rhs += float(xp.vdot(v, y))
        yy, ysum = float(xp.vdot(y, y)), float(y.sum())
        where = tuple(w[~flat] for w in where)
    for start in range(0, int(where[0].shape[0]), _CHUNK):
        at = tuple(w[start : start + _CHUNK] for w in where)
        patches = taps_first[(slice(None), slice(None)) + at].reshape(kh * kw, -1)
        y = ys[at]
        gram += engine.to_host(patches @ patches.T)
        rhs += engine.to_host(patches @ y)
        yy += float(y @ y)
        ysum += float(y.sum())
    return gram, rhs, yy, ysum, count


def clipped(stored_target: np.ndarray, depth: int) -> np.ndarray | None:
    """The samples of an integer target at 0 or its maximum (their true value was cut off), or None
    for a float target. ``stored_target`` is in [0, 1] units as read."""
    if depth not in (8, 16):
        return None
    return (stored_target <= 0) | (stored_target >= 1)
