"""Spectrum and lowpass of images larger than memory: row FFTs -> scratch on disk -> column FFTs.

rfft2 is a real FFT along each row followed by a complex FFT along each column. Done as bands
of rows, then blocks of columns, through a zarr scratch array, every 1-D transform is the same
call on the same numbers as in memory, so the coefficients are bit-identical to rfft2's; the
inverse applies its 1/(H·W) once at the end, as pocketfft does, and is bit-identical too.
The mask is computed per block, never as a whole (H, W) array. Scratch space (8 bytes a
coefficient, 12 for a spectrum) is checked before anything is written and removed on failure
and on Ctrl-C. On a Dask worker both passes go to the cluster: stripes of whole chunks of rows,
then of columns, each a task that alone writes its chunks; the writing stays in this task.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from .distributed import check_stop, map_on_cluster, on_dask_worker, stripes
from ..engine.engine import get_engine
from ..errors import InputError, shown
from ..ops.frequency import Lowpass, Spectrum
from ..image.io import Loaded, remove_tree, temp_prefix
from ..ops.operations import Result, luminance, split_alpha
from ..image.tiles import Plan, Source, one_heap_arena, open_source, write_tiles
from .tiled import TILE, Progress, progress_part, write_result

# The shares of the work in the progress a run reports: the row pass, the column pass, and
# writing the output the rest. Measured on an 8000x8000 RGB TIFF at --memory 2G, 2 cores: rows
# 28-37%, columns 19-41%, writing 22-45% of 8-16 s for a spectrum and lowpass into .tif and .png.
ROWS_SHARE, COLUMNS_SHARE = 0.35, 0.3

SCRATCH_CHUNK = 512  # scratch chunks are square: rows are written in bands, read back in columns
MIN_CHUNK = 16  # ... smaller for a small --memory (zarr reads and writes whole chunks), down to this


def run_output(source_path: str, output, *, depth: int | None, scale: str, memory: int, engine,
               temp_dir: str | None = None, progress: Progress | None = None) -> dict:
    """The spectrum or lowpass of a source too large for memory into the output's files; facts for --json.

    ``progress(fraction)`` is told as bands, blocks and windows are done.
    """
    one_heap_arena()  # the budget is what the process holds, not what the allocator keeps
    source = open_source(source_path)
    try:
        return run(source, output, depth=depth, scale=scale, memory=memory, engine=engine, temp_dir=temp_dir,
                   progress=progress)
    finally:
        source.close()


def run(source: Source, output, *, depth, scale: str, memory: int, engine, temp_dir: str | None,
        progress: Progress | None = None) -> dict:
    op = output.op
    spectrum = not op.inverse  # a picture of the coefficients (spectrum), or an image again (lowpass)
    height, width, _ = source.shape
    half = width // 2 + 1
    colours = _colours(source.shape, op)
    band, block, chunk = passes(source.shape, op, memory)
    tile = min(TILE, max(16, band - band % 16))
    cluster = on_dask_worker()
    beside = Path(output.path).parent
    folder, needed, free = scratch_space(source.shape, op, output.path, temp_dir, cluster)
    if needed > free:
        raise InputError(f"{shown(source.name)}: {scratch_problem(folder, needed, free, cluster)}")
    hidden = Path(folder) == beside  # as the output's own temporary file is
    scratch_dir = tempfile.mkdtemp(dir=folder, prefix=temp_prefix(Path(output.path).name) + "fft-" if hidden else "imfilt-fft-")
    try:
        coefficients = _scratch(scratch_dir, "coefficients", (colours, height, half), np.complex64, chunk)
        values = _scratch(scratch_dir, "values", coefficients.shape, np.float32, chunk) if spectrum else None
        if cluster:  # the tasks open the source by the path it was opened from
            map_on_cluster(_rows_task, stripes(height, chunk), source_path=source.name, op=op, scratch=scratch_dir,
                           band=band, engine_name=engine.name)
            bounds = map_on_cluster(_columns_task, stripes(half, chunk), op=op, scratch=scratch_dir, block=block,
                                    width=width, engine_name=engine.name)
        else:
            _rows(slice(0, height), source, op, coefficients, band, engine, progress_part(progress, 0, ROWS_SHARE))
            bounds = [_columns(slice(0, half), op, coefficients, values, block, width, engine,
                               progress_part(progress, ROWS_SHARE, COLUMNS_SHARE))]
        writing = progress_part(progress, ROWS_SHARE + COLUMNS_SHARE, 1 - ROWS_SHARE - COLUMNS_SHARE)
        if spectrum:
            # the mirrored half repeats the magnitudes; a phase's are negated, so its bounds take a first pass
            low, high = min(b[0] for b in bounds), max(b[1] for b in bounds)
            return _spectrum(source, op, output.path, values, None if op.phase else (low, high), tile, depth=depth,
                             scale=scale, memory=memory, progress=writing)
        return _lowpass(source, op, output, coefficients, band, tile, engine, depth=depth, scale=scale,
                        progress=writing)
    finally:
        remove_tree(scratch_dir)  # also on failure and Ctrl-C


def _colours(shape, op) -> int:
    """The planes transformed: luminance, or the colour channels (alpha is carried through)."""
    return 1 if op.gray else shape[2] - (shape[2] in (2, 4))


def passes(shape, op, memory: int) -> tuple[int, int, int]:
    """(rows a band, columns a block, the scratch's chunk side) of the two passes in ``memory``."""
    height, width, channels = shape
    # rows are read whole (a row FFT needs them): bands as high as the budget allows
    # ~16 float32 copies of a band (input, planes, coefficients, their host copy, zarr's buffers)
    # and of a column block (coefficients, transformed, values); whole scratch chunks where they fit
    band = min(height, memory // (width * channels * 4 * 16))
    block = min(width // 2 + 1, memory // (height * _colours(shape, op) * 4 * 16))
    # chunks of 256 where bands or blocks are shorter than 512: zarr rewrote chunks in part for
    # bands of 273 rows (6000x6000 RGB at 300M: 25 MB higher peak, 1.3x the CPU time)
    chunk = min(_chunk_side(memory), SCRATCH_CHUNK if min(band, block) >= SCRATCH_CHUNK else SCRATCH_CHUNK // 2)
    return _aligned(band, chunk), _aligned(block, chunk), chunk


def scratch_space(shape, op, output_path: str, temp_dir: str | None, cluster: bool) -> tuple[str, int, int]:
    """(the folder the scratch goes in, the bytes it needs, the bytes free there).

    On a cluster other workers write the scratch too: --temp-dir (which the user then keeps on
    storage every worker reaches), else beside the output, which every worker reaches already.
    """
    folder = temp_dir or str(Path(output_path).parent if cluster else tempfile.gettempdir())
    needed = _colours(shape, op) * shape[0] * (shape[1] // 2 + 1) * (8 if op.inverse else 12)
    return folder, needed, shutil.disk_usage(folder).free


def scratch_problem(folder: str, needed: int, free: int, cluster: bool) -> str:
    where = "--temp-dir" if cluster else "--temp-dir or TMPDIR"  # on a cluster TMPDIR is not used (above)
    return (f"the out-of-core FFT needs {needed / 2**30:.2f} GiB of scratch space in {folder}, which has "
            f"{free / 2**30:.2f} GiB free: set {where}")


def _chunk_side(memory: int) -> int:
    """The scratch's square chunk: 512, or smaller where 16 copies of one would pass the budget."""
    side = SCRATCH_CHUNK
    while side > MIN_CHUNK and 16 * 8 * side * side > memory:
        side //= 2
    return side


def _aligned(size: int, chunk: int) -> int:
    return max(1, size - size % chunk if size >= chunk else size)


def _scratch(folder: str, name: str, shape, dtype, chunk: int):
    import zarr

    chunks = (1, min(shape[1], chunk), min(shape[2], chunk))
    return zarr.create_array(str(Path(folder) / name), shape=shape, dtype=dtype, chunks=chunks, compressors=None,
                             zarr_format=3)


# --- the two passes: here over the whole image, or on a cluster a task over each stripe ----


def _rows(rows: slice, source: Source, op, coefficients, band: int, engine, progress: Progress | None = None) -> None:
    """The row pass over ``rows``: real FFTs of bands of whole rows into the coefficients."""
    height, width, _ = source.shape
    for top in range(rows.start, rows.stop, band):
        check_stop()
        part = slice(top, min(top + band, rows.stop))
        planes = engine.planes(_colour(source, op, part)[0])
        if op.window == "hann":
            taper = np.outer(np.hanning(height)[part], np.hanning(width)).astype(np.float32)
            planes = planes * engine.asarray(taper)
        coefficients[:, part] = engine.to_host(engine.fft.rfft(planes, axis=-1))
        if progress is not None:
            progress((part.stop - rows.start) / (rows.stop - rows.start))


def _columns(cols: slice, op, coefficients, values, block: int, width: int, engine,
             progress: Progress | None = None) -> tuple[float, float]:
    """The column pass over ``cols``, in blocks: the spectrum's values (and their bounds) or, for a
    lowpass, the masked columns transformed back in place."""
    xp = engine.xp
    height = coefficients.shape[1]
    u = (np.arange(height) + height // 2) % height - height // 2  # the FFT's row order, centred
    low, high = np.inf, -np.inf
    for left in range(cols.start, cols.stop, block):
        check_stop()
        part = slice(left, min(left + block, cols.stop))
        transformed = engine.fft.fft(engine.asarray(coefficients[:, :, part]), axis=-2)
        if not op.inverse:
            found = engine.to_host(xp.angle(transformed) if op.phase else xp.log1p(xp.abs(transformed)))
            values[:, :, part] = found
            low, high = min(low, float(found.min())), max(high, float(found.max()))
        else:
            v = (np.arange(part.start, part.stop) + width // 2) % width - width // 2
            transformed *= engine.asarray(op.mask_at(u, v).astype(np.float32))
            coefficients[:, :, part] = engine.to_host(engine.fft.ifft(transformed, axis=-2, norm="forward"))
        if progress is not None:
            progress((part.stop - cols.start) / (cols.stop - cols.start))
    return low, high


def _rows_task(rows: slice, *, source_path: str, op, scratch: str, band: int, engine_name: str) -> None:
    """One Dask task of the row pass: a stripe of whole chunks of rows."""
    import zarr

    source = open_source(source_path)
    try:
        coefficients = zarr.open_array(str(Path(scratch) / "coefficients"), mode="r+")
        _rows(rows, source, op, coefficients, band, get_engine(engine_name, 1))
    finally:
        source.close()


def _columns_task(cols: slice, *, op, scratch: str, block: int, width: int, engine_name: str) -> tuple[float, float]:
    """One Dask task of the column pass: a stripe of whole chunks of columns."""
    import zarr

    coefficients = zarr.open_array(str(Path(scratch) / "coefficients"), mode="r+")
    values = zarr.open_array(str(Path(scratch) / "values"), mode="r+") if not op.inverse else None
    return _columns(cols, op, coefficients, values, block, width, get_engine(engine_name, 1))


def _colour(source: Source, op, rows: slice) -> tuple[np.ndarray, np.ndarray | None]:
    """A band of whole rows, as the operation sees them: colour (or luminance) and alpha."""
    pixels = source.window(np.arange(rows.start, rows.stop), np.arange(source.shape[1]))
    colour, alpha = split_alpha(Loaded(pixels, source.depth, source.alpha))
    return (luminance(colour) if op.gray else colour), alpha


def _spectrum(source, op: Spectrum, path, values, bounds, tile, *, depth, scale, memory, progress=None) -> dict:
    colours, height, half = values.shape
    width = source.shape[1]
    columns = max(tile, memory // (16 * colours * tile) // tile * tile)

    def windows():
        # centred output (i, j) holds F at u = i - H//2, v = j - W//2 (mod H, W); the columns
        # past the half-plane are mirrored: F(u, v) = conj F(-u, -v)
        for rows, cols in Plan(height, width, (tile, columns)).windows(stop=check_stop):
            u = (np.arange(rows.start, rows.stop) - height // 2) % height
            v = (np.arange(cols.start, cols.stop) - width // 2) % width
            out = np.empty((colours, len(u), len(v)), dtype=np.float32)
            direct = v < half
            if direct.any():
                out[:, :, direct] = values.oindex[:, u, v[direct]]
            if not direct.all():
                mirrored = values.oindex[:, (-u) % height, width - v[~direct]]
                out[:, :, ~direct] = -mirrored if op.phase else mirrored
            yield rows, cols, Result(np.moveaxis(out, 0, -1), False, op.auto_scale, {"window": op.window})

    return write_result(path, (height, width), windows, tile, source_depth=source.depth, depth=depth, scale=scale,
                        bounds=bounds, progress=progress)


def _lowpass(source, op: Lowpass, output, coefficients, band, tile, engine, *, depth, scale, progress=None) -> dict:
    colours, height, half = coefficients.shape
    width = source.shape[1]
    kept = _mask_mean(op, height, width, band)
    scale_back = np.float32(1 / np.longdouble(height * width))  # pocketfft's one 1/(H·W), as irfft2 applies it

    def windows():
        for top in range(0, height, tile):
            check_stop()
            rows = slice(top, min(top + tile, height))
            planes = engine.fft.irfft(engine.asarray(coefficients[:, rows]), n=width, axis=-1, norm="forward")
            out = engine.image(planes * scale_back)
            alpha = _colour(source, op, rows)[1] if source.alpha else None
            if alpha is not None:  # alpha is carried through unfiltered
                out = np.concatenate([out, alpha], axis=-1)
            yield rows, slice(0, width), Result(out, alpha is not None, op.auto_scale, op.facts(kept))

    facts = write_result(output.path, (height, width), windows, tile, source_depth=source.depth, depth=depth, scale=scale,
                         progress=progress)
    for name, path in output.extras:  # the mask, centred, as the whole-image path writes it
        _write_mask(op, path, height, width, tile)
    return facts


def _mask_mean(op: Lowpass, height: int, width: int, band: int) -> float:
    v = np.arange(width) - width // 2
    total = sum(float(op.mask_at(np.arange(top, min(top + band, height)) - height // 2, v).sum())
                for top in range(0, height, band))
    return total / (height * width)


def _write_mask(op: Lowpass, path: str, height: int, width: int, tile: int) -> None:
    from ..image.io import fitting_depth, to_storage

    suffix = Path(path).suffix.lower()
    depth = fitting_depth(8, suffix)

    def blocks():
        for rows, cols in Plan(height, width, (tile, width)).windows(stop=check_stop):
            mask = op.mask_at(np.arange(rows.start, rows.stop) - height // 2, np.arange(width) - width // 2)
            pixels = mask.astype(np.float32)[..., None]
            yield rows, cols, pixels if suffix == ".npy" else to_storage(pixels, depth)

    write_tiles(path, (height, width, 1), np.float32 if suffix == ".npy" else np.uint8, blocks(), tile=(tile, tile))
