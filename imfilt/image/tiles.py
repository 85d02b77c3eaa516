"""The tile layer for images larger than memory: a lazy source, a sink of tiles, a plan of windows.

- ``open_source(path)`` reads any window of a tiled or striped TIFF/BigTIFF (tifffile's zarr
  view decodes only the tiles or strips it touches), a ``.npy`` (memory-mapped), a zarr array,
  or a PNG or baseline JPEG (decoded top to bottom by libvips, decoded.py), as float32 in the
  same [0, 1] units and layout as ``io.load`` (turned by a TIFF's Orientation tag, as it
  turns them);
  ``Source.window(rows, cols)`` takes index arrays, so halos past the image's edges are read by
  ``extend_index``, numpy.pad's extension of each boundary mode.
- ``write_tiles(path, ...)`` writes blocks that arrive in row-major window order: a tiled
  (Big)TIFF, or one in strips from bands of whole rows (tiff.py), a ``.npy`` through a memory
  map, an OME-Zarr image, or a PNG band by band (png.PngStream); JPEG, WebP and BMP gather
  the bands and encode once; atomically, as every output, or to standard output.
- ``Plan`` cuts an output into windows bounded in both dimensions.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from ..boundary import extend_index
from ..errors import ImfiltError, InputError, shown
from ..files import npy_header, open_regular
from ..inflate import bound_tifffile
from .io import (ORIENTATIONS, atomic_write, check_frames, check_npy_image, depth_of, encode, open_header, orient, replace_beside,
                 tiff_frames, tiff_orientation, write_stdout)
from .omezarr import CHUNK, open_image, write_ome_zarr

# imfilt's boundary modes as numpy.pad names them (the same table as convolve._PAD_MODE)
PAD_MODES = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap", "constant": "constant"}
TILED_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")  # what a tiled job reads and writes
ENCODED_WHOLE = (".jpg", ".jpeg", ".webp", ".bmp")  # sinks that gather the bands and encode once
_MAXVAL = {8: 255.0, 16: 65535.0, 32: 1.0}


# --- index maps ----------------------------------------------------------------------------


def _runs(index: np.ndarray) -> list[tuple[int, int, int]]:
    """(position, source start, length) of each run of consecutive source indices (-1 skipped)."""
    outside = index < 0
    breaks = np.flatnonzero((np.diff(index) != 1) | outside[1:] | outside[:-1]) + 1
    runs = []
    for part, first in zip(np.split(index, breaks), np.concatenate([[0], breaks])):
        if part[0] >= 0:
            runs.append((int(first), int(part[0]), len(part)))
    return runs


# --- sources -------------------------------------------------------------------------------

# a window as read: its (height, width), whether some indices lie outside (-1), and where each
# block of stored values goes
Pieces = tuple[tuple[int, int], bool, list[tuple[slice, slice, np.ndarray]]]


@dataclass
class Source:
    """A lazily read (H, W, C) image: ``array`` is anything sliceable (zarr, memmap).

    ``shape`` and windows are those of the image as shown: the stored ``array`` turned by its
    TIFF ``orientation`` (io.ORIENTATIONS), as io.load turns a whole image.
    """

    name: str
    array: object
    depth: int
    closer: object = None
    orientation: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        shape = tuple(self.array.shape)
        height, width, channels = shape if len(shape) == 3 else shape + (1,)
        return (width, height, channels) if ORIENTATIONS[self.orientation][0] else (height, width, channels)

    @property
    def alpha(self) -> bool:
        return self.shape[2] in (2, 4)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """Stored values of a rectangle inside the image as shown, (h, w, C).

        The rectangle is read from where the orientation stored it, then turned (a view).
        """
        transpose, flip_rows, flip_cols = ORIENTATIONS[self.orientation]
        height, width, _ = self.shape
        if flip_rows:
            rows = slice(height - rows.stop, height - rows.start)
        if flip_cols:
            cols = slice(width - cols.stop, width - cols.start)
        try:
            block = np.asarray(self.array[(cols, rows) if transpose else (rows, cols)])
        except (ImfiltError, MemoryError):
            raise  # already one line (a zarr chunk), or a stop; memory is the runner's to say
        except Exception as exc:  # noqa: BLE001 - decoders raise many kinds on a damaged tile or strip
            raise InputError(f"{shown(self.name)}: truncated or corrupt image ({exc})") from None
        return orient(block if block.ndim == 3 else block[..., None], self.orientation)

    def window(self, rows: np.ndarray, cols: np.ndarray, cval: float = 0.0) -> np.ndarray:
        """Float32 (h, w, C) pixels at row and column indices (from ``extend_index``; -1 = cval).

        In [0, 1] units and interleaved, as ``io.load`` gives them, so filters see the same
        numbers and layout; a run of consecutive indices is one read.
        """
        return self.as_float(self.pieces(rows, cols), cval)

    def pieces(self, rows: np.ndarray, cols: np.ndarray) -> Pieces:
        """The stored values of a window, read (decoded) but not yet converted: a streamed job
        reads the next window on one thread while it converts and filters this one on another."""
        blocks = [(slice(r_at, r_at + r_len), slice(c_at, c_at + c_len),
                   self.read(slice(r_from, r_from + r_len), slice(c_from, c_from + c_len)))
                  for r_at, r_from, r_len in _runs(rows) for c_at, c_from, c_len in _runs(cols)]
        return (len(rows), len(cols)), bool((rows < 0).any() or (cols < 0).any()), blocks

    def as_float(self, pieces: Pieces, cval: float = 0.0) -> np.ndarray:
        """A window's pieces as float32 pixels in [0, 1] units; cval where the indices were -1."""
        (height, width), outside, blocks = pieces
        out = np.empty((height, width, self.shape[2]), dtype=np.float32)
        if outside:
            out[...] = np.float32(cval)
        for at_rows, at_cols, block in blocks:
            with np.errstate(invalid="ignore", over="ignore"):  # non-finite samples are refused below
                np.divide(block, np.float32(_MAXVAL[self.depth]), out=out[at_rows, at_cols], casting="unsafe")
        if self.depth == 32 and not np.isfinite(out).all():  # as io.load refuses them in memory
            raise InputError(f"{shown(self.name)}: has NaN or infinite samples; imfilt filters finite values only")
        return out

    def close(self) -> None:
        if self.closer is not None:
            self.closer.close()

    def in_bands(self, memory: int) -> None:
        """Bands of whole rows will be read top to bottom: read a chunked array (a tiled TIFF, a
        zarr store) in whole rows of chunks, each decoded once, where a few rows of chunks fit a
        quarter of ``memory``. (Each band's halo reaches into the rows of chunks above and below:
        read chunk by chunk, an 8000x8000 TIFF's tiles were each decoded three times.)"""
        chunks = getattr(self.array, "chunks", None)
        if not chunks or ORIENTATIONS[self.orientation][0] or isinstance(self.array, ChunkRows):
            return
        row_bytes = int(np.prod(self.array.shape[1:])) * np.dtype(self.array.dtype).itemsize
        if ChunkRows.KEPT * chunks[0] * row_bytes <= memory // 4:
            self.array = ChunkRows(self.array, chunks[0])


class ChunkRows:
    """A chunked (H, W[, C]) array read in whole rows of chunks; the last few rows of chunks are kept."""

    KEPT = 3  # a band's halo reaches one row of chunks up and one down

    def __init__(self, array, step: int):
        self.array, self.step = array, step
        self.shape, self.dtype = tuple(array.shape), array.dtype
        self.kept: dict[int, np.ndarray] = {}  # first row -> its row of chunks, oldest first

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = key
        start, stop, _ = rows.indices(self.shape[0])
        first = start - start % self.step
        parts = [self._chunk_row(top) for top in range(first, stop, self.step)]
        band = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return band[start - first : stop - first, cols]

    def _chunk_row(self, top: int) -> np.ndarray:
        if top not in self.kept:
            if len(self.kept) >= self.KEPT:
                del self.kept[next(iter(self.kept))]
            self.kept[top] = np.asarray(self.array[top : top + self.step])
        return self.kept[top]


def open_source(path: str, data: bytes | None = None) -> Source:
    """A lazy source for a TIFF, PNG, JPEG, .npy or zarr path; an InputError names what cannot stream.

    ``data``: the bytes of a PNG or JPEG read from standard input (``path`` "-")."""
    if data is not None:
        if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
            from .decoded import open_decoded

            return Source("<stdin>", *open_decoded(data))
        raise InputError("<stdin>: only PNG and JPEG are read in bands from standard input")
    p = Path(path)
    try:
        if p.is_dir():
            return _open_zarr(path)
        with open_regular(path) as f:
            magic = f.read(8)
            if magic[:6] == b"\x93NUMPY":
                return _open_npy(path, f)
        if magic[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            return _open_tiff(path)
        if magic == b"\x89PNG\r\n\x1a\n" or magic[:3] == b"\xff\xd8\xff":
            from .decoded import open_decoded

            return Source(path, *open_decoded(path))
    except FileNotFoundError:
        raise InputError(f"{shown(path)}: no such file") from None
    except PermissionError:
        raise InputError(f"{shown(path)}: permission denied") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{shown(path)}: truncated or corrupt image ({exc})") from None
    raise InputError(f"{shown(path)}: too large for memory, and only TIFF, PNG, JPEG, .npy and zarr images are read in "
                     "tiles; convert it (e.g. vips tiffsave IN OUT.tif --tile --bigtiff) or raise --memory")


def _open_npy(path: str, f) -> Source:
    """Memory-mapped from the open file, after its header is checked as io.load checks it."""
    f.seek(0)
    shape, dtype, fortran = _npy_image_header(path, f)
    array = np.memmap(f, dtype=dtype, mode="r", offset=f.tell(), shape=shape, order="F" if fortran else "C")
    return Source(path, array, 32)  # .npy values are taken as they are, as io.load does


def _npy_image_header(path: str, f) -> tuple[tuple[int, ...], np.dtype, bool]:
    try:
        return npy_header(f, check_npy_image)
    except InputError as exc:
        raise InputError(f"{shown(path)}: {exc}") from None
    except ValueError as exc:
        raise InputError(f"{shown(path)}: truncated or corrupt image ({exc})") from None


def _open_tiff(path: str) -> Source:
    import tifffile
    import zarr

    bound_tifffile()
    try:
        tiff = tifffile.TiffFile(path)
    except tifffile.TiffFileError as exc:
        raise InputError(f"{shown(path)}: truncated or corrupt TIFF ({exc})") from None
    page = tiff.pages.first
    try:
        check_frames(tiff_frames(tiff))  # as io.load refuses them in memory
    except InputError as exc:
        tiff.close()
        raise InputError(f"{shown(path)}: {exc}") from None
    problem = (page.planarconfig != 1 and page.samplesperpixel > 1 and "planar (separate) channels"
               or page.photometric not in (1, 2) and f"photometric {page.photometric.name}"
               or page.bitspersample not in (8, 16, 32) and f"{page.bitspersample}-bit samples")
    if problem:
        tiff.close()
        raise InputError(f"{shown(path)}: a TIFF with {problem} is not read in tiles; convert it to a tiled RGB TIFF")
    store = tiff.series[0].aszarr()
    return Source(path, zarr.open(store, mode="r"), depth_of(page.dtype), tiff, tiff_orientation(page))


def _open_zarr(path: str) -> Source:
    image = open_image(path)  # a plain array or an OME-Zarr image, seen as (H, W, C)
    return Source(path, image, depth_of(image.dtype))


def image_shape(path: str | bytes) -> tuple[int, int, int] | None:
    """(H, W, C) from the header alone: whether a job needs tiles at all.

    None when the format is not known or the header cannot be read (reading the image says
    why); an InputError naming the file when it can never be read as an image: missing, not a
    regular file, a .npy whose header is not an image's, several frames (as io.load and
    open_source refuse them).
    The file is opened once; ``path`` may be the file's bytes (standard input's).
    """
    if isinstance(path, bytes):
        return _header_shape(io.BytesIO(path), "<stdin>")
    if Path(path).is_dir():
        try:
            return _checked(tuple(_open_zarr(path).shape))
        except Exception:  # noqa: BLE001 - not an image: reading it gives the one-line error later
            return None
    with open_regular(path) as f:
        return _header_shape(f, path)


def _header_shape(f, path: str) -> tuple[int, int, int] | None:
    """image_shape of an open file (``path`` names it)."""
    magic = f.read(8)
    if magic[:6] == b"\x93NUMPY":
        f.seek(0)
        return _checked(_npy_image_header(path, f)[0])
    f.seek(0)
    try:
        if magic[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            import tifffile

            with tifffile.TiffFile(f) as tiff:
                page = tiff.pages.first
                frames = tiff_frames(tiff)
                shape = (page.imagelength, page.imagewidth, page.samplesperpixel)
                if ORIENTATIONS[tiff_orientation(page)][0]:  # as shown: turned a quarter
                    shape = (shape[1], shape[0], shape[2])
        else:
            with open_header(f) as image:  # over Pillow's own pixel limit too: --max-pixels decides
                bands = 4 if image.mode == "P" else len(image.getbands())  # a palette is decoded to RGB(A)
                shape = (image.height, image.width, bands)
                frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)  # as io.load counts them
    except Exception:  # noqa: BLE001 - not an image: reading it gives the one-line error later
        return None
    try:
        check_frames(frames)  # as io.load and open_source refuse them
    except InputError as exc:
        raise InputError(f"{shown(path)}: {exc}") from None
    return _checked(shape)


def _checked(shape) -> tuple[int, int, int] | None:
    """An image's (H, W, C), or None for what a damaged header holds (tuples, negative numbers, a rank
    that is not an image's)."""
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        return None
    if len(shape) not in (2, 3) or min(shape) < 0:
        return None
    return shape if len(shape) == 3 else shape + (1,)


# --- sinks ---------------------------------------------------------------------------------


Block = tuple[slice, slice, np.ndarray]  # rows, columns, stored values (h, w, C)


def write_tiles(path: str, shape: tuple[int, int, int], dtype, blocks: Iterator[Block], *,
                tile: tuple[int, int], alpha: bool = False, whole: bool = False, suffix: str | None = None) -> None:
    """Write blocks arriving in row-major window order (each ``tile`` high) to a TIFF, .npy, OME-Zarr, PNG,
    JPEG, WebP or BMP.

    ``whole``: the blocks are bands of whole rows of an image that fits, written to the bytes the
    whole-image writers give (a TIFF in strips, not tiled; zarr chunks of their side, not ``tile``).
    Written next to the target and renamed, as every output: a failure leaves nothing behind.
    ``path`` "-" is standard output, in the format ``suffix`` names: the file is made in memory
    (its encoded bytes only), then written.
    """
    suffix = suffix or Path(path).suffix.lower()
    if suffix in (".png", *ENCODED_WHOLE) and shape[2] > 4:  # io.write_image's line
        raise InputError(f"{shown(path)}: {suffix} holds at most 4 channels, this image has {shape[2]}; write .tif or .npy")
    if suffix == ".npy":
        write = lambda target: _write_npy(target, shape, dtype, blocks)  # noqa: E731
    elif suffix == ".zarr":
        write = lambda target: write_ome_zarr(target, shape, dtype, blocks, (CHUNK, CHUNK) if whole else tile)  # noqa: E731
    elif suffix == ".png":
        write = lambda target: _write_png(target, shape, dtype, blocks)  # noqa: E731
    elif suffix in ENCODED_WHOLE:
        write = lambda target: _write_encoded(target, shape, dtype, blocks, suffix, alpha)  # noqa: E731
    else:
        write = lambda target: _write_tiff(target, shape, dtype, blocks, tile, alpha, whole)  # noqa: E731
    if path == "-":
        buffer = io.BytesIO()
        write(buffer)
        write_stdout(buffer.getbuffer())
    elif suffix in (".npy", ".png", *ENCODED_WHOLE):  # a temporary file beside it, renamed: fewer steps
        atomic_write(path, write)  # than a folder (a batch of small images)
    else:  # a zarr store is a folder; tifffile wants a file's name
        replace_beside(path, write)


def _opened(target: str | BinaryIO):
    """A file to write: ``target`` opened, or as it is when it is one already (standard output's buffer)."""
    return open(target, "wb") if isinstance(target, str) else contextlib.nullcontext(target)


def _write_npy(target: str | BinaryIO, shape, dtype, blocks: Iterator[Block]) -> None:
    """Row by row with plain writes: a memory map's dirty pages would count as our memory."""
    dtype = np.dtype(dtype)
    with _opened(target) as f:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        try:  # the header np.save writes (io.encode's), so streamed and whole .npy files are the same bytes
            np.lib.format.write_array_header_1_0(f, header)
        except ValueError:  # a header over 64 KiB: version 2.0
            np.lib.format.write_array_header_2_0(f, header)
        start, row_bytes = f.tell(), shape[1] * shape[2] * dtype.itemsize
        f.truncate(start + shape[0] * row_bytes)
        for rows, cols, block in blocks:
            block = np.ascontiguousarray(block, dtype=dtype)
            for i, row in enumerate(block):
                f.seek(start + (rows.start + i) * row_bytes + cols.start * shape[2] * dtype.itemsize)
                f.write(row.tobytes())


def _write_png(target: str | BinaryIO, shape, dtype, blocks: Iterator[Block]) -> None:
    """A row of windows is joined into one band and encoded: one band in memory, not the image.

    png.PngStream cuts its deflate blocks where encode_png does: the same bytes as a whole write.
    """
    from .png import PngStream

    with _opened(target) as f:
        # deflate on this thread: each extra thread reserves a malloc arena (64 MB of address
        # space), which broke a 500 MB RLIMIT_AS run
        stream = PngStream(f, shape, dtype, threads=1)
        band, top = None, 0
        for rows, cols, block in blocks:
            if band is None or rows.start != top:
                if band is not None:
                    stream.write(band)
                band, top = np.empty((rows.stop - rows.start,) + tuple(shape[1:]), dtype=dtype), rows.start
            band[:, cols] = block
        stream.write(band)
        stream.close()


def _write_encoded(target: str | BinaryIO, shape, dtype, blocks: Iterator[Block], suffix: str, alpha: bool) -> None:
    """JPEG, WebP and BMP encode the whole image at once: the blocks gather into its stored
    integers (a quarter of float32's bytes), then io.encode writes the whole-image writers' bytes."""
    stored = np.empty(shape, dtype=dtype)
    for rows, cols, block in blocks:
        stored[rows, cols] = block
    with _opened(target) as f:
        encode(stored, suffix, alpha, f)


def _write_tiff(target: str | BinaryIO, shape, dtype, blocks: Iterator[Block], tile: tuple[int, int], alpha: bool,
                strips: bool) -> None:
    from . import tiff

    pixels = (block for _, _, block in blocks)
    if strips:  # blocks are whole rows: the strips of the whole-image writer (io.encode), the same bytes
        tiff.write_tiff(target, shape, dtype, tiff.strips(pixels, shape, dtype), alpha=alpha)
    else:  # blocks are whole rows of tiles cut into windows
        tiff.write_tiff(target, shape, dtype, tiff.tiles(pixels, tile, shape[2], dtype), alpha=alpha, tile=tile)


# --- memory --------------------------------------------------------------------------------


def one_heap_arena() -> None:
    """Make every thread allocate from one glibc heap, so freed windows go back to one pool.

    glibc gives each thread that allocates (zarr's codec pool, the FFT's workers) a heap of its
    own and keeps what is freed there for that thread: at --memory 300M a streamed spectrum of a
    6000x6000 RGB image peaked 130 MB higher with them, at the same CPU time. No-op elsewhere.
    """
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):  # not glibc
        pass


_M_ARENA_MAX = -8  # glibc's malloc.h


# --- plans ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """An output of ``height`` x ``width`` cut into windows of at most ``window`` pixels.

    Windows come in row-major order and rows of windows are ``window[0]`` high, which is also
    the TIFF tile height, so a row of windows is a row of tiles.
    """

    height: int
    width: int
    window: tuple[int, int]

    def windows(self, rows: slice = slice(None), stop: Callable[[], None] | None = None) -> Iterator[tuple[slice, slice]]:
        """The windows whose top row is in ``rows`` (all by default); ``stop()`` is called before
        each (the runner's check of an interrupted run, which raises)."""
        wh, ww = self.window
        for top in range(*slice(rows.start or 0, rows.stop or self.height, wh).indices(self.height)):
            for left in range(0, self.width, ww):
                if stop is not None:
                    stop()  # a window at a time, a task of an interrupted Dask run ends
                yield slice(top, min(top + wh, self.height)), slice(left, min(left + ww, self.width))


def window_for(memory: int, bytes_per_pixel: int, halo: int, width: int, max_tile: int = 256) -> tuple[int, int]:
    """The largest window whose haloed area fits ``memory``: (tile, width) or (tile, a multiple of tile).

    Bands of whole rows where one at least 16 rows high fits: a filter then sees every row whole,
    as in the whole image, so OpenCV's vector loops split each row where they split it there and
    the results are bit-identical; else windows bounded in both dimensions (a row too wide for
    the budget), equal to float32 rounding. The tile (the TIFF's, a multiple of 16) is at most
    ``max_tile``, smaller for small budgets.
    """
    pixels = max(1, memory) // max(1, bytes_per_pixel)
    rows = pixels // (width + 2 * halo) - 2 * halo
    if rows >= 16:
        return min(max_tile, rows - rows % 16), width
    side = max(16, int(pixels**0.5) - 2 * halo)
    tile = min(max_tile, side - side % 16)
    return tile, max(tile, side * side // tile // tile * tile)
