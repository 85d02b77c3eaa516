"""image/tiff.py: one TIFF writer, strips cut by the image's width whatever bands the rows come in;
read back by tifffile and, for 8-bit, by Pillow (a second decoder)."""

import io

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imfilt.image import tiff


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.integers(1, 90), width=st.integers(1, 40), channels=st.sampled_from([1, 2, 3, 4]),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32]), cuts=st.lists(st.integers(1, 89), max_size=6),
       data=st.data())
def test_strips_do_not_depend_on_the_bands(monkeypatch, height, width, channels, dtype, cuts, data):
    monkeypatch.setattr(tiff, "STRIP_BYTES", 64)  # several rows a strip, several strips an image (the same each example)
    values = np.random.default_rng(height * width).integers(0, 200, (height, width, channels)).astype(dtype)
    bands = np.split(values, sorted({c for c in cuts if c < height}))
    whole = list(tiff.strips([values], values.shape, dtype))
    assert list(tiff.strips(iter(bands), values.shape, dtype)) == whole
    rows = tiff.rows_per_strip(values.shape, dtype)
    assert len(whole) == -(-height // rows) and b"".join(whole) == values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    alpha = data.draw(st.booleans()) and channels in (2, 4)
    buffer = io.BytesIO()
    tiff.write_tiff(buffer, values.shape, dtype, iter(whole), alpha=alpha)
    with tifffile.TiffFile(io.BytesIO(buffer.getvalue())) as read:
        page = read.pages.first
        assert page.rowsperstrip == min(rows, height) and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.extrasamples == ((tifffile.EXTRASAMPLE.UNASSALPHA,) if alpha else page.extrasamples)
        got = page.asarray()
    assert np.array_equal(got.reshape(values.shape), values)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_pillow_reads_an_8_bit_strip_tiff(channels):
    values = np.random.default_rng(channels).integers(0, 256, (300, 451, channels)).astype(np.uint8)
    buffer = io.BytesIO()
    tiff.write_tiff(buffer, values.shape, np.uint8, tiff.strips([values], values.shape, np.uint8), alpha=channels == 4)
    image = Image.open(io.BytesIO(buffer.getvalue()))
    assert np.array_equal(np.asarray(image).reshape(values.shape), values)


def test_the_same_image_gives_the_same_bytes_every_time():
    """Strips are deflated on two threads, each with a compressor of its own: no run-to-run variation."""
    values = np.random.default_rng(3).integers(0, 256, (700, 300, 3)).astype(np.uint8)
    files = set()
    for _ in range(10):
        buffer = io.BytesIO()
        tiff.write_tiff(buffer, values.shape, np.uint8, tiff.strips([values], values.shape, np.uint8), alpha=False)
        files.add(buffer.getvalue())
    assert len(files) == 1
