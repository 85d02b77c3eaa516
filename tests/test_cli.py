"""The command line: exit codes, files written, stderr, and every kind of bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.image.io import read_image

runner = CliRunner()


def imfilt(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_version():
    result = imfilt("--version")
    assert result.exit_code == 0 and result.stdout.startswith("imfilt ")


@pytest.mark.parametrize("command", ["apply", "spectrum", "lowpass"])
def test_help_has_an_example(command):
    result = imfilt(command, "--help")
    assert result.exit_code == 0 and "Example:" in result.stdout


def test_apply_box_matches_scipy_to_the_pixel(small_rgb, tmp_path):
    out = tmp_path / "out.png"
    result = imfilt("apply", small_rgb, "-k", "box", "-o", out)
    assert result.exit_code == 0, result.stderr
    image = read_image(small_rgb).astype(np.float64)
    expected = np.stack([ndi.convolve(image[..., c], np.full((3, 3), 1 / 9), mode="reflect") for c in range(3)], -1)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.rint(expected * 255).astype(np.uint8))


def test_several_kernels_give_one_map_each_with_the_template(small_rgb, tmp_path):
    result = imfilt("apply", small_rgb, "-k", "sobel", "-k", "gaussian:sigma=1", "--out-dir", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "o")) == ["small.gaussian-sigma1.png", "small.sobel.png"]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["kernel"] for r in records} == {"sobel", "gaussian-sigma1"}
    assert all(r["shape"] == [24, 32, 3] and r["engine"] == "cpu" for r in records)


def test_sobel_map_is_not_black(tmp_path):
    """auto scale is abs for zero-sum kernels: edges show up."""
    Image.fromarray(np.tile(np.repeat([0, 255], 8).astype(np.uint8), (16, 1))).save(tmp_path / "step.png")
    assert imfilt("apply", tmp_path / "step.png", "-k", "sobel-x", "-o", tmp_path / "e.png").exit_code == 0
    edges = np.asarray(Image.open(tmp_path / "e.png"))
    assert edges[:, 7:9].min() == 255 and edges[:, :6].max() == 0


def test_valid_size_and_npy_output(small_rgb, tmp_path):
    out = tmp_path / "v.npy"
    assert imfilt("apply", small_rgb, "-k", "box:size=5", "--size", "valid", "-o", out).exit_code == 0
    array = np.load(out)
    assert array.shape == (20, 28, 3) and array.dtype == np.float32


def test_16bit_input_gives_16bit_output(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    from imfilt.image.io import write_image

    write_image(tmp_path / "deep.png", values / 65535.0, depth=16)
    assert imfilt("apply", tmp_path / "deep.png", "-k", "identity", "-o", tmp_path / "o.png").exit_code == 0
    np.testing.assert_allclose(read_image(tmp_path / "o.png"), values / 65535.0, atol=1e-6)


def test_gray_and_split_channels(small_rgb, tmp_path):
    assert imfilt("apply", small_rgb, "-k", "box", "--gray", "-o", tmp_path / "g.png").exit_code == 0
    assert Image.open(tmp_path / "g.png").mode == "L"
    result = imfilt("apply", small_rgb, "-k", "box", "--split-channels", "--out-dir", tmp_path / "s")
    assert result.exit_code == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "s")) == ["small.box.b.png", "small.box.g.png", "small.box.r.png"]


def test_premultiplied_alpha_does_not_bleed_hidden_colour(tmp_path):
    """Red hidden under fully transparent pixels must not tint the blurred visible green."""
    rgba = np.zeros((9, 9, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere ...
    rgba[:, 5:, :] = [0, 255, 0, 255]  # ... but only green is visible
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert imfilt("apply", tmp_path / "a.png", "-k", "box", "-o", tmp_path / "p.png").exit_code == 0
    assert imfilt("apply", tmp_path / "a.png", "-k", "box", "--alpha", "keep", "-o", tmp_path / "k.png").exit_code == 0
    premultiplied, kept = np.asarray(Image.open(tmp_path / "p.png")), np.asarray(Image.open(tmp_path / "k.png"))
    assert premultiplied[4, 5, 0] == 0 and premultiplied[4, 5, 1] == 255
    assert kept[4, 5, 0] > 0 and kept[4, 5, 3] == 255  # keep: colour bled, alpha untouched


def test_stdin_to_stdout_pipeline(small_rgb):
    run = subprocess.run([sys.executable, "-m", "imfilt", "apply", "-", "-k", "box", "-o", "-", "--format", "npy"],
                         input=small_rgb.read_bytes(), capture_output=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout[:6] == b"\x93NUMPY" and run.stderr == b""


def test_broken_pipe_exits_quietly(tmp_path):
    """The reader is gone before imfilt writes its 3 MB .npy: exit 141, nothing on stderr."""
    Image.new("RGB", (640, 400)).save(tmp_path / "big.png")
    command = f"{sys.executable} -m imfilt apply {tmp_path / 'big.png'} -k box -o - --format npy | true; echo ${{PIPESTATUS[0]}}"
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    assert run.stdout.strip() == "141" and run.stderr == ""


def test_a_file_named_like_an_option(small_rgb, tmp_path, monkeypatch):
    odd = tmp_path / "-x.png"
    odd.write_bytes(small_rgb.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert imfilt("apply", "-k", "box", "-o", "y.png", "--", "-x.png").exit_code == 0


# --- errors: one line, the right exit code, nothing written ----------------------------


@pytest.mark.parametrize("args, message", [
    (["-k", "nosuch"], "unknown kernel 'nosuch'"),
    (["-k", "3x3: 1,2"], "needs 9 values"),
    (["-k", "laplacian", "--normalize", "sum"], "sum is 0"),
    (["-k", "sharpen", "--method", "separable"], "needs a kernel of rank 1"),
    (["-k", "box", "--depth", "16", "-o", "x.jpg"], "8-bit"),
    (["-k", "box", "-o", "x.xyz"], "unknown output format"),
    (["-k", "box", "--boundary", "sideways"], "sideways"),
    (["-k", "box", "--engine", "gpu"], "no CUDA device"),
])
def test_bad_usage_exits_2_before_reading(small_rgb, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = imfilt("apply", small_rgb, *args)
    assert result.exit_code == 2 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["small.png"]


def test_bad_kernel_file_names_file_line_and_column(small_rgb, tmp_path):
    (tmp_path / "k.txt").write_text("1 2\n3 oops\n")
    result = imfilt("apply", small_rgb, "-k", tmp_path / "k.txt", "-o", tmp_path / "o.png")
    assert result.exit_code == 2 and f"{tmp_path / 'k.txt'}:2:3: 'oops' is not a number" in result.stderr
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"])
def test_bad_image_exits_1_with_one_line(tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    result = imfilt("apply", bad, "-k", "box", "-o", tmp_path / "o.png")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(str(bad)) and "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.png"]


def test_output_never_replaces_its_input_even_through_a_link(small_rgb, tmp_path):
    link = tmp_path / "link.png"
    link.symlink_to(small_rgb)
    before = small_rgb.read_bytes()
    result = imfilt("apply", small_rgb, "-k", "box", "-o", link, "--overwrite")
    assert result.exit_code == 2 and "is both an input and an output" in result.stderr
    assert small_rgb.read_bytes() == before


def test_existing_output_is_kept_unless_overwrite(small_rgb, tmp_path):
    out = tmp_path / "o.png"
    out.write_bytes(b"precious")
    result = imfilt("apply", small_rgb, "-k", "box", "-o", out)
    assert result.exit_code == 2 and "exists" in result.stderr and out.read_bytes() == b"precious"
    assert imfilt("apply", small_rgb, "-k", "box", "-o", out, "--overwrite").exit_code == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_decompression_bomb_and_max_pixels(tmp_path):
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    result = imfilt("apply", tmp_path / "big.png", "-k", "box", "-o", tmp_path / "o.png", "--max-pixels", "1000000")
    assert result.exit_code == 1 and "safety limit" in result.stderr and not (tmp_path / "o.png").exists()


def test_binary_output_is_never_written_to_a_terminal(small_rgb):
    """A real terminal: script(1) gives the command a tty for stdout."""
    if not os.path.exists("/usr/bin/script"):
        pytest.skip("script(1) is not installed")
    run = subprocess.run(["script", "-qec", f"{sys.executable} -m imfilt apply {small_rgb} -k box -o -", "/dev/null"],
                         capture_output=True)
    assert b"refusing to write image data to a terminal" in run.stdout and b"\x89PNG" not in run.stdout


def test_start_up_imports_neither_dask_nor_scipy_signal(small_rgb, tmp_path):
    """Dask is imported only with --scheduler; scipy.signal (~0.8 s) never on the CLI's path."""
    code = ("import sys; from typer.testing import CliRunner; from imfilt.cli.main import app; "
            f"r = CliRunner().invoke(app, ['apply', {str(small_rgb)!r}, '-k', 'gaussian:sigma=9', '-o', {str(tmp_path / 'o.png')!r}]); "
            "print(r.exit_code, 'distributed' in sys.modules, 'dask' in sys.modules, 'scipy.signal' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.split() == ["0", "False", "False", "False"], run.stderr


@pytest.mark.parametrize("args, message", [
    (["--name", "{stem}.{colour}{ext}"], "use the fields"),
    (["--split-channels", "--name", "{stem}.{op}{ext}"], "needs {channel}"),
    (["-k", "sharpen"], "-o names one output"),
])
def test_bad_output_naming_is_refused_up_front(small_rgb, tmp_path, args, message):
    extra = ["-o", tmp_path / "x.png"] if "-o names" in message else ["--out-dir", tmp_path / "out"]
    result = imfilt("apply", small_rgb, "-k", "box", *args, *extra)
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_16bit_input_to_jpeg_is_written_at_8_bits(tmp_path):
    from imfilt.image.io import write_image

    write_image(tmp_path / "deep.png", np.full((4, 4, 3), 0.5, np.float32), depth=16)
    assert imfilt("apply", tmp_path / "deep.png", "-k", "box", "-o", tmp_path / "o.jpg").exit_code == 0
    assert Image.open(tmp_path / "o.jpg").mode == "RGB"


def test_existing_split_channel_outputs_are_kept_unless_overwrite(small_rgb, tmp_path):
    args = ["apply", small_rgb, "-k", "box", "--split-channels", "--out-dir", tmp_path / "s"]
    assert imfilt(*args).exit_code == 0
    before = (tmp_path / "s" / "small.box.r.png").read_bytes()
    result = imfilt(*args)
    assert result.exit_code == 2 and "small.box.*.png: exists" in result.stderr
    assert (tmp_path / "s" / "small.box.r.png").read_bytes() == before
    assert imfilt(*args, "--overwrite").exit_code == 0
