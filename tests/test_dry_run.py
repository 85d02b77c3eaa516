"""--dry-run: the plan as the run would make it, the planning's exit codes, and nothing written."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.ops.kernels import load_kernel
from imfilt.ops.operations import Apply

runner = CliRunner()


def imfilt(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def folder(tmp_path):
    """Two photos of different sizes, a file that is no image, and an output that exists already."""
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "small.png")
    Image.fromarray((rng.random((60, 50)) * 255).astype(np.uint8)).save(tmp_path / "large.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    (tmp_path / "small.box.png").write_bytes(b"old")
    return tmp_path


def listing(path):
    return sorted((p.name, p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_the_plan_names_every_output_and_writes_nothing(folder):
    before = listing(folder)
    result = imfilt("apply", folder / "small.png", folder / "large.png", "-k", "box", "-k", "gaussian:sigma=3",
                    "--skip-existing", "--out-dir", folder / "new", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    *outputs, summary = records
    assert [(r["input"].rsplit("/", 1)[-1], r["output"].rsplit("/", 1)[-1], r["skipped"]) for r in outputs] == [
        ("small.png", "small.box.png", False), ("small.png", "small.gaussian-sigma3.png", False),
        ("large.png", "large.box.png", False), ("large.png", "large.gaussian-sigma3.png", False)]
    assert outputs[0]["shape"] == [30, 40, 3] and outputs[2]["shape"] == [60, 50, 1]
    plan = summary["plan"]
    assert plan["outputs"] == 4 and plan["refused"] == 0 and plan["engine"] == "cpu"
    assert plan["workers"] == min(2, os.cpu_count())  # two inputs, on threads
    assert plan["largest_input"].endswith("small.png")  # 30x40x3 = 3600 samples > 60x50x1 = 3000
    assert plan["largest_shape"] == [30, 40, 3] and plan["peak_memory_mb"] >= 60
    assert listing(folder) == before and not (folder / "new").exists()


def test_methods_and_reasons_are_the_cost_model_s(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = imfilt("apply", "-", "-k", "box", "-k", "gaussian:sigma=1", "-k", "gaussian:sigma=40", "-k", "sharpen",
                    "--out-dir", "out", "--dry-run", "--json", input=b"")
    assert result.exit_code == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines()][:-1]
    for record, spec in zip(outputs, ["box", "gaussian:sigma=1", "gaussian:sigma=40", "sharpen"]):
        assert record["method"] == Apply(load_kernel(spec)).resolved_method
    assert [r["method"] for r in outputs] == ["direct", "separable", "fft", "direct"]
    # the CPU engine's (OpenCV's) crossovers: two passes up to 202 taps, direct up to 255x255
    assert "9 + 9 = 18 taps" in outputs[1]["why"] and "103041 taps > 65025" in outputs[2]["why"]
    assert "shape" not in outputs[0]  # standard input is not read in a dry run


def test_a_forced_method_says_so(folder):
    result = imfilt("apply", folder / "small.png", "-k", "box", "--method", "fft", "-o", folder / "x.png", "--dry-run")
    assert result.exit_code == 0 and "fft: --method fft" in result.stdout and not (folder / "x.png").exists()


def test_inputs_that_would_fail_make_exit_1_as_the_run_does(folder):
    result = imfilt("spectrum", folder, "--out-dir", folder / "out", "--dry-run")
    real = imfilt("spectrum", folder, "--out-dir", folder / "real")
    assert result.exit_code == real.exit_code == 1
    assert "junk.png: would fail: not an image" in result.stdout
    assert "small.box.png: would fail" in result.stdout and "2 would fail" in result.stdout  # the old output is junk too
    assert not (folder / "out").exists()


def test_planning_errors_are_exit_2_as_the_run_gives_them(folder):
    for args in (("-o", folder / "one.png"), ("--out-dir", folder, "--name", "{stem}.box{ext}")):
        dry = imfilt("apply", folder / "small.png", folder / "large.png", "-k", "box", *args, "--dry-run")
        real = imfilt("apply", folder / "small.png", folder / "large.png", "-k", "box", *args)
        assert dry.exit_code == real.exit_code == 2 and dry.stderr == real.stderr and dry.stdout == ""


def test_match_and_lowpass_plans(folder):
    Image.open(folder / "small.png").crop((0, 0, 8, 8)).save(folder / "t.png")
    result = imfilt("match", folder / "small.png", "-t", folder / "t.png", "--dry-run")
    assert result.exit_code == 0 and "small.match.png" in result.stdout and "[match] fft" in result.stdout
    result = imfilt("lowpass", folder / "large.png", "--radius", "5", "--mask-out", folder / "{stem}.mask.png", "--dry-run",
                    "--json")
    record = json.loads(result.stdout.splitlines()[0])
    assert record["mask_output"].endswith("large.mask.png") and "radius 5" in record["why"]
    assert not (folder / "large.mask.png").exists() and not (folder / "large.lowpass5.png").exists()


# --- images too large for memory: how they stream, and where the run would fail -------------


@pytest.fixture
def big_tiff(tmp_path):
    """A 70x101 RGB tiled TIFF that --memory 100K streams."""
    import tifffile

    image = (np.random.default_rng(1).random((70, 101, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, photometric="rgb", tile=(32, 32))
    return tmp_path / "big.tif"


def test_a_streamed_apply_shows_the_window_the_run_takes(big_tiff, tmp_path):
    args = ("apply", big_tiff, "-k", "gaussian:sigma=2", "-o", tmp_path / "o.tif", "--memory", "100K", "--json")
    dry = imfilt(*args, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    record, summary = [json.loads(line) for line in dry.stdout.splitlines()]
    assert not (tmp_path / "o.tif").exists()
    real = imfilt(*args)
    assert real.exit_code == 0, real.stderr
    assert record["streamed"] == {"memory_bytes": 100 * 2**10, "window": json.loads(real.stdout)["window"]}
    assert summary["plan"]["largest_streamed"] and summary["plan"]["peak_memory_mb"] == 103  # 100K + the libraries'
    text = imfilt(*args[:-1], "--dry-run", "--overwrite")
    window = json.loads(real.stdout)["window"]
    assert f"  streamed in windows of {window[0]}x{window[1]} pixels, within --memory 100 KiB" in text.stdout


@pytest.mark.parametrize("command,colours,bytes_each", [
    (["spectrum"], 3, 12), (["spectrum", "--gray"], 1, 12), (["lowpass", "--radius", "5"], 3, 8)])
def test_a_streamed_fft_shows_its_scratch_space_and_where(big_tiff, tmp_path, command, colours, bytes_each):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = imfilt(*command, big_tiff, "-o", tmp_path / "o.npy", "--memory", "100K", "--temp-dir", scratch,
                    "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    streamed = json.loads(result.stdout.splitlines()[0])["streamed"]
    needed = colours * 70 * (101 // 2 + 1) * bytes_each  # H x (W/2 + 1) coefficients a plane
    assert streamed["scratch_bytes"] == needed and streamed["scratch_dir"] == str(scratch)
    assert 1 <= streamed["band_rows"] <= 70 and 1 <= streamed["block_columns"] <= 51
    assert list(scratch.iterdir()) == [] and not (tmp_path / "o.npy").exists()


def test_the_scratch_goes_to_tmpdir_without_temp_dir(big_tiff, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what TMPDIR sets
    result = imfilt("spectrum", big_tiff, "-o", tmp_path / "o.tif", "--memory", "100K", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert f"KiB in {tmp_path}, " in result.stdout and "row FFTs in bands of" in result.stdout


def test_too_little_scratch_space_would_fail_as_the_run_does(big_tiff, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 100, 10))  # a full disk
    args = ("lowpass", big_tiff, "--radius", "5", "-o", tmp_path / "o.tif", "--memory", "100K", "--temp-dir", tmp_path)
    dry, real = imfilt(*args, "--dry-run"), imfilt(*args)
    assert dry.exit_code == real.exit_code == 1
    message = real.stderr.strip().split(": ", 1)[1]
    assert "scratch space" in message and f"big.tif: would fail: {message}" in dry.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]


@pytest.mark.parametrize("output", ["o.jpg", "o.webp"])
def test_an_output_that_cannot_stream_would_fail_as_the_run_does(big_tiff, tmp_path, output):
    args = ("apply", big_tiff, "-k", "box", "-o", tmp_path / output, "--memory", "100K")
    dry, real = imfilt(*args, "--dry-run"), imfilt(*args)
    assert dry.exit_code == real.exit_code == 1
    assert f"would fail: {real.stderr.strip().split(': ', 1)[1]}" in dry.stdout
    assert "images are streamed only into" in dry.stdout and "1 would fail" in dry.stdout


@pytest.mark.parametrize("name,options,reason", [
    ("a.bmp", {}, "images are read in tiles"),
    ("a.jpg", {"progressive": True}, "a progressive JPEG is decoded whole"),
])
def test_an_input_that_cannot_stream_would_fail_as_the_run_does(tmp_path, name, options, reason):
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(tmp_path / name, **options)
    args = ("apply", tmp_path / name, "-k", "box", "-o", tmp_path / "o.tif", "--memory", "100K")
    dry, real = imfilt(*args, "--dry-run"), imfilt(*args)
    assert dry.exit_code == real.exit_code == 1
    assert reason in dry.stdout and f"would fail: {real.stderr.strip().split(': ', 1)[1]}" in dry.stdout
