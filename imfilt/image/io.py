"""Reading and writing images: float32 (H, W, C) in [0, 1] inside, integers only at the edges.

Pillow reads and writes most formats; PNG is written by png.py and TIFF by tiff.py (deflated
strips, the bytes of a streamed one), deep TIFFs read through tifffile; zarr stores (folders)
through omezarr.py. Every write is atomic.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from zlib_ng import zlib_ng  # SIMD CRC-32: checking a 34 MB PNG's chunks takes a few ms

from ..errors import InputError, UsageError, check_choice, check_image, shown
from ..files import file_size, hold, npy_header, open_regular
from ..inflate import bound_tifffile, bounded_png, png_data_fits
from .omezarr import is_store, open_image, write_ome_zarr
from .png import encode_png
from .tiff import strips, write_tiff

SCALES = ("auto", "clip", "abs", "stretch", "offset")
DEPTHS = (8, 16, 32)
# output extension -> (Pillow format, bit depths it holds)
FORMATS = {
    ".png": ("PNG", (8, 16)),
    ".jpg": ("JPEG", (8,)),
    ".jpeg": ("JPEG", (8,)),
    ".tif": ("TIFF", (8, 16, 32)),
    ".tiff": ("TIFF", (8, 16, 32)),
    ".webp": ("WEBP", (8,)),
    ".bmp": ("BMP", (8,)),
    ".npy": ("NPY", (32,)),  # float32 values in [0, 1] units, unscaled
    ".zarr": ("ZARR", (8, 16, 32)),  # an OME-Zarr image: a folder, never a stream (omezarr.py)
}
_FEW_CHANNELS = ("PNG", "JPEG", "WEBP", "BMP")  # at most grey/RGB + alpha
# the largest side a format holds: libjpeg's JPEG_MAX_DIMENSION, WebP's 14-bit sizes
MAX_SIDE = {".jpg": 65500, ".jpeg": 65500, ".webp": 16383}
# WebP is written lossless (exact: libwebp would otherwise zero the colour under alpha 0), JPEG
# at quality 95: a filter's result should not be smeared by the encoder. PNG has its own fast
# writer (png.py).
SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True, "exact": True}}
_MAXVAL = {8: 255, 16: 65535}
# TIFF/EXIF Orientation -> (transpose, flip rows, flip columns) that turn the stored pixels into the
# image as shown, in that order; as Pillow's exif_transpose turns it (other values: as stored)
ORIENTATIONS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True), 4: (False, True, False),
                5: (True, False, False), 6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UMASK = os.umask(0)
os.umask(_UMASK)


def unit_pixels(stored: np.ndarray, maxval: float = 1.0) -> np.ndarray:
    """(H, W, C) stored values -> float32 (H, W, C) in [0, 1], interleaved as decoders give them.

    The filters work in either layout (engine.planes), and the encoders want interleaved rows,
    so the pixels stay interleaved from decoding to encoding: no reordering copy on the way.
    """
    out = np.empty(stored.shape, dtype=np.float32)
    np.divide(stored, np.float32(maxval), out=out, casting="unsafe")
    return out


@dataclass(frozen=True)
class Loaded:
    """An image as read: float32 (H, W, C) pixels, the bit depth it came in, and its alpha.

    ``memo`` holds what operations derive from the pixels and share, made once per image (the
    planes and their FFTs that all the kernels of a 4-D bank read).
    """

    pixels: np.ndarray
    depth: int
    alpha: bool
    memo: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Decoded:
    """An image decoded whole, its samples as the file stores them: (H, W, C) uint8, or uint16
    (Pillow's int32 for some) at depth 16; float data already float32 (its finite values checked).

    A quarter of float32's bytes for 8-bit: the runner (tiles.Source) converts it window by
    window, and ``loaded()`` whole, to the same float32 values.
    """

    stored: np.ndarray
    depth: int

    @property
    def alpha(self) -> bool:
        return self.stored.shape[2] in (2, 4)

    def loaded(self) -> Loaded:
        if self.depth == 32:  # already float32, and its own array
            return Loaded(self.stored, 32, self.alpha)
        return Loaded(unit_pixels(self.stored, _MAXVAL[self.depth]), self.depth, self.alpha)


def check_output_format(path: str, depth: int | None) -> str:
    """The output extension, checked against the bit depth, before any work is done."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"{shown(path)}: unknown output format {suffix or '(none)'}: use one of {', '.join(FORMATS)}")
    check_depth(path, suffix, depth)
    return suffix


def check_depth(path: str, suffix: str, depth: int | None) -> None:
    """A bit depth the format that ``suffix`` names holds (None: the input's, fitted to it)."""
    if depth is not None and depth not in FORMATS[suffix][1]:
        raise UsageError(f"{shown(path)}: {suffix} holds {'/'.join(map(str, FORMATS[suffix][1]))}-bit images, not {depth}")


def check_output_size(path: str, height: int, width: int, source: str) -> None:
    """A result larger than its format holds, refused before any work is done."""
    suffix = Path(path).suffix.lower()
    if max(height, width) > MAX_SIDE.get(suffix, max(height, width)):
        raise UsageError(f"{shown(path)}: {suffix} holds at most {MAX_SIDE[suffix]} pixels a side, and the result of "
                         f"{shown(source)} is {width}x{height}: write .png or .tif")


def check_stdout_format(name: str) -> str:
    """--format (for -o -): a format imfilt writes, as its suffix."""
    suffix = "." + name.lower().lstrip(".")
    streams = [s for s in FORMATS if FORMATS[s][0] != "ZARR"]
    if suffix not in streams:
        raise UsageError(f"--format {name!r}: imfilt writes {', '.join(s.lstrip('.') for s in streams)} to standard "
                         "output" + (" (a zarr store is a folder: use -o OUT.zarr)" if suffix == ".zarr" else ""))
    return suffix


# --- reading -------------------------------------------------------------------------------


def read_image(source: str | os.PathLike | bytes, *, max_pixels: int | None = None) -> np.ndarray:
    """An image file (or its bytes) -> float32 (H, W, C) in [0, 1]."""
    return load(source, max_pixels=max_pixels).pixels


def most_bytes(pixels: int, channels: int = 4) -> int:
    """The most a file of an image of ``pixels`` may hold: its samples as float64 (the fattest a .npy
    holds) and 16 MiB of metadata (EXIF, ICC, XMP, previews). A larger file is not read whole."""
    return pixels * channels * 8 + 16 * 2**20


def load(source: str | os.PathLike | bytes, *, max_pixels: int | None = None, name: str | None = None,
         shape: tuple[int, int, int] | None = None) -> Loaded:
    """Read an image as float32 in [0, 1]; every failure is an InputError naming the file and the reason."""
    return decode(source, max_pixels=max_pixels, name=name, shape=shape).loaded()


def decode(source: str | os.PathLike | bytes, *, max_pixels: int | None = None, name: str | None = None,
           shape: tuple[int, int, int] | None = None) -> Decoded:
    """Decode an image whole, its samples as stored; every failure is an InputError naming the file and the reason.

    A file larger than an image may take is refused before it is read: by ``shape`` (its header's,
    as the planner read it) or else by the pixel limit.
    """
    name = shown(name or ("<stdin>" if isinstance(source, bytes) else str(source)))
    limit = max_pixels or pillow_limit()
    if not isinstance(source, bytes) and is_store(source):
        return _check_finite(_load_store(str(source), name, limit), name)
    if isinstance(source, bytes):
        data = source
    else:  # a regular file, opened once: a .npy is read as far as its checked header says, the rest whole
        try:
            with open_regular(source) as f:
                if f.read(6) == b"\x93NUMPY":
                    f.seek(0)
                    return _check_finite(_decoding(name, lambda: _load_npy(f, limit)), name)
                pixels, channels = (shape[0] * shape[1], shape[2]) if shape else (limit, 4)
                if file_size(f) > most_bytes(pixels, channels):
                    raise InputError(f"{name}: {file_size(f)} bytes is more than an image of {pixels} pixels may take "
                                     f"({most_bytes(pixels, channels)}); not read")
                f.seek(0)
                data = f.read()
        except OSError as exc:
            raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise InputError(f"{name}: empty file")
    return _check_finite(_decoding(name, lambda: _decode(data, limit)), name)


def _decoding(name: str, decode: Callable[[], Decoded]) -> Decoded:
    """A decoder's every failure as one InputError naming the input."""
    try:
        return decode()
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image, or a format imfilt cannot read") from None
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many kinds (TypeError, struct.error, ...) on bad data
        raise InputError(f"{name}: truncated or corrupt image ({exc})") from None


def _decode(data: bytes, limit: int) -> Decoded:
    if data[:6] == b"\x93NUMPY":
        return _load_npy(io.BytesIO(data), limit)
    if data[:8] == _PNG_SIGNATURE and data[24:25] == b"\x10" and data[25] in (2, 4, 6):
        return _load_png16(data, limit)
    if data[:4] in (b"II*\0", b"MM\0*"):
        return _load_tiff(data, limit)
    return _load_pillow(data, limit)


def _check_finite(decoded: Decoded, name: str) -> Decoded:
    if decoded.depth == 32:  # float data: one NaN would spread through every FFT output
        bad = decoded.stored.size - int(np.count_nonzero(np.isfinite(decoded.stored)))
        if bad:
            raise InputError(f"{name}: {bad} sample{'s are' if bad > 1 else ' is'} NaN or infinite; "
                             "imfilt filters finite values only")
    return decoded


def depth_of(dtype) -> int:
    """The bit depth that stored samples of a dtype mean: uint8 8, uint16 16, the rest 32 (values as they are)."""
    return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(np.dtype(dtype), 32)


def _load_store(path: str, name: str, limit: int) -> Decoded:
    """A zarr store (a plain array or an OME-Zarr image), read whole."""
    image = open_image(path)
    try:
        check_pixels(image.shape[1], image.shape[0], limit)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    try:
        stored = image[:, :]
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode this image") from None
    return _from_hwc(stored, depth_of(image.dtype))


def _from_hwc(array: np.ndarray, depth: int) -> Decoded:
    """An (H, W) or (H, W, C) array as decoded -> Decoded (float data as float32); 2 or 4 channels carry alpha last."""
    array = array[..., None] if array.ndim == 2 else array
    return Decoded(unit_pixels(array) if depth == 32 else array, depth)


def check_pixels(width: int, height: int, limit: int) -> None:
    """The decompression-bomb limit (--max-pixels), checked from the header before decoding."""
    if width * height > limit:
        raise InputError(f"{width}x{height} = {width * height} pixels is over the safety limit of {limit}; "
                         "raise it with --max-pixels")


def check_npy_image(shape: tuple[int, ...], dtype) -> None:
    """A .npy's header describes an image: real numbers, (H, W) or (H, W, C), some pixels."""
    dtype = np.dtype(dtype)
    if len(shape) not in (2, 3) or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"a .npy image must be a real (H, W) or (H, W, C) array, got {dtype} {shape}")
    if 0 in shape:
        raise InputError(f"a .npy image must hold pixels, got shape {shape}")


def _load_npy(f: BinaryIO, limit: int) -> Decoded:
    """Its header checked before any data is read (an image's shape, the pixel limit, the bytes
    there), then exactly the bytes it says."""
    npy_header(f, lambda shape, dtype: (check_npy_image(shape, dtype), check_pixels(shape[1], shape[0], limit)))
    f.seek(0)
    return _from_hwc(np.load(f, allow_pickle=False), 32)


def orient(stored: np.ndarray, orientation: int) -> np.ndarray:
    """Stored (H, W, ...) values -> the image as shown under a TIFF/EXIF orientation (a view)."""
    transpose, flip_rows, flip_cols = ORIENTATIONS.get(orientation, ORIENTATIONS[1])
    shown = stored.swapaxes(0, 1) if transpose else stored
    return shown[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1]


def tiff_orientation(page) -> int:
    """A TIFF page's Orientation tag (1 when absent or not one of the eight)."""
    tag = page.tags.get("Orientation")
    value = int(tag.value) if tag is not None else 1
    return value if value in ORIENTATIONS else 1


def check_frames(count: int) -> None:
    """Several frames are refused: never silently cut to the first."""
    if count > 1:
        raise InputError(f"has {count} frames; imfilt filters single images: extract the frame you want first")


def tiff_frames(tiff) -> int:
    """A TIFF's frames: its pages less reduced-resolution ones (thumbnails, pyramid levels)."""
    return sum(1 for page in tiff.pages if not getattr(page, "is_reduced", False))


def _load_png16(data: bytes, limit: int) -> Decoded:
    """Through pypng, its pixel data inflated only as far as the header says (inflate.py)."""
    import png

    check_pixels(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), limit)
    reader = png.Reader(file=bounded_png(data))
    width, height, rows, info = reader.asDirect()
    planes = info["planes"]
    stored = np.vstack([np.asarray(row, dtype=np.uint16) for row in itertools.islice(rows, height)])
    stored = stored.reshape(height, width, planes)
    return _from_hwc(np.ascontiguousarray(orient(stored, _png_orientation(data))), 16)


def _png_orientation(data: bytes) -> int:
    """The EXIF orientation of a PNG's eXIf chunk, before or after the pixels (1 if none), as
    Pillow's exif_transpose finds it for the 8-bit PNGs it decodes."""
    position = len(_PNG_SIGNATURE)
    while position + 12 <= len(data):
        length, kind = int.from_bytes(data[position : position + 4], "big"), data[position + 4 : position + 8]
        if kind == b"eXIf":
            exif = Image.Exif()
            exif.load(data[position + 8 : position + 8 + length])
            value = exif.get(0x0112, 1)
            return value if value in ORIENTATIONS else 1
        if kind == b"IEND":
            break
        position += 12 + length
    return 1


# Chunks OpenCV's libpng decodes without a word on stderr; any other (tRNS, eXIf, iCCP, PLTE, ...)
# and the file goes to Pillow, which keeps transparency keys and EXIF orientation. Compressed
# text (zTXt, iTXt) goes there too: libpng says 'zTXt: truncated' on stderr for one that inflates
# past its limit, where Pillow refuses it in one line (its MAX_TEXT_CHUNK, as for iCCP).
_PLAIN_PNG_CHUNKS = {b"IHDR", b"IDAT", b"IEND", b"pHYs", b"tEXt", b"tIME", b"gAMA", b"cHRM", b"sRGB", b"sBIT",
                     b"bKGD"}


def _plain_png(data: bytes) -> bool:
    """Every chunk whole, with a right CRC and of a plain kind, up to IEND at the very end."""
    position = len(_PNG_SIGNATURE)
    view = memoryview(data)
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        tag, end = data[position + 4 : position + 8], position + 12 + length
        if tag not in _PLAIN_PNG_CHUNKS or end > len(data):
            return False
        if zlib_ng.crc32(view[position + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return False
        if tag == b"IEND":
            return end == len(data)
        position = end
    return False


def _decode_png8(data: bytes, limit: int) -> Decoded | None:
    """An 8-bit grey, RGB or RGBA PNG through OpenCV (1.2-1.4x faster than Pillow); None for the
    rest, which Pillow reads: transparency keys, EXIF orientation, grey+alpha, palettes, other
    depths, and damaged files (OpenCV would print libpng's complaint; Pillow says what is wrong)."""
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or data[24] != 8 or data[25] not in (0, 2, 6):
        return None
    if not _plain_png(data):
        return None
    if not png_data_fits(data):  # more image data than the header says: libpng would warn on stderr
        return None
    check_pixels(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), limit)
    import cv2

    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.dtype != np.uint8:
        return None
    if decoded.ndim == 3:  # OpenCV's channel order is BGR(A)
        cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB, dst=decoded)
    return _from_hwc(decoded, 8)


# Pillow's decompression-bomb limit is a global that Image.open reads: imfilt switches it off
# only around its own open (under a lock, for threads) and checks the limit the user gave itself.
_PILLOW_GLOBALS = threading.Lock()


def pillow_limit() -> int:
    with _PILLOW_GLOBALS:
        return Image.MAX_IMAGE_PIXELS


def open_header(file) -> Image.Image:
    """Pillow's Image.open (which reads the header only), with imfilt's own pixel limit instead of Pillow's."""
    with _PILLOW_GLOBALS:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(file)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _load_pillow(data: bytes, limit: int) -> Decoded:
    fast = _decode_png8(data, limit)
    if fast is not None:
        return fast
    image = open_header(io.BytesIO(data))
    check_pixels(*image.size, limit)
    if image.format != "MPO":  # a camera's MPO JPEG: the primary image first, then previews
        check_frames(getattr(image, "n_frames", 1))  # an animation is never cut to its first frame
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
    return _from_pillow(image)


def _load_tiff(data: bytes, limit: int) -> Decoded:
    """Deep (16-bit or float) TIFFs through tifffile; 8-bit ones through Pillow, for EXIF and LZW.

    Both turn the image by its Orientation tag."""
    import tifffile

    bound_tifffile()
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages.first
            check_pixels(page.imagewidth, page.imagelength, limit)
            check_frames(tiff_frames(tiff))
            if page.bitspersample <= 8 and page.sampleformat != 3:
                return _load_pillow(data, limit)
            array = orient(page.asarray(), tiff_orientation(page))  # as Pillow turns 8-bit ones
    except tifffile.TiffFileError as exc:
        raise InputError(f"truncated or corrupt TIFF ({exc})") from None
    return _from_hwc(array, 16 if array.dtype == np.uint16 else 32)


_CONVERT = {"1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "PA": "RGBA", "RGBa": "RGBA",
            "La": "LA", "RGBX": "RGB"}


def _from_pillow(image: Image.Image) -> Decoded:
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert({"L": "LA", "RGB": "RGBA"}[mode])  # a tRNS colour key becomes alpha
    elif mode in _CONVERT:
        image = image.convert(_CONVERT[mode])  # CMYK becomes RGB, never RGBA
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        return Decoded(np.asarray(image)[..., None], 16)
    if mode == "F":
        return _from_hwc(np.asarray(image), 32)
    if mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in mode else "RGB")
    return _from_hwc(np.asarray(image), 8)  # uint8 (H, W) or (H, W, C), interleaved


# --- writing -------------------------------------------------------------------------------


def _stretch(whole: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    low, high = float(whole.min()), float(whole.max())
    return (lambda x: (x - low) / (high - low)) if high > low else np.zeros_like


def _peak(whole: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    high = float(whole.max())
    return (lambda x: x / high) if high > 0 else np.zeros_like


def _pointwise(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], Callable]:
    return lambda whole: fn


# float response -> [0, 1] before the clip; "peak" and "phase" are what the spectrum uses. Each
# looks at the whole image once (stretch, peak) and gives the map that is applied block by block.
SCALERS = {
    "clip": _pointwise(None),
    "auto": _pointwise(None),
    "abs": _pointwise(np.abs),
    "offset": _pointwise(lambda x: x + 0.5),
    "stretch": _stretch,
    "peak": _peak,
    "phase": _pointwise(lambda x: (x + np.pi) / (2 * np.pi)),
    "score": _pointwise(lambda x: (x + 1) / 2),  # a correlation coefficient, -1..1 (imfilt match)
}


def to_storage(pixels: np.ndarray, depth: int, scale: str = "clip", alpha: bool = False) -> np.ndarray:
    """Float responses -> the values stored at a bit depth (float32 for 32: unscaled).

    clip: clip to [0, 1]; abs: |x| then clip; stretch: min..max to the full range; offset: x + ½;
    peak: x / max. Scaling spans all colour channels; the alpha channel is only clipped.
    """
    if depth == 32:
        return np.ascontiguousarray(pixels, dtype=np.float32)
    check_choice("scale", scale, tuple(SCALERS))
    colours = slice(0, -1) if alpha else slice(None)
    scaler = SCALERS[scale](pixels[..., colours])
    # interleaved rows, as the encoders take them (a planar result is reordered within the
    # blocks), scaled block by block: no temporary the size of the image
    stored = np.empty(pixels.shape, dtype=np.uint8 if depth == 8 else np.uint16)
    rows = max(1, (1 << 22) // max(1, pixels[0].size))  # blocks of ~16 MB of float32
    block = np.empty((min(rows, pixels.shape[0]),) + pixels.shape[1:], dtype=np.float32)
    for top in range(0, pixels.shape[0], rows):
        source, part = pixels[top : top + rows], block[: min(rows, pixels.shape[0] - top)]
        if scaler is not None:
            part[..., colours] = scaler(source[..., colours])
            if alpha:
                part[..., -1] = source[..., -1]
            source = part
        np.clip(source, 0.0, 1.0, out=part)
        part *= _MAXVAL[depth]
        np.rint(part, out=part)
        stored[top : top + rows] = part
    return stored


def encode(stored: np.ndarray, suffix: str, alpha: bool, out: BinaryIO, threads: int = 1) -> None:
    """Stored (H, W, C) values -> bytes of the format that the suffix names."""
    kind = FORMATS[suffix][0]
    if kind == "NPY":
        np.save(out, stored)
    elif kind == "PNG":
        encode_png(stored, out, threads)
    elif kind == "TIFF":
        buffer = io.BytesIO()  # tifffile seeks: standard output cannot
        write_tiff(buffer, stored.shape, stored.dtype, strips([stored], stored.shape, stored.dtype), alpha=alpha)
        out.write(buffer.getbuffer())
    else:
        _encode_pillow(stored, kind, alpha, out)


def _encode_pillow(stored: np.ndarray, kind: str, alpha: bool, out: BinaryIO) -> None:
    channels = stored.shape[2]
    if kind in ("JPEG", "BMP") and alpha:  # these formats hold no alpha: it is dropped
        stored, channels = stored[..., :-1], channels - 1
    image = Image.fromarray(stored[..., 0] if channels == 1 else np.ascontiguousarray(stored))
    image.save(out, format=kind, **SAVE_OPTIONS.get(kind, {}))


def fitting_depth(depth: int, suffix: str) -> int:
    """The input's depth where the format holds it, else the deepest it holds (16-bit -> JPEG: 8)."""
    held = FORMATS[suffix][1]
    return depth if depth in held else max(held)


def temp_prefix(name: str) -> str:
    """'.NAME.' for a temporary file or folder beside NAME (mkstemp adds 8 characters and
    '.part'), NAME cut so that the whole stays within the 255 bytes a file name may have (its
    bytes as the file system has them: a name that is not UTF-8 keeps its bytes)."""
    return "." + os.fsdecode(os.fsencode(name)[:230]) + "."


def atomic_write(target: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file in the same folder, then rename: never a partial file.

    A failure (a full disk, a folder that cannot be written) is an InputError naming the
    target, never the temporary file.
    """
    target = Path(target)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target.name), suffix=".part")
        with os.fdopen(fd, "wb") as f:
            hold(fd)  # until it is renamed: a run that starts meanwhile leaves it alone
            write(f)
            f.flush()
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass  # renamed already: the target is whole
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise InputError(f"{shown(target)}: cannot write ({exc.strerror or exc})") from None
        raise


def replace_beside(target: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(path)`` a file or a folder (a zarr store) beside ``target``, then rename it over
    ``target``: a failure or Ctrl-C leaves nothing behind, and an existing store is swapped out
    whole (a folder cannot be renamed over, so the old one is moved aside first).

    A folder that is not a zarr store is never replaced: it may hold anything.
    """
    target = Path(target)
    if os.path.isdir(target) and not os.path.islink(target) and not is_store(target):  # (False for a bad name)
        raise InputError(f"{shown(target)}: is a folder, not a zarr store; not replaced")
    try:
        folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target.name), suffix=".part"))
        lock = os.open(folder, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"{shown(target)}: cannot write ({exc.strerror or exc})") from None
    try:
        hold(lock)  # until it is gone: a run that starts meanwhile leaves it alone
        made = folder / target.name
        write(str(made))
        if os.path.lexists(target) and (made.is_dir() or target.is_dir()):  # rename() cannot do these
            os.rename(target, folder / "replaced")
            try:
                os.rename(made, target)
            except BaseException:
                os.rename(folder / "replaced", target)
                raise
        else:
            os.replace(made, target)
    except OSError as exc:  # a full disk, a name too long: the target named, never the temporary
        if isinstance(exc, BrokenPipeError):
            raise
        raise InputError(f"{shown(target)}: cannot write ({exc.strerror or exc})") from None
    finally:
        remove_tree(folder)
        os.close(lock)


def remove_tree(folder) -> None:
    """Remove a folder even while zarr's I/O thread finishes writes that Ctrl-C cut short."""
    _finish_zarr_writes()
    for _ in range(100):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder):
            return
        time.sleep(0.02)


_FINISHING = "imfilt-finish-zarr-writes"


def _finish_zarr_writes(timeout: float = 10.0) -> None:
    """Wait for the writes still running on zarr's I/O loop: an interrupted write of many chunks
    goes on there, and a chunk written after the folder's removal would make it anew."""
    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return
    import asyncio  # zarr has imported it already; the CLI's start-up does not need it

    async def the_others():
        asyncio.current_task().set_name(_FINISHING)
        # not another thread's wait (two writers ending at once waited for each other, 10 s)
        others = {task for task in asyncio.all_tasks() if task.get_name() != _FINISHING}
        if others:
            await asyncio.wait(others, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(the_others(), loop).result(timeout + 1)
    except Exception:  # noqa: BLE001 - removing the folder matters more than waiting
        pass


def write_stdout(data: bytes) -> None:
    """All of data to standard output: an unbuffered stream may take only part of a write."""
    out = sys.stdout.buffer
    view = memoryview(data)
    try:
        while view:
            written = out.write(view)
            view = view[written if written is not None else 0 :]
        out.flush()
    except BrokenPipeError:
        raise  # the reader went away: the whole run ends with 141
    except OSError as exc:  # a full disk behind the redirection
        raise InputError(f"<stdout>: cannot write ({exc.strerror or exc})") from None


def write_image(target: str | os.PathLike, pixels: np.ndarray, *, depth: int = 8, scale: str = "clip",
                alpha: bool = False, suffix: str | None = None, threads: int | None = None) -> None:
    """Write float32 (H, W, C) pixels; the format follows the extension (or ``suffix``).

    ``target`` "-" writes to standard output. ``.npy`` holds the float32 values unscaled.
    ``threads`` compress a PNG in parallel (default: the cores).
    """
    threads = threads or os.cpu_count() or 1
    suffix = suffix or check_output_format(str(target), None)
    if suffix != ".npy":  # .npy holds the floats whatever the depth
        check_depth(str(target), suffix, depth)
    pixels = np.asarray(check_image(pixels, "pixels"), dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    kind = FORMATS[suffix][0]
    if kind in _FEW_CHANNELS and pixels.shape[2] > 4:
        raise InputError(f"{shown(target)}: {suffix} holds at most 4 channels, this image has {pixels.shape[2]}; "
                         "write .tif or .npy")
    stored = pixels if suffix == ".npy" else to_storage(pixels, depth, scale, alpha)
    if kind == "ZARR":
        if str(target) == "-":
            raise UsageError("a zarr store is a folder, never written to standard output: use -o OUT.zarr")
        whole = [(slice(0, stored.shape[0]), slice(0, stored.shape[1]), stored)]
        try:
            replace_beside(target, lambda tmp: write_ome_zarr(tmp, stored.shape, stored.dtype, whole))
        except OSError as exc:
            raise InputError(f"{shown(target)}: cannot write ({exc.strerror or exc})") from None
    elif str(target) == "-":
        buffer = io.BytesIO()  # encode fully first: a failed encode writes nothing
        encode(stored, suffix, alpha, buffer, threads)
        write_stdout(buffer.getvalue())
    else:
        atomic_write(target, lambda f: encode(stored, suffix, alpha, f, threads))
