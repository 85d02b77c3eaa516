"""PNG written band by band (images larger than memory): the same bytes as a whole-image write."""

import io

import numpy as np
import pytest
from PIL import Image

from imfilt.image.io import load, write_image
from imfilt.image.png import PngStream, encode_png
from imfilt.image.tiles import Plan, write_tiles
from limits import run_limited


def _values(shape, dtype, seed=0):
    values = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    values[::5] //= 3  # some rows that repeat less randomly, so deflate finds matches
    return values


def _pypng(data: bytes) -> np.ndarray:
    """An independent decoder (pure Python inflate and unfilter)."""
    import png as pypng

    width, height, rows, info = pypng.Reader(bytes=data).asDirect()
    return np.vstack([np.asarray(r) for r in rows]).reshape(height, width, info["planes"])


@pytest.mark.parametrize("shape,dtype", [((1, 1, 1), np.uint8), ((13, 17, 2), np.uint16), ((40, 9, 3), np.uint8),
                                         ((1500, 1500, 3), np.uint8), ((700, 800, 4), np.uint16)])
@pytest.mark.parametrize("band", [1, 7, 256, 5000])
def test_png_stream_equals_whole_encode_byte_for_byte(shape, dtype, band):
    """Bands of any height give encode_png's bytes (also where deflate blocks span bands)."""
    values = _values(shape, dtype)
    whole, streamed = io.BytesIO(), io.BytesIO()
    encode_png(values, whole, threads=2)
    stream = PngStream(streamed, shape, dtype)
    for top in range(0, shape[0], band):
        stream.write(values[top : top + band])
    stream.close()
    assert streamed.getvalue() == whole.getvalue()
    np.testing.assert_array_equal(_pypng(streamed.getvalue()), values)


def test_png_stream_splits_idat_chunks_at_the_limit():
    """Past the chunk limit (1 GiB in files; 1000 bytes here) the stream goes on in a new IDAT chunk."""
    values = _values((120, 90, 3), np.uint8)
    out = io.BytesIO()
    stream = PngStream(out, values.shape, values.dtype, chunk=1000)
    stream.write(values[:50])
    stream.write(values[50:])
    stream.close()
    data, position, lengths = out.getvalue(), 8, []
    while position < len(data):
        length, tag = int.from_bytes(data[position : position + 4], "big"), data[position + 4 : position + 8]
        if tag == b"IDAT":
            lengths.append(length)
        position += 12 + length
    assert len(lengths) > 3 and max(lengths) == 1000 and all(n == 1000 for n in lengths[:-1])
    np.testing.assert_array_equal(_pypng(data), values)  # pypng checks every CRC
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), values)


def test_png_stream_missing_rows_is_an_error():
    stream = PngStream(io.BytesIO(), (10, 4, 1), np.uint8)
    stream.write(np.zeros((9, 4, 1), np.uint8))
    with pytest.raises(ValueError, match="9 of 10 rows"):
        stream.close()


def _blocks(values, window):
    for rows, cols in Plan(values.shape[0], values.shape[1], window).windows():
        yield rows, cols, values[rows, cols]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_write_tiles_png_equals_write_image(tmp_path, dtype, channels):
    """Row-major windows (16 high, 48 wide: not dividing the image) -> the file write_image makes."""
    values = _values((70, 101, channels), dtype, seed=channels)
    maxval = np.iinfo(dtype).max
    write_tiles(str(tmp_path / "tiled.png"), values.shape, dtype, _blocks(values, (16, 48)), tile=(16, 16))
    write_image(tmp_path / "whole.png", values / np.float32(maxval), depth=8 if dtype == np.uint8 else 16,
                alpha=channels in (2, 4))
    assert (tmp_path / "tiled.png").read_bytes() == (tmp_path / "whole.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiled.png", "whole.png"]


def test_write_tiles_png_failure_leaves_nothing(tmp_path):
    def failing():
        yield from _blocks(_values((64, 40, 3), np.uint8), (16, 40))
        raise RuntimeError("the filter failed")

    with pytest.raises(RuntimeError):
        write_tiles(str(tmp_path / "o.png"), (80, 40, 3), np.uint8, failing(), tile=(16, 16))
    assert list(tmp_path.iterdir()) == []


# --- the command line: `--memory` small enough that these small images stream ----------------


def _run(*args):
    from typer.testing import CliRunner

    from imfilt.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _tiff(path, image):
    import tifffile

    extras = {"extrasamples": ("unassalpha",)} if image.shape[2] in (2, 4) else {}
    tifffile.imwrite(path, image if image.shape[2] > 1 else image[..., 0], tile=(32, 32), compression="zlib",
                     photometric="rgb" if image.shape[2] >= 3 else "minisblack", planarconfig="contig", **extras)
    return path


IMAGES = [(np.uint8, 3), (np.uint8, 1), (np.uint16, 4), (np.uint16, 2)]


@pytest.mark.parametrize("dtype,channels", IMAGES)
@pytest.mark.parametrize("args", [
    ["spectrum"],
    ["spectrum", "--phase", "--gray"],
    ["lowpass", "--radius", "9", "--mask-out", "{out}.mask.png"],
    ["lowpass", "--radius", "6", "--band", "2", "--profile", "butterworth", "--depth", "8"],
    ["apply", "-k", "identity", "--depth", "16"],
])
def test_cli_tiled_png_equals_whole_png_byte_for_byte(tmp_path, dtype, channels, args):
    """Streamed (--memory 100K: 16-row windows) and whole-image PNGs are the same files."""
    image = _values((70, 101, channels), dtype, seed=3)
    source = _tiff(tmp_path / "in.tif", image)
    for name, memory in (("tiled", "100K"), ("whole", "2G")):
        out = tmp_path / f"{name}.png"
        result = _run(*[a.replace("{out}", str(out)) for a in args], source, "-o", out, "--memory", memory, "--json")
        assert result.exit_code == 0, result.stderr
        assert ('"tiled": true' in result.stdout) == (name == "tiled")
    assert (tmp_path / "tiled.png").read_bytes() == (tmp_path / "whole.png").read_bytes()
    if "--mask-out" in args:
        assert (tmp_path / "tiled.png.mask.png").read_bytes() == (tmp_path / "whole.png.mask.png").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("dtype,channels", IMAGES)
def test_cli_tiled_apply_png_holds_the_tiled_tiffs_pixels(tmp_path, dtype, channels):
    """A streamed apply (OpenCV rounds by position, so not always whole's bytes): PNG = TIFF, pixel for pixel."""
    source = _tiff(tmp_path / "in.tif", _values((70, 101, channels), dtype, seed=4))
    for kernel in ("gaussian:sigma=1.5", "sobel"):
        for suffix in (".png", ".tif"):
            result = _run("apply", source, "-k", kernel, "-o", tmp_path / f"o{suffix}", "--memory", "100K", "--json",
                          "--overwrite")
            assert result.exit_code == 0 and '"tiled": true' in result.stdout, result.stderr
        png, tif = load(str(tmp_path / "o.png")), load(str(tmp_path / "o.tif"))
        assert (png.depth, png.alpha) == (tif.depth, tif.alpha)
        np.testing.assert_array_equal(png.pixels, tif.pixels)


# --- outputs larger than their format holds: refused at planning ------------------------------


def _wide(tmp_path, width, height=3):
    import tifffile

    path = tmp_path / f"wide{width}.tif"
    tifffile.imwrite(path, np.full((height, width), 200, np.uint8), tile=(16, 256))
    return path


@pytest.mark.parametrize("args,output,limit", [
    (["apply", "-k", "box"], "o.webp", 16383),
    (["apply", "-k", "box", "--size", "full"], "o.webp", 16383),  # 16382 + 2
    (["spectrum"], "o.jpg", 65500),
    (["lowpass", "--radius", "3", "--mask-out", "{dir}/m.jpeg"], "o.tif", 65500),
])
def test_outputs_larger_than_their_format_are_refused_at_planning(tmp_path, args, output, limit):
    """Exit 2, one line naming the file and the limit, nothing written (whole and streamed alike)."""
    width = 16382 if "full" in args else limit + 1
    source = _wide(tmp_path, width)
    for memory in ("2G", "1K"):
        result = _run(*[a.replace("{dir}", str(tmp_path)) for a in args], source, "-o", tmp_path / output,
                      "--memory", memory)
        assert result.exit_code == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and f"at most {limit} pixels a side" in result.stderr
        assert [p.name for p in tmp_path.iterdir()] == [source.name]


def test_outputs_within_their_format_pass(tmp_path):
    """16384 wide with --size valid and a 3x3 kernel is 16382: a WebP holds it."""
    source = _wide(tmp_path, 16384)
    result = _run("apply", "-k", "box", "--size", "valid", source, "-o", tmp_path / "o.webp")
    assert result.exit_code == 0, result.stderr
    assert Image.open(tmp_path / "o.webp").size == (16382, 1)


# --- PNG and JPEG inputs larger than memory: decoded top to bottom by libvips -------------------


def _png16(path, values):
    import png as pypng

    height, width, channels = values.shape
    writer = pypng.Writer(width, height, greyscale=channels < 3, alpha=channels in (2, 4), bitdepth=16)
    with open(path, "wb") as f:
        writer.write(f, values.reshape(height, -1))


def _photo(height=70, width=101):
    """Smooth colour with noise: what JPEG is made for (random noise would be all edge MCUs)."""
    y, x = np.mgrid[:height, :width]
    rng = np.random.default_rng(5)
    colour = np.stack([128 + 90 * np.sin(x / 7), 128 + 90 * np.cos(y / 5), 128 + 60 * np.sin((x + y) / 11)], -1)
    return np.clip(colour + rng.normal(0, 12, colour.shape), 0, 255).astype(np.uint8)


def _save(path, kind):
    """One streamable file of each kind the whole-image path reads (Pillow or pypng writes it)."""
    photo = _photo()
    if kind.endswith("16"):
        channels = {"grey16": 1, "la16": 2, "rgb16": 3, "rgba16": 4}[kind]
        _png16(path, _values((70, 101, channels), np.uint16, seed=channels))
        return
    image = {
        "grey": Image.fromarray(photo[..., 0]), "la": Image.fromarray(photo[..., :2], "LA"),
        "rgb": Image.fromarray(photo), "rgba": Image.fromarray(np.dstack([photo, photo[..., 1]])),
        "palette": Image.fromarray(photo).quantize(60), "grey-key": Image.fromarray(photo[..., 0]),
    }.get(kind, Image.fromarray(photo if kind != "jpeg-grey" else photo[..., 0]))
    options = {"palette": {"transparency": 5}, "grey-key": {"transparency": 128}, "jpeg-444": {"subsampling": 0},
               "jpeg": {"quality": 85}, "jpeg-grey": {}}.get(kind, {})
    image.save(path, format="JPEG" if kind.startswith("jpeg") else "PNG", **options)


KINDS = ["grey", "la", "rgb", "rgba", "palette", "grey-key", "grey16", "la16", "rgb16", "rgba16", "jpeg", "jpeg-444",
         "jpeg-grey"]


@pytest.mark.parametrize("kind", KINDS)
def test_decoded_rows_equal_the_whole_image_decode(tmp_path, kind):
    """libvips's rows = io.load's pixels (Pillow, OpenCV, pypng), read in bands and wrap-mapped windows."""
    from imfilt.image.tiles import extend_index, open_source

    path = tmp_path / ("in.jpg" if kind.startswith("jpeg") else "in.png")
    _save(path, kind)
    whole = load(str(path))
    source = open_source(str(path))
    height, width, _ = source.shape
    assert (source.depth, source.alpha, source.shape) == (whole.depth, whole.alpha, whole.pixels.shape)
    bands = [source.window(np.arange(top, min(top + 16, height)), np.arange(width)) for top in range(0, height, 16)]
    np.testing.assert_array_equal(np.concatenate(bands), whole.pixels)
    rows, cols = extend_index(-5, 20, height, "wrap"), extend_index(-3, width + 3, width, "wrap")
    for _ in range(2):  # the far edge's rows (kept), then the top again
        np.testing.assert_array_equal(source.window(rows, cols), whole.pixels[rows][:, cols])
    np.testing.assert_array_equal(source.window(np.arange(3, 9), np.arange(width)), whole.pixels[3:9])  # from the top again


@pytest.mark.parametrize("kind", ["rgb", "rgba16", "palette", "jpeg"])
@pytest.mark.parametrize("args", [
    ["apply", "-k", "3x2: 1,2,3,-1,0,4", "--boundary", "wrap", "--scale", "stretch"],
    ["apply", "-k", "gaussian:sigma=2", "-k", "sobel"],
])
def test_cli_streamed_png_and_jpeg_inputs_equal_a_tiff_of_their_pixels(tmp_path, kind, args):
    """A streamed PNG/JPEG gives the files a streamed TIFF of the same decoded pixels gives."""
    import tifffile

    path = tmp_path / ("in.jpg" if kind.startswith("jpeg") else "in.png")
    _save(path, kind)
    whole = load(str(path))
    stored = np.rint(whole.pixels * (65535 if whole.depth == 16 else 255)).astype(np.uint16 if whole.depth == 16 else np.uint8)
    tiff = _tiff(tmp_path / "same.tif", stored)
    assert tifffile.imread(tiff).shape[:2] == stored.shape[:2]
    for source in (path, tiff):
        out = tmp_path / source.stem
        result = _run(*args, source, "--out-dir", out, "--name", "{op}.png", "--memory", "100K", "--json")
        assert result.exit_code == 0 and result.stdout.count('"tiled": true') == args.count("-k"), result.stderr
    for file in sorted((tmp_path / "same").iterdir()):
        assert (tmp_path / path.stem / file.name).read_bytes() == file.read_bytes()


@pytest.mark.parametrize("kind", ["rgb", "la16", "jpeg", "jpeg-grey"])
@pytest.mark.parametrize("args", [["spectrum", "--window", "hann"], ["lowpass", "--radius", "7", "--highpass"]])
def test_cli_streamed_png_and_jpeg_inputs_equal_whole_images(tmp_path, kind, args):
    """Spectrum and lowpass out of core are bit-identical: streamed and whole give the same file."""
    path = tmp_path / ("in.jpg" if kind.startswith("jpeg") else "in.png")
    _save(path, kind)
    for name, memory in (("tiled", "100K"), ("whole", "2G")):
        result = _run(*args, path, "-o", tmp_path / f"{name}.png", "--memory", memory, "--json", "--temp-dir", tmp_path)
        assert result.exit_code == 0 and ('"tiled": true' in result.stdout) == (name == "tiled"), result.stderr
    assert (tmp_path / "tiled.png").read_bytes() == (tmp_path / "whole.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "tiled.png", "whole.png"])


def _refused(path):
    photo = Image.fromarray(_photo())
    if path.name == "progressive.jpg":
        photo.save(path, progressive=True)
    elif path.name == "cmyk.jpg":
        photo.convert("CMYK").save(path)
    elif path.name == "rotated.jpg":
        exif = Image.Exif()
        exif[0x0112] = 6
        photo.save(path, exif=exif)
    elif path.name == "interlaced.png":
        import png as pypng

        with open(path, "wb") as f:
            pypng.Writer(101, 70, greyscale=False, interlace=True).write(f, _photo().reshape(70, -1))
    elif path.name == "animated.png":
        photo.save(path, save_all=True, append_images=[photo.rotate(90)])
    elif path.name == "truncated.png":
        photo.save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif path.name == "truncated.jpg":
        photo.save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        photo.save(path)  # .webp, .bmp: no streaming decoder
    return path


@pytest.mark.parametrize("name,message", [
    ("progressive.jpg", "a progressive JPEG is decoded whole by any decoder"),
    ("interlaced.png", "an interlaced PNG is decoded whole by any decoder"),
    ("cmyk.jpg", "a CMYK JPEG is not read in bands"),
    ("rotated.jpg", "an EXIF-rotated image is not read in bands"),
    ("animated.png", "has 2 frames"),
    ("truncated.png", "truncated or corrupt image"),
    ("truncated.jpg", "truncated or corrupt image"),
    ("a.webp", "only TIFF, PNG, JPEG, .npy and zarr images are read in tiles"),
])
def test_cli_inputs_that_do_not_stream_fail_with_one_line(tmp_path, name, message):
    """Exit 1, one line naming the file and the reason, no output and nothing left behind."""
    source = _refused(tmp_path / name)
    result = _run("apply", source, "-k", "box", "-o", tmp_path / "o.png", "--memory", "100K")
    assert result.exit_code == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{source}: ") and message in lines[0], result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_streamed_png_and_jpeg_on_dask_are_byte_identical_to_local(tmp_path):
    """Dask workers open the PNG/JPEG by path and decode down to their stripes; the PNG they make is the local one."""
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    sources = []
    for kind, name in (("rgba", "in.png"), ("jpeg", "in.jpg")):
        _save(tmp_path / name, kind)
        sources.append(tmp_path / name)
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      processes=True) as cluster:
        for source in sources:
            remote = _run("apply", source, "-k", "gaussian:sigma=2", "-o", tmp_path / f"remote.{source.name}.png",
                          "--memory", "100K", "--scheduler", cluster.scheduler_address, "--json")
            assert remote.exit_code == 0 and '"tiled": true' in remote.stdout, remote.stderr
    for source in sources:
        local = _run("apply", source, "-k", "gaussian:sigma=2", "-o", tmp_path / f"local.{source.name}.png",
                     "--memory", "100K")
        assert local.exit_code == 0, local.stderr
        assert (tmp_path / f"remote.{source.name}.png").read_bytes() == (tmp_path / f"local.{source.name}.png").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_png_to_png_runs_under_a_hard_address_space_limit(tmp_path):
    """6000x6000 RGB PNG in and out under RLIMIT_AS = 500 MB, where the whole-image path failed: one apply
    output of an image that fits goes in bands too (the default), the same bytes as a --memory stream."""

    import scipy.ndimage as ndi

    height = width = 6000
    source = tmp_path / "big.png"
    with open(source, "wb") as f:  # written band by band: the test never holds the image either
        stream = PngStream(f, (height, width, 3), np.uint8)
        x = np.arange(width)
        for top in range(0, height, 500):
            y = np.arange(top, top + 500)[:, None]
            stream.write(np.stack(np.broadcast_arrays(x % 251, y % 241, (x * y) % 239), -1).astype(np.uint8))
        stream.close()
    def limited(memory, output):
        return run_limited(500, "apply", source, "-k", "box", "-o", output, "--memory", memory,
                           "--max-pixels", "40000000")[0]

    fits = limited("100G", tmp_path / "fits.png")  # it fits --memory: bands all the same (whole, OpenCV's decoder ran out)
    assert fits.returncode == 0 and fits.stderr == "", fits.stderr
    streamed = limited("64M", tmp_path / "streamed.png")
    assert streamed.returncode == 0 and streamed.stderr == "", streamed.stderr
    assert (tmp_path / "fits.png").read_bytes() == (tmp_path / "streamed.png").read_bytes()
    from imfilt.image.tiles import open_source

    got, pixels = open_source(str(tmp_path / "streamed.png")), open_source(str(source))
    for top, left in ((0, 0), (2345, 3987), (5990, 5990)):  # rows in order: the decoder goes top to bottom
        rows, cols = np.arange(max(0, top - 1), min(height, top + 11)), np.arange(max(0, left - 1), min(width, left + 11))
        block = np.moveaxis(pixels.window(rows, cols), -1, 0)
        expected = np.stack([ndi.correlate(plane, np.full((3, 3), 1 / 9, np.float32), mode="reflect")
                             for plane in block], -1)
        r, c = top - rows[0], left - cols[0]
        window = got.window(np.arange(top, min(top + 10, height)), np.arange(left, min(left + 10, width)))
        # OpenCV's filters equal scipy's to float32 rounding: a pixel may round the other way
        assert np.abs(window - expected[r : r + window.shape[0], c : c + window.shape[1]]).max() <= 1 / 255 + 1e-6


def test_image_shape_reads_headers_past_pillows_own_limit(tmp_path, monkeypatch):
    """--max-pixels decides, not Pillow's bomb limit (which made the shape unknown, so a huge PNG
    with --max-pixels raised was decoded whole); a palette counts as the RGBA it decodes to."""
    from imfilt.image.tiles import image_shape

    Image.fromarray(_photo()).save(tmp_path / "rgb.png")
    Image.fromarray(_photo()).quantize(16).save(tmp_path / "palette.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 70x101 is over twice this: Image.open refuses
    assert image_shape(str(tmp_path / "rgb.png")) == (70, 101, 3)
    assert image_shape(str(tmp_path / "palette.png")) == (70, 101, 4)
    assert Image.MAX_IMAGE_PIXELS == 100
