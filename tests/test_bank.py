"""4-D kernel banks (N, C, kh, kw), a convolutional layer's weight: each map is the sum over the
image's channels of one kernel's responses, plus its bias.

The reference is written here: sum over channels of scipy.ndimage.correlate/convolve in float64,
plus the bias; PyTorch's conv2d itself where torch is installed.
"""

import json
import struct
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image
from safetensors.numpy import save_file
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.ops.convolution import convolve
from imfilt.engine.engine import cpu_engine
from imfilt.image.io import Loaded
from imfilt.ops.kernels import load_kernels
from imfilt.ops.operations import Apply
from conftest import ndimage_cpu_engine
from test_tiled import tiled_result, whole_result

runner = CliRunner()
MODES = ("reflect", "mirror", "nearest", "wrap", "constant")
NDI_MODE = {"wrap": "grid-wrap"}


def imfilt(*args):
    return runner.invoke(app, [str(a) for a in args])


def reference(image, weight, bias, *, correlate, mode="reflect", cval=0.0, size="same"):
    """float64: map n = sum_c K[n, c] (x) image[..., c] + bias[n], (H, W, N)."""
    image = np.asarray(image, dtype=np.float64)
    n, c, kh, kw = weight.shape
    if size == "full":  # every overlap: the image extended by the mode, then the valid part
        image = np.pad(image, ((kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)),
                       mode={"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap",
                             "constant": "constant"}[mode], **({"constant_values": cval} if mode == "constant" else {}))
    fn = ndi.correlate if correlate else ndi.convolve
    maps = np.stack([sum(fn(image[..., ch], weight[i, ch], mode=NDI_MODE.get(mode, mode), cval=cval)
                         for ch in range(c)) + bias[i] for i in range(n)], axis=-1)
    if size == "same":
        return maps
    # valid: where the kernel fits; the anchor decides which of scipy's positions those are
    top, left = (kh // 2, kw // 2) if correlate else (kh - 1 - kh // 2, kw - 1 - kw // 2)
    h, w = image.shape[0] - kh + 1, image.shape[1] - kw + 1
    return maps[top : top + h, left : left + w]


def bank(seed, shape):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(shape[0])


def feature_maps(image, kernels, engine, **options):
    loaded = Loaded(image, 32, False)
    return np.concatenate([Apply(k, **options).run(loaded, engine).pixels for k in kernels], axis=-1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("correlate", [False, True])
def test_every_method_equals_the_sum_over_channels_plus_bias(engine, mode, correlate):
    """Odd and even kernels, with and without bias, by direct, separable and FFT."""
    rng = np.random.default_rng(0)
    image = rng.random((17, 22, 3)).astype(np.float32)
    for shape, method in [((3, 3, 5, 4), "direct"), ((2, 3, 4, 6), "fft"), ((2, 3, 3, 3), "auto")]:
        weight, bias = bank(1, shape)
        for with_bias in (True, False):
            b = bias if with_bias else np.zeros(len(bias))
            kernels = load_kernels_from(weight, b)
            out = feature_maps(image, kernels, engine, mode=mode, cval=0.3, method=method, correlate=correlate)
            np.testing.assert_allclose(out, reference(image, weight, b, correlate=correlate, mode=mode, cval=0.3),
                                       atol=2e-5, err_msg=f"{shape} {method}")
    # rank-1 matrices in every channel: two 1-D passes per channel
    column, row = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 4))
    weight = np.einsum("ncy,ncx->ncyx", column, row)
    out = feature_maps(image, load_kernels_from(weight, bias[:2]), engine, mode=mode, cval=0.3, method="separable",
                       correlate=correlate)
    np.testing.assert_allclose(out, reference(image, weight, bias[:2], correlate=correlate, mode=mode, cval=0.3),
                               atol=2e-5)


def load_kernels_from(weight, bias, tmp=None):
    from imfilt.ops.kernels import Kernel

    return [Kernel(f"k{i}", w, summed=True, bias=float(b)) for i, (w, b) in enumerate(zip(weight, bias))]


@pytest.mark.parametrize("size", ["valid", "full"])
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_valid_and_full_sizes(size, method):
    image = np.random.default_rng(2).random((15, 12, 2)).astype(np.float32)
    weight, bias = bank(3, (2, 2, 4, 3))
    for correlate in (False, True):
        for mode in ("mirror", "constant"):
            out = feature_maps(image, load_kernels_from(weight, bias), cpu_engine(), size=size, method=method,
                               correlate=correlate, mode=mode, cval=-0.2)
            expected = reference(image, weight, bias, correlate=correlate, mode=mode, cval=-0.2, size=size)
            np.testing.assert_allclose(out, expected, atol=2e-5, err_msg=f"{correlate} {mode}")


def test_correlate_gives_pytorchs_conv2d_numbers():
    """PyTorch's conv2d is a cross-correlation with zero padding: --correlate --boundary constant."""
    torch = pytest.importorskip("torch")
    image = np.random.default_rng(4).random((20, 23, 3)).astype(np.float32)
    weight, bias = bank(5, (4, 3, 5, 5))
    expected = torch.nn.functional.conv2d(torch.from_numpy(image.transpose(2, 0, 1)[None]).double(),
                                          torch.from_numpy(weight), torch.from_numpy(bias), padding=2)[0].numpy()
    for method in ("direct", "fft"):
        out = feature_maps(image, load_kernels_from(weight, bias), cpu_engine(), mode="constant", correlate=True,
                           method=method)
        np.testing.assert_allclose(out.transpose(2, 0, 1), expected, atol=2e-5)
        valid = feature_maps(image, load_kernels_from(weight, bias), cpu_engine(), size="valid", correlate=True,
                             method=method)
        np.testing.assert_allclose(valid.transpose(2, 0, 1), expected[:, 2:-2, 2:-2], atol=2e-5)


def test_the_fft_transforms_each_input_channel_once_for_the_whole_bank():
    """C forward transforms of the image, one inverse per map: never one per (map, channel) pair."""
    calls = {"rfft2": [], "irfft2": 0}
    base = cpu_engine()

    def rfft2(x, **kw):
        calls["rfft2"].append(x.shape[0])
        return base.fft.rfft2(x, **kw)

    def irfft2(x, **kw):
        calls["irfft2"] += 1
        return base.fft.irfft2(x, **kw)

    fft = SimpleNamespace(rfft2=rfft2, irfft2=irfft2, rfft=base.fft.rfft, fft=base.fft.fft,
                          next_fast_len=base.fft.next_fast_len)
    engine = replace(base, fft=fft)
    image = np.random.default_rng(6).random((30, 26, 3)).astype(np.float32)
    weight, bias = bank(7, (5, 3, 9, 8))
    out = feature_maps(image, load_kernels_from(weight, bias), engine, method="fft")
    assert calls == {"rfft2": [3], "irfft2": 5}
    np.testing.assert_allclose(out, reference(image, weight, bias, correlate=False), atol=2e-5)


def write_bank(tmp_path, kind, weight, bias):
    """The bank as each source format holds it; the -k spec that reads it."""
    if kind == "npy":
        np.save(tmp_path / "bank.npy", weight)
        return tmp_path / "bank.npy"
    if kind == "npz":
        np.savez(tmp_path / "bank.npz", weight=weight, bias=bias)
        return tmp_path / "bank.npz"
    save_file({"features.0.weight": weight.astype(np.float32), "features.0.bias": bias.astype(np.float32),
               "classifier.weight": np.ones((2, 8), np.float32)}, str(tmp_path / "model.safetensors"))
    return f"{tmp_path / 'model.safetensors'}:features.0.weight"


@pytest.mark.parametrize("kind", ["npy", "npz", "safetensors"])
def test_each_source_format_on_the_command_line(tmp_path, kind):
    rgb = np.random.default_rng(8).integers(0, 256, (21, 18, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    weight, bias = bank(9, (3, 3, 4, 5))
    weight = weight.astype(np.float32).astype(np.float64)  # safetensors holds float32
    bias = bias.astype(np.float32).astype(np.float64)
    spec = write_bank(tmp_path, kind, weight, bias)
    result = imfilt("apply", tmp_path / "a.png", "-k", spec, "--correlate", "--boundary", "nearest",
                    "--out-dir", tmp_path / "o", "--name", "{op}.npy", "--json")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    names = [r["op"] for r in records]
    assert names == {"npy": ["bank0", "bank1", "bank2"], "npz": ["bank0", "bank1", "bank2"],
                     "safetensors": ["model.features.0-0", "model.features.0-1", "model.features.0-2"]}[kind]
    expected = reference(rgb / 255.0, weight, bias if kind != "npy" else np.zeros(3), correlate=True, mode="nearest")
    for i, name in enumerate(names):
        assert records[i]["shape"] == [21, 18, 1]
        np.testing.assert_allclose(np.load(tmp_path / "o" / f"{name}.npy")[..., 0], expected[..., i], atol=2e-5)


def test_a_bank_drops_alpha_and_takes_luminance_with_gray(tmp_path):
    """An RGBA image's alpha is no input channel; --gray makes one channel, for a (N, 1, kh, kw) bank."""
    rgba = np.random.default_rng(10).integers(0, 256, (12, 14, 4)).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    weight, bias = bank(11, (2, 3, 3, 3))
    np.savez(tmp_path / "rgb.npz", weight=weight, bias=bias)
    gray_weight = weight[:, :1]
    np.savez(tmp_path / "gray.npz", weight=gray_weight, bias=bias)
    assert imfilt("apply", tmp_path / "a.png", "-k", tmp_path / "rgb.npz", "--out-dir", tmp_path / "o",
                  "--name", "{op}.npy").exit_code == 0
    expected = reference(rgba[..., :3] / 255.0, weight, bias, correlate=False)
    np.testing.assert_allclose(np.load(tmp_path / "o" / "rgb1.npy")[..., 0], expected[..., 1], atol=2e-5)
    assert imfilt("apply", tmp_path / "a.png", "-k", tmp_path / "gray.npz", "--gray", "--out-dir", tmp_path / "g",
                  "--name", "{op}.npy").exit_code == 0
    luma = rgba[..., :3] / 255.0 @ np.array([0.299, 0.587, 0.114])
    expected = reference(luma[..., None], gray_weight, bias, correlate=False)
    np.testing.assert_allclose(np.load(tmp_path / "g" / "gray0.npy")[..., 0], expected[..., 0], atol=2e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", ["same", "valid", "full"])
def test_tiled_equals_whole_bit_for_bit(mode, size):
    """Direct and separable windows give the whole image's bits (OpenCV's in windows of whole rows,
    as tiles plan them; ndimage's in any window); by FFT within float32 rounding."""
    image = np.random.default_rng(12).random((37, 29, 4)).astype(np.float32)  # RGBA: alpha is dropped
    weight, bias = bank(13, (2, 3, 4, 5))
    rank_one = np.einsum("ncy,ncx->ncyx", *bank(14, (2, 3, 4))[:1], *bank(15, (2, 3, 5))[:1])
    for w, method in [(weight, "direct"), (rank_one, "separable"), (weight, "fft")]:
        for engine, window in [(cpu_engine(), (16, 10**6)), (ndimage_cpu_engine(), (16, 7))]:
            for kernel in load_kernels_from(w, bias):
                op = Apply(kernel, mode=mode, cval=0.25, size=size, method=method, correlate=True)
                whole = whole_result(op, image, engine)
                tiled = tiled_result(op, image, window, engine)
                if method == "fft":
                    np.testing.assert_allclose(tiled, whole, atol=2e-5)
                else:
                    np.testing.assert_array_equal(tiled, whole, err_msg=f"{method} {engine.filters.__name__}")


def test_library_convolve_takes_one_kernel_of_a_bank(tmp_path):
    weight, bias = bank(16, (2, 3, 3, 4))
    np.savez(tmp_path / "b.npz", weight=weight, bias=bias)
    image = np.random.default_rng(17).random((9, 11, 3)).astype(np.float32)
    kernels = load_kernels(str(tmp_path / "b.npz"))
    assert [k.channels for k in kernels] == [3, 3] and kernels[1].bias == bias[1]
    out = convolve(image, kernels[1], correlate=True, mode="wrap")
    np.testing.assert_allclose(out[..., 0], reference(image, weight, bias, correlate=True, mode="wrap")[..., 1],
                               atol=2e-5)


def _lying_header(path):
    save_file({"w": np.ones((1, 1, 3, 3), np.float32)}, str(path))
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", length + 4096) + data[8:])


@pytest.fixture
def bad_banks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save("rgb.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save("grey.png")
    np.save("five.npy", np.zeros((1, 1, 1, 3, 3)))
    np.save("rgb.npy", np.ones((2, 3, 3, 3)))
    np.save("dense.npy", np.random.default_rng(0).standard_normal((2, 3, 3, 3)))
    np.savez("object.npz", weight=np.array([1, "a"], dtype=object))
    np.savez("nobias.npz", kernel=np.ones((1, 3, 3, 3)))
    np.savez("badbias.npz", weight=np.ones((2, 3, 3, 3)), bias=np.ones(3))
    np.savez("nanbias.npz", weight=np.ones((1, 3, 3, 3)), bias=np.array([np.nan]))
    save_file({f"layer{i}.weight": np.ones((1, 3, 3, 3), np.float32) for i in range(12)}, "model.safetensors")
    _lying_header(tmp_path / "lying.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")


@pytest.mark.parametrize("args, code, message", [
    (["rgb.png", "-k", "model.safetensors:conv9.weight"], 2,
     "no tensor 'conv9.weight'; it has 'layer0.weight', 'layer1.weight'"),
    (["rgb.png", "-k", "model.safetensors"], 2, "name the tensor, e.g. -k model.safetensors:layer0.weight"),
    (["rgb.png", "-k", "five.npy"], 2, "(N, C, kh, kw), got shape (1, 1, 1, 3, 3)"),
    (["rgb.png", "-k", "object.npz"], 2, "object.npz: not a readable .npz of arrays"),
    (["rgb.png", "-k", "nobias.npz"], 2, "no array 'weight' in the .npz; it has 'kernel'"),
    (["rgb.png", "-k", "badbias.npz"], 2, "the bias must hold 2 real numbers"),
    (["rgb.png", "-k", "nanbias.npz"], 2, "NaN or infinity"),
    (["rgb.png", "-k", "lying.safetensors:w"], 2, "lying.safetensors: not a readable .safetensors file"),
    (["rgb.png", "-k", "junk.safetensors:w"], 2, "junk.safetensors: not a readable .safetensors file"),
    (["rgb.png", "-k", "rgb.npy:w"], 2, "only a .safetensors file takes a tensor name"),
    (["rgb.png", "-k", "rgb.npy", "--gray"], 2, "kernel rgb0 takes 3 input channels"),
    (["rgb.png", "-k", "dense.npy", "--method", "separable"], 2, "needs a kernel of rank 1"),
    (["grey.png", "rgb.png", "-k", "rgb.npy"], 1, "grey.png: kernel rgb0 takes 3 input channels"),
])
def test_errors_are_one_line(bad_banks, args, code, message):
    result = imfilt("apply", *args, "--out-dir", "o")
    assert result.exit_code == code, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == (1 if code == 2 else 2), result.stderr
    if code == 1:  # the other input was written whole; the failed one wrote nothing
        import os

        assert sorted(os.listdir("o")) == ["rgb.rgb0.png", "rgb.rgb1.png"]


def test_kernels_show_draws_a_layer_as_a_grid_and_writes_it_back(tmp_path):
    """N rows of C kernels in the diverging colour map; --json gives channels and bias; .npz round-trips."""
    from imfilt.ops.kernel_view import bank_picture, diverging_colours

    weight, bias = bank(18, (4, 3, 5, 5))
    spec = write_bank(tmp_path, "safetensors", weight, bias)
    picture = tmp_path / "layer.png"
    assert imfilt("kernels", "show", spec, "-o", picture, "-q").exit_code == 0
    drawn = np.asarray(Image.open(picture).convert("RGB"))
    kernels = load_kernels(spec)
    cell, label, header = 64, 150, 18  # min(480 // 5, 4096 // (4 * 6), 1600 // (3 * 6)) = 88, at most 64
    gap = cell // 2
    assert drawn.shape == (header + 4 * (5 * cell + gap), label + 3 * (5 * cell + gap), 3)
    limit = np.abs(weight.astype(np.float32)).max()
    for n, c, r, k in [(0, 0, 0, 0), (2, 1, 3, 4), (3, 2, 4, 1)]:
        y = header + n * (5 * cell + gap) + r * cell + cell // 2
        x = label + c * (5 * cell + gap) + k * cell + cell // 2
        np.testing.assert_array_equal(drawn[y, x], diverging_colours(np.float32(weight[n, c, r, k]), limit))
    assert bank_picture(kernels).size == Image.open(picture).size
    result = imfilt("kernels", "show", spec, "--json")
    first = json.loads(result.stdout.splitlines()[0])
    assert first["channels"] == 3 and first["bias"] == pytest.approx(bias[0], abs=1e-6) and first["rank"] == [5, 5, 5]
    np.testing.assert_allclose(first["matrix"], weight[0], atol=1e-6)
    assert imfilt("kernels", "show", spec, "-o", tmp_path / "copy.npz", "-q").exit_code == 0
    again = load_kernels(str(tmp_path / "copy.npz"))
    np.testing.assert_array_equal(np.stack([k.weights for k in again]), np.stack([k.weights for k in kernels]))
    assert [k.bias for k in again] == [k.bias for k in kernels]
    refused = imfilt("kernels", "show", spec, "-o", tmp_path / "copy.npy")
    assert refused.exit_code == 2 and "holds no bias" in refused.stderr


def test_one_image_shared_by_kernels_of_different_sizes_and_shapes():
    """The FFTs kept for a bank are keyed by what made them: valid and full, or another kernel
    shape, on the same image never take each other's."""
    image = np.random.default_rng(19).random((14, 17, 3)).astype(np.float32)
    loaded = Loaded(image, 32, False)
    for size, shape in [("valid", (1, 3, 3, 4)), ("full", (1, 3, 3, 4)), ("same", (1, 3, 5, 2)), ("valid", (1, 3, 5, 2))]:
        weight, bias = bank(20, shape)
        out = Apply(load_kernels_from(weight, bias)[0], size=size, method="fft").run(loaded, cpu_engine()).pixels
        np.testing.assert_allclose(out, reference(image, weight, bias, correlate=False, size=size), atol=2e-5)


def test_normalize_sum_divides_a_layer_kernel_by_its_total_and_keeps_the_bias():
    kernel = load_kernels_from(*bank(21, (1, 2, 3, 3)))[0]
    normalized = kernel.normalized("sum")
    assert normalized.summed and normalized.bias == kernel.bias
    np.testing.assert_allclose(normalized.weights, kernel.weights / kernel.weights.sum())


def test_a_streamed_image_gives_the_whole_images_maps_bit_for_bit(tmp_path):
    """--memory small enough that the TIFF streams in bands of whole rows: the same bits as the whole
    image. The three maps share one decode, and the budget: 600K each."""
    import tifffile

    rgb = np.random.default_rng(22).integers(0, 256, (300, 97, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", rgb, photometric="rgb", tile=(32, 32))
    np.savez(tmp_path / "layer.npz", weight=bank(23, (3, 3, 5, 4))[0], bias=[0.1, 0.2, -0.3])
    common = ["apply", tmp_path / "a.tif", "-k", tmp_path / "layer.npz", "--correlate", "--name", "{op}.npy", "--json"]
    streamed = records_of(imfilt(*common, "--out-dir", tmp_path / "s", "--memory", "1800K"))
    whole = records_of(imfilt(*common, "--out-dir", tmp_path / "w"))
    assert all(r.get("tiled") and r["window"] == [16, 97] for r in streamed) and not any(r.get("tiled") for r in whole)
    for name in ("layer0", "layer1", "layer2"):
        np.testing.assert_array_equal(np.load(tmp_path / "s" / f"{name}.npy"), np.load(tmp_path / "w" / f"{name}.npy"))
    refused = imfilt(*common, "--out-dir", tmp_path / "m", "--memory", "1800K", "--montage", tmp_path / "m.png")
    assert refused.exit_code == 1 and "--montage needs the maps of images that fit in memory" in refused.stderr


def records_of(result):
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]
