"""Spectrum and lowpass of images larger than memory on a real Dask cluster (127.0.0.1, two worker
processes): the row and column passes run as tasks on both workers, and the files are byte for
byte those of a local run, whose pixels are the in-memory run's."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

# --memory 100K makes 16x16 scratch chunks: a 70-row image is 5 stripes of rows, 51 half-plane
# columns 4 stripes of columns (and bands and blocks inside them smaller still)
SMALL = "100K"


@given(st.integers(1, 5000), st.integers(1, 600), st.integers(1, 12))
def test_stripes_cover_the_range_in_whole_units(length, unit, count):
    """Each task's part starts on a chunk and is whole chunks (but the last): no two share one."""
    from imfilt.run.distributed import stripes

    parts = stripes(length, unit, count)
    assert parts[0].start == 0 and parts[-1].stop == length
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    assert all(p.start % unit == 0 and p.stop > p.start for p in parts)
    assert all((p.stop - p.start) % unit == 0 for p in parts[:-1])
    if length >= unit * count:  # about count parts; fewer units than that: one unit a part
        assert count <= len(parts) <= 2 * count
    else:
        assert len(parts) == -(-length // unit)


@pytest.mark.parametrize("memory", [1, 4000, 100_000, 2**25 - 1, 2**25, 2**31])
def test_scratch_chunks_fit_the_budget(memory):
    """512x512 from 32 MiB up (the default budget's chunks), smaller below, never under 16."""
    from imfilt.run.tiled_fft import _chunk_side

    side = _chunk_side(memory)
    assert side in (16, 32, 64, 128, 256, 512)
    assert 16 * 8 * side * side <= memory or side == 16  # 16 complex64 copies of a chunk fit
    assert 16 * 8 * (2 * side) ** 2 > memory or side == 512  # and of the next larger one do not
    assert (side == 512) == (memory >= 2**25)


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      processes=True) as cluster:
        yield cluster


def _run(*args):
    from typer.testing import CliRunner

    from imfilt.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _rgb_tiff(path, height, width):
    import tifffile

    image = (np.random.default_rng(height * width).random((height, width, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(path, image, photometric="rgb", tile=(32, 32), compression="zlib")
    return path


CASES = [
    (["spectrum"], ".tif"),
    (["spectrum", "--phase"], ".npy"),
    (["spectrum", "--window", "hann", "--gray", "--depth", "16"], ".tif"),
    (["lowpass", "--radius", "9"], ".npy"),
    (["lowpass", "--radius", "7", "--profile", "butterworth", "--order", "3"], ".tif"),
    (["lowpass", "--radius", "6", "--highpass", "--profile", "gaussian"], ".tif"),
    (["lowpass", "--radius", "9", "--band", "3", "--mask-out", "{folder}/mask.tif"], ".tif"),
]


@pytest.mark.parametrize("height,width", [(70, 101), (75, 96)])
def test_fft_on_dask_is_byte_identical_to_local_and_to_in_memory(cluster, tmp_path, height, width):
    from imfilt.image.io import load

    source = _rgb_tiff(tmp_path / "big.tif", height, width)
    runs = {"remote": ["--memory", SMALL, "--scheduler", cluster.scheduler_address],
            "local": ["--memory", SMALL], "whole": ["--memory", "2G"]}
    for i, (args, suffix) in enumerate(CASES):
        for name, how in runs.items():
            folder = tmp_path / f"{name}{i}"
            folder.mkdir()
            result = _run(*[a.format(folder=folder) for a in args], source, "-o", folder / f"out{suffix}", *how)
            assert result.exit_code == 0, (args, name, result.stderr)
        for file in (tmp_path / f"local{i}").iterdir():
            assert (tmp_path / f"remote{i}" / file.name).read_bytes() == file.read_bytes(), (args, file.name)
            assert np.array_equal(load(str(file)).pixels, load(str(tmp_path / f"whole{i}" / file.name)).pixels), args
        assert not [p for p in (tmp_path / f"remote{i}").iterdir() if p.name.startswith(".")]  # no scratch left


def test_the_passes_run_as_tasks_on_both_workers(cluster, tmp_path):
    """The scheduler's task stream: every stripe of rows and of columns is a task, on both workers."""
    from distributed import Client, get_task_stream

    source = _rgb_tiff(tmp_path / "big.tif", 70, 101)
    with Client(cluster.scheduler_address) as client, get_task_stream(client) as stream:
        result = _run("lowpass", source, "--radius", "9", "-o", tmp_path / "low.tif", "--memory", SMALL,
                      "--scheduler", cluster.scheduler_address)
        assert result.exit_code == 0, result.stderr
        workers = set(cluster.scheduler.workers)
    for task, count in (("_rows_task-", 5), ("_columns_task-", 4)):
        ran = [record["worker"] for record in stream.data if record["key"].startswith(task)]
        assert len(ran) == count and set(ran) == workers, (task, ran)


def test_spectrum_on_dask_equals_numpy(cluster, tmp_path):
    """An independent reference: numpy's float64 FFT of the same pixels, centred."""
    import tifffile

    source = _rgb_tiff(tmp_path / "big.tif", 75, 96)
    result = _run("spectrum", source, "-o", tmp_path / "s.npy", "--memory", SMALL,
                  "--scheduler", cluster.scheduler_address)
    assert result.exit_code == 0, result.stderr
    pixels = tifffile.imread(source).astype(np.float64) / 255
    expected = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(pixels, axes=(0, 1)), axes=(0, 1))))
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), expected, rtol=2e-5, atol=2e-5)


def test_a_failing_task_fails_the_input_with_one_line_and_leaves_nothing(cluster, tmp_path):
    """A NaN in the last stripe of rows: that task fails on its worker, the input fails (exit 1),
    no output, no scratch beside it, and the other stripes' tasks have ended."""
    image = np.random.default_rng(3).random((70, 101, 3)).astype(np.float32)
    image[66, 40, 1] = np.nan
    np.save(tmp_path / "nan.npy", image)
    out = tmp_path / "out"
    out.mkdir()
    result = _run("spectrum", tmp_path / "nan.npy", "-o", out / "s.tif", "--memory", SMALL,
                  "--scheduler", cluster.scheduler_address)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'nan.npy'}: has NaN or infinite samples" in result.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", [["lowpass", "--radius", "50"], ["apply", "-k", "gaussian:sigma=3"]])
def test_ctrl_c_stops_the_job_on_the_cluster_too(cluster, tmp_path, command):
    """A running task cannot be cancelled from outside: the interrupted client sets the run's stop
    event, tasks end at their next window, and the client waits for them, so nothing appears
    afterwards (it did: the job went on and wrote its output after exit 130)."""
    import time

    from limits import interrupted, pattern_tiff

    source = pattern_tiff(tmp_path / "big.tif", 1024, 1024)
    out = tmp_path / "out" / "o.tif"
    code, stderr = interrupted([*command[:1], source, *command[1:], "-o", out, "--memory", "200K", "--scheduler",
                                cluster.scheduler_address],  # interrupted once the job has its scratch beside the output
                               ready=lambda: bool(list(out.parent.glob(".o.tif.*"))))
    assert code == 130 and b"Traceback" not in stderr, stderr
    time.sleep(2)  # a job that went on would write within this
    assert list(out.parent.iterdir()) == []
