"""imfilt deconvolve: exact inversion of periodic blurs, scikit-image as the reference where both
define the same thing, PSNR on a photo for each boundary, a learned kernel undoing its own blur."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.ops.deconvolve import EPSILON, richardson_lucy, wiener
from imfilt.errors import UsageError
from imfilt.ops.kernels import gaussian

skimage_restoration = pytest.importorskip("skimage.restoration")
runner = CliRunner()
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SCIPY_MODE = {"reflect": "reflect", "mirror": "mirror", "nearest": "nearest", "wrap": "grid-wrap", "constant": "constant"}


def imfilt(*args):
    return runner.invoke(app, [str(a) for a in args])


def psnr(result: np.ndarray, truth: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((np.clip(result, 0, 1) - truth) ** 2)))


def blur(image: np.ndarray, kernel: np.ndarray, mode: str = "reflect", correlate: bool = False) -> np.ndarray:
    """The reference blur: scipy.ndimage per channel in float64."""
    fn = ndi.correlate if correlate else ndi.convolve
    return np.stack([fn(image[..., c], kernel, mode=SCIPY_MODE[mode]) for c in range(image.shape[2])], -1)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"), dtype=np.float64) / 255


@pytest.fixture(scope="module")
def blurred(astronaut) -> np.ndarray:
    """Gaussian σ=2 with reflect boundaries and slight noise (σ = 0.005, 1.3 levels of 255)."""
    noise = np.random.default_rng(0).normal(0, 0.005, astronaut.shape)
    return (blur(astronaut, gaussian(2.0)) + noise).astype(np.float32)


@pytest.mark.parametrize("correlate", [False, True])
@pytest.mark.parametrize("shape", [(3, 5), (4, 4)])
def test_wiener_inverts_a_periodic_blur(correlate, shape):
    """A tiny balance undoes a wrap-mode blur exactly: the kernel's orientation and anchor, odd and even."""
    rng = np.random.default_rng(1)
    image = rng.random((24, 30, 2))
    kernel = rng.random(shape) * 0.1
    kernel[shape[0] // 2, shape[1] // 2] = 1  # a dominant tap: no zeros in the transfer function
    out = wiener(blur(image, kernel, "wrap", correlate), kernel, balance=1e-9, mode="wrap", correlate=correlate)
    np.testing.assert_allclose(out, image, atol=1e-4)


@pytest.mark.parametrize("shape", [(5, 3), (4, 6)])
def test_wiener_agrees_with_scikit_image_on_a_periodic_image(shape):
    """scikit-image's wiener treats the image as periodic; with a delta as its regularizer its
    filter is ours: conj(H) / (|H|² + balance)."""
    rng = np.random.default_rng(2)
    image, kernel = rng.random((40, 52)), rng.random(shape)
    kernel /= kernel.sum()
    blurred = ndi.convolve(image, kernel, mode="grid-wrap") + rng.normal(0, 0.01, image.shape)
    ours = wiener(blurred.astype(np.float32), kernel, balance=0.05, mode="wrap")
    theirs = skimage_restoration.wiener(blurred, kernel, balance=0.05, reg=np.ones((1, 1)), clip=False)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_richardson_lucy_agrees_with_scikit_image_with_zeros_outside():
    """scikit-image's richardson_lucy convolves with zeros outside the image, from a start of 0.5:
    --boundary constant --cval 0 from the same start is the same algorithm."""
    rng = np.random.default_rng(3)
    image, kernel = rng.random((36, 44)) * 0.8 + 0.1, rng.random((5, 3))
    kernel /= kernel.sum()
    blurred = ndi.convolve(image, kernel, mode="constant")
    ours = richardson_lucy(blurred.astype(np.float32), kernel, iterations=10, mode="constant", start=0.5)
    theirs = skimage_restoration.richardson_lucy(blurred, kernel, num_iter=10, clip=False, filter_epsilon=EPSILON)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_psnr_on_a_photo_for_each_boundary(astronaut, blurred):
    """The docs' numbers (512x512 astronaut): reflect beats periodic and zero-padded deconvolution."""
    kernel = gaussian(2.0)
    before = psnr(blurred, astronaut)  # 24.9 dB
    results = {(method, mode): psnr(fn(blurred, kernel, mode=mode), astronaut)
               for method, fn in (("wiener", wiener), ("richardson-lucy", richardson_lucy))
               for mode in ("reflect", "wrap", "constant")}
    assert results["wiener", "reflect"] > before + 3.0  # 28.2 dB
    assert results["richardson-lucy", "reflect"] > before + 1.5  # 26.7 dB
    for method in ("wiener", "richardson-lucy"):
        assert results[method, "reflect"] > max(results[method, "wrap"], results[method, "constant"]) + 1.5


def test_learned_kernel_deconvolves_its_own_blur(tmp_path):
    """apply an unknown asymmetric blur, learn it back from the pair, deconvolve with the file learn wrote."""
    photo = np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"), dtype=np.float64) / 255
    kernel = np.outer([1, 3, 2], [2, 4, 3, 1, 0.5]) + np.eye(3, 5)
    kernel /= kernel.sum()
    Image.fromarray(np.round(photo * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    blurred = np.round(np.clip(blur(np.round(photo * 255) / 255, kernel), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(blurred).save(tmp_path / "blurred.png")
    learned = imfilt("learn", tmp_path / "photo.png", tmp_path / "blurred.png", "-s", "3x5", "-o", tmp_path / "k.txt")
    assert learned.exit_code == 0, learned.stderr
    for kernel_spec, name in ((tmp_path / "k.txt", "learned"), ("5x3: " + ",".join(map(str, kernel.ravel().tolist())), "true")):
        result = imfilt("deconvolve", tmp_path / "blurred.png", "-k", kernel_spec, "--balance", "0.001",
                        "-o", tmp_path / f"{name}.tif", "--depth", "32")
        assert result.exit_code == 0, result.stderr
    truth = np.round(photo * 255) / 255
    with_learned, with_true = (psnr(tifffile.imread(tmp_path / f"{n}.tif"), truth) for n in ("learned", "true"))
    assert with_learned > psnr(blurred / 255, truth) + 3 and abs(with_learned - with_true) < 0.2


def test_engines_agree(engine, blurred):
    piece = blurred[:64, :80]
    for fn in (wiener, richardson_lucy):
        np.testing.assert_allclose(fn(piece, gaussian(1.5), engine=engine), fn(piece, gaussian(1.5)), atol=1e-5)


def test_batch_json_npy_and_alpha(tmp_path):
    """Batch options as apply has them: --out-dir, --json, .npy float results unclipped, 16-bit, alpha carried."""
    rng = np.random.default_rng(4)
    (tmp_path / "in").mkdir()
    for i in range(2):
        Image.fromarray((rng.random((20, 28, 4)) * 255).astype(np.uint8), "RGBA").save(tmp_path / "in" / f"p{i}.png")
    result = imfilt("deconvolve", tmp_path / "in", "-k", "gaussian:sigma=1", "--method", "richardson-lucy",
                    "--iterations", 5, "--out-dir", tmp_path / "out", "--name", "{stem}.{op}.npy", "--json")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["iterations"] for r in records] == [5, 5] and records[0]["method"] == "richardson-lucy"
    out = np.load(tmp_path / "out" / "p0.richardson-lucy-gaussian-sigma1.npy")
    source = np.asarray(Image.open(tmp_path / "in" / "p0.png"), dtype=np.float32) / 255
    assert out.shape == (20, 28, 4) and out.max() > 1  # rings past 1 on random pixels: not clipped in .npy
    np.testing.assert_array_equal(out[..., 3], source[..., 3])
    deep = imfilt("deconvolve", tmp_path / "in" / "p1.png", "-k", "box", "--depth", "16", "-o", tmp_path / "p1.png")
    assert deep.exit_code == 0 and (tmp_path / "p1.png").read_bytes()[24] == 16  # the PNG header's bit depth


@pytest.mark.parametrize("args, message", [
    (["--balance", "0"], "--balance must be a number > 0"),
    (["--balance", "nan"], "--balance"),
    (["-k", "laplacian", "--method", "richardson-lucy"], "sum must be > 0"),
    (["-k", "sobel"], "gradient magnitude"),
    (["--iterations", "0", "--method", "richardson-lucy"], "--iterations"),
    (["--method", "blind"], "blind"),
])
def test_errors_are_exit_2_and_write_nothing(small_rgb, tmp_path, args, message):
    kernel = [] if "-k" in args else ["-k", "box"]
    result = imfilt("deconvolve", small_rgb, *kernel, *args, "-o", tmp_path / "out.png")
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_library_refuses_a_magnitude_kernel():
    from imfilt.ops.kernels import load_kernel

    with pytest.raises(UsageError, match="gradient magnitude"):
        wiener(np.zeros((8, 8)), load_kernel("sobel"))


def test_a_convolutional_layers_kernel_is_refused(small_rgb, tmp_path):
    """A (N, C, kh, kw) bank sums over channels: no 2-D blur to undo, exit 2 before any image."""
    np.save(tmp_path / "layer.npy", np.ones((1, 3, 3, 3), np.float32))
    result = imfilt("deconvolve", small_rgb, "-k", tmp_path / "layer.npy", "-o", tmp_path / "out.png")
    assert result.exit_code == 2 and "sums over 3 channels" in result.stderr and not (tmp_path / "out.png").exists()
