"""Zarr stores as images: which folders are one, reading one as (H, W, C), writing OME-Zarr.

A store is one image, never a folder of images: a plain (H, W) or (H, W, C) array (zarr v2 or
v3), or an OME-Zarr image group (NGFF 0.4 on zarr v2, 0.5 on zarr v3) whose first dataset is
the full resolution and whose axes say where y, x and c are (t and z only with size 1).
imfilt writes OME-Zarr 0.5: a zarr v3 group holding one dataset "0" with axes (c, y, x), as
NGFF puts the channel before space. zarr itself is imported only when a store is opened.

A store's chunks are inflated no further than their size (plus an eighth and 4 KiB: a
compressed stream may be a little larger than what it holds): the array imfilt opens decodes
zstd, gzip, zlib, LZMA, bzip2, Blosc and LZ4 chunks with ``inflate.decode_chunk`` (``bounded``). A
chunk that would inflate past that is refused in one line, as a chunk of any other compressor
(Brotli, ...), which imfilt cannot stop early.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import InputError, shown
from ..inflate import TooLarge, decode_chunk

STORE_FILES = ("zarr.json", ".zarray", ".zgroup")  # zarr v3's metadata, and v2's
CHUNK = 256  # chunk side of a whole image written as zarr (the tiled path passes its tile)
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def is_store(path) -> bool:
    """Whether a path is a zarr store (a folder with zarr metadata at its top)."""
    return any((Path(path) / name).is_file() for name in STORE_FILES)


class StoredImage:
    """A zarr array seen as (H, W, C): ``image[rows, cols]`` reads that rectangle, whatever the
    stored axis order (t and z of size 1 are indexed away)."""

    def __init__(self, name: str, array, axes: tuple[str, ...]):
        self.name, self.array, self.axes = name, array, axes
        size = dict(zip(axes, array.shape))
        self.shape = (size["y"], size["x"], size.get("c", 1))
        self.dtype = np.dtype(array.dtype)
        kept = [a for a in axes if a in ("y", "x", "c")]
        self._order = [kept.index(a) for a in ("y", "x", "c") if a in kept]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        where = {"y": key[0], "x": key[1], "c": slice(None)}
        try:
            block = self.array[tuple(where.get(a, 0) for a in self.axes)]
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - codecs raise many kinds on a damaged chunk
            raise InputError(f"{shown(self.name)}: truncated or corrupt zarr chunk ({exc})") from None
        block = np.transpose(block, self._order)
        return block if block.ndim == 3 else block[..., None]


def open_image(path: str) -> StoredImage:
    """The image in a zarr store; an InputError names the store and what is wrong."""
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except FileNotFoundError:
        raise InputError(f"{shown(path)}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - zarr raises several kinds on damaged metadata
        raise InputError(f"{shown(path)}: not a zarr store, or a corrupt one ({exc})") from None
    if isinstance(node, zarr.Group):
        array, axes = _first_dataset(path, node)
    elif node.ndim in (2, 3):  # a plain array: (H, W, C), unless it names its dimensions (as an OME dataset does)
        names = tuple(str(n).lower() for n in (getattr(node.metadata, "dimension_names", None) or ()))
        array, axes = node, names if sorted(names) in (["x", "y"], ["c", "x", "y"]) else ("y", "x", "c")[: node.ndim]
    else:
        raise InputError(f"{shown(path)}: a zarr image must be (H, W) or (H, W, C) or OME-Zarr, "
                         f"got an array of shape {node.shape}")
    bounded(array)
    dtype = np.dtype(array.dtype)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{shown(path)}: a zarr image must hold real numbers, not {dtype}")
    if 0 in array.shape:
        raise InputError(f"{shown(path)}: a zarr image must hold pixels, got shape {array.shape}")
    for axis, what in (("t", "time points"), ("z", "z planes")):
        if axis in axes and array.shape[axes.index(axis)] > 1:
            count = array.shape[axes.index(axis)]
            raise InputError(f"{shown(path)}: has {count} {what}; imfilt filters 2-D images: take one plane out first")
    return StoredImage(path, array, axes)


def _first_dataset(path: str, group) -> tuple[object, tuple[str, ...]]:
    """An OME-Zarr group's full-resolution array and its axis names (NGFF 0.5 keeps them under "ome")."""
    attributes = group.attrs.asdict()
    multiscales = attributes.get("ome", {}).get("multiscales") or attributes.get("multiscales")
    if not multiscales:
        raise InputError(f"{shown(path)}: a zarr group without OME-Zarr multiscales is not an image: give the image's "
                         "group or array")
    try:
        first = multiscales[0]
        axes = tuple(str(a["name"] if isinstance(a, dict) else a).lower() for a in first["axes"])
        array = group[first["datasets"][0]["path"]]
    except Exception as exc:  # noqa: BLE001 - malformed metadata: missing keys, wrong types, no such array
        raise InputError(f"{shown(path)}: malformed OME-Zarr multiscales ({type(exc).__name__}: {exc})") from None
    unknown = sorted(set(axes) - set(_AXIS_TYPES))
    if unknown or len(set(axes)) != len(axes) or not {"y", "x"} <= set(axes) or len(axes) != array.ndim:
        raise InputError(f"{shown(path)}: OME-Zarr axes {','.join(axes)} for an array of shape {array.shape}: "
                         "imfilt reads y and x, with c, t and z")
    return array, axes


# --- chunks inflated within their size ---------------------------------------------------------

_SHARDING: dict[type, type] = {}  # zarr's sharding codec -> its subclass whose inner codecs are bounded


def chunk_limit(spec) -> int:
    """The most a chunk of ``spec`` (zarr's ArraySpec) may inflate to: its bytes, an eighth and 4 KiB more."""
    size = int(np.prod(spec.shape, dtype=object)) * np.dtype(spec.dtype.to_native_dtype()).itemsize
    return size + size // 8 + 4096


def _inflated(codec_id: str, numcodec, data, limit: int) -> bytes:
    out = decode_chunk(codec_id, numcodec, data, limit)
    if out is None:
        raise TooLarge(f"compressed with {codec_id}, which imfilt cannot stop at the chunk's size; recompress "
                       "the store with zstd, gzip or blosc")
    return out


def _which(codec) -> tuple[str, object] | None:
    """(numcodecs id, numcodecs codec) of a zarr bytes-to-bytes codec; None for one that does not inflate."""
    name = type(codec).__name__
    if name == "Crc32cCodec":
        return None
    if name == "GzipCodec":
        return "gzip", None
    for attribute in ("_zstd_codec", "_blosc_codec", "_codec"):  # zarr's zstd and blosc, numcodecs' others
        numcodec = getattr(codec, attribute, None)
        if numcodec is not None:
            codec_id = str(getattr(numcodec, "codec_id", name))
            return None if codec_id in _SAME_SIZE else (codec_id, numcodec)
    return name, None


# numcodecs' checksums and byte filters: what they decode is no larger than what they are given
# (or 8 bits for one, packbits)
_SAME_SIZE = {"crc32", "crc32c", "adler32", "fletcher32", "jenkins_lookup3", "shuffle", "bitround", "delta",
              "quantize", "fixedscaleoffset", "astype", "packbits"}


def _bytes_codec(codec):
    """A copy of a bytes-to-bytes codec whose decoding stops at the chunk's size."""
    import asyncio

    which = _which(codec)
    if which is None:
        return codec

    async def decode(chunk_bytes, chunk_spec):
        data = await asyncio.to_thread(_inflated, *which, chunk_bytes.as_numpy_array(), chunk_limit(chunk_spec))
        return chunk_spec.prototype.buffer.from_bytes(data)

    return _decoding(codec, decode)


def _decoding(codec, decode):
    """A copy of a zarr codec (a frozen dataclass) that decodes a chunk with ``decode(chunk_bytes, chunk_spec)``."""
    import copy

    copied = copy.copy(codec)
    object.__setattr__(copied, "_decode_single", decode)
    return copied


def _array_bytes_codec(codec):
    """V2's codec with its compressor bounded; sharding's inner codecs bounded; the rest as they are."""
    from dataclasses import replace

    name = type(codec).__name__
    if name == "V2Codec" and codec.compressor is not None:
        import asyncio

        compressor = codec.compressor
        plain = replace(codec, compressor=None)

        async def decode(chunk_bytes, chunk_spec):
            which = (str(getattr(compressor, "codec_id", type(compressor).__name__)), compressor)
            data = await asyncio.to_thread(_inflated, *which, chunk_bytes.as_numpy_array(), chunk_limit(chunk_spec))
            return await plain._decode_single(chunk_spec.prototype.buffer.from_bytes(data), chunk_spec)

        return _decoding(codec, decode)
    if name == "ShardingCodec":  # its inner pipeline is made anew at each read, from a property
        import copy

        base = type(codec)
        if base not in _SHARDING:
            _SHARDING[base] = type(f"Bounded{base.__name__}", (base,),
                                   {"codec_pipeline": property(lambda self: _pipeline(base.codec_pipeline.fget(self)))})
        copied = copy.copy(codec)
        object.__setattr__(copied, "__class__", _SHARDING[base])
        return copied
    return codec


def _pipeline(pipeline):
    """zarr's codec pipeline with every inflating codec bounded (zarr's BatchedCodecPipeline: a
    dataclass of its codecs); an other pipeline is left as it is."""
    from dataclasses import is_dataclass, replace

    if not is_dataclass(pipeline) or not hasattr(pipeline, "bytes_bytes_codecs"):
        return pipeline
    return replace(pipeline, array_bytes_codec=_array_bytes_codec(pipeline.array_bytes_codec),
                   bytes_bytes_codecs=tuple(_bytes_codec(c) for c in pipeline.bytes_bytes_codecs))


def bounded(array) -> None:
    """Make a zarr array (opened for reading) inflate its chunks no further than their size."""
    inner = getattr(array, "_async_array", None)
    if inner is not None and hasattr(inner, "codec_pipeline"):
        object.__setattr__(inner, "codec_pipeline", _pipeline(inner.codec_pipeline))


def write_ome_zarr(path: str, shape: tuple[int, int, int], dtype, blocks: Iterable[tuple[slice, slice, np.ndarray]],
                   tile: tuple[int, int] = (CHUNK, CHUNK)) -> None:
    """An OME-Zarr 0.5 image at ``path`` from (rows, cols, (h, w, C) values) blocks.

    Chunks are (C, tile): every channel of a pixel in one chunk, as imfilt reads and writes
    them (windows read 3.2x faster than from (1, 256, 256) chunks of an RGB image: zarr's cost is
    per chunk). Blocks that start on chunk boundaries write whole chunks (or the last, partial ones).
    """
    import zarr

    height, width, channels = shape
    axes = [{"name": name, "type": _AXIS_TYPES[name]} for name in ("c", "y", "x")]
    dataset = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}
    ome = {"version": "0.5", "multiscales": [{"name": Path(path).stem, "axes": axes, "datasets": [dataset]}]}
    group = zarr.create_group(path, zarr_format=3, attributes={"ome": ome})
    chunks = (channels, min(tile[0], height), min(tile[1], width))
    array = group.create_array("0", shape=(channels, height, width), dtype=dtype, chunks=chunks,
                               dimension_names=("c", "y", "x"))
    for rows, cols, block in _chunk_rows(blocks, chunks[1], width):
        array[:, rows, cols] = np.moveaxis(block, -1, 0)


def _chunk_rows(blocks: Iterable[tuple[slice, slice, np.ndarray]], step: int, width: int):
    """Bands of whole rows, in order, gathered into whole rows of chunks (``step`` high), so that
    each chunk is written once, as a whole image's is (the same bytes); windows (the tiled
    writers cut them on chunk boundaries) as they come."""
    top, held = 0, []
    for rows, cols, block in blocks:
        if cols.start or cols.stop != width:
            yield rows, cols, block
            continue
        if not held:
            top = rows.start
        held.append(block)
        whole = (rows.stop - top) // step * step  # rows of whole chunks held (top is on a chunk boundary)
        if whole:
            band = np.concatenate(held) if len(held) > 1 else held[0]
            yield slice(top, top + whole), slice(0, width), band[:whole]
            top, held = top + whole, [band[whole:]] if len(band) > whole else []
    if held:
        band = np.concatenate(held) if len(held) > 1 else held[0]
        yield slice(top, top + len(band)), slice(0, width), band
