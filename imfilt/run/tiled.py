"""Running an operation on an image larger than memory, window by window (see tiles.py).

Each output window reads the input it depends on, as the operation says (``window_reads``):
for an apply, the window plus the kernel's reach (the halo), cut at the image's true edges so
that the operation extends the image there exactly as it does whole. Direct and separable results are bit-identical to the whole-image result (FFT
within float32 rounding): with scipy.ndimage's filters for any window, with OpenCV's (whose
vector loops round by position in a row) for windows of whole rows, which tiles.window_for
chooses whenever a band at least 16 rows high fits the budget. ``wrap`` reaches across the
image, so its halo is read by index mapping instead (boundary.extend_index). (Mapping
``constant`` the same way would not be exact: scipy's cval is a double, and premultiplied alpha
and --gray would see the cval before filtering rather than after.)
"""

from __future__ import annotations

import itertools
import re
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..ahead import Ahead, fan_out
from .distributed import check_stop, map_on_cluster, on_dask_worker, stripes
from ..errors import InputError, UsageError, shown
from ..image.io import SCALERS, Loaded, check_depth, fitting_depth, remove_tree, temp_prefix, to_storage
from ..ops.operations import Result
from ..image.tiles import Plan, Source, one_heap_arena, open_source, window_for, write_tiles

DEFAULT_MEMORY = "2G"
# Working memory of the whole-image path, in float32 copies of the image: a 4096x4096 RGB photo
# (201 MB of float32) peaked at 0.65-1.1 GB (docs/large-images.md), so ~6 copies at the most.
WHOLE_IMAGE_COPIES = 6
# ... and of one window (input, premultiplied copy, one response per kernel part, FFT padding).
WINDOW_COPIES = 12
TILE = 256  # TIFF tile side for outputs (a multiple of 16, as TIFF wants)
STREAMED_OUTPUTS = (".tif", ".tiff", ".npy", ".zarr", ".png")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """'600M', '2G', '1.5g', '4096' -> bytes; --memory's syntax."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)i?[bB]?\s*", text)
    if not match or float(match[1]) <= 0:
        raise UsageError(f"--memory {text!r}: give a size such as 600M or 2G")
    return int(float(match[1]) * _UNITS[match[2].upper()])


# The budget of an image that fits but is streamed in bands all the same (planning.banded_memory): bands of
# 128 rows of a 4096-wide RGB image. Each band also filters its kernel's halo, 8 rows above and 8
# below for a gaussian σ=2: against 64-row bands, a 4096² gaussian took 0.79 s for 0.84-0.87 s
# and a 31x31 kernel 1.1 s for 2.8 s, at 140-165 MB peak for 120-130 (docs/performance.md)
BANDED_MEMORY = 128 * 2**20

# A runner's progress: called with the fraction of its output done so far (0 to 1, never
# decreasing); the caller (batch.py's bar) decides what to show. None: nobody asks.
Progress = Callable[[float], None]


def progress_part(progress: Progress | None, start: float, size: float) -> Progress | None:
    """The progress of one part of the work, ``start`` to ``start + size`` of the whole."""
    if progress is None:
        return None
    return lambda fraction: progress(start + size * min(1.0, fraction))


def needs_tiles(shape: tuple[int, int, int] | None, memory: int) -> bool:
    """Whether processing the image whole would pass the memory budget."""
    return shape is not None and shape[0] * shape[1] * shape[2] * 4 * WHOLE_IMAGE_COPIES > memory


def check_tiled_output(source: str, output) -> None:
    """An output that a tiled job cannot write: that input fails before any pixel is read.

    (Per input, not for the whole run: a damaged header may claim a huge size.)
    """
    for path in (output.path, *(p for _, p in output.extras)):
        suffix = Path(path).suffix.lower()
        if path == "-" or suffix not in STREAMED_OUTPUTS:
            what = "standard output" if path == "-" else f"{suffix} output"
            raise InputError(f"{shown(source)}: too large for memory (see --memory), and images are streamed only into "
                             f"{', '.join(STREAMED_OUTPUTS)} files: not {what}")


# --- windows of an apply -------------------------------------------------------------------


def apply_window(op, shape: tuple[int, int, int], memory: int, rows: int = TILE) -> tuple[int, int]:
    """The output window a streamed operation (``runner = "windows"``) of an (H, W, C) image takes
    in ``memory``: bands of at most ``rows`` rows (a multiple of 16)."""
    width = op.output_shape(*shape[:2])[1]
    return window_for(memory, 4 * (shape[2] + 1) * WINDOW_COPIES, op.reach, width, rows)


def shared_window(ops: list, shape: tuple[int, int, int], memory: int, rows: int = TILE) -> tuple[int, int] | None:
    """The one window of apply outputs of an image, which then share one decode, each taking its
    share of ``memory``: a band of whole rows, the lowest of theirs. None where several cannot
    share (another runner, another output size, or a band too high for one of them: windows
    bounded in both dimensions would give up the whole-row results' bit-identity for all of
    them). A kernel that does not fit the image raises UsageError, as output_shape does."""
    if any(op.runner != "windows" for op in ops) or len({op.output_shape(*shape[:2]) for op in ops}) > 1:
        return None
    windows = [apply_window(op, shape, memory // len(ops), rows) for op in ops]
    width = ops[0].output_shape(*shape[:2])[1]
    if len(ops) > 1 and any(w[1] < width for w in windows):
        return None
    return min(w[0] for w in windows), windows[0][1]


def banded_window(ops: list, shape: tuple[int, int, int], memory: int, one_band: bool) -> tuple[int, int] | None:
    """shared_window of the apply outputs of an image that fits: bands of at most TILE rows within
    ``memory``; with ``one_band`` (an image below a megapixel) the whole result in one band, the
    budget raised to hold it (no more than the whole-image path took): nothing to overlap, and an
    FFT method then gives the whole image's bits (in two bands a 1024x768 photo's differed)."""
    if not one_band or any(op.runner != "windows" for op in ops):
        return shared_window(ops, shape, memory)
    height, width = ops[0].output_shape(*shape[:2])
    rows = -(-height // 16) * 16  # a multiple of 16, as TIFF tiles want
    reach = max(op.reach for op in ops)
    one = len(ops) * 4 * (shape[2] + 1) * WINDOW_COPIES * (rows + 2 * reach) * (width + 2 * reach)  # apply_window's
    return shared_window(ops, shape, max(memory, one), rows)


def shared_windows(ops: list, source: Source, engines: list, window: tuple[int, int], stripe: slice = slice(None),
                   overlap: bool = True) -> Iterator[tuple[slice, slice, list[Result]]]:
    """(rows, columns, a result per operation) for each output window in row-major order (in
    ``stripe``'s rows); the operations have one output shape.

    Each operation says what a window reads (``window_reads``), what runs on it
    (``for_windows``), and its constant's value (``cval``). The input of a window is read
    (decoded) and converted once, for the operation that reaches furthest; the others see the
    part of it they read (one Loaded for those that read the same part, as a bank's maps do:
    they share its planes), or read their own where it is not a part of it. ``overlap``: read
    the next window on a thread meanwhile.
    """
    height, width, _ = source.shape
    window_ops = [op.for_windows() for op in ops]
    widest = max(range(len(ops)), key=lambda k: ops[k].reach)

    def reads():
        for rows, cols in Plan(*ops[0].output_shape(height, width), window).windows(stripe, stop=check_stop):
            spans = [(op.window_reads(rows.start, rows.stop, height, 0), op.window_reads(cols.start, cols.stop, width, 1))
                     for op in ops]
            (row_index, _), (col_index, _) = spans[widest]
            parts = []
            for op, ((rows_k, keep_rows), (cols_k, keep_cols)) in zip(ops, spans):
                at = (_within(rows_k, row_index), _within(cols_k, col_index)) if op.cval == ops[widest].cval else (None,)
                own = None if None not in at else source.pieces(rows_k, cols_k)
                parts.append((keep_rows, keep_cols, at, own))
            yield rows, cols, source.pieces(row_index, col_index), parts

    # the next window is read (decoded) on a thread while this one is filtered
    with Ahead(reads()) if overlap else closing(reads()) as read:
        for rows, cols, pieces, parts in read:
            pixels = source.as_float(pieces, cval=ops[widest].cval)
            loaded: dict[tuple, Loaded] = {}
            results = []
            for op, window_op, engine, (keep_rows, keep_cols, at, own) in zip(ops, window_ops, engines, parts):
                if own is not None:
                    image = Loaded(source.as_float(own, cval=op.cval), source.depth, source.alpha)
                else:
                    key = (at[0].start, at[0].stop, at[1].start, at[1].stop)
                    image = loaded.setdefault(key, Loaded(pixels[at], source.depth, source.alpha))
                result = window_op.run(image, engine)
                results.append(replace(result, pixels=result.pixels[keep_rows, keep_cols]))
            yield rows, cols, results


def _within(inner: np.ndarray, outer: np.ndarray) -> slice | None:
    """Where the indices ``inner`` are a run of consecutive entries of ``outer``, if they are."""
    for at in np.flatnonzero(outer == inner[0]):
        if np.array_equal(outer[at : at + len(inner)], inner):
            return slice(int(at), int(at) + len(inner))
    return None


def apply_windows(op, source: Source, engine, window: tuple[int, int],
                  stripe: slice = slice(None)) -> Iterator[tuple[slice, slice, Result]]:
    """(rows, columns, result) for each output window of one operation (shared_windows)."""
    with closing(shared_windows([op], source, [engine], window, stripe)) as windows:
        for rows, cols, (result,) in windows:
            yield rows, cols, result


# --- whole tiled outputs -------------------------------------------------------------------


def run_output(source_path: str, output, *, depth: int | None, scale: str, memory: int, engine,
               temp_dir: str | None = None, progress: Progress | None = None, split: bool = False) -> dict:
    """Filter a source too large for memory into the output's files, window by window; facts for --json.

    An apply; spectrum and lowpass go through tiled_fft.run_output (which builds on this module).
    ``progress(fraction)`` is told as windows are written.
    """
    if not on_dask_worker():
        return run_outputs(source_path, [output], depth=depth, scale=scale, memory=memory, engines=[engine],
                           progress=progress, split=split)[0]
    one_heap_arena()
    source = open_source(source_path)
    try:
        op = output.op
        shape = op.output_shape(*source.shape[:2])
        window = apply_window(op, source.shape, memory)
        scratch = _on_dask(source_path, op, output.path, shape, window, engine)
        try:
            facts = write_result(output.path, shape, lambda: _read_back(scratch, shape, window), window[0],
                                 source_depth=source.depth, depth=depth, scale=scale, progress=progress, split=split)
            return {**facts, "window": list(window)}
        finally:
            remove_tree(scratch[0])
    finally:
        source.close()


def run_outputs(source_path: str, outputs: list, *, depth: int | None, scale: str, memory: int, engines: list,
                progress: Progress | None = None, whole: bool = False, stdout_suffix: str = ".png",
                data: bytes | None = None, split: bool = False, source: Callable[[], Source] | None = None,
                one_band: bool = False) -> list[dict]:
    """Apply outputs of one source with one output shape (shared_window), streamed window by
    window from one decode, each into its files; facts for --json, one per output. ``whole``: an
    image that fits, whose files are then the whole-image writers' bytes (write_tiles). Standard
    output ("-") is written in the format ``stdout_suffix`` names; ``data`` is standard input's
    image (``source_path`` "-"). ``source()``, where given, opens the image instead of open_source
    (one decoded whole). ``one_band``: an image below a megapixel, in one band (banded_window),
    read, filtered and written on this thread (a batch of them runs its jobs on the cores side by side)."""
    one_heap_arena()  # the budget is what the process holds, not what the allocator keeps
    source = source() if source else open_source(source_path, data)
    try:
        ops = [output.op for output in outputs]
        window = banded_window(ops, source.shape, memory, one_band)
        shape = ops[0].output_shape(*source.shape[:2])
        rows = window[1] == shape[1]  # bands of whole output rows (--size valid or full: not the input's width)
        if rows:
            source.in_bands(memory)
        facts = write_results([o.path for o in outputs], shape,
                              lambda: shared_windows(ops, source, engines, window, overlap=not one_band), window[0], source_depth=source.depth, depth=depth, scale=scale, progress=progress,
                              whole=whole and rows, stdout_suffix=stdout_suffix, split=split, overlap=not one_band)
        return [{**f, "window": list(window)} for f in facts]
    finally:
        source.close()


def read_whole(source_path: str, data: bytes | None = None) -> Loaded:
    """An image that fits, read through its source in bands of whole rows into one float32
    array: io.load's values, without a whole decoded copy to convert."""
    source = open_source(source_path, data)
    try:
        source.in_bands(BANDED_MEMORY)
        height, width, _ = source.shape
        return Loaded(source.window(np.arange(height), np.arange(width)), source.depth, source.alpha)
    finally:
        source.close()


# --- the windows of one image on a Dask cluster -------------------------------------------


def _on_dask(source_path: str, op, path: str, shape, window, engine) -> tuple[Path, Result] | None:
    """On a Dask worker: stripes of windows go to the cluster and write float32 results into a
    zarr scratch beside the output, each task whole chunks (so no two write one chunk).

    (the scratch, the first window's result) when on Dask, else None.
    """
    if not on_dask_worker():
        return None
    import zarr

    source = open_source(source_path)
    try:
        _, _, first = next(apply_windows(op, source, engine, window))
    finally:
        source.close()
    channels = first.pixels.shape[2]
    scratch = Path(path).parent / (temp_prefix(Path(path).name) + "dask.zarr")
    zarr.create_array(str(scratch), shape=(*shape, channels), dtype=np.float32, chunks=(window[0], window[0], channels),
                      compressors=None, zarr_format=3, overwrite=True)
    try:
        map_on_cluster(_stripe, stripes(shape[0], window[0]), source_path=source_path, op=op, window=window,
                       scratch=str(scratch))
    except BaseException:
        remove_tree(scratch)
        raise
    return scratch, first


def _read_back(scratch: tuple[Path, Result], shape, window) -> Iterator[tuple[slice, slice, Result]]:
    import zarr

    folder, first = scratch
    array = zarr.open_array(str(folder), mode="r")
    for rows, cols in Plan(*shape, window).windows(stop=check_stop):
        yield rows, cols, replace(first, pixels=array[rows, cols])


def _stripe(stripe: slice, *, source_path: str, op, window, scratch: str) -> None:
    """One Dask task: the windows of a stripe of rows, written to the scratch (whole chunks)."""
    import zarr

    from ..engine.engine import get_engine

    array = zarr.open_array(scratch, mode="r+")
    source = open_source(source_path)
    try:
        for rows, cols, result in apply_windows(op, source, get_engine("cpu", 1), window, stripe):
            array[rows, cols] = result.pixels
    finally:
        source.close()


def write_result(path: str, shape, make_windows, tile: int, *, source_depth: int, depth: int | None, scale: str,
                 bounds: tuple[float, float] | None = None, progress: Progress | None = None, split: bool = False) -> dict:
    """write_results for one output: ``make_windows()`` yields (rows, cols, Result)."""

    def windows():
        with closing(make_windows()) as each:
            for rows, cols, result in each:
                yield rows, cols, [result]

    return write_results([path], shape, windows, tile, source_depth=source_depth, depth=depth, scale=scale,
                         bounds=bounds, progress=progress, split=split)[0]


def write_whole(path: str, result: Result, *, source_depth: int, depth: int | None, scale: str,
                stdout_suffix: str = ".png", split: bool = False) -> None:
    """A result computed whole into its files, through the sinks of a streamed one: bands of
    about BAND_BYTES of float32 each scaled and encoded as the one before is written (no stored
    copy of the whole image), to the whole-image writers' bytes."""
    pixels = result.pixels if result.pixels.ndim == 3 else result.pixels[..., None]
    height, width, channels = pixels.shape
    suffix = stdout_suffix if path == "-" else Path(path).suffix.lower()
    if suffix != ".npy":  # .npy holds the floats whatever the depth
        check_depth(path, suffix, depth)
    rows = max(1, BAND_BYTES // (width * channels * 4))

    def bands():
        for top in range(0, height, rows):
            yield slice(top, min(top + rows, height)), slice(0, width), [replace(result, pixels=pixels[top : top + rows])]

    write_results([path], (height, width), bands, rows, source_depth=source_depth, depth=depth, scale=scale,
                  whole=True, stdout_suffix=stdout_suffix, overlap=height > rows, split=split)


BAND_BYTES = 16 * 2**20


def write_results(paths: list[str], shape, make_windows, tile: int, *, source_depth: int, depth: int | None,
                  scale: str, bounds: tuple[float, float] | None = None, progress: Progress | None = None,
                  whole: bool = False, stdout_suffix: str = ".png", overlap: bool = True, split: bool = False) -> list[dict]:
    """Write the windows that ``make_windows()`` yields (rows, cols, a Result per path), each
    output as ``write_image`` would; facts for --json, one per path. ``whole``: the windows are
    bands of whole rows of an image that fits, and the files are the whole-image writers' bytes.
    ``split`` (--split-channels): the ``{channel}`` in each path makes a grey file per colour channel (Sink).

    ``--scale stretch`` (and the spectrum's peak) need the minimum and maximum of each file's
    values: ``bounds`` when known, else a first pass over the windows finds them.
    ``progress(fraction)`` is told the share of the output's pixels done, over both passes.
    ``overlap``: windows are filtered on a thread while the ones before are encoded (one window: no gain).
    """
    area = shape[0] * shape[1]
    windows = make_windows()
    try:  # closed whatever happens (finally): its reading thread ends there
        rows, cols, firsts = next(windows)  # what each result is (channels, alpha, auto scale) before writing
        sinks = [sink for k, (path, first) in enumerate(zip(paths, firsts))
                 for sink in Sink.of(path, k, first, source_depth, depth, scale, stdout_suffix, split)]
        found, writing = [bounds] * len(sinks), progress
        if any(sink.stretched for sink in sinks) and bounds is None:  # two passes over the windows, each half of the work
            # the first windows' reader stops first: it would read ahead from the source the
            # other pass reads (a PNG's rows decode in order: "out of order read" 1 run in 3)
            windows.close()
            with closing(make_windows()) as again:
                found = _colour_bounds(_counted(again, area, progress_part(progress, 0, 0.5)), sinks)
            writing = progress_part(progress, 0.5, 0.5)
            windows = make_windows()
            rows, cols, firsts = next(windows)
        counted = _counted(windows, area, writing, done=_area(rows, cols))

        def blocks():
            for r, c, results in itertools.chain([(rows, cols, firsts)], counted):
                yield [(r, c, sink.stored(results[sink.result], limits)) for sink, limits in zip(sinks, found)]

        def writer(sink: Sink):
            return lambda parts: write_tiles(sink.path, (shape[0], shape[1], sink.channels), sink.dtype, parts,
                                             tile=(tile, tile), alpha=sink.alpha, whole=whole, suffix=sink.suffix)

        with Ahead(blocks()) if overlap else closing(blocks()) as ready:
            fan_out(ready, [writer(sink) for sink in sinks])
    finally:
        windows.close()
    return [{**first.facts, "shape": [shape[0], shape[1], first.pixels.shape[2]], "tiled": True} for first in firsts]


@dataclass(frozen=True)
class Sink:
    """One file of an output: its values (all of a result's, or one colour channel's) as its format stores them."""

    path: str
    result: int  # which of the window's results it takes
    channel: int | None  # None: every channel; else that colour channel, grey (--split-channels)
    suffix: str
    depth: int
    scale: str
    channels: int
    alpha: bool

    @classmethod
    def of(cls, path: str, k: int, first: Result, source_depth: int, depth: int | None, scale: str,
           stdout_suffix: str, split: bool) -> list[Sink]:
        """The files of output ``k``; ``split``: its path's ``{channel}`` is r, g, b (y for grey), alpha dropped."""
        suffix = stdout_suffix if path == "-" else Path(path).suffix.lower()
        depth = depth or fitting_depth(source_depth, suffix)
        scale = first.auto_scale if scale == "auto" else scale
        if not split:  # a {channel} in a name without --split-channels is a name like any other
            return [cls(path, k, None, suffix, depth, scale, first.pixels.shape[2], first.alpha)]
        names = channel_names(first.pixels.shape[2] - first.alpha)
        return [cls(path.replace("{channel}", name), k, i, suffix, depth, scale, 1, False) for i, name in enumerate(names)]

    @property
    def stretched(self) -> bool:
        return self.scale in ("stretch", "peak") and self.depth != 32 and self.suffix != ".npy"

    @property
    def dtype(self):
        return np.float32 if self.suffix == ".npy" or self.depth == 32 else np.uint8 if self.depth == 8 else np.uint16

    def pixels(self, result: Result) -> np.ndarray:
        return result.pixels if self.channel is None else result.pixels[..., self.channel : self.channel + 1]

    def colour(self, result: Result) -> np.ndarray:
        return self.pixels(result)[..., :-1] if self.alpha else self.pixels(result)

    def stored(self, result: Result, bounds: tuple[float, float] | None) -> np.ndarray:
        if self.suffix == ".npy":  # .npy holds the float32 values themselves, as write_image
            return self.pixels(result)
        if not self.stretched:
            return to_storage(self.pixels(result), self.depth, self.scale, self.alpha)
        pixels = self.pixels(result).copy()
        colour = pixels[..., :-1] if self.alpha else pixels
        # io's map for the whole image, from the minimum and maximum that the first pass found
        colour[...] = SCALERS[self.scale](np.array(bounds, dtype=np.float32))(colour)
        return to_storage(pixels, self.depth, "clip", self.alpha)


def channel_names(count: int) -> list[str]:
    """--split-channels file names: r, g, b; y for grey; c0, c1, ... otherwise."""
    return {1: ["y"], 3: list("rgb")}.get(count) or [f"c{i}" for i in range(count)]


def _counted(windows: Iterator, area: int, progress: Progress | None, done: int = 0) -> Iterator:
    """The windows as they are, telling ``progress`` the share of ``area`` computed (``done`` and
    the windows' own) as each comes. (A TIFF writer stops at its last tile and never asks past it.)"""
    if progress is None:
        yield from windows
        return
    for rows, cols, result in windows:
        done += _area(rows, cols)
        progress(done / area)
        yield rows, cols, result


def _area(rows: slice, cols: slice) -> int:
    return (rows.stop - rows.start) * (cols.stop - cols.start)


def _colour_bounds(windows, sinks: list[Sink]) -> list[tuple[float, float]]:
    """--scale stretch: the first pass finds each file's minimum and maximum over the whole image."""
    low, high = [np.inf] * len(sinks), [-np.inf] * len(sinks)
    for _, _, results in windows:
        for k, sink in enumerate(sinks):
            colour = sink.colour(results[sink.result])
            low[k], high[k] = min(low[k], float(colour.min())), max(high[k], float(colour.max()))
    return list(zip(low, high))
