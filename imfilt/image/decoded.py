"""PNG and baseline JPEG images larger than memory, decoded top to bottom by libvips.

Neither format can be read at a random window: its rows come in order. libvips (pyvips, with
the libvips that the pyvips-binary wheel bundles) decodes them with ``access="sequential"`` to
the same values as imfilt's whole-image decoders (Pillow, OpenCV): 8/16-bit grey, grey+alpha,
RGB, RGBA, palettes, transparency keys, baseline JPEG of any subsampling. A 12000x12000 RGB
image took 2.4 s and 102 MB (PNG) and 2.0 s and 144 MB (JPEG) where Pillow took 6.9 s and
4.3 s, both 1.4 GB. libvips's random access would first decode the whole image into a scratch
file (432 MB for that one; 3.9 s for the PNG): no faster, and disc to check and clean.
Interlaced PNGs and progressive JPEGs are decoded whole by any decoder (8000x8000 RGB: 239 and
449 MB against 89 and 87 MB), so they are refused, as are CMYK JPEGs and EXIF-rotated images (a
turned image's rows are the file's columns).

``DecodedRows`` serves the tile layer's reads from the rows it keeps: the band last read, which
the next read extends (windows' halos overlap), and the one before it (wrap's halo from the
far edge); a read above both decodes again from the top.
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import InputError, shown
from .io import check_frames, open_header


# Rows decoded at a time, from a multiple of it: libvips reads ahead in strips (PNG 16 rows,
# JPEG 8 or 16), and a read that starts inside a strip already passed is "out of order". Whole
# chunks through crop() decoded 8192x8192 RGB 2x faster than any rows through a Region.
CHUNK = 64


class DecodedRows:
    """An (H, W, C) array-like over a PNG or JPEG: ``rows[a:b, cols]`` decodes rows in order.

    ``source`` is a path, or the file's bytes (standard input's)."""

    def __init__(self, source: str | bytes):
        self.source = source
        self.path = "<stdin>" if isinstance(source, bytes) else source
        self._open()
        self.shape = (self.image.height, self.image.width, self.image.bands)
        self.dtype = np.dtype(np.uint16 if self.image.format == "ushort" else np.uint8)
        self.kept: list[tuple[int, np.ndarray]] = []  # (first row, rows), the last read last

    def _open(self) -> None:
        import pyvips

        # fail: a truncated or damaged file is an error, as in the whole-image path, not grey rows
        if isinstance(self.source, bytes):
            self.image = pyvips.Image.new_from_buffer(self.source, "", access="sequential", fail=True)
        else:
            self.image = pyvips.Image.new_from_file(self.source, access="sequential", fail=True)
        self.next = 0  # the next row libvips decodes: a multiple of CHUNK (or the height)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = key
        start, stop, _ = rows.indices(self.shape[0])
        return self._rows(start, stop)[:, cols]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        for top, band in self.kept:
            if top <= start and stop <= top + len(band):
                return band[start - top : stop - top]
        latest = self.kept[-1] if self.kept else None
        extend = latest is not None and latest[0] <= start <= self.next
        if start < self.next and not extend:
            self._open()  # rows above what is kept: decode again from the top
        first = max(self.next, start - start % CHUNK)
        new = self._decode(first, min(self.shape[0], -(-stop // CHUNK) * CHUNK))
        band = np.concatenate([latest[1][start - latest[0] :], new]) if extend else new[start - first :]
        self.kept = [*self.kept[: -1 if extend else None][-1:], (start, band)]  # the band ends at self.next
        return band[: stop - start]

    def _decode(self, start: int, stop: int) -> np.ndarray:
        import pyvips

        try:
            rows = self.image.crop(0, start, self.shape[1], stop - start).numpy()
        except pyvips.Error as exc:
            reason = " ".join(str(exc).split())  # libvips's message spans lines
            raise InputError(f"{self.path}: truncated or corrupt image ({reason})") from None
        self.next = stop
        return rows.reshape(stop - start, *self.shape[1:])


def open_decoded(source: str | bytes) -> tuple[DecodedRows, int]:
    """The rows of a PNG or JPEG (a path, or its bytes) and their bit depth; an InputError says what cannot stream."""
    path = "<stdin>" if isinstance(source, bytes) else source
    with open_header(io.BytesIO(source) if isinstance(source, bytes) else source) as header:
        if header.format != "MPO":  # as io.load: an animation is never cut to its first frame
            try:
                check_frames(getattr(header, "n_frames", 1))
            except InputError as exc:
                raise InputError(f"{shown(path)}: {exc}") from None
    try:
        import pyvips
    except (ImportError, OSError) as exc:  # pyvips is a dependency, but its libvips may fail to load
        raise InputError(f"{shown(path)}: PNG and JPEG images larger than memory need pyvips ({exc})") from None
    try:
        rows = DecodedRows(source)
    except pyvips.Error as exc:
        raise InputError(f"{shown(path)}: truncated or corrupt image ({' '.join(str(exc).split())})") from None
    fields = set(rows.image.get_fields())

    def field(name: str):
        return rows.image.get(name) if name in fields else 0

    problem = (field("interlaced") and f"{'a progressive JPEG' if header.format == 'JPEG' else 'an interlaced PNG'} "
               "is decoded whole by any decoder"
               or rows.image.interpretation == "cmyk" and "a CMYK JPEG is not read in bands"
               or field("orientation") not in (0, 1) and "an EXIF-rotated image is not read in bands (its rows are "
               "the file's columns)")
    if problem:
        raise InputError(f"{shown(path)}: too large for memory, and {problem}; convert it "
                         "(e.g. vips copy IN OUT.tif[tile,bigtiff]) or raise --memory")
    return rows, 16 if rows.dtype == np.uint16 else 8
