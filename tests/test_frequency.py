"""The frequency domain: spectra, masks and filtering, checked against numpy.fft in float64."""

import json

import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image
from typer.testing import CliRunner

import imfilt
from imfilt.cli.main import app

runner = CliRunner()


def numpy_spectrum(image):
    return np.fft.fftshift(np.log1p(np.abs(np.fft.fft2(image.astype(np.float64), axes=(0, 1)))), axes=(0, 1))


def test_spectrum_matches_numpy_on_a_photo(chelsea, engine):
    np.testing.assert_allclose(imfilt.spectrum(chelsea, engine=engine), numpy_spectrum(chelsea), atol=5e-4)


def test_phase_matches_numpy(chelsea, engine):
    expected = np.fft.fftshift(np.angle(np.fft.fft2(chelsea.astype(np.float64), axes=(0, 1))), axes=(0, 1))
    difference = np.angle(np.exp(1j * (imfilt.spectrum(chelsea, phase=True, engine=engine) - expected)))
    assert np.percentile(np.abs(difference), 99.9) < 1e-3  # phase of near-zero coefficients is noise


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (1, 6), (5, 1), (1, 1)])
def test_zero_frequency_sits_at_the_centre(shape, engine):
    """A constant image has all its energy at row H//2, column W//2, odd sizes too."""
    spectrum = imfilt.spectrum(np.full(shape + (1,), 0.5, np.float32), engine=engine)[..., 0]
    assert np.unravel_index(np.argmax(spectrum), shape) == (shape[0] // 2, shape[1] // 2)
    assert np.isfinite(spectrum).all()


def test_black_image_gives_a_finite_black_picture(tmp_path):
    Image.new("RGB", (5, 4)).save(tmp_path / "black.png")
    result = runner.invoke(app, ["spectrum", str(tmp_path / "black.png"), "-o", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.stderr
    assert not np.asarray(Image.open(tmp_path / "s.png")).any()


def test_parseval(chelsea, engine):
    """sum |x|² = sum |F|² / (H·W), with |F| recovered from the spectrum."""
    magnitude = np.expm1(imfilt.spectrum(chelsea, engine=engine).astype(np.float64))
    energy = (magnitude**2).sum(axis=(0, 1)) / (chelsea.shape[0] * chelsea.shape[1])
    np.testing.assert_allclose(energy, (chelsea.astype(np.float64) ** 2).sum(axis=(0, 1)), rtol=1e-4)


def test_spectrum_image_scales_by_the_maximum_over_channels(chelsea, tmp_path):
    Image.fromarray(np.rint(chelsea * 255).astype(np.uint8)).save(tmp_path / "c.png")
    assert runner.invoke(app, ["spectrum", str(tmp_path / "c.png"), "-o", str(tmp_path / "s.png")]).exit_code == 0
    spectrum = numpy_spectrum(np.asarray(Image.open(tmp_path / "c.png"), np.float32) / 255)
    expected = np.rint(255 * spectrum / spectrum.max())
    assert np.abs(np.asarray(Image.open(tmp_path / "s.png"), np.float64) - expected).max() <= 1


def test_hann_window_weakens_the_border_cross(chelsea):
    """Away from the centre, the spectrum's centre row and column (the cross that border
    discontinuities draw) stand far above the rest; the hann window brings them down."""
    def cross_contrast(spectrum):
        magnitude = np.expm1(spectrum[..., 0].astype(np.float64))
        h, w = magnitude.shape
        u, v = np.abs(np.arange(h) - h // 2), np.abs(np.arange(w) - w // 2)
        axes = np.concatenate([magnitude[h // 2, v > 20], magnitude[u > 20, w // 2]])
        return axes.mean() / np.median(magnitude[(u[:, None] > 20) & (v[None, :] > 20)])

    assert cross_contrast(imfilt.spectrum(chelsea, window="hann")) < 0.7 * cross_contrast(imfilt.spectrum(chelsea))


def test_lowpass_matches_numpy_on_a_photo(chelsea, engine):
    mask = imfilt.frequency_mask(chelsea.shape[:2], 25)
    spectrum = np.fft.fftshift(np.fft.fft2(chelsea.astype(np.float64), axes=(0, 1)), axes=(0, 1))
    expected = np.real(np.fft.ifft2(np.fft.ifftshift(spectrum * mask[..., None], axes=(0, 1)), axes=(0, 1)))
    np.testing.assert_allclose(imfilt.lowpass(chelsea, 25, engine=engine), expected, atol=1e-5)


def test_gaussian_lowpass_is_a_gaussian_blur_with_wrap(chelsea, engine):
    """The convolution theorem: a Gaussian mask of radius R in a N-point spectrum is a spatial
    Gaussian of sigma N / (2πR) along that axis, with periodic (wrap) boundaries."""
    square = chelsea[:256, :256]
    radius = 16.0
    sigma = 256 / (2 * np.pi * radius)
    blurred = imfilt.lowpass(square, radius, profile="gaussian", engine=engine)
    expected = ndi.gaussian_filter(square.astype(np.float64), sigma=(sigma, sigma, 0), mode="wrap", truncate=8)
    np.testing.assert_allclose(blurred, expected, atol=2e-4)


@pytest.mark.parametrize("shape", [(64, 64), (50, 80)])
def test_ideal_mask_keeps_the_area_of_the_circle(shape):
    mask = imfilt.frequency_mask(shape, 12)
    assert mask.sum() == pytest.approx(np.pi * 12**2, rel=0.03)
    h, w = shape
    assert mask[h // 2, w // 2 + 12] == 1 and mask[h // 2 + 12, w // 2] == 1 and mask[h // 2, w // 2 + 13] == 0


def test_masks_highpass_band_and_soft_profiles():
    low = imfilt.frequency_mask((32, 32), 8)
    np.testing.assert_array_equal(imfilt.frequency_mask((32, 32), 8, highpass=True), 1 - low)
    band = imfilt.frequency_mask((32, 32), 8, band=4)
    assert band[16, 16] == 0 and band[16, 22] == 1 and band[16, 26] == 0
    butter = imfilt.frequency_mask((32, 32), 8, profile="butterworth", order=2)
    assert butter[16, 24] == pytest.approx(0.5) and butter[16, 16] == 1
    assert imfilt.frequency_mask((32, 32), 8, profile="gaussian")[16, 24] == pytest.approx(np.exp(-0.5))


def test_huge_radius_returns_the_image_unchanged_and_unshifted(chelsea, engine):
    np.testing.assert_allclose(imfilt.lowpass(chelsea, 10_000, engine=engine), chelsea, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (5, 5)])
def test_constant_image_stays_constant(shape, engine):
    image = np.full(shape + (2,), 0.3, np.float32)
    np.testing.assert_allclose(imfilt.lowpass(image, 0, engine=engine), image, atol=1e-6)


def test_lowpass_cli_reports_the_kept_fraction_and_writes_the_mask(tmp_path):
    Image.new("RGB", (64, 32), (10, 20, 30)).save(tmp_path / "i.png")
    result = runner.invoke(app, ["lowpass", str(tmp_path / "i.png"), "--radius", "8", "--json",
                                 "--mask-out", str(tmp_path / "mask.png"), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert record["kept"] == pytest.approx((mask == 255).mean(), abs=1e-6)
    assert record["kept"] == pytest.approx(np.pi * 64 / (64 * 32), rel=0.1)
    assert mask.shape == (32, 64)


def test_lowpass_band_must_be_inside_the_radius(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    result = runner.invoke(app, ["lowpass", str(tmp_path / "i.png"), "--radius", "3", "--band", "5"])
    assert result.exit_code == 2 and "need 0 <= band < radius, got radius 3, band 5" in result.stderr


def test_pyfftw_backend_gives_the_same_numbers(chelsea, tmp_path, monkeypatch):
    """pyfftw registered as scipy.fft's backend: same results, and its plans are kept as wisdom."""
    import atexit

    from imfilt.engine.engine import cpu_engine, save_fftw_wisdom

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fftw = cpu_engine(None, "pyfftw")
    image = chelsea[:64, :80]
    np.testing.assert_allclose(imfilt.lowpass(image, 10, engine=fftw), imfilt.lowpass(image, 10), atol=1e-6)
    np.testing.assert_allclose(imfilt.convolve(image, np.ones((9, 9)) / 81, method="fft", engine=fftw),
                               imfilt.convolve(image, np.ones((9, 9)) / 81, method="fft"), atol=1e-6)
    save_fftw_wisdom()
    assert (tmp_path / "imfilt" / "fftw-wisdom.bin").stat().st_size > 0
    atexit.unregister(save_fftw_wisdom)  # at exit XDG_CACHE_HOME is restored: keep the test out of ~/.cache


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

small_images = st.tuples(st.integers(1, 16), st.integers(1, 16), st.integers(0, 2**32 - 1)).map(
    lambda t: np.random.default_rng(t[2]).random((t[0], t[1], 2)).astype(np.float32))


ON_EVERY_ENGINE = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=60, **ON_EVERY_ENGINE)
@given(small_images, st.floats(0, 12), st.sampled_from(["ideal", "gaussian", "butterworth"]))
def test_lowpass_plus_highpass_is_the_image(engine, image, radius, profile):
    low = imfilt.lowpass(image, radius, profile=profile, engine=engine)
    high = imfilt.lowpass(image, radius, profile=profile, highpass=True, engine=engine)
    np.testing.assert_allclose(low + high, image, atol=1e-5)


@settings(max_examples=60, **ON_EVERY_ENGINE)
@given(small_images, st.integers(-20, 20), st.integers(-20, 20))
def test_magnitude_spectrum_ignores_a_circular_shift(engine, image, dy, dx):
    """|F| does not change when the image is rolled: only the phase carries position."""
    rolled = np.roll(image, (dy, dx), axis=(0, 1))
    np.testing.assert_allclose(imfilt.spectrum(rolled, engine=engine), imfilt.spectrum(image, engine=engine), atol=1e-4)


@settings(max_examples=40, **ON_EVERY_ENGINE)
@given(small_images, st.floats(-3, 3))
def test_lowpass_is_linear(engine, image, a):
    other = np.random.default_rng(1).random(image.shape).astype(np.float32)
    left = imfilt.lowpass(a * image + other, 3, engine=engine)
    right = a * imfilt.lowpass(image, 3, engine=engine) + imfilt.lowpass(other, 3, engine=engine)
    np.testing.assert_allclose(left, right, atol=1e-4 * (abs(a) + 1))
