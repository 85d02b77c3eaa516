"""TIFF Orientation tags: the tiled path turns the image exactly as the whole-image path does."""

from dataclasses import replace

import numpy as np
import pytest
import tifffile

from imfilt.engine import ndfilters
from imfilt.engine.engine import cpu_engine
from imfilt.ops.frequency import Lowpass, Spectrum
from imfilt.image.io import load
from imfilt.ops.kernels import Kernel
from imfilt.ops.operations import Apply
from imfilt.run.planning import Output
from imfilt.run.tiled import apply_windows
from imfilt.run.tiled_fft import run as run_fft
from imfilt.image.tiles import image_shape, open_source

# The TIFF 6.0 table (tag 274): where the stored 0th row and 0th column are in the image as shown,
# and the numpy turn that shows it
SHOWN = {
    1: np.asarray,  # row 0 top, column 0 left
    2: np.fliplr,  # top, right
    3: lambda a: np.rot90(a, 2),  # bottom, right
    4: np.flipud,  # bottom, left
    5: lambda a: np.rot90(np.fliplr(a)),  # left, top: the transpose
    6: lambda a: np.rot90(a, -1),  # right, top: turned a quarter clockwise
    7: lambda a: np.rot90(np.flipud(a)),  # right, bottom: the transverse
    8: np.rot90,  # left, bottom: turned a quarter anticlockwise
}
MAXVAL = {np.uint8: 255, np.uint16: 65535, np.float32: 1}
ASYMMETRIC = Kernel("asymmetric", np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0]]))


def _stored(dtype, shape=(37, 53, 3), seed=0):
    values = np.random.default_rng(seed).random(shape)
    return (values * MAXVAL[dtype]).astype(dtype)


def _tiff(path, stored, orientation, **layout):
    tifffile.imwrite(path, stored if stored.shape[2] > 1 else stored[..., 0],
                     photometric="rgb" if stored.shape[2] >= 3 else "minisblack", planarconfig="contig",
                     extratags=[(274, 3, 1, orientation, True)], **layout)
    return str(path)


@pytest.mark.parametrize("orientation", SHOWN)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_whole_image_is_turned_as_the_tiff_table_says(tmp_path, orientation, dtype):
    """8-bit TIFFs through Pillow, 16-bit and float ones through tifffile: all eight turns."""
    stored = _stored(dtype, (5, 7, 3))
    loaded = load(_tiff(tmp_path / "o.tif", stored, orientation))
    expected = SHOWN[orientation](stored).astype(np.float32) / np.float32(MAXVAL[dtype])
    assert np.array_equal(loaded.pixels, expected)


# an 8-bit RGB TIFF in 16x16 tiles, and a 16-bit grey one in strips of 5 rows
LAYOUTS = [(np.uint8, 3, {"tile": (16, 16)}), (np.uint16, 1, {"rowsperstrip": 5})]


@pytest.mark.parametrize("orientation", SHOWN)
@pytest.mark.parametrize("dtype,channels,layout", LAYOUTS)
def test_tiled_apply_equals_whole_for_every_orientation(tmp_path, orientation, dtype, channels, layout):
    """An asymmetric kernel in small windows: a wrong turn, flip or window mapping shows."""
    stored = _stored(dtype, (37, 53, channels), seed=orientation)
    path = _tiff(tmp_path / "o.tif", stored, orientation, **layout)
    whole = load(path)
    assert np.array_equal(whole.pixels, SHOWN[orientation](stored).astype(np.float32) / np.float32(MAXVAL[dtype]))
    engine = replace(cpu_engine(1), filters=ndfilters)  # scipy's filters: the same sums wherever the window is
    source = open_source(path)
    try:
        assert source.shape == whole.pixels.shape == image_shape(path)
        for op in (Apply(ASYMMETRIC), Apply(ASYMMETRIC, mode="wrap", size="full", correlate=True)):
            expected = op.run(whole, engine).pixels
            got = np.full(op.output_shape(*source.shape[:2]) + (expected.shape[2],), np.nan, np.float32)
            for rows, cols, result in apply_windows(op, source, engine, (16, 21)):
                got[rows, cols] = result.pixels
            assert np.array_equal(got, expected), (op, np.nanmax(np.abs(got - expected)))
    finally:
        source.close()


@pytest.mark.parametrize("orientation", SHOWN)
@pytest.mark.parametrize("dtype,channels,layout", LAYOUTS)
def test_out_of_core_fft_equals_whole_for_every_orientation(tmp_path, orientation, dtype, channels, layout):
    stored = _stored(dtype, (37, 53, channels), seed=orientation)
    path = _tiff(tmp_path / "o.tif", stored, orientation, **layout)
    whole = load(path)
    for i, op in enumerate((Spectrum(), Spectrum(phase=True), Lowpass(6), Lowpass(4, profile="gaussian", highpass=True))):
        out = tmp_path / f"out{i}.npy"
        source = open_source(path)
        try:  # a budget small enough for bands of a few rows and blocks of a few columns
            run_fft(source, Output(str(out), op), depth=None, scale="auto", memory=20000, engine=cpu_engine(1),
                    temp_dir=str(tmp_path))
        finally:
            source.close()
        expected = op.run(whole, cpu_engine(1)).pixels
        assert np.array_equal(np.load(out), expected), (op, np.abs(np.load(out) - expected).max())


@pytest.mark.parametrize("orientation", [6, 7])
def test_cli_streams_a_turned_tiff_as_it_reads_it_whole(tmp_path, orientation):
    from typer.testing import CliRunner

    from imfilt.cli.main import app

    path = _tiff(tmp_path / "o.tif", _stored(np.uint8, (40, 70, 3)), orientation, tile=(16, 16))
    for name, memory in (("tiled", "100K"), ("whole", "2G")):
        result = CliRunner().invoke(app, ["apply", path, "-k", "3x2: 1,2,3,-1,0,4", "--scale", "offset", "-o",
                                          str(tmp_path / f"{name}.npy"), "--memory", memory, "--json"])
        assert result.exit_code == 0, result.stderr
        assert ('"tiled": true' in result.stdout) == (name == "tiled")
    got, expected = np.load(tmp_path / "tiled.npy"), np.load(tmp_path / "whole.npy")
    assert got.shape == expected.shape == (70, 40, 3)
    # the CLI's default engine is OpenCV's, which rounds by position in a row (test_tiled.py)
    assert np.abs(got - expected).max() <= 1e-6 * 11
