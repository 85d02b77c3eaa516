"""Image I/O: modes, bit depths, orientation, bad files, atomic writes."""

import io
import os

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from imfilt.errors import InputError
from imfilt.image.io import atomic_write, load, read_image, to_storage, write_image


def test_rgb_png_reads_to_float_in_unit_range(small_rgb):
    loaded = load(small_rgb)
    expected = np.asarray(Image.open(small_rgb), dtype=np.float32) / 255
    assert loaded.depth == 8 and not loaded.alpha and loaded.pixels.dtype == np.float32
    np.testing.assert_array_equal(loaded.pixels, expected)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp", ".webp"])
def test_lossless_8bit_round_trip(tmp_path, small_rgb, suffix):
    pixels = read_image(small_rgb)
    target = tmp_path / f"out{suffix}"
    write_image(target, pixels, depth=8)
    np.testing.assert_array_equal(read_image(target), pixels)  # WebP is written lossless


@pytest.mark.parametrize("suffix, channels", [(".png", 3), (".png", 4), (".png", 1), (".tif", 3), (".tif", 2)])
def test_16bit_round_trip_keeps_16bit_precision(tmp_path, suffix, channels):
    values = np.random.default_rng(1).integers(0, 65536, (9, 7, channels)).astype(np.float32) / 65535
    target = tmp_path / f"deep{suffix}"
    write_image(target, values, depth=16, alpha=channels in (2, 4))
    loaded = load(target)
    assert loaded.depth == 16 and loaded.pixels.shape == (9, 7, channels)
    np.testing.assert_allclose(loaded.pixels, values, atol=1e-7)


def test_float_tiff_keeps_values_unscaled(tmp_path):
    values = np.random.default_rng(2).standard_normal((5, 6, 3)).astype(np.float32)
    write_image(tmp_path / "f.tif", values, depth=32)
    loaded = load(tmp_path / "f.tif")
    assert loaded.depth == 32
    np.testing.assert_array_equal(loaded.pixels, values)


def test_npy_output_is_raw_float32(tmp_path):
    values = np.array([[[-0.5, 2.0, 0.25]]], np.float32)
    write_image(tmp_path / "x.npy", values)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), values)


@pytest.mark.parametrize("mode, channels, alpha", [
    ("P", 3, False), ("1", 1, False), ("L", 1, False), ("LA", 2, True), ("RGBA", 4, True), ("CMYK", 3, False),
])
def test_modes_are_converted(tmp_path, mode, channels, alpha):
    image = Image.new("RGB", (6, 4), (200, 100, 50)).convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image.save(path)
    loaded = load(path)
    assert loaded.pixels.shape == (4, 6, channels) and loaded.alpha == alpha


def test_cmyk_is_read_as_rgb_not_rgba(tmp_path):
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "red.jpg")  # pure red in CMYK
    pixels = read_image(tmp_path / "red.jpg")
    assert pixels.shape[2] == 3
    assert pixels[..., 0].mean() > 0.9 and pixels[..., 1].mean() < 0.1


def test_palette_with_transparency_keeps_alpha(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.save(tmp_path / "p.png", transparency=1)
    loaded = load(tmp_path / "p.png")
    assert loaded.alpha and loaded.pixels[0, 0, 3] == 0 and loaded.pixels[1, 1, 3] == 1


@pytest.mark.parametrize("mode, key", [("RGB", (10, 20, 30)), ("L", 10)])
def test_a_png_transparency_key_becomes_alpha(tmp_path, mode, key):
    """An RGB or grey PNG with a tRNS colour key: pixels of that colour come back transparent."""
    image = Image.new(mode, (5, 3), (200, 100, 50) if mode == "RGB" else 200)
    image.putpixel((1, 2), key)
    image.save(tmp_path / "k.png", transparency=key)
    loaded = load(tmp_path / "k.png")
    assert loaded.alpha and loaded.pixels.shape == (3, 5, 4 if mode == "RGB" else 2)
    assert loaded.pixels[2, 1, -1] == 0 and (np.delete(loaded.pixels[..., -1].ravel(), 2 * 5 + 1) == 1).all()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_8bit_pngs_decode_as_pillow_decodes_them(tmp_path, mode):
    """The fast (OpenCV) PNG decoder keeps Pillow's channel order and values, text chunks or not."""
    rng = np.random.default_rng(9)
    channels = len(mode)
    stored = (rng.random((37, 29, channels)) * 255).astype(np.uint8)
    stored[0, 0, :3] = (255, 0, 0)[:channels]  # a red corner pins the channel order
    image = Image.fromarray(stored[..., 0] if channels == 1 else stored, mode)
    info = PngInfo()
    info.add_text("comment", "made by a test")
    image.save(tmp_path / "x.png", pnginfo=info, dpi=(300, 300))
    expected = np.asarray(Image.open(tmp_path / "x.png"), dtype=np.float32).reshape(37, 29, channels) / 255
    loaded = load(tmp_path / "x.png")
    assert loaded.depth == 8 and loaded.alpha == (mode == "RGBA")
    np.testing.assert_array_equal(loaded.pixels, expected)


def test_a_damaged_png_is_one_message_and_no_decoder_noise(tmp_path, small_rgb, capfd):
    """A flipped bit in the image data: the error names the file, and no library writes to stderr."""
    data = bytearray(small_rgb.read_bytes())
    data[data.index(b"IDAT") + 20] ^= 0xFF
    (tmp_path / "d.png").write_bytes(bytes(data))
    with pytest.raises(InputError, match="d.png"):
        load(tmp_path / "d.png")
    assert capfd.readouterr().err == ""


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 (rotate 90° clockwise to display): a 4x2 stored image shows as 2x4."""
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 255, 255))  # stored top-left -> displayed top-right
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "o.png", exif=exif)
    pixels = read_image(tmp_path / "o.png")
    assert pixels.shape[:2] == (4, 2) and pixels[0, 1, 0] == 1.0


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"hello, I am text", "not an image"),
    (None, "truncated or corrupt"),
])
def test_bad_files_are_input_errors_naming_the_file(tmp_path, small_rgb, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(small_rgb.read_bytes()[:200] if content is None else content)
    with pytest.raises(InputError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load(tmp_path / "nope.png")


def test_decompression_bomb_header_is_refused_unless_allowed(tmp_path):
    """A 10000x10000 PNG header is over a 50M-pixel limit; --max-pixels lifts it deliberately."""
    Image.new("L", (10000, 10000)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="safety limit"):
        load(tmp_path / "big.png", max_pixels=50_000_000)
    with pytest.raises(InputError, match="safety limit"):  # the warning zone is an error too
        load(tmp_path / "big.png", max_pixels=60_000_000)
    assert load(tmp_path / "big.png", max_pixels=100_000_000).pixels.shape == (10000, 10000, 1)


@pytest.mark.parametrize("scale, expected", [
    ("clip", [0, 0, 128, 255]),
    ("abs", [128, 0, 128, 255]),
    ("offset", [0, 128, 255, 255]),
    ("stretch", [0, 85, 170, 255]),
])
def test_scaling_to_8bit(scale, expected):
    values = np.array([[[-0.5], [0.0], [0.5], [1.5]]], np.float32).reshape(1, 4, 1)
    if scale == "stretch":
        values = np.array([0.0, 1.0, 2.0, 3.0], np.float32).reshape(1, 4, 1)
    assert to_storage(values, 8, scale)[0, :, 0].tolist() == expected


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def failing(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.png", failing)
    assert os.listdir(tmp_path) == []


def test_write_to_stdout_buffer(monkeypatch, small_rgb):
    buffer = io.BytesIO()
    monkeypatch.setattr("sys.stdout", type("S", (), {"buffer": buffer})())
    write_image("-", read_image(small_rgb), suffix=".png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_writer_round_trips_through_an_independent_decoder(dtype, channels):
    """imfilt's PNG writer, read back by pypng (which unfilters and inflates on its own)."""
    import png as pypng

    from imfilt.image.png import encode_png

    values = np.random.default_rng(channels).integers(0, np.iinfo(dtype).max + 1, (13, 17, channels)).astype(dtype)
    buffer = io.BytesIO()
    encode_png(values, buffer)
    width, height, rows, info = pypng.Reader(bytes=buffer.getvalue()).asDirect()
    decoded = np.vstack([np.asarray(r) for r in rows]).reshape(height, width, channels)
    assert info["bitdepth"] == (16 if dtype == np.uint16 else 8)
    np.testing.assert_array_equal(decoded, values)


def test_png_bytes_do_not_depend_on_the_thread_count():
    """Several deflate blocks (a 1500x1500 RGB image is ~6.75 MB of scanlines): same bytes on 1 or 2 threads."""
    from imfilt.image.png import encode_png

    values = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3)).astype(np.uint8)
    one, two = io.BytesIO(), io.BytesIO()
    encode_png(values, one, threads=1)
    encode_png(values, two, threads=2)
    assert one.getvalue() == two.getvalue()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(one.getvalue()))), values)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("where", ["before", "after"])  # the eXIf chunk before or after the pixels
def test_16bit_png_turns_by_its_exif_orientation_as_8bit_does(tmp_path, orientation, where):
    """16-bit colour PNGs are decoded by pypng, which knows no eXIf: imfilt turns them itself, as
    Pillow's exif_transpose turns the same picture in 8 bits (they were left as stored)."""
    import io as bytes_io
    import zlib

    import png

    stored = np.random.default_rng(orientation).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    buffer = bytes_io.BytesIO()
    png.Writer(7, 5, greyscale=False, bitdepth=16).write(buffer, stored.reshape(5, -1))
    data = buffer.getvalue()
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw = exif.tobytes()[6:]  # the chunk holds the TIFF structure, without "Exif\0\0"
    chunk = len(raw).to_bytes(4, "big") + b"eXIf" + raw + zlib.crc32(b"eXIf" + raw).to_bytes(4, "big")
    at = 33 if where == "before" else len(data) - 12  # after IHDR, or before IEND
    (tmp_path / "a16.png").write_bytes(data[:at] + chunk + data[at:])
    Image.fromarray((stored >> 8).astype(np.uint8)).save(tmp_path / "a8.png", exif=exif)
    got16, got8 = load(str(tmp_path / "a16.png")), load(str(tmp_path / "a8.png"))
    assert got16.depth == 16 and got16.pixels.shape == got8.pixels.shape
    assert np.array_equal(np.round(got16.pixels * 65535).astype(np.uint16) >> 8, np.round(got8.pixels * 255))
