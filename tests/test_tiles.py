"""The tile layer: index maps against numpy's and scipy's own extension, sources, sinks, plans."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from imfilt.errors import InputError
from imfilt.image.io import load
from imfilt.image.tiles import PAD_MODES, Plan, extend_index, open_source, write_tiles

MODES = list(PAD_MODES)
SCIPY_MODE = {"reflect": "reflect", "mirror": "mirror", "nearest": "nearest", "wrap": "grid-wrap", "constant": "constant"}


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 9), before=st.integers(0, 30), after=st.integers(0, 30), mode=st.sampled_from(MODES))
def test_index_map_is_numpy_pad(n, before, after, mode):
    """Halos wider than the line too: numpy.pad of the indices, -1 standing for cval."""
    line = np.arange(n)
    expected = np.pad(line, (before, after), mode=PAD_MODES[mode], **({"constant_values": -1} if mode == "constant" else {}))
    assert extend_index(-before, n + after, n, mode).tolist() == expected.tolist()


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 9), reach=st.integers(0, 25), mode=st.sampled_from(MODES))
def test_index_map_is_scipy_extension(n, reach, mode):
    """scipy.ndimage's extension: a one-tap kernel at its far ends reads x[i - reach] and x[i + reach]."""
    x = np.arange(1.0, n + 1)  # 0 is cval: no index reads it
    weights = np.zeros(2 * reach + 1)
    for tap, shift in ((0, -reach), (-1, reach)):
        weights[:] = 0
        weights[tap] = 1
        seen = ndi.correlate1d(x, weights, mode=SCIPY_MODE[mode], cval=0.0)
        index = extend_index(shift, n + shift, n, mode)
        assert seen.tolist() == np.where(index >= 0, x[index], 0.0).tolist()


def test_runs_read_each_consecutive_stretch_once(tmp_path):
    image = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    np.save(tmp_path / "a.npy", image)
    source = open_source(str(tmp_path / "a.npy"))
    rows, cols = extend_index(-3, 8, 5, "wrap"), extend_index(-2, 9, 7, "mirror")
    assert np.array_equal(source.window(rows, cols), image[rows][:, cols])
    const = source.window(extend_index(-2, 6, 5, "constant"), extend_index(0, 7, 7, "constant"), cval=0.25)
    assert np.array_equal(const, np.pad(image, ((2, 1), (0, 0), (0, 0)), constant_values=0.25))


def _photo(height, width, channels, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    return (rng.random((height, width, channels)) * top).astype(dtype)


@pytest.mark.parametrize("layout", ["tiled", "striped", "bigtiff"])
@pytest.mark.parametrize("dtype,channels", [(np.uint8, 3), (np.uint8, 1), (np.uint16, 4), (np.float32, 3)])
def test_tiff_windows_equal_io_load(tmp_path, layout, dtype, channels):
    """Any window of a tiled or striped TIFF, in io.load's float32 units, partial tiles included."""
    image = _photo(45, 70, channels, dtype)
    path = str(tmp_path / "a.tif")
    kwargs = {"tiled": {"tile": (16, 32)}, "striped": {"rowsperstrip": 7}, "bigtiff": {"tile": (16, 16), "bigtiff": True}}[layout]
    extras = {"extrasamples": ("unassalpha",)} if channels == 4 else {}
    tifffile.imwrite(path, image if channels > 1 else image[..., 0], photometric="rgb" if channels >= 3 else "minisblack",
                     compression="zlib", **kwargs, **extras)
    source = open_source(path)
    assert source.shape == (45, 70, channels)
    rows, cols = np.arange(13, 41), np.arange(5, 66)
    window = source.window(rows, cols)
    if layout != "bigtiff":  # Pillow reads no BigTIFF; the values are the file's either way
        whole = load(path)
        assert source.alpha == whole.alpha and source.depth == whole.depth
        assert np.array_equal(window, whole.pixels[13:41, 5:66])
    maxval = {np.uint8: 255, np.uint16: 65535, np.float32: 1}[dtype]
    assert np.array_equal(window, (image[13:41, 5:66] / np.float32(maxval)).astype(np.float32))
    source.close()


def test_npy_and_zarr_sources(tmp_path):
    import zarr

    image = _photo(20, 30, 2, np.uint16)
    np.save(tmp_path / "a.npy", image)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=image.shape, dtype=image.dtype, chunks=(8, 8, 2))
    z[...] = image
    npy, arr = open_source(str(tmp_path / "a.npy")), open_source(str(tmp_path / "a.zarr"))
    rows, cols = np.arange(3, 19), np.arange(0, 30)
    assert np.array_equal(npy.window(rows, cols), load(str(tmp_path / "a.npy")).pixels[3:19])  # unscaled, as io.load
    assert np.array_equal(arr.window(rows, cols), (image[3:19] / np.float32(65535)).astype(np.float32))


def test_sources_refuse_what_does_not_stream(tmp_path):
    from PIL import Image

    Image.fromarray(_photo(8, 8, 3)).save(tmp_path / "a.gif")
    with pytest.raises(InputError, match="only TIFF, PNG, JPEG, .npy and zarr"):
        open_source(str(tmp_path / "a.gif"))
    tifffile.imwrite(tmp_path / "p.tif", _photo(3, 8, 8).transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    with pytest.raises(InputError, match="planar"):
        open_source(str(tmp_path / "p.tif"))
    with pytest.raises(InputError, match="no such file"):
        open_source(str(tmp_path / "missing.tif"))
    # Pillow inverts an 8-bit min-is-white TIFF in memory; tiles would not: refused, not different numbers
    tifffile.imwrite(tmp_path / "w.tif", _photo(8, 8, 1)[..., 0], photometric="miniswhite", tile=(16, 16))
    with pytest.raises(InputError, match="photometric MINISWHITE"):
        open_source(str(tmp_path / "w.tif"))


def _blocks(image, plan):
    for rows, cols in plan.windows():
        yield rows, cols, image[rows, cols]


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".zarr"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_sinks_round_trip(tmp_path, suffix, channels):
    """Windows that do not divide the image (partial tiles at the right and bottom)."""
    image = _photo(50, 77, channels)
    plan = Plan(50, 77, (16, 32))
    path = str(tmp_path / f"out{suffix}")
    write_tiles(path, image.shape, image.dtype, _blocks(image, plan), tile=(16, 16), alpha=channels == 4)
    back = open_source(path)
    assert back.shape == image.shape
    assert np.array_equal(back.read(slice(None), slice(None)), image)
    if suffix == ".tif":
        assert tifffile.TiffFile(path).pages.first.is_tiled
        assert load(path).alpha == (channels == 4)
    assert [p.name for p in tmp_path.iterdir()] == [f"out{suffix}"]  # nothing temporary left


def test_sink_leaves_nothing_on_failure(tmp_path):
    image = _photo(32, 32, 3)

    def failing():
        yield slice(0, 16), slice(0, 32), image[:16]
        raise RuntimeError("boom")

    for suffix in (".tif", ".npy", ".zarr"):
        with pytest.raises(RuntimeError):
            write_tiles(str(tmp_path / f"out{suffix}"), image.shape, image.dtype, failing(), tile=(16, 16))
    assert list(tmp_path.iterdir()) == []


def test_plan_covers_the_output_once():
    plan = Plan(37, 50, (8, 16))
    seen = np.zeros((37, 50), int)
    for rows, cols in plan.windows():
        seen[rows, cols] += 1
        assert rows.stop - rows.start <= 8 and cols.stop - cols.start <= 16
    assert (seen == 1).all()


def test_window_for_prefers_whole_rows_and_bounds_both_dimensions_past_them():
    from imfilt.image.tiles import window_for

    # 2 GiB at 192 bytes a pixel: a 20000-wide band of 256 rows (with a 31-pixel halo) fits
    assert window_for(2**31, 192, 31, 20000) == (256, 20000)
    # a band of at least 16 rows, a multiple of 16, within the budget
    tile, width = window_for(2**20 * 100, 192, 10, 10000)
    assert width == 10000 and tile % 16 == 0 and 16 <= tile < 256
    assert (tile + 20) * (width + 20) * 192 <= 2**20 * 100
    # a row too wide for the budget: windows bounded in both dimensions
    tile, width = window_for(2**20 * 100, 192, 10, 10**7)
    assert width < 10**7 and tile % 16 == 0 and width % tile == 0
    assert (tile + 20) * (width + 20) * 192 <= 2**20 * 100
