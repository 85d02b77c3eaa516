"""Every claim of the README and docs/usage.md about the CLI, pinned against a reference the test computes itself.

The references are independent of imfilt: scipy.ndimage and numpy.fft in float64, closed forms
written here, and Pillow, pypng or tifffile reading what imfilt wrote. Numeric outputs go to .npy
(float32, unscaled) so they compare to the float64 reference without the 8-bit rounding.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app

runner = CliRunner()

# No symmetry at all: flipping it, transposing it or reading it column-major changes every response.
ASYMMETRIC = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [4.0, 0.0, -2.0]])
RANK_ONE = np.outer([1.0, 2.0, -1.0], [3.0, 0.0, 1.0])  # separable, and still asymmetric
SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
LUMA = (0.299, 0.587, 0.114)


def imfilt(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def inline(matrix: np.ndarray) -> str:
    """ImageMagick's 'WxH: v,v,...', row by row."""
    return f"{matrix.shape[1]}x{matrix.shape[0]}: " + ",".join(f"{v:g}" for v in matrix.ravel())


def save(path, array: np.ndarray) -> np.ndarray:
    """Write a uint8 image with Pillow; return what a reader must see, float64 in [0, 1]."""
    Image.fromarray(array).save(path)
    return array.astype(np.float64) / 255


def random_u8(shape, seed=3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def per_channel(fn, image: np.ndarray) -> np.ndarray:
    return np.stack([fn(image[..., c]) for c in range(image.shape[2])], axis=-1)


def run_ok(*args, input=None):
    result = imfilt(*args, input=input)
    assert result.exit_code == 0, result.stderr
    return result


@pytest.fixture
def rgb(tmp_path):
    """A 13x17 random RGB PNG and its float64 pixels."""
    path = tmp_path / "rgb.png"
    return path, save(path, random_u8((13, 17, 3)))


@pytest.fixture
def rgba(tmp_path):
    """A 12x15 random RGBA PNG (some pixels fully transparent) and its float64 pixels."""
    values = random_u8((12, 15, 4), seed=5)
    values[2:5, 3:9, 3] = 0
    path = tmp_path / "rgba.png"
    return path, save(path, values)


# --- apply: every option through the CLI --------------------------------------------------


@pytest.mark.parametrize("kernel, args, reference", [
    (ASYMMETRIC, [], lambda x: ndi.convolve(x, ASYMMETRIC, mode="reflect")),
    (ASYMMETRIC, ["--correlate"], lambda x: ndi.correlate(x, ASYMMETRIC, mode="reflect")),
    (ASYMMETRIC, ["--boundary", "mirror"], lambda x: ndi.convolve(x, ASYMMETRIC, mode="mirror")),
    (ASYMMETRIC, ["--boundary", "nearest"], lambda x: ndi.convolve(x, ASYMMETRIC, mode="nearest")),
    (ASYMMETRIC, ["--boundary", "wrap"], lambda x: ndi.convolve(x, ASYMMETRIC, mode="grid-wrap")),
    (ASYMMETRIC, ["--boundary", "constant", "--cval", "0.7"],
     lambda x: ndi.convolve(x, ASYMMETRIC, mode="constant", cval=0.7)),
    (ASYMMETRIC, ["--method", "direct", "--boundary", "mirror"], lambda x: ndi.convolve(x, ASYMMETRIC, mode="mirror")),
    (ASYMMETRIC, ["--method", "fft", "--boundary", "nearest"], lambda x: ndi.convolve(x, ASYMMETRIC, mode="nearest")),
    (ASYMMETRIC, ["--method", "fft", "--correlate"], lambda x: ndi.correlate(x, ASYMMETRIC, mode="reflect")),
    (RANK_ONE, ["--method", "separable", "--boundary", "constant", "--cval", "0.2"],
     lambda x: ndi.convolve(x, RANK_ONE, mode="constant", cval=0.2)),
    (ASYMMETRIC, ["--normalize", "sum"], lambda x: ndi.convolve(x, ASYMMETRIC / ASYMMETRIC.sum(), mode="reflect")),
    (ASYMMETRIC, ["--normalize", "softmax"],
     lambda x: ndi.convolve(x, np.exp(ASYMMETRIC) / np.exp(ASYMMETRIC).sum(), mode="reflect")),
])
def test_apply_options_match_scipy(rgb, tmp_path, kernel, args, reference):
    path, pixels = rgb
    run_ok("apply", path, "-k", inline(kernel), *args, "-o", tmp_path / "o.npy")
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), per_channel(reference, pixels), atol=2e-5)


def test_gaussian_truncate_is_scipys(rgb, tmp_path):
    """gaussian:sigma=S,truncate=T has radius int(T·S + 0.5), as scipy.ndimage.gaussian_filter."""
    path, pixels = rgb
    run_ok("apply", path, "-k", "gaussian:sigma=1.5,truncate=2", "-o", tmp_path / "o.npy")
    expected = per_channel(lambda x: ndi.gaussian_filter(x, 1.5, truncate=2, mode="reflect"), pixels)
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), expected, atol=2e-6)


def test_gray_is_itu_601_luma(rgb, tmp_path):
    path, pixels = rgb
    run_ok("apply", path, "-k", "identity", "--gray", "-o", tmp_path / "g.npy")
    luma = LUMA[0] * pixels[..., 0] + LUMA[1] * pixels[..., 1] + LUMA[2] * pixels[..., 2]
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), luma[..., None], atol=1e-6)


def test_split_channels_are_r_g_b_in_that_order(rgb, tmp_path):
    path, pixels = rgb
    run_ok("apply", path, "-k", inline(ASYMMETRIC), "--split-channels", "--scale", "clip", "--out-dir", tmp_path / "s")
    expected = per_channel(lambda x: ndi.convolve(x, ASYMMETRIC, mode="reflect"), pixels)
    for index, name in enumerate("rgb"):
        written = np.asarray(Image.open(tmp_path / "s" / f"rgb.3x3.{name}.png"))
        np.testing.assert_array_equal(written, np.rint(np.clip(expected[..., index], 0, 1) * 255))


def test_a_npy_bank_gives_one_map_per_kernel(rgb, tmp_path):
    path, pixels = rgb
    bank = np.stack([ASYMMETRIC, RANK_ONE, ASYMMETRIC.T])
    np.save(tmp_path / "bank.npy", bank)
    run_ok("apply", path, "-k", tmp_path / "bank.npy", "--out-dir", tmp_path / "o", "--name", "{op}.npy")
    assert sorted(os.listdir(tmp_path / "o")) == ["bank0.npy", "bank1.npy", "bank2.npy"]
    for index, kernel in enumerate(bank):
        expected = per_channel(lambda x: ndi.convolve(x, kernel, mode="reflect"), pixels)
        np.testing.assert_allclose(np.load(tmp_path / "o" / f"bank{index}.npy"), expected, atol=2e-5)


def test_depth_32_writes_unscaled_float_tiff(rgb, tmp_path):
    """sharpen overshoots [0, 1]: a float TIFF keeps the overshoot (read back with tifffile)."""
    path, pixels = rgb
    run_ok("apply", path, "-k", "sharpen", "--depth", "32", "-o", tmp_path / "o.tif")
    sharpen = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=float)
    expected = per_channel(lambda x: ndi.convolve(x, sharpen, mode="reflect"), pixels)
    written = tifffile.imread(tmp_path / "o.tif")
    assert written.dtype == np.float32 and written.min() < 0 < 1 < written.max()
    np.testing.assert_allclose(written, expected, atol=2e-6)


# --- alpha ---------------------------------------------------------------------------------


def test_alpha_drop_filters_colour_as_is_and_writes_no_alpha(rgba, tmp_path):
    path, pixels = rgba
    run_ok("apply", path, "-k", inline(ASYMMETRIC), "--alpha", "drop", "-o", tmp_path / "o.npy")
    expected = per_channel(lambda x: ndi.convolve(x, ASYMMETRIC, mode="reflect"), pixels[..., :3])
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), expected, atol=2e-5)


def test_alpha_keep_filters_colour_as_is_and_leaves_alpha_untouched(rgba, tmp_path):
    path, pixels = rgba
    run_ok("apply", path, "-k", inline(ASYMMETRIC), "--alpha", "keep", "-o", tmp_path / "o.npy")
    expected = per_channel(lambda x: ndi.convolve(x, ASYMMETRIC, mode="reflect"), pixels[..., :3])
    written = np.load(tmp_path / "o.npy")
    np.testing.assert_allclose(written[..., :3], expected, atol=2e-5)
    np.testing.assert_array_equal(written[..., 3], pixels[..., 3].astype(np.float32))


def test_alpha_premultiply_divides_by_the_filtered_alpha(rgba, tmp_path):
    """A kernel with a positive sum: (colour·α) * k / (α * k), and α * k is the new alpha."""
    path, pixels = rgba
    run_ok("apply", path, "-k", "box", "-o", tmp_path / "o.npy")
    colour, alpha = pixels[..., :3], pixels[..., 3]
    box = lambda x: ndi.convolve(x, np.full((3, 3), 1 / 9), mode="reflect")  # noqa: E731
    weight = box(alpha)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 where no visible pixel is in reach
        expected = np.where(weight > 1e-6, per_channel(box, colour * alpha[..., None]) / weight, 0.0)
    written = np.load(tmp_path / "o.npy")
    np.testing.assert_allclose(written[..., 3:], weight, atol=1e-6)
    np.testing.assert_allclose(written[..., :3], expected, atol=2e-5)


def test_alpha_premultiply_with_an_edge_detector_divides_by_the_original_alpha(rgba, tmp_path):
    """A zero-sum kernel: (colour·α) * k / α where α > 0 (else 0), and α is carried unchanged."""
    path, pixels = rgba
    run_ok("apply", path, "-k", "sobel-x", "-o", tmp_path / "o.npy")
    colour, alpha = pixels[..., :3], pixels[..., 3]
    response = per_channel(lambda x: ndi.convolve(x, SOBEL_X, mode="reflect"), colour * alpha[..., None])
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(alpha[..., None] > 0, response / alpha[..., None], 0.0)
    written = np.load(tmp_path / "o.npy")
    np.testing.assert_array_equal(written[..., 3], alpha.astype(np.float32))
    np.testing.assert_allclose(written[..., :3], expected, atol=1e-4)


# --- spectrum -------------------------------------------------------------------------------


def centred_fft(pixels: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(pixels, axes=(0, 1)), axes=(0, 1))


def test_spectrum_npy_holds_s_itself(rgb, tmp_path):
    path, pixels = rgb
    run_ok("spectrum", path, "-o", tmp_path / "s.npy")
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), np.log1p(np.abs(centred_fft(pixels))), rtol=1e-5)


def test_spectrum_gray_with_a_hann_window(rgb, tmp_path):
    path, pixels = rgb
    run_ok("spectrum", path, "--gray", "--window", "hann", "-o", tmp_path / "s.npy")
    luma = sum(w * pixels[..., c] for c, w in enumerate(LUMA))
    tapered = luma * np.outer(np.hanning(luma.shape[0]), np.hanning(luma.shape[1]))
    np.testing.assert_allclose(np.load(tmp_path / "s.npy")[..., 0], np.log1p(np.abs(centred_fft(tapered))), rtol=1e-5)


def test_spectrum_at_16_bits_scales_to_65535(tmp_path):
    path = tmp_path / "grey.png"
    pixels = save(path, random_u8((15, 22)))
    run_ok("spectrum", path, "--depth", "16", "-o", tmp_path / "s.png")
    s = np.log1p(np.abs(centred_fft(pixels)))
    written = np.asarray(Image.open(tmp_path / "s.png")).astype(np.int64)  # Pillow reads 16-bit grey
    assert written.max() == 65535
    assert np.abs(written - np.rint(65535 * s / s.max())).max() <= 1


def test_phase_maps_minus_pi_to_pi_onto_0_to_255(tmp_path):
    """Odd sizes: only the zero frequency is real, so no angle sits on the ±π seam."""
    path = tmp_path / "rgb.png"
    pixels = save(path, random_u8((15, 21, 3)))
    run_ok("spectrum", path, "--phase", "-o", tmp_path / "p.png")
    expected = np.rint((np.angle(centred_fft(pixels)) + np.pi) / (2 * np.pi) * 255)
    written = np.asarray(Image.open(tmp_path / "p.png")).astype(np.int64)
    assert np.abs(written - expected).max() <= 1 and (written == expected).mean() > 0.99


# --- lowpass: masks in closed form ------------------------------------------------------------


def distance2(shape) -> np.ndarray:
    """u² + v² from the centre (H//2, W//2) of a spectrum picture."""
    u = np.arange(shape[0])[:, None] - shape[0] // 2
    v = np.arange(shape[1])[None, :] - shape[1] // 2
    return (u**2 + v**2).astype(np.float64)


def mask_filter(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    filtered = centred_fft(pixels) * mask[..., None]
    return np.real(np.fft.ifft2(np.fft.ifftshift(filtered, axes=(0, 1)), axes=(0, 1)))


@pytest.mark.parametrize("args, mask", [
    (["--radius", "4"], lambda d2: d2 <= 16),
    (["--radius", "4", "--highpass"], lambda d2: d2 > 16),
    (["--radius", "6", "--band", "3"], lambda d2: (d2 > 9) & (d2 <= 36)),
    (["--radius", "3", "--profile", "gaussian"], lambda d2: np.exp(-d2 / 18)),
    (["--radius", "3", "--profile", "butterworth", "--order", "3"], lambda d2: 1 / (1 + (d2 / 9) ** 3)),
    (["--radius", "3", "--profile", "butterworth", "--highpass"], lambda d2: 1 - 1 / (1 + (d2 / 9) ** 2)),
])
def test_lowpass_masks_are_their_closed_forms(rgb, tmp_path, args, mask):
    path, pixels = rgb
    run_ok("lowpass", path, *args, "-o", tmp_path / "o.npy", "--mask-out", tmp_path / "m.npy")
    closed_form = mask(distance2(pixels.shape[:2])).astype(np.float64)
    np.testing.assert_allclose(np.load(tmp_path / "m.npy")[..., 0], closed_form, atol=1e-12)
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), mask_filter(pixels, closed_form), atol=2e-6)


def test_lowpass_carries_alpha_through_unfiltered(rgba, tmp_path):
    path, pixels = rgba
    run_ok("lowpass", path, "--radius", "2", "-o", tmp_path / "o.png")
    written = np.asarray(Image.open(tmp_path / "o.png"))
    assert written.shape == pixels.shape
    np.testing.assert_array_equal(written[..., 3], np.rint(pixels[..., 3] * 255))
    expected = np.clip(mask_filter(pixels[..., :3], distance2(pixels.shape[:2]) <= 4), 0, 1)
    assert np.abs(written[..., :3] - np.rint(expected * 255)).max() <= 1


def test_lowpass_gray_filters_the_luma(rgb, tmp_path):
    path, pixels = rgb
    run_ok("lowpass", path, "--radius", "4", "--gray", "-o", tmp_path / "o.npy")
    luma = sum(w * pixels[..., c] for c, w in enumerate(LUMA))[..., None]
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), mask_filter(luma, distance2(luma.shape[:2]) <= 16), atol=2e-6)


def test_highpass_auto_scale_is_offset_and_alpha_is_kept(rgba, tmp_path):
    """A high-pass is centred on 0: --scale auto writes x + ½ (mid-grey), alpha as it came."""
    path, pixels = rgba
    run_ok("lowpass", path, "--radius", "3", "--highpass", "-o", tmp_path / "o.png")
    written = np.asarray(Image.open(tmp_path / "o.png")).astype(np.int64)
    highpass = mask_filter(pixels[..., :3], distance2(pixels.shape[:2]) > 9)
    assert np.abs(written[..., :3] - np.rint(np.clip(highpass + 0.5, 0, 1) * 255)).max() <= 1
    np.testing.assert_array_equal(written[..., 3], np.rint(pixels[..., 3] * 255))


def test_mask_out_with_several_inputs_names_one_mask_per_input(tmp_path):
    save(tmp_path / "a.png", random_u8((20, 30, 3)))
    save(tmp_path / "b.png", random_u8((25, 16, 3)))
    args = ["lowpass", tmp_path / "a.png", tmp_path / "b.png", "--radius", "5", "--out-dir", tmp_path / "o"]
    refused = imfilt(*args, "--mask-out", tmp_path / "m.png")
    assert refused.exit_code == 2 and "put {stem} in it" in refused.stderr
    run_ok(*args, "--mask-out", tmp_path / "{stem}.mask.png")
    for stem, shape in (("a", (20, 30)), ("b", (25, 16))):
        mask = np.asarray(Image.open(tmp_path / f"{stem}.mask.png"))
        np.testing.assert_array_equal(mask, np.where(distance2(shape) <= 25, 255, 0))


# --- shared options ----------------------------------------------------------------------------


def test_quiet_silences_the_summary_but_not_errors(rgb, tmp_path):
    path, _ = rgb
    other = tmp_path / "other.png"
    other.write_bytes(path.read_bytes())
    (tmp_path / "bad.png").write_bytes(b"junk")
    loud = imfilt("apply", path, other, "-k", "box", "--out-dir", tmp_path / "a")
    assert loud.exit_code == 0 and loud.stderr == "imfilt: 2 written\n"
    quiet = imfilt("apply", path, other, "-k", "box", "--out-dir", tmp_path / "b", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    failed = imfilt("apply", path, tmp_path / "bad.png", "-k", "box", "--out-dir", tmp_path / "c", "-q")
    assert failed.exit_code == 1 and "bad.png: " in failed.stderr


def test_debug_shows_the_traceback_and_its_absence_one_line(rgb):
    path, _ = rgb
    command = [sys.executable, "-m", "imfilt", "apply", str(path), "-k", "nosuch", "-o", "x.png"]
    plain = subprocess.run(command, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.count("\n") == 1 and "unknown kernel 'nosuch'" in plain.stderr
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True)
    assert "Traceback" in debug.stderr and "KernelError: unknown kernel 'nosuch'" in debug.stderr


def test_an_internal_error_is_one_line_and_a_traceback_with_debug(rgb, tmp_path, monkeypatch):
    """A bug (here one planted in planning) is exit 1 and a hint to --debug, which re-raises it."""
    def planted_bug(*args, **kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr("imfilt.cli.batch.plan", planted_bug)
    path, _ = rgb
    result = imfilt("apply", path, "-k", "box", "-o", tmp_path / "o.png")
    assert result.exit_code == 1
    assert result.stderr == "imfilt: internal error: ZeroDivisionError: planted (run with --debug for details)\n"
    debug = imfilt("apply", path, "-k", "box", "-o", tmp_path / "o.png", "--debug")
    assert isinstance(debug.exception, ZeroDivisionError)


def test_stdout_defaults_to_png(rgb):
    path, pixels = rgb
    result = run_ok("apply", "-", "-k", "box", "-o", "-", input=path.read_bytes())
    written = np.asarray(Image.open(io.BytesIO(result.stdout_bytes)))
    assert result.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    expected = per_channel(lambda x: ndi.convolve(x, np.full((3, 3), 1 / 9), mode="reflect"), pixels)
    np.testing.assert_array_equal(written, np.rint(expected * 255))


def test_from_file_reads_one_path_a_line(rgb, tmp_path):
    path, _ = rgb
    spaced = tmp_path / "with space.png"
    spaced.write_bytes(path.read_bytes())
    (tmp_path / "list.txt").write_text(f"{path}\n\n{spaced}\n")
    run_ok("apply", "--from", tmp_path / "list.txt", "-k", "box", "--out-dir", tmp_path / "o")
    assert sorted(os.listdir(tmp_path / "o")) == ["rgb.box.png", "with space.box.png"]


@pytest.mark.parametrize("requested, inputs, cores, streamed, workers", [
    (None, 8, 4, False, 4), (None, 3, 4, False, 3), (None, 65, 4, True, 1), (None, 100, 2, False, 2),
    (3, 9, 4, False, 3), (8, 9, 4, False, 4), (4, 2, 4, False, 2), (2, 9, 4, True, 2), (None, 0, 4, False, 1),
])
def test_jobs_default_and_never_more_than_the_cores_or_inputs(requested, inputs, cores, streamed, workers):
    """Jobs at once: default the cores, or 1 where an input streams; at most the cores and the inputs."""
    from imfilt.cli.batch import worker_count

    assert worker_count(requested, inputs, cores, streamed) == workers


@pytest.mark.parametrize("make", ["png8", "png16", "tiff16"])
def test_max_pixels_raises_the_limit(tmp_path, monkeypatch, make):
    """The limit itself is lowered for the test, so a small image stands for a huge one."""
    monkeypatch.setattr("PIL.Image.MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / ("i.tif" if make == "tiff16" else "i.png")
    if make == "png8":
        Image.new("RGB", (40, 40)).save(path)
    elif make == "png16":
        import png

        png.from_array(np.zeros((40, 40 * 3), np.uint16), "RGB;16").save(str(path))
    else:
        tifffile.imwrite(path, np.zeros((40, 40, 3), np.uint16), photometric="rgb")
    refused = imfilt("apply", path, "-k", "box", "-o", tmp_path / "o.png")
    assert refused.exit_code == 1 and "safety limit" in refused.stderr and not (tmp_path / "o.png").exists()
    run_ok("apply", path, "-k", "box", "-o", tmp_path / "o.png", "--max-pixels", "1600")


def test_bad_imfilt_fft_is_exit_2_even_after_an_engine_was_made(rgb, tmp_path, monkeypatch):
    path, _ = rgb
    run_ok("apply", path, "-k", "box", "-o", tmp_path / "first.png")  # the default CPU engine now exists
    monkeypatch.setenv("IMFILT_FFT", "nope")
    result = imfilt("apply", path, "-k", "box", "-o", tmp_path / "o.png")
    assert result.exit_code == 2 and "unknown FFT backend 'nope' (IMFILT_FFT)" in result.stderr
    assert not (tmp_path / "o.png").exists()


def test_engine_auto_takes_the_gpu_only_for_measured_wins(rgb, tmp_path):
    """auto: the GPU only for FFT work on images of 4096x4096 and more (docs/gpu.md), and only if present."""
    from imfilt.engine.engine import GPU_MIN_PIXELS, auto_engine, gpu_engine, prefers_gpu
    from imfilt.errors import EngineUnavailable

    assert prefers_gpu("fft", GPU_MIN_PIXELS) and not prefers_gpu("fft", GPU_MIN_PIXELS - 1)
    assert not prefers_gpu("spatial", 10**10)
    try:
        gpu_engine()
        present = "gpu"
    except EngineUnavailable:
        present = "cpu"
    assert auto_engine("fft", GPU_MIN_PIXELS).name == present
    assert auto_engine("spatial", GPU_MIN_PIXELS).name == auto_engine("fft", 64 * 64).name == "cpu"
    path, pixels = rgb
    result = run_ok("apply", path, "-k", inline(ASYMMETRIC), "--engine", "auto", "-o", tmp_path / "o.npy", "--json")
    assert json.loads(result.stdout)["engine"] == "cpu"  # a small image: measured faster on the CPU
    reference = per_channel(lambda x: ndi.convolve(x, ASYMMETRIC, mode="reflect"), pixels)
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), reference, atol=2e-5)


# --- formats in and out ----------------------------------------------------------------------


def test_jpeg_is_quality_95_with_alpha_dropped(tmp_path):
    values = random_u8((16, 24, 4), seed=9)
    values[..., 3] = 255  # opaque: premultiplying changes nothing, so the colour is the input's
    path = tmp_path / "a.png"
    save(path, values)
    run_ok("apply", path, "-k", "identity", "-o", tmp_path / "o.jpg")
    written = Image.open(tmp_path / "o.jpg")
    reference = io.BytesIO()
    Image.fromarray(values[..., :3]).save(reference, format="JPEG", quality=95)
    assert written.mode == "RGB" and written.quantization == Image.open(reference).quantization
    np.testing.assert_array_equal(np.asarray(written), np.asarray(Image.open(reference)))


def test_gif_input_is_read_through_its_palette(tmp_path):
    palette = random_u8((256, 3), seed=11)
    indices = random_u8((10, 14), seed=12)
    gif = Image.fromarray(indices, mode="P")
    gif.putpalette(palette.ravel().tolist())
    gif.save(tmp_path / "p.gif")
    run_ok("apply", tmp_path / "p.gif", "-k", "identity", "--out-dir", tmp_path / "o")
    written = np.asarray(Image.open(tmp_path / "o" / "p.identity.png"))  # a GIF in, a PNG out
    np.testing.assert_array_equal(written, palette[indices])
