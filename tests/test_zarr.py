"""zarr stores as CLI inputs and OME-Zarr 0.5 outputs: stores written here with the zarr library
itself (an independent writer), outputs read back with it (an independent reader), the whole-image
path against the tiled one, folders and globs, and every error as one line that writes nothing."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.image.io import load
from limits import interrupted

BIN = Path(sys.executable).parent
MULTISCALE_AXES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def imfilt(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def pixels(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def plain_store(path, values, zarr_format=3, chunks=(16, 16)):
    """A plain (H, W) or (H, W, C) zarr array."""
    array = zarr.create_array(str(path), shape=values.shape, dtype=values.dtype, zarr_format=zarr_format,
                              chunks=chunks + values.shape[2:])
    array[...] = values
    return path


def ome_store(path, hwc, axes="cyx", version="0.5", chunk=16):
    """An OME-Zarr image group: NGFF 0.5 on zarr v3 (under "ome"), 0.4 on zarr v2; the (H, W, C)
    values in the axis order given (t and z of size 1), and a half-size level "1" after it."""
    named = {"y": 0, "x": 1, "c": 2} if hwc.ndim == 3 else {"y": 0, "x": 1}
    data = np.transpose(hwc, [named[a] for a in axes if a in named])
    data = np.expand_dims(data, tuple(i for i, a in enumerate(axes) if a in "tz"))
    axes_meta = [{"name": a, "type": MULTISCALE_AXES[a]} for a in axes]
    datasets = [{"path": str(level), "coordinateTransformations": [
        {"type": "scale", "scale": [1.0 if a in "tcz" else 2.0**level for a in axes]}]} for level in (0, 1)]
    multiscales = [{"axes": axes_meta, "datasets": datasets, "name": "test"}]
    if version == "0.5":
        group = zarr.create_group(str(path), zarr_format=3, attributes={"ome": {"version": "0.5", "multiscales": multiscales}})
    else:
        multiscales[0]["version"] = "0.4"
        group = zarr.create_group(str(path), zarr_format=2, attributes={"multiscales": multiscales})
    chunks = tuple(1 if a in "tcz" else chunk for a in axes)
    full = group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=chunks)
    full[...] = data
    half = data[tuple(slice(None, None, 2) if a in "yx" else slice(None) for a in axes)]
    group.create_array("1", shape=half.shape, dtype=data.dtype, chunks=chunks)[...] = half + 1  # not the image
    return path


def read_ome(path) -> tuple[np.ndarray, dict]:
    """An OME-Zarr 0.5 output read with zarr directly: (H, W, C) values and the "ome" attributes."""
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    ome = group.attrs.asdict()["ome"]
    array = group[ome["multiscales"][0]["datasets"][0]["path"]]
    return np.moveaxis(array[...], 0, -1), {"ome": ome, "chunks": array.chunks, "dtype": array.dtype}


# Stores of every kind imfilt reads: (name, writer, (H, W, C) values it holds)
STORES = [
    ("plain-v2-rgb", lambda p, v: plain_store(p, v, zarr_format=2), pixels((37, 29, 3), np.uint8)),
    ("plain-v3-grey-2d", lambda p, v: plain_store(p, v[..., 0]), pixels((37, 29, 1), np.uint16, 1)),
    ("plain-v3-float", plain_store, pixels((21, 40, 2), np.float32, 2)),
    ("ome-0.4-cyx", lambda p, v: ome_store(p, v, "cyx", "0.4"), pixels((37, 29, 3), np.uint16, 3)),
    ("ome-0.4-yx", lambda p, v: ome_store(p, v[..., 0], "yx", "0.4"), pixels((33, 18, 1), np.uint8, 4)),
    ("ome-0.5-cyx", lambda p, v: ome_store(p, v, "cyx"), pixels((37, 29, 4), np.uint8, 5)),
    ("ome-0.5-tczyx", lambda p, v: ome_store(p, v, "tczyx"), pixels((30, 35, 2), np.float32, 6)),
]
MAXVAL = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


@pytest.mark.parametrize("name, write, values", STORES, ids=[s[0] for s in STORES])
def test_a_store_loads_as_its_values_in_unit_range(tmp_path, name, write, values):
    """uint8 -> depth 8, uint16 -> 16 (divided by the full scale), float -> 32 as they are; alpha for 2 and 4
    channels: what a TIFF (integers) or a .npy (floats) of the same values loads as."""
    import tifffile

    loaded = load(write(tmp_path / f"{name}.zarr", values))
    maxval = MAXVAL.get(values.dtype, 1)
    np.testing.assert_array_equal(loaded.pixels, values.astype(np.float32) / np.float32(maxval))
    assert loaded.depth == {255: 8, 65535: 16, 1: 32}[maxval] and loaded.alpha == (values.shape[2] in (2, 4))
    if maxval == 1:
        np.save(tmp_path / "same.npy", values)
        same = load(tmp_path / "same.npy")
    else:
        extras = {"extrasamples": ("unassalpha",)} if values.shape[2] in (2, 4) else {}
        tifffile.imwrite(tmp_path / "same.tif", values if values.shape[2] > 1 else values[..., 0],
                         photometric="rgb" if values.shape[2] >= 3 else "minisblack", **extras)
        same = load(tmp_path / "same.tif")
    np.testing.assert_array_equal(loaded.pixels, same.pixels)
    assert (loaded.depth, loaded.alpha) == (same.depth, same.alpha)


@pytest.mark.parametrize("name, write, values", STORES, ids=[s[0] for s in STORES])
def test_identity_into_ome_zarr_and_back_gives_the_same_pixels(tmp_path, name, write, values):
    """The output is OME-Zarr 0.5 (read here with zarr), at the input's depth; imfilt reads it back unchanged."""
    source = write(tmp_path / f"{name}.zarr", values)
    result = imfilt("apply", source, "-k", "identity", "--alpha", "keep", "-o", tmp_path / "out.zarr")
    assert result.exit_code == 0, result.stderr
    stored, meta = read_ome(tmp_path / "out.zarr")
    np.testing.assert_array_equal(stored, values)
    assert meta["dtype"] == values.dtype
    multiscale = meta["ome"]["multiscales"][0]
    assert meta["ome"]["version"] == "0.5"
    assert [(a["name"], a["type"]) for a in multiscale["axes"]] == [("c", "channel"), ("y", "space"), ("x", "space")]
    assert multiscale["datasets"] == [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * 3}]}]
    assert meta["chunks"] == (values.shape[2], min(256, values.shape[0]), min(256, values.shape[1]))
    again = imfilt("apply", tmp_path / "out.zarr", "-k", "identity", "--alpha", "keep", "-o", tmp_path / "again.zarr")
    assert again.exit_code == 0, again.stderr
    np.testing.assert_array_equal(read_ome(tmp_path / "again.zarr")[0], values)


@pytest.mark.parametrize("depth, dtype", [("8", np.uint8), ("16", np.uint16), ("32", np.float32)])
def test_depth_sets_the_stored_type_and_scaling(tmp_path, depth, dtype):
    values = pixels((20, 24, 3), np.uint8)
    Image.fromarray(values).save(tmp_path / "a.png")
    assert imfilt("apply", tmp_path / "a.png", "-k", "identity", "--depth", depth, "-o", tmp_path / "o.zarr").exit_code == 0
    stored, meta = read_ome(tmp_path / "o.zarr")
    if dtype == np.float32:
        expected = values.astype(np.float32) / np.float32(255)
    else:
        expected = (values.astype(np.int64) * (np.iinfo(dtype).max // 255)).astype(dtype)  # 257 for 16 bits
    assert meta["dtype"] == dtype
    np.testing.assert_array_equal(stored, expected)


OPS = [
    ["apply", "-k", "gaussian:sigma=1.5", "--method", "direct", "--boundary", "mirror"],
    ["apply", "-k", "sobel"],
    ["apply", "-k", "box", "--boundary", "wrap", "--size", "full"],
    ["spectrum"],
    ["lowpass", "--radius", "6", "--profile", "butterworth"],
]


@pytest.mark.parametrize("op", OPS, ids=[" ".join(o) for o in OPS])
@pytest.mark.parametrize("store", ["ome-0.5-cyx", "plain-v2-rgb", "ome-0.4-cyx"])
def test_in_memory_and_tiled_give_the_same_numbers(tmp_path, op, store):
    """--memory small streams the store window by window into OME-Zarr; the whole-image path reads and
    writes it at once: the same float32 values (to float32 rounding: OpenCV rounds by position)."""
    name, write, values = next(s for s in STORES if s[0] == store)
    values = np.concatenate([values, values[::-1]], axis=0)  # 74 rows: several windows with partial ones
    source = write(tmp_path / "in.zarr", values)
    results = {}
    for how, memory in (("whole", "2G"), ("tiled", "30K")):
        out = tmp_path / f"{how}.zarr"
        result = imfilt(op[0], source, *op[1:], "--depth", "32", "-o", out, "--memory", memory, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout).get("tiled", False) == (how == "tiled")
        results[how] = read_ome(out)[0]
    assert results["whole"].shape == results["tiled"].shape
    np.testing.assert_allclose(results["tiled"], results["whole"], rtol=1e-6, atol=1e-6)


def test_a_tiff_streams_into_ome_zarr_and_a_store_into_a_tiff(tmp_path):
    import tifffile

    values = pixels((70, 101, 3), np.uint8, 11)
    tifffile.imwrite(tmp_path / "big.tif", values, tile=(32, 32), photometric="rgb")
    run = imfilt("apply", tmp_path / "big.tif", "-k", "identity", "-o", tmp_path / "big.zarr", "--memory", "100K", "--json")
    assert run.exit_code == 0 and json.loads(run.stdout)["tiled"], run.stderr
    stored, meta = read_ome(tmp_path / "big.zarr")
    np.testing.assert_array_equal(stored, values)
    assert meta["chunks"][0] == 3 and all(c % 16 == 0 for c in meta["chunks"][1:])
    run = imfilt("apply", tmp_path / "big.zarr", "-k", "identity", "-o", tmp_path / "back.tif", "--memory", "100K")
    assert run.exit_code == 0, run.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "back.tif"), values)


def test_mask_out_and_split_channels_write_stores_too(tmp_path):
    values = pixels((16, 20, 3), np.uint8)
    Image.fromarray(values).save(tmp_path / "a.png")
    run = imfilt("lowpass", tmp_path / "a.png", "-R", "4", "-o", tmp_path / "lp.zarr", "--mask-out", tmp_path / "m.zarr")
    assert run.exit_code == 0, run.stderr
    u, v = np.arange(16)[:, None] - 8, np.arange(20)[None, :] - 10
    np.testing.assert_array_equal(read_ome(tmp_path / "m.zarr")[0][..., 0], np.where(u**2 + v**2 <= 16, 255, 0))
    run = imfilt("apply", tmp_path / "a.png", "-k", "identity", "--split-channels", "--out-dir", tmp_path / "s",
                 "--name", "{stem}.{channel}.zarr")
    assert run.exit_code == 0, run.stderr
    for i, channel in enumerate("rgb"):
        np.testing.assert_array_equal(read_ome(tmp_path / "s" / f"a.{channel}.zarr")[0][..., 0], values[..., i])


def test_a_store_in_a_folder_is_one_image_never_descended_into(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(pixels((8, 8, 3), np.uint8)).save(folder / "a.png")
    ome_store(folder / "s.zarr", pixels((9, 7, 3), np.uint8))
    plain_store(folder / "sub" / "t.zarr", pixels((6, 5, 1), np.uint8)[..., 0], zarr_format=2)
    ome_store(folder / "sub" / "nosuffix", pixels((5, 5, 1), np.uint8))
    ome_store(folder / ".hidden.zarr", pixels((5, 5, 1), np.uint8))

    def inputs(*args):
        run = imfilt("apply", *args, "-k", "box", "--out-dir", tmp_path / "out", "--overwrite", "--json")
        assert run.exit_code == 0, run.stderr  # no file inside a store was taken for an image
        return sorted(Path(json.loads(line)["input"]).relative_to(folder).as_posix() for line in run.stdout.splitlines())

    assert inputs(folder) == ["a.png", "s.zarr"]
    assert inputs(folder, "-r") == ["a.png", "s.zarr", "sub/nosuffix", "sub/t.zarr"]
    assert inputs(f"{folder}/**", "-r") == ["a.png", "s.zarr", "sub/nosuffix", "sub/t.zarr"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.box.png", "nosuffix.box.png", "s.box.zarr",
                                                                    "t.box.zarr"]
    # beside the inputs, twice: a re-run never feeds on its own .zarr outputs
    for _ in range(2):
        assert imfilt("apply", folder, "-k", "sobel", "--skip-existing").exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == [".hidden.zarr", "a.png", "a.sobel.png", "s.sobel.zarr",
                                                       "s.zarr", "sub"]


def test_overwrite_replaces_a_store_whole_and_skip_existing_keeps_it(tmp_path):
    Image.fromarray(pixels((10, 12, 3), np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "o.zarr"
    assert imfilt("apply", tmp_path / "a.png", "-k", "box", "-o", out, "--depth", "16").exit_code == 0
    (out / "stray.txt").write_text("from the old store")
    run = imfilt("apply", tmp_path / "a.png", "-k", "box", "-o", out, "--skip-existing", "--json")
    assert run.exit_code == 0 and json.loads(run.stdout)["skipped"] and (out / "stray.txt").exists()
    assert imfilt("apply", tmp_path / "a.png", "-k", "box", "-o", out, "--overwrite", "--depth", "8").exit_code == 0
    assert read_ome(out)[1]["dtype"] == np.uint8 and not (out / "stray.txt").exists()
    (tmp_path / "f.zarr").write_text("a file in the way")  # a file is replaced by a store, as files replace files
    assert imfilt("apply", tmp_path / "a.png", "-k", "box", "-o", tmp_path / "f.zarr", "--overwrite").exit_code == 0
    np.testing.assert_array_equal(read_ome(tmp_path / "f.zarr")[0], read_ome(out)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "f.zarr", "o.zarr"]  # no temporary folder left


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """Good and bad stores, written with zarr itself."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(pixels((12, 16, 3), np.uint8)).save("a.png")
    ome_store(Path("s.zarr"), pixels((12, 16, 3), np.uint8))
    ome_store(Path("t.zarr"), pixels((12, 16, 3), np.uint8, 1))
    ome_store(Path("exists.zarr"), pixels((4, 4, 1), np.uint8))
    zarr.create_group("nomultiscales.zarr", zarr_format=3, attributes={"title": "not an image"})
    plain_store(Path("four.zarr"), pixels((2, 5, 6, 3), np.uint8), chunks=(1, 4))
    plain_store(Path("complex.zarr"), np.zeros((5, 6), np.complex64))
    plain_store(Path("bool.zarr"), np.zeros((5, 6), bool))
    nan = pixels((8, 8, 1), np.float32)
    nan[2, 3] = np.nan
    plain_store(Path("nan.zarr"), nan)
    for name, axes, shape in (("time.zarr", "tcyx", (3, 1, 6, 6)), ("depth.zarr", "czyx", (1, 4, 6, 6)),
                              ("angles.zarr", "ayx", (1, 6, 6))):
        group = zarr.create_group(name, zarr_format=3, attributes={"ome": {"version": "0.5", "multiscales": [
            {"axes": [{"name": a} for a in axes], "datasets": [{"path": "0"}]}]}})
        group.create_array("0", shape=shape, dtype=np.uint8, chunks=shape)
    ome_store(Path("nodataset.zarr"), pixels((6, 6, 1), np.uint8))
    shutil.rmtree("nodataset.zarr/0")
    plain_store(Path("badjson.zarr"), pixels((6, 6), np.uint8))
    Path("badjson.zarr/zarr.json").write_text("{ not json")
    plain_store(Path("badchunk.zarr"), pixels((32, 32), np.uint8), chunks=(16, 16))
    Path("badchunk.zarr/c/1/1").write_bytes(b"garbage, not zstd")
    Path("plainfolder.zarr").mkdir()
    (Path("plainfolder.zarr") / "notes.txt").write_text("a user's folder")
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder under folder, hidden ones too."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


ERRORS = [
    # inputs that are no image: that input fails (exit 1)
    (["apply", "nomultiscales.zarr", "-k", "box", "-o", "o.zarr"], 1, "nomultiscales.zarr: a zarr group without OME-Zarr multiscales"),
    (["apply", "four.zarr", "-k", "box", "-o", "o.zarr"], 1, "four.zarr: a zarr image must be (H, W) or (H, W, C)"),
    (["apply", "complex.zarr", "-k", "box", "-o", "o.zarr"], 1, "complex.zarr: a zarr image must hold real numbers"),
    (["apply", "bool.zarr", "-k", "box", "-o", "o.zarr"], 1, "must hold real numbers, not bool"),
    (["apply", "nan.zarr", "-k", "box", "-o", "o.zarr"], 1, "nan.zarr: 1 sample is NaN or infinite"),
    (["apply", "nan.zarr", "-k", "box", "-o", "o.zarr", "--memory", "1K"], 1, "nan.zarr: has NaN or infinite"),
    (["apply", "time.zarr", "-k", "box", "-o", "o.zarr"], 1, "time.zarr: has 3 time points"),
    (["spectrum", "depth.zarr", "-o", "o.zarr"], 1, "depth.zarr: has 4 z planes"),
    (["apply", "angles.zarr", "-k", "box", "-o", "o.zarr"], 1, "OME-Zarr axes a,y,x"),
    (["apply", "nodataset.zarr", "-k", "box", "-o", "o.zarr"], 1, "nodataset.zarr: malformed OME-Zarr multiscales"),
    (["apply", "badjson.zarr", "-k", "box", "-o", "o.zarr"], 1, "badjson.zarr: not a zarr store, or a corrupt one"),
    (["apply", "badchunk.zarr", "-k", "box", "-o", "o.zarr"], 1, "badchunk.zarr: truncated or corrupt zarr chunk"),
    (["apply", "badchunk.zarr", "-k", "box", "-o", "o.zarr", "--memory", "1K"], 1, "truncated or corrupt zarr chunk"),
    (["apply", "s.zarr", "-k", "box", "-o", "o.jpg", "--memory", "1K"], 1, "streamed only into .tif, .tiff, .npy, .zarr, .png"),
    # outputs: a store is a folder, and gets every check a file gets (exit 2, nothing read)
    (["apply", "a.png", "-k", "box", "-o", "exists.zarr"], 2, "exists.zarr: exists; use --overwrite"),
    (["apply", "s.zarr", "-k", "box", "-o", "s.zarr", "--overwrite"], 2, "both an input and an output"),
    (["apply", "s.zarr", "t.zarr", "-k", "box", "--out-dir", "o", "--name", "x.zarr"], 2, "would both write o/x.zarr"),
    (["apply", "s.zarr", "-k", "box", "-o", "s.zarr/o.zarr"], 2, "would be written inside the input s.zarr"),
    (["apply", "s.zarr", "-k", "box", "--out-dir", "s.zarr"], 2, "would be written inside the input s.zarr"),
    (["lowpass", "s.zarr", "-R", "3", "-o", "lp.zarr", "--mask-out", "s.zarr"], 2, "both an input and an output"),
    (["apply", "a.png", "-k", "box", "-o", "plainfolder.zarr", "--overwrite"], 2, "is a folder, not a zarr store"),
    (["apply", "a.png", "-k", "box", "-o", "-", "--format", "zarr"], 2, "a zarr store is a folder: use -o OUT.zarr"),
]


@pytest.mark.parametrize("args, code, message", ERRORS, ids=[" ".join(a)[:60] for a, _, _ in ERRORS])
def test_every_zarr_error_is_one_line_and_writes_nothing(work, args, code, message):
    before = snapshot(work)
    result = imfilt(*args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.stderr
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in lines[0]
    assert snapshot(work) == before  # nothing written, no temporary folder, inputs untouched


def test_a_store_that_fails_mid_write_leaves_nothing(work):
    """A damaged chunk in the lower half: the tiled run has written part of the output when it fails."""
    values = pixels((64, 64), np.uint8)
    plain_store(work / "late.zarr", values, chunks=(16, 16))
    (work / "late.zarr" / "c" / "3" / "0").write_bytes(b"damaged")
    result = imfilt("apply", "late.zarr", "-k", "box", "-o", "out.zarr", "--memory", "4K")
    assert result.exit_code == 1 and "truncated or corrupt zarr chunk" in result.stderr
    assert not (work / "out.zarr").exists() and not list(work.glob(".out.zarr*"))


def test_ctrl_c_while_streaming_into_a_store_leaves_no_output(tmp_path):
    source = plain_store(tmp_path / "big.zarr", pixels((1024, 1024, 3), np.uint8), chunks=(256, 256))
    code, stderr = interrupted(["apply", source, "-k", "gaussian:sigma=4", "--method", "direct", "-o",
                                tmp_path / "out.zarr", "--memory", "200K"],  # interrupted once the output holds chunks
                               ready=lambda: bool(list(tmp_path.glob(".out.zarr.*.part/out.zarr/0/c/*"))))
    assert code == 130 and b"Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zarr"]


def test_dry_run_reads_a_stores_shape(work):
    run = imfilt("apply", "s.zarr", "-k", "box", "-o", "o.zarr", "--dry-run", "--json")
    assert run.exit_code == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[0])["shape"] == [12, 16, 3]
    assert not os.path.exists(work / "o.zarr")


def test_after_a_signal_the_partial_folder_of_a_store_is_removed(work):
    """What a signal cut off between a store's temporary folder and its clean-up goes too."""
    from imfilt.ops.operations import Apply
    from imfilt.ops.kernels import load_kernel
    from imfilt.run.planning import Settings, plan, remove_partial_files

    jobs = plan(["a.png"], [Apply(load_kernel("box"))], Settings(), out="o.zarr")
    partial = work / ".o.zarr.x1y2.part" / "o.zarr" / "0"
    partial.mkdir(parents=True)
    (partial / "zarr.json").write_text("{}")
    remove_partial_files(jobs)
    assert not (work / ".o.zarr.x1y2.part").exists() and (work / "s.zarr").is_dir()


def test_an_ome_dataset_read_directly_keeps_its_axes(tmp_path):
    """The array "0" of imfilt's own OME-Zarr output is (C, H, W) with dimension names c, y, x:
    read directly it is the same image (it was read as 3 rows of 200 columns with H channels)."""
    from imfilt.image.io import load

    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert imfilt("apply", tmp_path / "a.png", "-k", "box", "-o", tmp_path / "s.zarr").exit_code == 0
    group, dataset = load(str(tmp_path / "s.zarr")), load(str(tmp_path / "s.zarr" / "0"))
    assert dataset.pixels.shape == (30, 20, 3)
    assert np.array_equal(group.pixels, dataset.pixels)


def test_skip_existing_does_not_take_a_plain_folder_for_a_finished_store(tmp_path):
    """An empty folder named out.zarr is not an output that was written: --skip-existing goes on to
    write it, which refuses (it is not a store) as --overwrite does; it was reported skipped."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "out.zarr").mkdir()
    result = imfilt("apply", tmp_path / "a.png", "-k", "box", "-o", tmp_path / "out.zarr", "--skip-existing", "--json")
    assert result.exit_code == 1 and "is a folder, not a zarr store" in result.stderr
    assert list((tmp_path / "out.zarr").iterdir()) == []


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 70), cuts=st.lists(st.integers(1, 69), max_size=5), step=st.sampled_from([7, 16, 64]))
def test_bands_of_any_heights_write_the_whole_image_s_store(tmp_path_factory, height, cuts, step):
    """An image that fits, streamed in bands, writes the store a whole write does, file for file
    (omezarr._chunk_rows gathers the bands into whole rows of chunks, so each chunk is written
    once, not read back and compressed again for each band that reaches into it)."""
    from imfilt.image.omezarr import write_ome_zarr

    folder = tmp_path_factory.mktemp("bands")
    values = np.random.default_rng(height).integers(0, 255, (height, 9, 3)).astype(np.uint8)
    bounds = [0, *sorted({c for c in cuts if c < height}), height]
    bands = [(slice(a, b), slice(0, 9), values[a:b]) for a, b in zip(bounds, bounds[1:])]
    write_ome_zarr(str(folder / "bands" / "img.zarr"), values.shape, values.dtype, iter(bands), (step, step))
    write_ome_zarr(str(folder / "whole" / "img.zarr"), values.shape, values.dtype,
                   [(slice(0, height), slice(0, 9), values)], (step, step))

    def files(store):
        return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}

    assert files(folder / "bands" / "img.zarr") == files(folder / "whole" / "img.zarr")


def test_writers_that_end_at_once_do_not_wait_for_each_other(tmp_path):
    """Each writer, as it ends, waits for zarr's unfinished writes (io.remove_tree). Writers that
    ended at once waited for each other's wait until its timeout (10 s for each output of a
    --split-channels run, in a process where zarr had written before)."""
    import sys
    import threading
    import time

    import zarr

    from imfilt.image import io

    zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 4), dtype="f4")[...] = 1  # zarr's I/O loop runs
    loop = sys.modules["zarr.core.sync"].loop[0]
    loop.call_soon_threadsafe(time.sleep, 0.5)  # the loop busy: the writers' waits arrive on it together
    threads = [threading.Thread(target=io._finish_zarr_writes, kwargs={"timeout": 20}) for _ in range(4)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - start < 10  # a deadlock check: it ends at once, or after the 20 s timeout
