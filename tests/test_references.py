"""The library against references it does not share: second decoders, hand-written matrices.

What imfilt writes is read back with Pillow or tifffile, not imfilt's reader; what it reads is
compared with the values the test put in; built-in kernels with matrices written out here.
"""

import io
import os

import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile
from PIL import Image

import imfilt
from imfilt.errors import InputError
from imfilt.image.io import atomic_write, write_image

RNG = np.random.default_rng(21)
PIXELS = RNG.integers(0, 256, (9, 13, 4)).astype(np.uint8)  # stored values, and what they mean:
PIXELS[0, :3, 3] = 0  # colour under alpha 0: a lossless write keeps it too
UNIT = PIXELS.astype(np.float32) / 255


# --- what imfilt writes, read by another decoder ---------------------------------------------


@pytest.mark.parametrize("suffix, channels", [
    (".tif", 1), (".tif", 3), (".tif", 4), (".bmp", 3), (".webp", 3), (".webp", 4), (".png", 2),
])
def test_8bit_outputs_read_back_with_another_decoder(tmp_path, suffix, channels):
    """Lossless means every value, the colour under alpha 0 included (WebP: written exact)."""
    target = tmp_path / f"o{suffix}"
    write_image(target, UNIT[..., :channels], depth=8, alpha=channels in (2, 4))
    if suffix == ".tif":
        decoded = tifffile.imread(target)
    else:
        decoded = np.asarray(Image.open(target))
    np.testing.assert_array_equal(decoded.reshape(9, 13, channels), PIXELS[..., :channels])


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_tiff_reads_back_with_tifffile(tmp_path, channels):
    values = RNG.integers(0, 65536, (7, 5, channels)).astype(np.uint16)
    write_image(tmp_path / "o.tif", values / 65535.0, depth=16, alpha=channels in (2, 4))
    decoded = tifffile.imread(tmp_path / "o.tif")
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded.reshape(values.shape), values)


def test_16bit_colour_png_reads_back_with_pypng(tmp_path):
    import png

    values = RNG.integers(0, 65536, (6, 8, 3)).astype(np.uint16)
    write_image(tmp_path / "o.png", values / 65535.0, depth=16)
    width, height, rows, info = png.Reader(filename=str(tmp_path / "o.png")).asDirect()
    assert info["bitdepth"] == 16
    np.testing.assert_array_equal(np.vstack([np.asarray(r) for r in rows]).reshape(values.shape), values)


def test_float_tiff_reads_back_with_tifffile(tmp_path):
    values = RNG.standard_normal((5, 6, 3)).astype(np.float32)
    write_image(tmp_path / "o.tif", values, depth=32)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif"), values)


@pytest.mark.parametrize("scale, expected", [
    ("clip", [0, 0, 128, 255]), ("abs", [128, 0, 128, 255]), ("offset", [0, 128, 255, 255]),
    ("stretch", [0, 64, 128, 255]),
])
def test_scales_to_8bit_read_back_with_pillow(tmp_path, scale, expected):
    """clip, |x|, x + ½ and min..max, on responses -0.5, 0, 0.5, 1.5 (stretch: (x + 0.5) / 2)."""
    write_image(tmp_path / "o.png", np.array([[-0.5, 0.0, 0.5, 1.5]], np.float32), scale=scale)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png"))[0], expected)


# --- what imfilt reads: the values the test put in -------------------------------------------


def test_grey_and_grey_alpha_read_as_stored_over_255(tmp_path):
    Image.fromarray(PIXELS[..., 0]).save(tmp_path / "l.png")
    Image.fromarray(PIXELS[..., :2], mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(imfilt.read_image(tmp_path / "l.png")[..., 0], UNIT[..., 0])
    np.testing.assert_array_equal(imfilt.read_image(tmp_path / "la.png"), UNIT[..., :2])


def test_one_bit_reads_as_0_and_1(tmp_path):
    bits = PIXELS[..., 0] > 127
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    np.testing.assert_array_equal(imfilt.read_image(tmp_path / "b.png")[..., 0], bits.astype(np.float32))


def test_palette_reads_through_the_palette(tmp_path):
    palette = RNG.integers(0, 256, (16, 3)).astype(np.uint8)
    indices = (PIXELS[..., 0] % 16).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(imfilt.read_image(tmp_path / "p.png"), palette[indices].astype(np.float32) / 255)


def test_palette_transparency_becomes_alpha(tmp_path):
    indices = (PIXELS[..., 0] % 4).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120] + [0] * 756)
    image.save(tmp_path / "t.png", transparency=2)
    pixels = imfilt.read_image(tmp_path / "t.png")
    np.testing.assert_array_equal(pixels[..., 3], (indices != 2).astype(np.float32))


def test_16bit_grey_png_reads_over_65535(tmp_path):
    values = RNG.integers(0, 65536, (6, 7)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    np.testing.assert_allclose(imfilt.read_image(tmp_path / "g16.png")[..., 0], values / 65535.0, atol=1e-7)


# --- built-in kernels against matrices written out here --------------------------------------

PREWITT_X = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=float)
SCHARR_X = np.array([[3, 0, -3], [10, 0, -10], [3, 0, -3]], dtype=float)
SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=float)


@pytest.mark.parametrize("name, matrix", [
    ("emboss", [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]),
    ("outline", [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]),
    ("sharpen", [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
    ("laplacian", [[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
    ("identity", [[0, 0, 0], [0, 1, 0], [0, 0, 0]]),
    ("prewitt-x", PREWITT_X), ("prewitt-y", PREWITT_X.T), ("sobel-x", SOBEL_X), ("sobel-y", SOBEL_X.T),
    ("box:size=4", np.full((4, 4), 1 / 16)),
])
def test_builtin_kernels_are_their_matrices(name, matrix):
    image = UNIT[..., :3].astype(np.float64)
    expected = np.stack([ndi.convolve(image[..., c], np.asarray(matrix, float), mode="reflect") for c in range(3)], -1)
    np.testing.assert_allclose(imfilt.convolve(UNIT[..., :3], imfilt.load_kernel(name)), expected, atol=2e-5)


@pytest.mark.parametrize("name, x_matrix", [("sobel", SOBEL_X), ("prewitt", PREWITT_X), ("scharr", SCHARR_X)])
def test_gradient_magnitudes(name, x_matrix):
    image = UNIT[..., 0].astype(np.float64)
    gx, gy = ndi.convolve(image, x_matrix, mode="reflect"), ndi.convolve(image, x_matrix.T, mode="reflect")
    result = imfilt.convolve(UNIT[..., :1], imfilt.load_kernel(name))[..., 0]
    np.testing.assert_allclose(result, np.hypot(gx, gy), atol=1e-4)


@pytest.mark.parametrize("name", ["sobel-x", "prewitt-x"])
def test_x_derivatives_are_positive_where_it_gets_brighter_to_the_right(name):
    ramp = np.tile(np.arange(8, dtype=np.float32), (5, 1))[..., None] / 8
    assert (imfilt.convolve(ramp, imfilt.load_kernel(name))[:, 1:-1] > 0).all()


# --- atomic writes --------------------------------------------------------------------------


def test_atomic_write_keeps_the_old_bytes_when_writing_fails(tmp_path):
    target = tmp_path / "o.png"
    target.write_bytes(b"old bytes")

    def half_then_fail(f):
        f.write(b"half a new file")
        raise OSError("disk full")

    with pytest.raises(InputError, match="o.png: cannot write \\(disk full\\)"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old bytes" and os.listdir(tmp_path) == ["o.png"]


def test_write_image_keeps_the_old_file_when_encoding_fails(tmp_path):
    """BMP holds no grey + alpha: Pillow refuses while encoding, after the file would be open."""
    target = tmp_path / "o.bmp"
    target.write_bytes(b"old bytes")
    with pytest.raises(InputError, match="o.bmp: cannot write"):
        write_image(target, UNIT[..., :2])
    assert target.read_bytes() == b"old bytes" and os.listdir(tmp_path) == ["o.bmp"]


def test_write_image_replaces_the_file_by_rename(tmp_path):
    """A new file is renamed over the target: another link to the old file keeps its bytes."""
    target, other = tmp_path / "o.png", tmp_path / "other.png"
    other.write_bytes(b"old bytes")
    os.link(other, target)
    write_image(target, UNIT[..., :3])
    assert other.read_bytes() == b"old bytes"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(target.read_bytes()))), PIXELS[..., :3])
    assert sorted(os.listdir(tmp_path)) == ["o.png", "other.png"]


# --- the engine in a forked process -----------------------------------------------------------


def test_a_forked_child_can_use_the_engine_its_parent_used():
    """os.fork (multiprocessing's fork start method): the parent's thread pool has no threads in the child."""
    import signal

    from imfilt.engine.engine import cpu_engine

    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    engine, items = cpu_engine(2), [np.arange(3.0)] * 4
    engine.map(np.square, items)  # the pool and its threads now exist
    pid = os.fork()
    if pid == 0:  # the child: exit 0 if the map finishes, killed by the alarm if it hangs
        signal.alarm(20)
        os._exit(0 if all(list(x) == [0, 1, 4] for x in engine.map(np.square, items)) else 1)
    assert os.waitpid(pid, 0)[1] == 0
