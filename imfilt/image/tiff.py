"""TIFF outputs, written as their rows arrive: deflated strips for an image that fits (whole, or in
bands: the same bytes), deflated tiles for one larger than memory (tiles.py's windows).

Strips hold a fixed number of rows, from the image's width (about STRIP_BYTES of samples each),
so a file's bytes depend on its pixels only, not on the bands it came in or the thread count.
Each strip or tile is deflated by ISA-L at level 1, two at a time: an 8000x8000 Sobel map's tiles
at 565 MB/s against zlib-ng level 2's 72, to 0.827 of the raw bytes against 0.830.
"""

from __future__ import annotations

from typing import BinaryIO, Iterable, Iterator

import numpy as np

from ..ahead import in_parallel

BIGTIFF_BYTES = 2**31  # above this a TIFF needs 64-bit offsets (which Pillow cannot read)
STRIP_BYTES = 1 << 20


def rows_per_strip(shape: tuple[int, int, int], dtype) -> int:
    """The rows of each strip of an (H, W, C) image: about STRIP_BYTES of samples, at least one row."""
    return max(1, STRIP_BYTES // (shape[1] * shape[2] * np.dtype(dtype).itemsize))


def write_tiff(target: str | BinaryIO, shape: tuple[int, int, int], dtype, pieces: Iterable[bytes], *,
               alpha: bool, tile: tuple[int, int] | None = None) -> None:
    """A TIFF from the raw bytes of its strips (``strips``) or, with ``tile``, of its tiles in
    row-major order (``tiles``), each deflated here; the last channel is alpha where ``alpha``."""
    import tifffile

    height, width, channels = shape
    layout = {"tile": tile} if tile else {"rowsperstrip": rows_per_strip(shape, dtype)}
    extras = {"extrasamples": ("unassalpha",)} if alpha else {}
    nbytes = height * width * channels * np.dtype(dtype).itemsize
    tifffile.imwrite(target, in_parallel(_deflate, pieces), shape=shape if channels > 1 else shape[:2], dtype=dtype,
                     photometric="minisblack" if channels <= 2 else "rgb", planarconfig="contig",
                     bigtiff=nbytes > BIGTIFF_BYTES, compression="zlib", **layout, **extras)


def strips(bands: Iterable[np.ndarray], shape: tuple[int, int, int], dtype) -> Iterator[bytes]:
    """Bands of whole rows, top to bottom, of any heights -> the raw bytes of each strip."""
    rows = rows_per_strip(shape, dtype)
    stored = np.dtype(dtype).newbyteorder("<")  # as tifffile stores it
    pending = np.empty((0,) + tuple(shape[1:]), dtype=stored)
    for band in bands:
        band = np.concatenate([pending, band]) if len(pending) else band
        whole = len(band) - len(band) % rows
        for top in range(0, whole, rows):
            yield np.ascontiguousarray(band[top : top + rows], dtype=stored).tobytes()
        pending = np.asarray(band[whole:], dtype=stored).copy()
    if len(pending):
        yield pending.tobytes()


def tiles(blocks: Iterable[np.ndarray], tile: tuple[int, int], channels: int, dtype) -> Iterator[bytes]:
    """Blocks that are whole rows of tiles (``tile[0]`` high, any multiple of ``tile[1]`` wide), in
    order -> the raw bytes of each tile, those at the right and bottom edges zero-padded."""
    for block in blocks:
        for left in range(0, block.shape[1], tile[1]):
            piece = np.zeros(tile + (channels,), dtype=dtype)
            part = block[:, left : left + tile[1]]
            piece[: part.shape[0], : part.shape[1]] = part
            yield piece.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes()  # as tifffile stores it


def _deflate(data: bytes) -> bytes:
    from isal import isal_zlib

    # a compressor of its own for each piece: isal_zlib.compress on two threads at once gave bytes
    # that varied from run to run (3 runs in 40 of one case, the same pixels); compressobj's did not (0 in 40)
    compressor = isal_zlib.compressobj(1)
    return compressor.compress(data) + compressor.flush()
