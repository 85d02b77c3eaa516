"""Inflating compressed pixels no further than the header says: PNG image data, TIFF deflate tiles.

A decompression bomb is a small file whose compressed pixels inflate far beyond its header's
size (2 MB of IDAT that inflate to 2 GiB). imfilt reads such a file as its header says: it
inflates at most the bytes the header's size needs, in steps of at most a MiB, and ignores the
rest, without a word (as libpng, libtiff and Pillow do, less libpng's warning). So memory is
bounded by the header, which the pixel limit has checked before.

- 16-bit PNGs: pypng inflates each IDAT chunk whole and yields rows as long as data comes;
  ``bounded_png`` hands it a copy of the file whose image data is cut to the header's size and
  stored (uncompressed) in chunks of a MiB, made as pypng reads it.
- 8-bit PNGs: OpenCV's libpng stops at the header's size but prints 'libpng warning: IDAT: Too
  much image data' to stderr itself; ``png_data_fits`` finds such files first (one inflate pass
  that keeps nothing: ~80 ms for 37 MB of pixels with zlib-ng), and Pillow, which is silent,
  reads them.
- TIFF: tifffile without imagecodecs inflates a deflate tile with zlib.decompress, whole, though
  it passes the tile's size; ``bound_tifffile`` gives it ``inflate_at_most`` instead.
"""

from __future__ import annotations

import struct
from typing import Iterator

from zlib_ng import zlib_ng

STEP = 2**20  # bytes inflated at a time, and the size of a stored chunk handed to pypng
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PLANES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
# Adam7 passes: (first row, row step, first column, column step)
_ADAM7 = ((0, 8, 0, 8), (0, 8, 4, 8), (4, 8, 0, 4), (0, 4, 2, 4), (2, 4, 0, 2), (0, 2, 1, 2), (1, 2, 0, 1))


def png_data_size(data: bytes) -> int | None:
    """The bytes a PNG's image data inflates to by its IHDR (filter bytes included); None if unreadable."""
    if data[:8] != _SIGNATURE or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour not in _PLANES or depth not in (1, 2, 4, 8, 16):
        return None
    bits = _PLANES[colour] * depth

    def size(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w and h else 0

    if not interlace:
        return size(width, height)
    return sum(size(-(-(width - c0) // cs) if width > c0 else 0, -(-(height - r0) // rs) if height > r0 else 0)
               for r0, rs, c0, cs in _ADAM7)


def _chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(kind, start, end) of each whole chunk after the signature, up to IEND."""
    position = len(_SIGNATURE)
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind, end = data[position + 4 : position + 8], position + 12 + length
        if end > len(data):
            return
        yield kind, position, end
        if kind == b"IEND":
            return
        position = end


def _inflated(data: bytes, size: int) -> Iterator[bytes]:
    """The PNG's image data inflated, in pieces of at most STEP, ``size`` bytes at most in all."""
    inflater, left = zlib_ng.decompressobj(), size
    view = memoryview(data)
    for kind, start, end in _chunks(data):
        if kind != b"IDAT":
            continue
        piece = view[start + 8 : end - 4]
        while piece and left > 0 and not inflater.eof:
            out = inflater.decompress(piece, min(left, STEP))
            piece = inflater.unconsumed_tail
            left -= len(out)
            if out:
                yield out
        if left <= 0 or inflater.eof:
            return


def png_data_fits(data: bytes) -> bool:
    """Whether a PNG's image data inflates to no more than its header says (what libpng would warn of)."""
    size = png_data_size(data)
    if size is None:
        return True  # not for this check: the decoder says what is wrong
    return sum(len(piece) for piece in _inflated(data, size + 1)) <= size


class bounded_png:
    """A PNG file for pypng to read: the original's chunks, but its image data inflated at most as far as
    the header says and stored again, uncompressed, in IDAT chunks of at most STEP, made as they are read.

    IDAT checksums are checked here (pypng checks the chunks it is given).
    """

    def __init__(self, data: bytes):
        self._parts = self._emit(data)
        self._buffer = bytearray()

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._buffer) < n) and (part := next(self._parts, None)) is not None:
            self._buffer += part
        n = len(self._buffer) if n < 0 else n
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    @staticmethod
    def _emit(data: bytes) -> Iterator[bytes]:
        yield _SIGNATURE
        size = png_data_size(data)
        stored, done = zlib_ng.compressobj(0), False
        for kind, start, end in _chunks(data):
            if kind != b"IDAT":
                yield data[start:end]
                continue
            if zlib_ng.crc32(memoryview(data)[start + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
                raise ValueError("an IDAT chunk's checksum is wrong")
            if done:
                continue
            for piece in _inflated(data, size or 0):  # every IDAT at once, at the first: one stream
                yield _chunk(b"IDAT", stored.compress(piece))
            yield _chunk(b"IDAT", stored.flush())
            done = True


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib_ng.crc32(kind + body))


def inflate_at_most(data: bytes, /, *, out: int | None = None) -> bytes:
    """A deflate (zlib) segment inflated to at most ``out`` bytes (its size, as tifffile passes it)."""
    inflater = zlib_ng.decompressobj()
    if not isinstance(out, int):
        return inflater.decompress(data) + inflater.flush()
    return inflater.decompress(data, out)


def bound_tifffile() -> None:
    """Make tifffile inflate deflate tiles and strips with ``inflate_at_most`` (whole and streamed reads).

    Only where tifffile uses its own fallback (no imagecodecs, whose decoder takes the size itself).
    """
    import tifffile

    codecs = getattr(tifffile.TIFF.DECOMPRESSORS, "_codecs", None)
    if not isinstance(codecs, dict):
        return
    for key in (8, 32946, 50013):  # the codes tifffile decodes as deflate
        current = tifffile.TIFF.DECOMPRESSORS[key]  # fills tifffile's table
        if getattr(current, "__module__", "").endswith("_imagecodecs"):
            codecs[key] = inflate_at_most
