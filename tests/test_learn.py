"""imfilt learn: the normal equations against a float64 design matrix, recovery of known kernels
from 8- and 16-bit targets made by scipy.ndimage, honest fits of non-linear targets, the errors."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.errors import InputError, UsageError
from imfilt.ops.learn import _normal_equations, _patches_of, learn_kernel, parse_kernel_size

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SCIPY_MODE = {"reflect": "reflect", "mirror": "mirror", "nearest": "nearest", "wrap": "grid-wrap", "constant": "constant"}
# The bounds the docs state: max |learned - true| over the taps, on a 96x128 photo crop
BOUND = {8: 1e-3, 16: 1e-5}


def imfilt(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A 96x128 RGB crop of chelsea (the cat's face: edges and texture), float64 in [0, 1]."""
    return np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"), dtype=np.float64)[60:156, 150:278] / 255


def filtered(image: np.ndarray, kernel: np.ndarray, mode: str, correlate: bool, cval: float = 0.25) -> np.ndarray:
    """The reference: scipy.ndimage per channel in float64."""
    fn = ndi.correlate if correlate else ndi.convolve
    return np.stack([fn(image[..., c], kernel, mode=SCIPY_MODE[mode], cval=cval) for c in range(image.shape[2])], -1)


def asymmetric(shape: tuple[int, int], seed: int = 3) -> np.ndarray:
    kernel = np.random.default_rng(seed).uniform(-0.3, 0.5, shape)
    return kernel / kernel.sum()


def read_kernel(path: Path) -> np.ndarray:
    return np.loadtxt(path, comments=("#", "name:"), ndmin=2)


@pytest.mark.parametrize("h, w, kh, kw, channels", [(9, 11, 3, 5, 2), (5, 6, 4, 3, 1), (7, 7, 7, 1, 3), (3, 4, 3, 4, 1),
                                                     (20, 17, 6, 2, 3), (6, 5, 1, 1, 1), (4, 30, 2, 9, 1)])
def test_normal_equations_equal_a_float64_design_matrix(h, w, kh, kw, channels, engine):
    """G = XᵀX and b = Xᵀy by FFTs and border lines, against the design matrix X itself."""
    rng = np.random.default_rng(h * w + kh)
    padded, target = rng.random((channels, h + kh - 1, w + kw - 1)), rng.random((channels, h, w))
    x = np.stack([padded[:, u0 : u0 + h, u1 : u1 + w] for u0 in range(kh) for u1 in range(kw)], -1).reshape(-1, kh * kw)
    gram, rhs = _normal_equations(engine, engine.xp.asarray(padded), engine.xp.asarray(target), kh, kw)
    np.testing.assert_allclose(gram, x.T @ x, rtol=1e-12, atol=1e-12 * np.abs(x.T @ x).max())
    np.testing.assert_allclose(rhs, x.T @ target.reshape(-1), rtol=1e-12, atol=1e-12 * np.abs(rhs).max())
    left_out = rng.random(target.shape) < 0.3
    g, b, yy, ysum, count = _patches_of(engine, engine.xp.asarray(padded), engine.xp.asarray(target),
                                        engine.xp.asarray(left_out), kh, kw)
    rows = np.stack([padded[:, u0 : u0 + h, u1 : u1 + w] for u0 in range(kh) for u1 in range(kw)], -1)[left_out]
    np.testing.assert_allclose(g, rows.T @ rows, atol=1e-12)
    np.testing.assert_allclose(b, rows.T @ target[left_out], atol=1e-12)
    assert count == left_out.sum() and np.isclose(yy, (target[left_out] ** 2).sum())


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("correlate, shape", [(False, (3, 5)), (True, (4, 2))])
@pytest.mark.parametrize("mode", list(SCIPY_MODE))
def test_recovers_a_known_kernel_from_a_quantized_target(tmp_path, crop, mode, correlate, shape, bits):
    """Each boundary mode, both orientations, rectangular and even shapes: within the stated bound."""
    kernel = asymmetric(shape)
    maxval = 2**bits - 1
    stored = np.clip(np.round(filtered(crop, kernel, mode, correlate) * maxval), 0, maxval)
    source, target = tmp_path / "in.png", tmp_path / ("target.png" if bits == 8 else "target.tif")
    Image.fromarray(np.round(crop * 255).astype(np.uint8)).save(source)
    if bits == 8:
        Image.fromarray(stored.astype(np.uint8)).save(target)
    else:
        tifffile.imwrite(target, stored.astype(np.uint16), photometric="rgb")
    args = ["learn", source, target, "--size", f"{shape[0]}x{shape[1]}", "--boundary", mode, "--cval", 0.25,
            "-o", tmp_path / "k.txt", "--json"] + (["--correlate"] if correlate else [])
    result = imfilt(*args)
    assert result.exit_code == 0, result.stderr
    learned = read_kernel(tmp_path / "k.txt")
    assert learned.shape == shape
    assert np.abs(learned - kernel).max() < BOUND[bits]
    record = json.loads(result.stdout)
    assert record["size"] == list(shape) and record["r2"] > 0.9999
    assert record["rmse"] < (0.35 if bits == 8 else 0.01)  # 8-bit rounding alone: 1/sqrt(12) = 0.289 levels


def _imagemagick() -> bool:
    """ImageMagick's own convert (some machines have a stand-in by that name that only prints PNGs)."""
    if shutil.which("convert") is None:
        return False
    done = subprocess.run(["convert", "-version"], capture_output=True, text=True)
    return done.returncode == 0 and "ImageMagick" in done.stdout


@pytest.mark.skipif(not _imagemagick(), reason="ImageMagick is not installed (apt-get install imagemagick)")
@pytest.mark.parametrize("values, shape, correlate", [("0.1,0.5,-0.2,0.3,0.2,0.1,0,-0.1,0.1", (3, 3), False),
                                                       ("0.1,0.5,-0.2,0.3,0.2,0.1", (2, 3), True)])
def test_recovers_the_kernel_of_imagemagick(tmp_path, crop, values, shape, correlate):
    """A target made by another tool: ImageMagick's -morphology Convolve (edge pixels outside: nearest).

    It convolves (turns the kernel 180°); for an even size its anchor is where apply --correlate
    puts the turned kernel's, so that kernel is learned with --correlate.
    """
    Image.fromarray(np.round(crop * 255).astype(np.uint8)).save(tmp_path / "in.png")
    subprocess.run(["convert", tmp_path / "in.png", "-define", "convolve:scale=1", "-morphology", "Convolve",
                    f"{shape[1]}x{shape[0]}: {values}", "-depth", "16", tmp_path / "im.png"], check=True)
    result = imfilt("learn", tmp_path / "in.png", tmp_path / "im.png", "-s", f"{shape[0]}x{shape[1]}",
                    "--boundary", "nearest", "-o", tmp_path / "k.txt", *(["--correlate"] if correlate else []))
    assert result.exit_code == 0, result.stderr
    kernel = np.array([float(v) for v in values.split(",")]).reshape(shape)
    expected = kernel[::-1, ::-1] if correlate else kernel
    assert np.abs(read_kernel(tmp_path / "k.txt") - expected).max() < 1e-4  # from 16-bit, through IM's arithmetic


def test_the_boundary_mode_is_the_one_fitted(crop):
    """A reflect target fitted as wrap is worse than the bound: --boundary is not ignored."""
    kernel = asymmetric((3, 5))
    target = filtered(crop, kernel, "reflect", False)
    right = learn_kernel(crop, target, (3, 5), mode="reflect")
    wrong = learn_kernel(crop, target, (3, 5), mode="wrap")
    assert np.abs(right.kernel - kernel).max() < 1e-9
    assert np.abs(wrong.kernel - kernel).max() > 10 * BOUND[8] and wrong.rmse > 100 * right.rmse


def test_valid_size_target(crop):
    kernel = asymmetric((5, 3))
    target = filtered(crop, kernel, "reflect", False)[2:-2, 1:-1]  # where the kernel fits
    np.testing.assert_allclose(learn_kernel(crop, target, (5, 3), mode="wrap").kernel, kernel, atol=1e-9)


def test_engines_agree(crop, engine):
    kernel = asymmetric((3, 3))
    fit = learn_kernel(crop[:40, :50], filtered(crop[:40, :50], kernel, "mirror", True), (3, 3), mode="mirror",
                       correlate=True, engine=engine)
    np.testing.assert_allclose(fit.kernel, kernel, atol=1e-9)


@pytest.mark.parametrize("what", ["gamma", "median"])
def test_non_linear_target_is_fitted_and_reported_honestly(crop, what):
    """rmse and r2 are the residual of the learned kernel, recomputed here with scipy in float64."""
    target = crop**2.2 if what == "gamma" else ndi.median_filter(crop, size=(3, 3, 1), mode="reflect")
    fit = learn_kernel(crop, target, (3, 3))
    residual = filtered(crop, fit.kernel, "reflect", False) - target
    rmse = np.sqrt(np.mean(residual**2))
    r2 = 1 - np.sum(residual**2) / np.sum((target - target.mean()) ** 2)
    assert fit.rmse == pytest.approx(rmse, rel=1e-6) and fit.r2 == pytest.approx(r2, rel=1e-9)
    assert 0.5 < fit.r2 < 0.999 and fit.rmse * 255 > 1  # a fit, and not a perfect one


def test_clipped_samples_are_left_out(crop):
    """A target saturated by a strong sharpen: the clipped samples would bias the fit; left out, they do not."""
    kernel = np.array([[0, -2, 0], [-2, 9, -2], [0, -2, 0]], dtype=float)
    target = np.clip(filtered(crop, kernel, "reflect", False), 0, 1)
    clipped = (target <= 0) | (target >= 1)
    assert clipped.mean() > 0.05
    honest = learn_kernel(crop, target, (3, 3), left_out=clipped)
    biased = learn_kernel(crop, target, (3, 3))
    assert np.abs(honest.kernel - kernel).max() < 1e-8 and honest.left_out == pytest.approx(clipped.mean())
    assert np.abs(biased.kernel - kernel).max() > 0.1


def test_the_cli_leaves_out_what_an_8_bit_target_clipped(tmp_path, crop):
    kernel = np.array([[0, -2, 0], [-2, 9, -2], [0, -2, 0]], dtype=float)
    stored = np.round(np.clip(filtered(crop, kernel, "reflect", False), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(np.round(crop * 255).astype(np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(stored).save(tmp_path / "t.png")
    result = imfilt("learn", tmp_path / "in.png", tmp_path / "t.png", "-s", 3, "-o", tmp_path / "k.txt", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["clipped"] == pytest.approx(((stored == 0) | (stored == 255)).mean(), abs=1e-6)
    assert np.abs(read_kernel(tmp_path / "k.txt") - kernel).max() < 5 * BOUND[8]


@pytest.mark.parametrize("flat_check", [0, 1 << 30])
def test_left_out_flat_patches_are_summed_without_their_patch(monkeypatch, engine, flat_check):
    """Saturated regions (patches of one value) left out: the same G and b as every patch's product."""
    import imfilt.ops.learn

    monkeypatch.setattr(imfilt.ops.learn, "FLAT_CHECK", flat_check)
    rng = np.random.default_rng(8)
    padded = rng.random((2, 26, 31))
    padded[0, 3:15, 4:20], padded[1, 10:26, 0:12] = 1.0, 0.0  # flat: patches inside them hold one value
    target = rng.random((2, 22, 27))
    mask = rng.random(target.shape) < 0.5
    mask[0, 3:10, 4:15] = True
    g, b, yy, ysum, count = _patches_of(engine, engine.xp.asarray(padded), engine.xp.asarray(target),
                                        engine.xp.asarray(mask), 5, 5)
    rows = np.stack([padded[:, u0 : u0 + 22, u1 : u1 + 27] for u0 in range(5) for u1 in range(5)], -1)[mask]
    np.testing.assert_allclose(g, rows.T @ rows, rtol=1e-12)
    np.testing.assert_allclose(b, rows.T @ target[mask], rtol=1e-12)
    assert count == mask.sum() and np.isclose(yy, (target[mask] ** 2).sum()) and np.isclose(ysum, target[mask].sum())


@pytest.mark.parametrize("fraction", [0.2, 0.8])
def test_left_out_samples_equal_a_design_matrix_without_them(crop, fraction):
    """Few left out: subtracted from the FFT sums; most left out: the rest summed directly. Both are the
    least-squares solution of the design matrix's kept rows."""
    image, target = crop[:30, :40], np.random.default_rng(5).random((30, 40, 3))
    left_out = np.random.default_rng(6).random(target.shape) < fraction
    padded = np.pad(image, ((1, 1), (2, 2), (0, 0)), mode="symmetric")
    x = np.stack([padded[u0 : u0 + 30, u1 : u1 + 40] for u0 in range(3) for u1 in range(5)], -1)[~left_out]
    expected = np.linalg.lstsq(x, target[~left_out], rcond=None)[0].reshape(3, 5)
    fit = learn_kernel(image, target, (3, 5), correlate=True, left_out=left_out)
    np.testing.assert_allclose(fit.kernel, expected, atol=1e-9)
    assert fit.samples == (~left_out).sum()


def test_ridge_shrinks_the_kernel_and_solves_a_flat_image():
    stripes = np.tile(np.sin(np.arange(64) / 3.0)[None, :, None], (48, 1, 1)) * 0.4 + 0.5  # no vertical detail
    target = filtered(stripes, asymmetric((3, 3)), "reflect", False)
    with pytest.raises(InputError, match="--ridge"):
        learn_kernel(stripes, target, (3, 3))
    small, large = learn_kernel(stripes, target, (3, 3), ridge=1e-6), learn_kernel(stripes, target, (3, 3), ridge=1e-2)
    assert np.linalg.norm(large.kernel) < np.linalg.norm(small.kernel) and small.r2 > 0.9999


def test_gray_fits_the_luminance(tmp_path, crop):
    kernel = asymmetric((3, 3))
    Image.fromarray(np.round(crop * 255).astype(np.uint8)).save(tmp_path / "in.png")
    luma = np.round(crop * 255).astype(np.uint8) @ np.array([0.299, 0.587, 0.114]) / 255
    target = ndi.convolve(luma, kernel, mode="reflect")
    np.save(tmp_path / "target.npy", target.astype(np.float32))
    result = imfilt("learn", tmp_path / "in.png", tmp_path / "target.npy", "-s", 3, "--gray", "-o", tmp_path / "k.npy")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "k.npy"), kernel, atol=1e-5)


def test_learned_file_works_with_apply_and_prints_to_stdout(tmp_path, small_rgb):
    assert imfilt("apply", small_rgb, "-k", "3x2: 1,2,-1,0,0.5,0.25", "--correlate", "-o", tmp_path / "t.tif",
                  "--depth", "32").exit_code == 0
    printed = imfilt("learn", small_rgb, tmp_path / "t.tif", "-s", "2x3", "--correlate", "-o", "-")
    assert printed.exit_code == 0 and printed.stdout.startswith("name: learned\n")
    (tmp_path / "k.txt").write_text(printed.stdout)
    assert imfilt("apply", small_rgb, "-k", tmp_path / "k.txt", "--correlate", "-o", tmp_path / "again.tif",
                  "--depth", "32").exit_code == 0
    np.testing.assert_allclose(tifffile.imread(tmp_path / "again.tif"), tifffile.imread(tmp_path / "t.tif"), atol=1e-5)


def test_json_record(tmp_path, small_rgb):
    assert imfilt("apply", small_rgb, "-k", "box", "-o", tmp_path / "t.png").exit_code == 0
    result = imfilt("learn", small_rgb, tmp_path / "t.png", "-s", 3, "-o", tmp_path / "box.txt", "--json")
    record = json.loads(result.stdout)
    assert set(record) == {"input", "target", "kernel", "size", "rmse", "r2", "clipped", "sum", "rank", "method", "seconds"}
    assert record["kernel"] == str(tmp_path / "box.txt") and record["rank"] == 3 and abs(record["sum"] - 1) < 0.01
    assert (tmp_path / "box.txt").read_text().startswith("name: box\n")


def test_parse_kernel_size():
    assert parse_kernel_size("5") == (5, 5) and parse_kernel_size("3x7") == (3, 7)
    for bad in ("0", "3x", "x3", "-1", "65x65", "a"):
        with pytest.raises(UsageError):
            parse_kernel_size(bad)


def _pair(tmp_path, size_in=(20, 24), size_target=(20, 24), constant=False, channels=3):
    rng = np.random.default_rng(0)
    image = np.full(size_in + (3,), 128, np.uint8) if constant else (rng.random(size_in + (3,)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    target = (rng.random(size_target + (channels,)) * 255).astype(np.uint8)
    Image.fromarray(target[..., 0] if channels == 1 else target).save(tmp_path / "t.png")
    return tmp_path / "in.png", tmp_path / "t.png"


@pytest.mark.parametrize("case, args, code, message", [
    ("sizes", ["-s", 3], 2, "the target is 19x24 but the input is 20x24"),
    ("larger", ["-s", "21x3"], 2, "larger than the 20x24 input"),
    ("constant", ["-s", 3], 1, "the input is constant"),
    ("channels", ["-s", 3], 2, "3 channels and the target 1"),
    ("plain", ["-s", "3y3"], 2, "--size must be N or HxW"),
    ("plain", ["-s", 3, "--ridge", -1], 2, "--ridge"),
    ("missing", ["-s", 3], 2, "no such file"),
    ("plain", ["-s", 3, "-o", "k.png"], 2, "kernel file"),
    ("plain", ["-s", 3, "-o", "-", "--json"], 2, "choose one"),
])
def test_errors_are_one_line_and_write_nothing(tmp_path, monkeypatch, case, args, code, message):
    monkeypatch.chdir(tmp_path)
    source, target = _pair(tmp_path, size_target=(19, 24) if case == "sizes" else (20, 24), constant=case == "constant",
                           channels=1 if case == "channels" else 3)
    if case == "missing":
        target = tmp_path / "nothing.png"
    out = [] if "-o" in args else ["-o", "k.txt"]
    result = imfilt("learn", source, target, *args, *out)
    assert result.exit_code == code, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == "" and not (tmp_path / "k.txt").exists() and not (tmp_path / "k.png").exists()


def test_an_existing_kernel_file_is_kept(tmp_path):
    source, target = _pair(tmp_path)
    (tmp_path / "k.txt").write_text("1\n")
    result = imfilt("learn", source, target, "-s", 3, "-o", tmp_path / "k.txt")
    assert result.exit_code == 2 and "--overwrite" in result.stderr and (tmp_path / "k.txt").read_text() == "1\n"
    assert imfilt("learn", source, target, "-s", 3, "-o", tmp_path / "k.txt", "--overwrite").exit_code == 0
