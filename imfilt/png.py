"""A fast PNG writer: the Up filter in numpy, and deflate split across threads (as pigz does).

Deflate and the checksums are zlib-ng's (the zlib API, with SIMD): at level 1 with Z_RLE it
compressed filtered photo rows 2x faster than zlib to the same size, and its CRC-32 and
Adler-32 took 4 ms on 50 MB against 19 ms.

On a 4096x4096 RGB photo-like image it took 0.27 s against Pillow's 1.24 s (zlib level 1 with
Z_RLE, its fastest setting) at the same size, 29.3 against 29.2 MiB; on a real photo, 4% larger
(benchmarks/bench.py png). It writes 8- and 16-bit grey, grey+alpha, RGB and RGBA.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import numpy as np
from zlib_ng import zlib_ng as zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA
_UP = 2
_MAX_CHUNK = 1 << 30
_BLOCK = 1 << 22  # deflate in blocks of ~4 MB of scanlines: the bytes do not depend on the thread count


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def filtered_rows(stored: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8/uint16 -> the PNG scanlines, each a filter byte then Up-filtered bytes."""
    height, width, channels = stored.shape
    rows = np.ascontiguousarray(stored, dtype=">u2" if stored.dtype == np.uint16 else np.uint8)
    rows = rows.view(np.uint8).reshape(height, -1)
    raw = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = _UP
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # bytewise, modulo 256, as the Up filter is
    return raw


def encode_png(stored: np.ndarray, out: BinaryIO, threads: int = 1, level: int = 1) -> None:
    """Write (H, W, C) uint8 or uint16 values as a PNG; ``threads`` deflate its row blocks.

    Each block is raw deflate ended by a full flush, so the blocks join into one zlib stream.
    """
    height, width, channels = stored.shape
    raw = filtered_rows(stored)
    data = raw.reshape(-1)
    parts = max(1, min(height, round(data.size / _BLOCK)))
    bounds = np.linspace(0, height, parts + 1).astype(int) * raw.shape[1]

    def deflate(i: int) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
        body = compressor.compress(data[bounds[i] : bounds[i + 1]])
        return body + compressor.flush(zlib.Z_FINISH if i == parts - 1 else zlib.Z_FULL_FLUSH)

    if parts == 1 or threads == 1:
        pieces = [deflate(i) for i in range(parts)]
    else:
        with ThreadPoolExecutor(min(threads, parts)) as pool:  # zlib releases the GIL
            pieces = list(pool.map(deflate, range(parts)))
    # the zlib stream: header, the deflated blocks, Adler-32 of the raw bytes
    pieces = [b"\x78\x01", *pieces, struct.pack(">I", zlib.adler32(data))]
    bits = 16 if stored.dtype == np.uint16 else 8
    out.write(SIGNATURE)
    out.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, _COLOUR_TYPE[channels], 0, 0, 0)))
    _write_idat(out, pieces)
    out.write(_chunk(b"IEND", b""))


def _write_idat(out: BinaryIO, pieces: list[bytes]) -> None:
    """The stream as IDAT chunks, written piece by piece: it is never joined into one copy."""
    length = sum(len(piece) for piece in pieces)
    if length > _MAX_CHUNK:  # over a gigabyte: split into chunks of at most _MAX_CHUNK
        stream = b"".join(pieces)
        for start in range(0, len(stream), _MAX_CHUNK):
            out.write(_chunk(b"IDAT", stream[start : start + _MAX_CHUNK]))
        return
    out.write(struct.pack(">I", length) + b"IDAT")
    crc = zlib.crc32(b"IDAT")
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
        out.write(piece)
    out.write(struct.pack(">I", crc))
