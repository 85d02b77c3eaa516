"""Template matching: zero-mean normalized cross-correlation through FFTs, and its peaks.

The score at a position is the correlation coefficient of the template with the image window
under it (cv2.matchTemplate's TM_CCOEFF_NORMED, skimage.feature.match_template). Colour images
match on all channels together, as OpenCV does: each channel loses its own mean, and the sums
in the numerator and in both norms run over every channel, so one score comes per position.

    score = sum_c sum_xy T'_c · I'_c / sqrt(sum_c sum_xy T'_c² · sum_c sum_xy I'_c²)

with T' and I' the template and window minus their channel means. The numerator is one
correlation by FFT (T' sums to 0 per channel, so the window's mean drops out of it); the
window's sums are running sums along rows, then columns (the engine's ``filters.window_spread``:
OpenCV's box filter on the CPU). All of it is float64, so the score is within 2e-6 of a float64
brute force wherever the window's RMS spread is at least 1e-4 (tests/test_match.py), also in
low-contrast windows; OpenCV's float32 TM_CCOEFF_NORMED is ~1e-5 off on a photo. It runs strip
by strip in overlap-save blocks about 3x the template's size on two threads: one takes the
strip's FFT blocks, the other sums its windows and then takes FFT blocks too, into buffers made
once per image. A flat window or a flat template (no spread to normalize by) scores 0.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..engine.engine import Engine, get_engine
from ..errors import UsageError, check_choice, check_image
from .operations import Image, Result, luminance, split_alpha

MATCH_SIZES = ("valid", "same")
# A window whose root-mean-square deviation is below this (in [0, 1] units: far below one 16-bit
# level spread over a window) is flat: its score is 0, not the noise of 0 / 0.
FLAT_RMS = 1e-6


def _check_shapes(image_shape, template_shape) -> None:
    (h, w, c), (th, tw, tc) = image_shape, template_shape
    if c != tc:
        raise UsageError(f"the image has {c} channel{'s' * (c != 1)} and the template {tc}: use --gray to match luminance")
    if th > h or tw > w:
        raise UsageError(f"the {tw}x{th} template does not fit in the {w}x{h} image")


def block_shape(n: int, size: int, fft_len) -> tuple[int, int]:
    """(FFT length, outputs per block) along an axis ``size`` long, for a template n long (overlap-save).

    Blocks of about 3x the template (at least 256 outputs) keep each FFT in cache, at the cost
    of the n - 1 extra inputs each block reads; on a 4096x4096 photo they measured faster than
    whole strips and than blocks of 4x or 8x (bench.py match; the spread between runs was wide).
    Of the fast lengths up to 1.5x that, the one that wastes least on the last block is taken.
    """
    outputs = size - n + 1
    base = max(256, 3 * n) + n - 1
    if base >= size:
        return fft_len(size), outputs
    lengths = {fft_len(x) for x in range(base, min(size, base * 3 // 2) + 1, 8)}
    length = min(lengths, key=lambda length: (-(-outputs // (length - n + 1)) * length, length))
    return length, length - n + 1


def match_template(image: np.ndarray, template: np.ndarray, *, size: str = "valid",
                   engine: Engine | str = "cpu") -> np.ndarray:
    """Correlation coefficient of ``template`` with every window of ``image``: float32 in [-1, 1].

    Both are (H, W, C) (or (H, W)) with the same channels. ``size="valid"`` gives one score per
    position where the template fits, (H - th + 1, W - tw + 1), indexed by the window's top-left
    corner; ``"same"`` gives an (H, W) map indexed by the template's centre (row th // 2, column
    tw // 2 of it), 0 where it does not fit.
    """
    check_choice("size", size, MATCH_SIZES)
    engine = get_engine(engine) if isinstance(engine, str) else engine
    xp = engine.xp
    image, template = check_image(image), check_image(template, "template")
    image3 = image[..., None] if image.ndim == 2 else image
    template3 = template[..., None] if template.ndim == 2 else template
    _check_shapes(image3.shape, template3.shape)
    (height, width, channels), (th, tw) = image3.shape, template3.shape[:2]
    t = np.moveaxis(template3, -1, 0).astype(np.float64)
    t -= t.mean(axis=(-2, -1), keepdims=True)
    t_norm2 = float((t * t).sum())
    flat_level = th * tw * channels * FLAT_RMS**2
    out_h, out_w = height - th + 1, width - tw + 1
    scores = xp.zeros((out_h, out_w), dtype=np.float32)
    if t_norm2 > flat_level:  # a flat template: every score is 0
        (fft_h, step), (fft_w, block_w) = (block_shape(n, size, engine.fft.next_fast_len) for n, size in ((th, height), (tw, width)))
        fshape = (fft_h, fft_w)
        # the flipped template's spectrum at the blocks' FFT size: convolving with it correlates
        t_spectrum = engine.fft.rfft2(engine.asarray(np.ascontiguousarray(t[:, ::-1, ::-1])), s=fshape, axes=(-2, -1))
        # per channel: on a planar (H, W, C) view each is one contiguous plane, which sums fast
        means = engine.asarray(np.array([image3[..., c].mean(dtype=np.float64) for c in range(channels)]))
        # One strip after another on two threads: one runs the strip's FFTs block by block, the
        # other its window sums and then takes FFT blocks too, so neither waits for the other (on
        # the 2-core machine two strips at once, or FFTs with two workers each, measured 1.2-2.4x
        # slower: small FFTs, twice the memory in flight).
        strips = _Strips(engine.one_thread(), image3, (th, tw), t_spectrum, means, (step, block_w), fshape,
                         t_norm2, flat_level)
        for top in range(0, out_h, step):
            bottom = min(top + step, out_h)
            raw = strips.raw(top, bottom)  # one host-to-device copy a strip on the GPU
            parts = strips.parts(raw, bottom - top)
            numerator, (norm, flat) = engine.map(lambda part: part(), parts)
            # the quotient straight into the float32 scores (rounded as before; clipping after the
            # rounding gives the same values, ±1 being float32), each thread half the rows
            halves = [slice(0, (bottom - top) // 2), slice((bottom - top) // 2, bottom - top)]
            engine.map(lambda rows: _scores(xp, numerator[rows], norm[rows], flat[rows], scores[top:bottom][rows]), halves)
    if size == "same":
        full = xp.zeros((height, width), dtype=np.float32)
        full[th // 2 : th // 2 + out_h, tw // 2 : tw // 2 + out_w] = scores
        scores = full
    return engine.to_host(scores)


def _scores(xp, numerator, norm, flat, out) -> None:
    xp.divide(numerator, norm, out=out)
    xp.copyto(out, 0.0, where=flat)
    xp.clip(out, -1.0, 1.0, out=out)


class _Strips:
    """The two halves of a strip's scores, each into buffers made once per image and reused from
    strip to strip (a fresh 100 MB array costs ~0.15 s to touch on these machines, more than its
    arithmetic): the numerator by FFTs, and the windows' spread by window sums.
    """

    def __init__(self, engine: Engine, image3, shape, t_spectrum, means, steps, fshape, t_norm2, flat_level):
        xp = engine.xp
        (self.th, self.tw), (step, self.block_w), self.fshape = shape, steps, fshape
        height, width, channels = image3.shape
        self.engine, self.image3, self.t_spectrum, self.means = engine, image3, t_spectrum, means
        self.t_norm2, self.flat_level = t_norm2, flat_level
        # an overlap-save block, zero-padded, for each of the two threads
        self.blocks = [None, None]  # made at the thread's first block (on the GPU one thread takes them all)
        self.block_filled = [fshape, fshape]
        self.channels = channels
        self.lefts = range(0, width - self.tw + 1, self.block_w)
        self.lock, self.pending = threading.Lock(), iter(())
        rows = min(step + self.th - 1, height)
        self.out = xp.empty((step, width - self.tw + 1), dtype=np.float64)
        # the window sums: of the squares (summed over the channels), of one channel at a time, and scratch
        self.buffers = [xp.empty((rows, width), dtype=np.float64) for _ in range(3)]

    def raw(self, top: int, bottom: int):
        """Input rows top..bottom + th - 1 as (C, rows, W) planes (a view on the CPU)."""
        return self.engine.asarray(np.moveaxis(self.image3[top : bottom + self.th - 1], -1, 0))

    def parts(self, raw, rows: int) -> list:
        """The strip's two halves for two threads: FFT blocks; window sums, then FFT blocks. Both
        take blocks from one queue, so the second helps the first once its sums are done."""
        with self.lock:
            self.pending = iter(self.lefts)

        def spread_then_blocks():
            norm = self.norm(raw, rows)
            self.numerator(raw, rows, 1)
            return norm

        return [lambda: self.numerator(raw, rows, 0), spread_then_blocks]

    def _next_block(self):
        with self.lock:
            return next(self.pending, None)

    def numerator(self, raw, rows: int, worker: int = 0):
        """sum_c sum_xy T'_c · I_c for ``rows`` output rows from their input rows ``raw``, for the
        blocks not taken yet: each channel minus its mean (the scores ignore it; the FFT's
        rounding stays small), correlated by FFT in float64 block by block and summed over the
        channels in the Fourier domain."""
        engine, xp, th, tw = self.engine, self.engine.xp, self.th, self.tw
        out = self.out[:rows]
        out_w = out.shape[1]
        block = self.blocks[worker]
        while (left := self._next_block()) is not None:
            if block is None:
                block = self.blocks[worker] = xp.zeros((self.channels, *self.fshape), dtype=np.float64)
            cols = min(self.block_w, out_w - left)
            used = (raw.shape[1], cols + tw - 1)
            if used != self.block_filled[worker]:  # a smaller last block: the rest of the buffer is padding again
                block[...] = 0.0
                self.block_filled[worker] = used
            xp.subtract(raw[:, :, left : left + used[1]], self.means[:, None, None], out=block[:, : used[0], : used[1]])
            total = None
            for plane, t_spectrum in zip(block, self.t_spectrum):
                spectrum = engine.fft.rfft2(plane)
                spectrum *= t_spectrum
                if total is None:
                    total = spectrum
                else:
                    total += spectrum
            out[:, left : left + cols] = engine.fft.irfft2(total, s=self.fshape)[th - 1 : th - 1 + rows, tw - 1 : tw - 1 + cols]
        return out

    def norm(self, raw, rows: int):  # rows: as numerator takes them (the strip's height is raw's, less th - 1)
        """(the denominator sqrt(sum_xy T'² · spread) of each window, where it is flat): the
        spread's half of the arithmetic, so that the thread of the FFTs has less to do."""
        spread = self.spread(raw)
        flat = spread <= self.flat_level
        xp = self.engine.xp
        xp.maximum(spread, self.flat_level, out=spread)  # no 0 / 0 in flat windows (they score 0)
        spread *= self.t_norm2
        return xp.sqrt(spread, out=spread), flat

    def spread(self, raw):
        """sum_c (sum_xy I_c² - (sum_xy I_c)² / n) of each window: the engine's window_spread, from
        float64 window sums of the pixels as they are."""
        return self.engine.filters.window_spread(self.engine, raw, (self.th, self.tw), out=self.buffers)


@dataclass(frozen=True)
class Peak:
    """One match: the template's top-left corner in the image, and its score."""

    row: int
    col: int
    score: float


def find_peaks(scores: np.ndarray, template_shape: tuple[int, int], *, top: int = 1, threshold: float | None = None,
               size: str = "valid") -> list[Peak]:
    """The best ``top`` matches, best first, separated by non-maximum suppression.

    A peak is the highest score within half the template's height and width of itself (its
    box: rows ±th//2, columns ±tw//2), and no two peaks lie within each other's box; peaks
    below ``threshold`` are dropped. Positions are top-left corners, whichever ``size`` the
    map has.
    """
    if top < 1:
        raise UsageError(f"top must be >= 1, got {top}")
    th, tw = template_shape
    if size == "same":  # only the positions where the template fits hold scores
        scores = scores[th // 2 : th // 2 + scores.shape[0] - th + 1, tw // 2 : tw // 2 + scores.shape[1] - tw + 1]
    half = (th // 2, tw // 2)
    if top == 1:
        candidates = np.array([np.argmax(scores)])
    else:
        import scipy.ndimage as ndi  # here, not at the top: the CLI's start does not pay for scipy (0.2 s)

        local_max = ndi.maximum_filter(scores, size=(2 * half[0] + 1, 2 * half[1] + 1), mode="constant", cval=-np.inf)
        candidates = np.flatnonzero(scores == local_max)
        candidates = candidates[np.argsort(-scores.ravel()[candidates], kind="stable")]
    peaks: list[Peak] = []
    for index in candidates:
        row, col = divmod(int(index), scores.shape[1])
        score = float(scores[row, col])
        if threshold is not None and score < threshold:
            break
        if all(abs(row - p.row) > half[0] or abs(col - p.col) > half[1] for p in peaks):
            peaks.append(Peak(row, col, score))
            if len(peaks) == top:
                break
    return peaks


def peak_record(peak: Peak, template_shape: tuple[int, int]) -> dict:
    th, tw = template_shape
    return {"row": peak.row, "col": peak.col, "centre": [peak.row + th // 2, peak.col + tw // 2],
            "score": round(peak.score, 6)}


@dataclass(frozen=True, eq=False)
class Match:
    """`imfilt match`: the score map of one template over an image, and its best matches."""

    template: np.ndarray  # float32 (th, tw, C), as read
    template_name: str = "template"
    size: str = "valid"
    top: int = 1
    threshold: float | None = None
    gray: bool = False

    def __post_init__(self):
        check_choice("size", self.size, MATCH_SIZES)
        if self.top < 1:
            raise UsageError(f"--top must be >= 1, got {self.top}")
        if self.threshold is not None and not -1 <= self.threshold <= 1:
            raise UsageError(f"--threshold is a score between -1 and 1, got {self.threshold:g}")

    work = "fft"  # what --engine auto weighs
    runner = None  # the whole image at once: a huge one is not streamed

    @property
    def name(self) -> str:
        return "match"

    def explain(self) -> tuple[str, str]:
        return "fft", "float64 FFT correlation; window sums by running sums"

    def peak_bytes(self, shape: tuple[int, int, int]) -> int:
        """Peak memory above Python's: 5 B per image sample, plus 28 B for each sample of the strip
        in flight, (channels + 1) planes of FFT rows x W (fitted to 160 and 360 MB on 2048x2048 RGB
        with 64x64 and 256x256 templates, and 440 MB on 4096x4096 with 64x64)."""
        import functools

        import scipy.fft

        height, width, channels = shape
        fft_rows = block_shape(self.template.shape[0], height, functools.partial(scipy.fft.next_fast_len, real=True))[0]
        return 5 * height * width * channels + 28 * fft_rows * width * (channels + 1)

    def run(self, loaded: Image, engine: Engine) -> Result:
        colour, _ = split_alpha(loaded)  # transparency is not part of what is matched
        template = self.template
        if self.gray:
            colour, template = luminance(colour), luminance(template)
        # a template that does not fit this image is a UsageError: the pipeline fails this input only
        scores = match_template(colour, template, size=self.size, engine=engine)
        shape = template.shape[:2]
        peaks = find_peaks(scores, shape, top=self.top, threshold=self.threshold, size=self.size)
        facts = {"template": self.template_name, "size": self.size, "matches": [peak_record(p, shape) for p in peaks]}
        return Result(scores[..., None], False, "score", facts)
