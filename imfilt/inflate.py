"""Inflating compressed pixels no further than the header says: PNG image data, TIFF tiles, zarr chunks.

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
- TIFF: tifffile without imagecodecs inflates a deflate, LZMA or zstd tile whole, and a PackBits
  one into a Python list (8 bytes a byte: a 512 MiB tile took 4.7 GB), though it passes the
  tile's size; ``bound_tifffile`` gives it decoders that stop there (``inflate_at_most``,
  ``unpack_bits_at_most``, ``unxz_at_most``, ``unzstd_at_most``). imagecodecs' own decoders
  (when it is installed) write into a buffer of that size: they stop there too, or fail.
- zarr chunks: ``decode_chunk`` inflates a chunk's bytes (zstd, gzip, zlib, LZMA, bzip2, Blosc, LZ4)
  no further than ``limit`` bytes, and raises ``TooLarge`` for a chunk that would go past it;
  omezarr.py puts it in front of zarr's codecs.
"""

from __future__ import annotations

import bz2
import lzma
import re
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


def unpack_bits_at_most(data: bytes, /, *, out: int | None = None) -> bytes:
    """A PackBits segment unpacked to at most ``out`` bytes (tifffile's fallback builds a list of ints, whole)."""
    limit = out if isinstance(out, int) else len(data) * 128
    unpacked, i, n = bytearray(), 0, len(data)
    while i < n and len(unpacked) < limit:
        count = data[i]
        if count < 128:  # a literal run of count + 1 bytes
            unpacked += data[i + 1 : i + 2 + count]
            i += 2 + count
        elif count > 128:  # one byte, 257 - count times
            unpacked += data[i + 1 : i + 2] * (257 - count)
            i += 2
        else:  # 128: no operation
            i += 1
    del unpacked[limit:]
    return bytes(unpacked)


def unxz_at_most(data: bytes, /, *, out: int | None = None) -> bytes:
    """An LZMA (xz) segment inflated to at most ``out`` bytes."""
    return lzma.LZMADecompressor().decompress(data, out if isinstance(out, int) else -1)


def unzstd_at_most(data: bytes, /, *, out: int | None = None) -> bytes:
    """A zstd segment inflated to at most ``out`` bytes, with Python's own zstd (3.14)."""
    from compression import zstd  # tifffile's fallback needs it too: without it, an ImportError either way

    return zstd.ZstdDecompressor().decompress(data, out if isinstance(out, int) else -1)


# TIFF compression codes -> the decoder that stops at the size tifffile passes: deflate (three
# codes), PackBits, LZMA, zstd
_TIFF_BOUNDED = {8: inflate_at_most, 32946: inflate_at_most, 50013: inflate_at_most, 32773: unpack_bits_at_most,
                 34925: unxz_at_most, 50000: unzstd_at_most}


def bound_tifffile() -> None:
    """Make tifffile decode deflate, PackBits, LZMA and zstd tiles and strips no further than their
    size (whole and streamed reads).

    Only where tifffile uses its own fallback (no imagecodecs, whose decoders take the size themselves).
    """
    import tifffile

    codecs = getattr(tifffile.TIFF.DECOMPRESSORS, "_codecs", None)
    if not isinstance(codecs, dict):
        return
    for key, bounded in _TIFF_BOUNDED.items():
        try:
            current = tifffile.TIFF.DECOMPRESSORS[key]  # fills tifffile's table
        except KeyError:  # a code this tifffile cannot decode at all: it says so itself
            continue
        if getattr(current, "__module__", "").endswith("_imagecodecs"):
            codecs[key] = bounded


# --- zarr chunks ------------------------------------------------------------------------------


class TooLarge(ValueError):
    """A chunk that inflates past the size its array's metadata gives it."""


def _zstd_content_size(data: bytes) -> int | None:
    """The size a zstd frame's header declares, or None where it declares none."""
    if len(data) < 6 or data[:4] != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = data[4]
    single = (descriptor >> 5) & 1
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
    width = (1 if single else 0, 2, 4, 8)[descriptor >> 6]
    if not width or len(data) < at + width:
        return None
    return int.from_bytes(data[at : at + width], "little") + (256 if width == 2 else 0)


def _streamed(decompressor, data: bytes, limit: int) -> bytes:
    """What a stdlib decompressor object makes of ``data``, ``limit`` bytes at most: TooLarge past it."""
    out = decompressor.decompress(data, limit + 1)
    if len(out) > limit:
        raise TooLarge(f"inflates past the {limit} bytes of its chunk")
    return out


def decode_chunk(codec_id: str, codec, data: bytes, limit: int) -> bytes | None:
    """A compressed zarr chunk inflated to at most ``limit`` bytes, by its codec's id (numcodecs' names:
    zstd, gzip, zlib, lzma, bz2, blosc, lz4) and its numcodecs codec; None for an id this cannot bound.

    zstd, Blosc and LZ4 declare their size in a header, checked first; the rest are inflated a piece at a time.
    """
    data = bytes(data)
    if codec_id == "zstd":
        declared = _zstd_content_size(data)
        if declared is not None and declared > limit:
            raise TooLarge(f"its zstd header says {declared} bytes, past the {limit} bytes of its chunk")
        if declared is not None:
            return codec.decode(data)
        import numpy as np

        try:  # no size in the header: numcodecs stops at the buffer's end, and wants it filled
            return codec.decode(data, out=np.empty(limit, np.uint8)).tobytes()
        except RuntimeError as exc:
            if "too small" in str(exc):
                raise TooLarge(f"inflates past the {limit} bytes of its chunk") from None
            shorter = re.search(r"expected to decompress \d+, got (\d+)", str(exc))
            if not shorter:
                raise
            return codec.decode(data, out=np.empty(int(shorter.group(1)), np.uint8)).tobytes()
    if codec_id in ("blosc", "lz4"):  # numcodecs' LZ4 starts with the size, as a 32-bit integer
        declared = int.from_bytes(data[4:8] if codec_id == "blosc" else data[:4], "little", signed=codec_id == "lz4")
        if declared > limit:
            raise TooLarge(f"its {codec_id} header says {declared} bytes, past the {limit} bytes of its chunk")
        return codec.decode(data)
    if codec_id == "gzip":
        return _streamed(zlib_ng.decompressobj(47), data, limit)  # a gzip or zlib header
    if codec_id == "zlib":
        return _streamed(zlib_ng.decompressobj(), data, limit)
    if codec_id == "lzma":
        return _streamed(lzma.LZMADecompressor(), data, limit)
    if codec_id == "bz2":
        return _streamed(bz2.BZ2Decompressor(), data, limit)
    return None
