"""Every engine the command line can choose, through the whole run: in memory and streamed in
windows (--memory small), against scipy/numpy in float64. Written once; the GPU cases run where
there is a GPU (benchmarks/gpu.sh) and skip with the reason elsewhere."""

import numpy as np
import pytest
import scipy.ndimage as ndi
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.ops.kernels import load_kernel

runner = CliRunner()
# --memory 100K streams a 70x90 RGB image in windows (and its FFTs in stripes); 2G holds it whole
MEMORY = {"streamed": "100K", "whole": "2G"}
DENSE = np.random.default_rng(11).standard_normal((9, 7))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("engines") / "in.npy"
    np.save(path, np.random.default_rng(5).random((70, 90, 3)).astype(np.float32))
    return path


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    return result


def _convolve64(image, weights, mode="reflect"):
    return np.stack([ndi.convolve(image[..., c].astype(np.float64), weights, mode=mode)
                     for c in range(image.shape[2])], axis=-1)


@pytest.mark.parametrize("how", MEMORY)
@pytest.mark.parametrize("spec, method", [("box", "direct"), ("sharpen", "auto"), ("gaussian:sigma=2", "separable"),
                                          ("gaussian:sigma=2", "fft"), ("dense", "direct"), ("dense", "fft")])
@pytest.mark.parametrize("mode", ["reflect", "wrap", "constant"])
def test_apply_equals_scipy_float64(engine_name, image_file, tmp_path, how, spec, method, mode):
    if spec == "dense":
        np.savetxt(tmp_path / "dense.txt", DENSE)
        spec, weights = str(tmp_path / "dense.txt"), DENSE
    else:
        weights = load_kernel(spec).weights
    out = tmp_path / "out.npy"
    _run("apply", image_file, "-k", spec, "--method", method, "--boundary", mode, "--engine", engine_name,
         "--memory", MEMORY[how], "-o", out)
    expected = _convolve64(np.load(image_file), weights, {"wrap": "grid-wrap"}.get(mode, mode))
    np.testing.assert_allclose(np.load(out), expected, atol=2e-5 * np.abs(weights).sum())


@pytest.mark.parametrize("how", MEMORY)
def test_sobel_magnitude_equals_scipy_float64(engine_name, image_file, tmp_path, how):
    out = tmp_path / "out.npy"
    _run("apply", image_file, "-k", "sobel", "--engine", engine_name, "--memory", MEMORY[how], "-o", out)
    image = np.load(image_file)
    gx = _convolve64(image, load_kernel("sobel-x").weights)
    gy = _convolve64(image, load_kernel("sobel-y").weights)
    np.testing.assert_allclose(np.load(out), np.hypot(gx, gy), atol=5e-5)


@pytest.mark.parametrize("how", MEMORY)
def test_spectrum_and_lowpass_equal_numpy_float64(engine_name, image_file, tmp_path, how):
    image = np.load(image_file).astype(np.float64)
    coefficients = np.fft.fftshift(np.fft.fft2(image, axes=(0, 1)), axes=(0, 1))
    _run("spectrum", image_file, "--engine", engine_name, "--memory", MEMORY[how], "-o", tmp_path / "s.npy")
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), np.log1p(np.abs(coefficients)), rtol=2e-5, atol=2e-5)
    _run("lowpass", image_file, "--radius", "9", "--engine", engine_name, "--memory", MEMORY[how],
         "-o", tmp_path / "l.npy")
    height, width = image.shape[:2]
    u, v = np.arange(height)[:, None] - height // 2, np.arange(width)[None, :] - width // 2
    mask = (u * u + v * v <= 81)[..., None]
    expected = np.real(np.fft.ifft2(np.fft.ifftshift(coefficients * mask, axes=(0, 1)), axes=(0, 1)))
    np.testing.assert_allclose(np.load(tmp_path / "l.npy"), expected, atol=1e-5)


def test_match_equals_on_every_engine(engine_name, image_file, tmp_path):
    """The score map of a template cut from the image: 1 where it was cut, the same map on each engine."""
    image = np.load(image_file)
    np.save(tmp_path / "t.npy", image[20:31, 30:45])
    _run("match", image_file, "-t", tmp_path / "t.npy", "--engine", engine_name, "-o", tmp_path / "m.npy")
    scores = np.load(tmp_path / "m.npy")
    assert np.unravel_index(np.argmax(scores), scores.shape[:2]) == (20, 30)
    assert scores[20, 30] == pytest.approx(1.0, abs=1e-6)
