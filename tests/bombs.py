"""Decompression bombs for the tests: small files whose compressed pixels inflate far beyond what
their headers say (made in pieces, so making one never holds what it inflates to)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from zlib_ng import zlib_ng


def deflated_zeros(total: int, head: bytes = b"") -> bytes:
    """A zlib stream of ``head`` then zeros, ``total`` bytes in all when inflated."""
    packer, left = zlib_ng.compressobj(9), total - len(head)  # ~0.6 s for 256 MiB
    out = [packer.compress(head)]
    block = bytes(1 << 20)
    while left > 0:
        out.append(packer.compress(block[: min(left, len(block))]))
        left -= len(block)
    out.append(packer.flush())
    return b"".join(out)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(path, inflated: int, *, depth: int = 16, side: int = 100, colour: int = 2) -> str:
    """A side x side PNG (colour type 2: RGB) whose one IDAT chunk inflates to ``inflated`` bytes:
    rows of filter 0 and zeros, then zeros on and on."""
    header = struct.pack(">IIBBBBB", side, side, depth, colour, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", deflated_zeros(inflated)) + _chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def tiff_tile_bomb(path, inflated: int, *, tiles: int = 1, side: int = 256) -> str:
    """A 16-bit grey TIFF of ``tiles`` side x side deflate tiles (in a row), each inflating to
    ``inflated`` bytes instead of the side * side * 2 it should."""
    import tifffile

    tifffile.imwrite(path, np.zeros((side, side * tiles), np.uint16), tile=(side, side), compression="zlib")
    bomb = deflated_zeros(inflated)
    with open(path, "r+b") as f:
        end = f.seek(0, 2)
        f.write(bomb)
    with tifffile.TiffFile(path, mode="r+b") as tiff:
        tags = tiff.pages.first.tags
        tags["TileOffsets"].overwrite([end] * tiles)
        tags["TileByteCounts"].overwrite([len(bomb)] * tiles)
    return str(path)


def png_text_bomb(path, inflated: int, kind: bytes = b"zTXt") -> str:
    """A 10x10 8-bit RGB PNG with a compressed text (zTXt, iTXt) or ICC (iCCP) chunk that inflates
    to ``inflated`` bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    head = {b"zTXt": b"Comment\0\0", b"iTXt": b"Comment\0\1\0\0\0", b"iCCP": b"icc\0\0"}[kind]
    with open(path, "wb") as f:
        f.write(data[:33] + _chunk(kind, head + deflated_zeros(inflated)) + data[33:])
    return str(path)
