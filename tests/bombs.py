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


def _graft_tile(path, payload: bytes, compression: int, dtype, side: int = 256) -> str:
    """A side x side grey TIFF of ``dtype`` whose one tile is ``payload``, marked as ``compression``."""
    import tifffile

    tifffile.imwrite(path, np.zeros((side, side), dtype), tile=(side, side), compression="zlib")
    with open(path, "r+b") as f:
        end = f.seek(0, 2)
        f.write(payload)
    with tifffile.TiffFile(path, mode="r+b") as tiff:
        tags = tiff.pages.first.tags
        tags["TileOffsets"].overwrite([end])
        tags["TileByteCounts"].overwrite([len(payload)])
        tags["Compression"].overwrite(compression)
    return str(path)


def xz_zeros(total: int) -> bytes:
    """An xz (LZMA) stream of ``total`` zeros (~75 KB for 512 MiB)."""
    import lzma

    packer, block = lzma.LZMACompressor(), bytes(1 << 20)
    return b"".join([packer.compress(block[: min(1 << 20, total - at)]) for at in range(0, total, 1 << 20)]
                    + [packer.flush()])


def zstd_zeros(total: int) -> bytes:
    """A zstd frame of ``total`` zeros made of RLE blocks (4 bytes each per 128 KiB), no size in its header."""
    blocks, left = [], total
    while left > 0:
        n = min(left, 1 << 17)
        left -= n
        blocks.append(((n << 3) | (1 << 1) | (left == 0)).to_bytes(3, "little") + b"\0")
    return struct.pack("<I", 0xFD2FB528) + b"\x00\x38" + b"".join(blocks)


def tiff_codec_bomb(path, inflated: int, codec: str, *, depth: int = 16) -> str:
    """A 256x256 grey TIFF (8 or 16 bits) whose one PackBits or LZMA tile inflates to ``inflated`` bytes."""
    if codec == "packbits":  # 0x81: the next byte 128 times
        payload, compression = b"\x81\x00" * (inflated // 128), 32773
    else:
        payload, compression = xz_zeros(inflated), 34925
    return _graft_tile(path, payload, compression, np.uint16 if depth == 16 else np.uint8)


def zarr_chunk_bomb(path, inflated: int, codec: str, *, zarr_format: int = 3) -> str:
    """A 64x64 uint8 zarr array (one chunk) whose chunk, compressed with ``codec`` (zstd, gzip,
    blosc, zlib), inflates to ``inflated`` bytes instead of 4096."""
    from pathlib import Path

    import numcodecs
    import zarr

    if zarr_format == 3:
        from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

        compressor = {"zstd": ZstdCodec(), "gzip": GzipCodec(), "blosc": BloscCodec(cname="zstd")}[codec]
    else:
        compressor = {"zstd": numcodecs.Zstd(), "gzip": numcodecs.GZip(), "blosc": numcodecs.Blosc(),
                      "zlib": numcodecs.Zlib()}[codec]
    array = zarr.create_array(path, shape=(64, 64), chunks=(64, 64), dtype="uint8", compressors=compressor,
                              zarr_format=zarr_format)
    array[:] = 1
    if codec == "zstd":
        payload = zstd_zeros(inflated)
    elif codec == "blosc":  # a real one: Blosc's header holds the size
        payload = numcodecs.Blosc(cname="zstd", clevel=9).encode(np.zeros(inflated, np.uint8))
    else:
        stream = zlib_ng.compressobj(9, zlib_ng.DEFLATED, 31 if codec == "gzip" else 15)
        block = bytes(1 << 20)
        payload = b"".join([stream.compress(block) for _ in range(inflated >> 20)] + [stream.flush()])
    chunks = [p for p in Path(path).rglob("*") if p.is_file() and p.name != "zarr.json" and not p.name.startswith(".")]
    assert len(chunks) == 1, chunks
    chunks[0].write_bytes(payload)
    return str(path)
