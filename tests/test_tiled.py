"""Images larger than memory: tiled results against the whole-image path, bit for bit."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataclasses import replace

from imfilt.engine import ndfilters
from imfilt.engine.engine import cpu_engine
from imfilt.image.io import Loaded, unit_pixels
from imfilt.ops.kernels import Kernel, load_kernel
from imfilt.ops.operations import Apply
from imfilt.run.tiled import apply_windows
from imfilt.image.tiles import Source
from limits import interrupted, pattern_tiff, run_limited

MODES = ("reflect", "mirror", "nearest", "wrap", "constant")


def tiled_result(op, image, window, engine):
    """The windows of a tiled run put together (an in-memory source: the same code as a file's)."""
    source = Source("test", image, 32)
    height, width = op.output_shape(*image.shape[:2])
    out = None
    for rows, cols, result in apply_windows(op, source, engine, window):
        if out is None:
            out = np.full((height, width, result.pixels.shape[2]), np.nan, dtype=np.float32)
        out[rows, cols] = result.pixels
    return out


def whole_result(op, image, engine):
    return op.run(Loaded(unit_pixels(image), 32, image.shape[2] in (2, 4)), engine).pixels


@st.composite
def kernels(draw):
    kind = draw(st.sampled_from(["dense", "rank1", "magnitude"]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    values = st.floats(-2, 2, allow_nan=False, width=32)
    if kind == "magnitude":
        return load_kernel(draw(st.sampled_from(["sobel", "prewitt", "scharr"]))), "direct"
    if kind == "rank1":
        column = np.array(draw(st.lists(values, min_size=kh, max_size=kh)))
        row = np.array(draw(st.lists(values, min_size=kw, max_size=kw)))
        weights = np.outer(column, row)
        if not np.any(weights):
            weights[0, 0] = 1.0
        from imfilt.ops.convolution import rank_one_factors

        method = "separable" if rank_one_factors(weights) is not None else "direct"
        return Kernel("rank1", weights), draw(st.sampled_from([method, "direct"]))
    weights = np.array(draw(st.lists(values, min_size=kh * kw, max_size=kh * kw))).reshape(kh, kw)
    return Kernel("dense", weights), "direct"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 13), width=st.integers(1, 13), channels=st.integers(1, 4),
    kernel_method=kernels(), mode=st.sampled_from(MODES), size=st.sampled_from(["same", "valid", "full"]),
    correlate=st.booleans(), cval=st.sampled_from([0.0, 0.1, -0.7]), gray=st.booleans(),
    alpha=st.sampled_from(["premultiply", "keep", "drop"]),
    window=st.tuples(st.integers(1, 16), st.integers(1, 16)), threads=st.sampled_from([1, 2]), seed=st.integers(0, 9),
    filters=st.sampled_from(["ndimage", "opencv"]),
)
def test_tiled_equals_whole_bit_for_bit(height, width, channels, kernel_method, mode, size, correlate, cval, gray,
                                        alpha, window, threads, seed, filters):
    """Direct and separable, every mode, size, kernel kind, cval and alpha handling; windows of
    1x1, smaller than the kernel, not dividing the image, larger than it; 1xN images."""
    kernel, method = kernel_method
    kh, kw = kernel.shape
    if size == "valid" and (kh > height or kw > width):
        return
    image = np.random.default_rng(seed).random((height, width, channels)).astype(np.float32)
    if channels in (2, 4):
        image[..., -1] = np.round(image[..., -1] * 2) / 2  # transparent, half and opaque pixels
    op = Apply(kernel, mode=mode, cval=cval, size=size, method=method, correlate=correlate, gray=gray, alpha=alpha)
    engine = cpu_engine(threads)
    if filters == "ndimage":  # every pixel is the same sum in the same order, wherever the window is
        engine = replace(engine, filters=ndfilters)
    else:  # OpenCV's vector loops round by position in a row: windows of whole rows, as window_for plans them
        window = (window[0], 10**6)
    expected = whole_result(op, image, engine)
    got = tiled_result(op, image, window, engine)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected, equal_nan=True), np.nanmax(np.abs(got - expected))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 13), width=st.integers(1, 13), channels=st.integers(1, 4), kernel_method=kernels(),
    mode=st.sampled_from(MODES), size=st.sampled_from(["same", "valid", "full"]), correlate=st.booleans(),
    cval=st.sampled_from([0.0, 0.1]), window=st.tuples(st.integers(1, 16), st.integers(1, 16)),
)
def test_tiled_equals_whole_to_float32_rounding_on_opencv(height, width, channels, kernel_method, mode, size,
                                                          correlate, cval, window):
    """The default CPU engine (OpenCV) in windows bounded in both dimensions (a row too wide for
    the budget): tiled = whole to float32 rounding of the sums."""
    kernel, method = kernel_method
    kh, kw = kernel.shape
    if size == "valid" and (kh > height or kw > width):
        return
    image = np.random.default_rng(0).random((height, width, channels)).astype(np.float32)
    op = Apply(kernel, mode=mode, cval=cval, size=size, method=method, correlate=correlate, alpha="drop")
    expected = whole_result(op, image, cpu_engine(1))
    got = tiled_result(op, image, window, cpu_engine(1))
    scale = np.abs(kernel.weights).sum() * max(1.0, abs(cval))
    assert np.abs(got - expected).max() <= 1e-6 * scale


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", ["same", "valid", "full"])
def test_tiled_fft_within_bound(mode, size):
    """FFT per window differs from one whole-image FFT only by float32 rounding: < 1e-5 here."""
    image = np.random.default_rng(3).random((61, 47, 3)).astype(np.float32)
    op = Apply(load_kernel("gaussian:sigma=3"), mode=mode, size=size, method="fft")
    engine = cpu_engine(1)
    difference = np.abs(tiled_result(op, image, (16, 20), engine) - whole_result(op, image, engine))
    assert difference.max() < 1e-5


# --- the command line: `--memory` small enough that these small images stream in 16x16 windows ---


def _tiff(path, image, **kwargs):
    import tifffile

    extras = {"extrasamples": ("unassalpha",)} if image.shape[2] in (2, 4) else {}
    tifffile.imwrite(path, image if image.shape[2] > 1 else image[..., 0], photometric="rgb" if image.shape[2] >= 3 else "minisblack",
                     planarconfig="contig", compression="zlib", **kwargs, **extras)
    return path


@pytest.fixture
def big_tiff(tmp_path):
    rng = np.random.default_rng(11)
    return _tiff(tmp_path / "big.tif", (rng.random((300, 101, 3)) * 255).astype(np.uint8), tile=(32, 32))


def _run(*args):
    from typer.testing import CliRunner

    from imfilt.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("args", [
    ["-k", "box"],
    ["-k", "sobel"],
    ["-k", "gaussian:sigma=2", "--method", "separable", "--boundary", "wrap"],
    ["-k", "laplacian", "--scale", "stretch", "--size", "full", "--boundary", "constant", "--cval", "0.3"],
    ["-k", "emboss", "--correlate", "--size", "valid", "--depth", "16", "--gray"],
    ["-k", "3x2: 1,2,3,-1,0,4", "--scale", "offset", "--boundary", "mirror"],
])
@pytest.mark.parametrize("suffix", [".tif", ".npy"])
@pytest.mark.parametrize("memory", ["1500K", "100K"])
def test_cli_tiled_equals_in_memory(big_tiff, tmp_path, args, suffix, memory):
    """1500K: bands of whole rows fit, and the result is the in-memory one bit for bit; 100K:
    windows bounded in both dimensions, where OpenCV's rounding by position may move a stored
    level by one."""
    import json

    from imfilt.image.io import load

    if suffix == ".npy" and "--depth" in args:
        args = args[: args.index("--depth")] + args[args.index("--depth") + 2 :]  # .npy holds float32 only
    tiled = _run("apply", big_tiff, *args, "-o", tmp_path / f"tiled{suffix}", "--memory", memory, "--json")
    whole = _run("apply", big_tiff, *args, "-o", tmp_path / f"whole{suffix}", "--json")
    assert tiled.exit_code == 0 and whole.exit_code == 0, tiled.stderr + whole.stderr
    assert '"tiled"' not in whole.stdout
    window = json.loads(tiled.stdout)["window"]
    got, expected = load(str(tmp_path / f"tiled{suffix}")), load(str(tmp_path / f"whole{suffix}"))
    assert got.depth == expected.depth and got.pixels.shape == expected.pixels.shape
    if memory == "1500K":
        assert window[1] >= got.pixels.shape[1]  # whole rows
        assert np.array_equal(got.pixels, expected.pixels)
    else:
        assert window[1] < got.pixels.shape[1]
        tolerance = 1e-5 if suffix == ".npy" else 1 / {8: 255, 16: 65535}[got.depth] + 1e-7
        assert np.abs(got.pixels - expected.pixels).max() <= tolerance


@pytest.mark.parametrize("dtype,channels", [(np.uint16, 4), (np.uint8, 2), (np.float32, 1)])
def test_cli_tiled_alpha_and_depths(tmp_path, dtype, channels):
    from imfilt.image.io import load

    rng = np.random.default_rng(5)
    top = 1 if dtype == np.float32 else np.iinfo(dtype).max
    image = (rng.random((40, 55, channels)) * top).astype(dtype)
    if channels in (2, 4):
        image[:20, :, -1] = 0  # a transparent half
    source = _tiff(tmp_path / "a.tif", image, rowsperstrip=5)  # striped
    for name, memory in (("tiled", "20K"), ("whole", "2G")):
        result = _run("apply", source, "-k", "gaussian:sigma=1", "--method", "direct", "-o", tmp_path / f"{name}.tif",
                      "--memory", memory)
        assert result.exit_code == 0, result.stderr
    got, expected = load(str(tmp_path / "tiled.tif")), load(str(tmp_path / "whole.tif"))
    assert (got.depth, got.alpha) == (expected.depth, expected.alpha)
    assert np.abs(got.pixels - expected.pixels).max() <= (1e-6 if got.depth == 32 else 1 / 255 + 1e-7)


@pytest.mark.parametrize("args", [["-k", "sobel"], ["-k", "laplacian", "--scale", "stretch", "-k", "box"]])
def test_cli_tiled_split_channels_equal_in_memory(big_tiff, tmp_path, args):
    """A streamed apply writes one grey file per colour channel, each scaled on its own, as the
    whole-image path does (bands of whole rows: the same values; a tiled TIFF, not strips)."""
    from imfilt.image.io import load

    runs = {}
    for name, memory in (("tiled", "1500K"), ("whole", "2G")):
        result = _run("apply", big_tiff, *args, "--split-channels", "--name", "{op}.{channel}.tif", "--out-dir",
                      tmp_path / name, "--memory", memory, "--json")
        assert result.exit_code == 0, result.stderr
        assert ('"tiled"' in result.stdout) == (name == "tiled")
        runs[name] = {p.name: load(str(p)) for p in sorted((tmp_path / name).iterdir())}
    assert runs["tiled"].keys() == runs["whole"].keys() and len(runs["whole"]) == 3 * args.count("-k")
    for name, whole in runs["whole"].items():
        assert whole.pixels.shape[2] == 1 and np.array_equal(runs["tiled"][name].pixels, whole.pixels)


@pytest.mark.parametrize("output,message", [
    ("out.jpg", "streamed only into .tif, .tiff, .npy, .zarr, .png files: not .jpg output"),
    ("out.webp", "not .webp output"),
    ("-", "not standard output"),
])
def test_cli_tiled_refuses_outputs_that_do_not_stream(big_tiff, tmp_path, output, message):
    """That input fails (exit 1) before any pixel is read; the rest of a batch would go on."""
    result = _run("apply", big_tiff, "-k", "box", "-o", output if output == "-" else tmp_path / output, "--memory", "100K")
    assert result.exit_code == 1 and message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]


def test_cli_too_large_bmp_is_one_line_and_exit_1(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(tmp_path / "a.bmp")
    result = _run("apply", tmp_path / "a.bmp", "-k", "box", "-o", tmp_path / "o.tif", "--memory", "100K")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[0].endswith("only TIFF, PNG, JPEG, .npy and zarr images are read in "
                                                         "tiles; convert it (e.g. vips tiffsave IN OUT.tif --tile "
                                                         "--bigtiff) or raise --memory")
    assert not (tmp_path / "o.tif").exists()


def test_cli_bad_memory_is_usage_error(big_tiff, tmp_path):
    result = _run("apply", big_tiff, "-k", "box", "-o", tmp_path / "o.tif", "--memory", "lots")
    assert result.exit_code == 2 and "--memory 'lots'" in result.stderr


# --- memory: measured under a hard limit, not hoped ---

def test_tiled_job_runs_under_a_hard_address_space_limit(tmp_path):
    """6000x6000 RGB (432 MB as float32) under RLIMIT_AS = 500 MB: the whole-image path fails there
    (so the limit binds: a BMP output, which does not stream), the tiled one passes and gives the
    right pixels, and so does the banded one of an image that fits --memory (a TIFF output)."""
    import scipy.ndimage as ndi
    import tifffile

    source = pattern_tiff(tmp_path / "big.tif", 6000, 6000)

    def limited(memory, output):
        return run_limited(500, "apply", source, "-k", "box", "-o", output, "--memory", memory)[0]

    whole = limited("100G", tmp_path / "whole.bmp")
    assert whole.returncode == 1 and "not enough memory" in whole.stderr, whole.stderr
    banded = limited("100G", tmp_path / "banded.tif")
    assert banded.returncode == 0, banded.stderr
    tiled = limited("64M", tmp_path / "tiled.tif")
    assert tiled.returncode == 0, tiled.stderr
    out = tifffile.imread(tmp_path / "tiled.tif", aszarr=True)
    import zarr

    out = zarr.open(out, mode="r")
    assert out.shape == (6000, 6000, 3)
    pixels = tifffile.imread(source, aszarr=True)
    pixels = zarr.open(pixels, mode="r")
    for top, left in ((0, 0), (1234, 2987), (5990, 5990)):  # corners cut at the true edges, and the middle
        rows, cols = slice(max(0, top - 1), top + 11), slice(max(0, left - 1), left + 11)
        block = np.moveaxis(pixels[rows, cols], -1, 0) / np.float32(255)
        box = np.full((3, 3), 1 / 9, dtype=np.float32)
        expected = np.stack([ndi.correlate(plane, box, mode="reflect") for plane in block], -1)
        expected = np.rint(np.clip(expected, 0, 1) * 255).astype(np.uint8)
        r, c = top - rows.start, left - cols.start
        got = out[top : top + 10, left : left + 10]
        # OpenCV's filters equal scipy's to float32 rounding: a pixel may round the other way
        assert np.abs(got.astype(int) - expected[r : r + got.shape[0], c : c + got.shape[1]]).max() <= 1
    assert np.array_equal(tifffile.imread(tmp_path / "banded.tif"), out[:])  # bands of whole rows: the same pixels


# --- spectrum and lowpass out of core ---


def _whole_op(op, image):
    alpha = image.shape[2] in (2, 4)
    return op.run(Loaded(unit_pixels(image), 32, alpha), cpu_engine(2))


@pytest.mark.parametrize("height,width", [(31, 40), (32, 33), (17, 17), (1, 12), (24, 1)])
@pytest.mark.parametrize("channels", [1, 4])
def test_out_of_core_fft_equals_in_memory_bit_for_bit(tmp_path, height, width, channels):
    """Odd and even H and W, every profile, high- and band-pass, hann, phase, alpha, --gray."""
    from imfilt.ops.frequency import Lowpass, Spectrum
    from imfilt.run.planning import Output
    from imfilt.run.tiled_fft import run
    from imfilt.image.tiles import open_source

    image = np.random.default_rng(height * width).random((height, width, channels)).astype(np.float32)
    np.save(tmp_path / "in.npy", image)
    ops = [Spectrum(), Spectrum(window="hann", gray=True), Spectrum(phase=True),
           Lowpass(5), Lowpass(3.5, profile="gaussian", highpass=True), Lowpass(6, profile="butterworth", order=3, band=2)]
    for i, op in enumerate(ops):
        path = tmp_path / f"out{i}.npy"
        extras = (("mask", str(tmp_path / f"mask{i}.npy")),) if isinstance(op, Lowpass) else ()
        source = open_source(str(tmp_path / "in.npy"))
        # a budget so small that rows go in bands of 1-2 and columns in blocks of 1-3
        facts = run(source, Output(str(path), op, extras=extras), depth=None, scale="auto", memory=4000,
                    engine=cpu_engine(2), temp_dir=str(tmp_path))
        expected = _whole_op(op, image)
        assert np.array_equal(np.load(path), expected.pixels), (op, np.abs(np.load(path) - expected.pixels).max())
        if extras:
            assert np.array_equal(np.load(extras[0][1])[..., 0], expected.extras["mask"].astype(np.float32))
            assert facts["kept"] == expected.facts["kept"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == []  # the scratch is gone


def test_out_of_core_fft_refuses_without_scratch_space(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from imfilt.errors import InputError
    from imfilt.ops.frequency import Spectrum
    from imfilt.run.planning import Output
    from imfilt.run.tiled_fft import run
    from imfilt.image.tiles import open_source

    np.save(tmp_path / "in.npy", np.zeros((16, 16, 3), np.float32))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 100, 10))  # a full disk
    with pytest.raises(InputError, match="scratch space"):
        run(open_source(str(tmp_path / "in.npy")), Output(str(tmp_path / "o.npy"), Spectrum()), depth=None,
            scale="auto", memory=4000, engine=cpu_engine(1), temp_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


@pytest.mark.parametrize("args", [
    ["spectrum"], ["spectrum", "--phase", "--depth", "16"], ["spectrum", "--gray", "--window", "hann"], ["lowpass", "--radius", "5", "--band", "2", "--scale", "stretch"],
    ["lowpass", "--radius", "9"], ["lowpass", "--radius", "7", "--highpass", "--profile", "gaussian"],
])
def test_cli_out_of_core_fft_equals_in_memory(big_tiff, tmp_path, args):
    from imfilt.image.io import load

    for name, memory in (("tiled", "100K"), ("whole", "2G")):
        result = _run(*args, big_tiff, "-o", tmp_path / f"{name}.tif", "--memory", memory)
        assert result.exit_code == 0, result.stderr
    assert np.array_equal(load(str(tmp_path / "tiled.tif")).pixels, load(str(tmp_path / "whole.tif")).pixels)


# --- Dask: stripes of windows on a real cluster on 127.0.0.1 ---


def test_tiled_on_dask_is_byte_identical_to_local(big_tiff, tmp_path):
    """The job's stripes of windows run as tasks on two worker processes, each writing whole
    chunks of a zarr scratch beside the output; the files are byte for byte the local ones."""
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    runs = [["-k", "gaussian:sigma=2", "--method", "separable"], ["-k", "laplacian", "--scale", "stretch", "--size", "full"]]
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      processes=True) as cluster:
        for i, args in enumerate(runs):
            for suffix in (".tif", ".npy"):
                remote = _run("apply", big_tiff, *args, "-o", tmp_path / f"remote{i}{suffix}", "--memory", "100K",
                              "--scheduler", cluster.scheduler_address)
                assert remote.exit_code == 0, remote.stderr
    for i, args in enumerate(runs):
        for suffix in (".tif", ".npy"):
            local = _run("apply", big_tiff, *args, "-o", tmp_path / f"local{i}{suffix}", "--memory", "100K")
            assert local.exit_code == 0, local.stderr
            assert (tmp_path / f"remote{i}{suffix}").read_bytes() == (tmp_path / f"local{i}{suffix}").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the scratch is gone


def test_ctrl_c_during_an_out_of_core_fft_leaves_no_scratch_and_no_output(tmp_path):
    source = pattern_tiff(tmp_path / "big.tif", 1024, 1024)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    code, stderr = interrupted(["lowpass", source, "--radius", "50", "-o", tmp_path / "low.tif", "--memory", "200K",
                                "--temp-dir", scratch],  # interrupted once the scratch holds coefficients
                               ready=lambda: bool(list(scratch.glob("imfilt-fft-*/coefficients/c/*"))))
    assert code == 130 and b"Traceback" not in stderr, stderr
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "scratch"]


@pytest.mark.parametrize("kernel", ["gaussian:sigma=2", "box:size=15"])
def test_alpha_keep_is_carried_exactly_with_large_kernels(kernel):
    """--alpha keep: the alpha is the input's, bit for bit, and tiled = whole (a large delta through
    OpenCV's filter2D went by its DFT and moved alpha by 1e-16, differently per window)."""
    image = np.random.default_rng(4).random((40, 53, 4)).astype(np.float32)
    image[..., -1] = np.round(image[..., -1] * 2) / 2
    op = Apply(load_kernel(kernel), alpha="keep")
    whole = whole_result(op, image, cpu_engine(1))
    assert np.array_equal(whole[..., -1], image[..., -1])
    assert np.array_equal(tiled_result(op, image, (8, 10**6), cpu_engine(1)), whole)


@pytest.mark.parametrize("size", ["same", "valid", "full"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("correlate", [False, True])
def test_carried_channel_is_the_delta_convolution(size, mode, correlate):
    """Apply._carry indexes what convolving with a centred delta gives (scipy's, exact): every
    size, mode and parity of the kernel."""
    from imfilt.ops.convolution import convolve

    rng = np.random.default_rng(5)
    plane = rng.random((9, 11, 1)).astype(np.float32)
    engine = replace(cpu_engine(1), filters=ndfilters)
    for kh, kw in ((1, 1), (2, 5), (4, 6), (7, 3)):
        op = Apply(Kernel("k", rng.random((kh, kw))), mode=mode, cval=0.3, size=size, correlate=correlate)
        delta = np.zeros((kh, kw))
        delta[kh // 2, kw // 2] = 1
        expected = convolve(plane, Kernel("delta", delta), mode=mode, cval=0.3, size=size, method="direct",
                            correlate=correlate, engine=engine)
        assert np.array_equal(op._carry(plane, engine), expected.reshape(expected.shape[:2] + (1,)))
