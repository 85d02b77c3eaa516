"""Convolution: hand-computed tiny cases, scipy.ndimage references, and properties."""

import functools
import importlib

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imfilt
from conftest import ndimage_cpu_engine
from imfilt.ops.convolution import MODES, choose_method, rank_one_factors, resolve_method
from imfilt.engine import cvfilters, ndfilters
from imfilt.engine.engine import cpu_engine
from imfilt.errors import UsageError
from imfilt.image.io import Loaded
from imfilt.ops.kernels import Kernel, builtin, load_kernel
from imfilt.ops.operations import Apply

convolve_module = importlib.import_module("imfilt.ops.convolution")

SCIPY_MODE = {"reflect": "reflect", "mirror": "mirror", "nearest": "nearest", "wrap": "grid-wrap", "constant": "constant"}
NP_PAD = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap", "constant": "constant"}
METHODS = ["direct", "separable", "fft"]


def reference(image, kernel, mode, cval=0.0, correlate=False, size="same"):
    """Float64 reference per channel: scipy.ndimage for 'same', pad + scipy.signal otherwise."""
    image = np.asarray(image, dtype=np.float64)
    out = []
    for c in range(image.shape[2]):
        x = image[..., c]
        if size == "same":
            fn = ndi.correlate if correlate else ndi.convolve
            out.append(fn(x, kernel, mode=SCIPY_MODE[mode], cval=cval))
            continue
        k = kernel[::-1, ::-1] if correlate else kernel
        if size == "full":
            pad = ((k.shape[0] - 1,) * 2, (k.shape[1] - 1,) * 2)
            extra = {"constant_values": cval} if mode == "constant" else {}
            x = np.pad(x, pad, mode=NP_PAD[mode], **extra)
        out.append(scipy.signal.convolve2d(x, k, mode="valid"))
    return np.stack(out, axis=-1)


# --- hand-computed cases: orientation and borders ------------------------------------------

ROW = np.array([[1.0, 2.0, 3.0, 4.0]])[..., None]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("correlate, expected", [
    (False, [4.0, 7.0, 10.0, 12.0]),  # out[i] = 1·x[i+1] + 2·x[i]; x[4] reflects to 4
    (True, [3.0, 5.0, 8.0, 11.0]),  # out[i] = 1·x[i-1] + 2·x[i]; x[-1] reflects to 1
])
def test_even_kernel_on_a_row_by_hand(method, correlate, expected, engine):
    """A 1x2 kernel [1, 2] on [1, 2, 3, 4]: pins the flip and the anchor of even kernels."""
    out = imfilt.convolve(ROW, np.array([[1.0, 2.0]]), method=method, correlate=correlate, engine=engine)
    np.testing.assert_allclose(out[0, :, 0], expected, atol=1e-5)


GRID = np.arange(1.0, 10.0).reshape(3, 3, 1)
CORNER = np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("method", METHODS)
def test_corner_delta_shifts_by_hand(method, engine):
    """Convolving with a top-left delta moves the image up-left; correlating moves it down-right."""
    conv = imfilt.convolve(GRID, CORNER, mode="constant", method=method, engine=engine)[..., 0]
    corr = imfilt.convolve(GRID, CORNER, mode="constant", method=method, correlate=True, engine=engine)[..., 0]
    np.testing.assert_allclose(conv, [[5, 6, 0], [8, 9, 0], [0, 0, 0]], atol=1e-5)
    np.testing.assert_allclose(corr, [[0, 0, 0], [0, 1, 2], [0, 4, 5]], atol=1e-5)


@pytest.mark.parametrize("mode, expected", [
    ("reflect", [1, 1, 2, 3, 4, 4]),
    ("mirror", [2, 1, 2, 3, 4, 3]),
    ("nearest", [1, 1, 2, 3, 4, 4]),
    ("wrap", [4, 1, 2, 3, 4, 1]),
    ("constant", [9, 1, 2, 3, 4, 9]),
])
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_boundary_modes_by_hand(mode, expected, method, engine):
    """--size full with a centred 1x3 delta shows the extension one pixel past each side."""
    out = imfilt.convolve(ROW, np.array([[0.0, 1.0, 0.0]]), mode=mode, cval=9.0, size="full", method=method,
                          engine=engine)
    np.testing.assert_allclose(out[0, :, 0], expected, atol=1e-5)


def test_valid_and_full_sizes(engine):
    """A 16x16 kernel over 256x256 gives 241x241 (valid) and 271x271 (full)."""
    image = np.zeros((256, 256, 3), np.float32)
    kernel = np.ones((16, 16))
    assert imfilt.convolve(image, kernel, size="valid", engine=engine).shape == (241, 241, 3)
    assert imfilt.convolve(image, kernel, size="full", engine=engine).shape == (271, 271, 3)


def test_valid_kernel_larger_than_image_is_an_error():
    with pytest.raises(UsageError, match="does not fit"):
        imfilt.convolve(np.zeros((4, 4, 1)), np.ones((5, 5)), size="valid")


# --- references on a real photo -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("channels", [3, 1])
def test_dense_kernel_matches_scipy_on_a_photo(chelsea, mode, method, channels, engine):
    """An asymmetric 7x6 kernel on a 451x300 photo equals scipy.ndimage.convolve in float64.

    One channel runs in row bands on the CPU's threads: the seams must not show."""
    image = chelsea[..., :channels]
    kernel = np.random.default_rng(3).standard_normal((7, 6))
    out = imfilt.convolve(image, kernel, mode=mode, cval=0.25, method=method, engine=engine)
    np.testing.assert_allclose(out, reference(image, kernel, mode, cval=0.25), atol=2e-5)


@pytest.mark.parametrize("mode", MODES)
def test_separable_in_bands_matches_scipy(chelsea, mode, engine):
    image = chelsea[..., :1]
    kernel = np.outer([1.0, 2.0, 0.5, -1.0], [0.5, 1.0, 3.0])
    out = imfilt.convolve(image, kernel, mode=mode, cval=0.5, method="separable", engine=engine)
    np.testing.assert_allclose(out, reference(image, kernel, mode, cval=0.5), atol=2e-5)


@pytest.mark.parametrize("name", ["box:size=5", "gaussian:sigma=2", "sobel-x", "sobel-y"])
@pytest.mark.parametrize("method", METHODS)
def test_separable_kernels_match_scipy_on_a_photo(chelsea, name, method, engine):
    kernel = load_kernel(name)
    out = imfilt.convolve(chelsea, kernel, method=method, engine=engine)
    np.testing.assert_allclose(out, reference(chelsea, kernel.weights, "reflect"), atol=2e-5)


@pytest.mark.parametrize("mode, cval", [("reflect", 0.0), ("mirror", 0.0), ("nearest", 0.0), ("wrap", 0.0),
                                        ("constant", 0.0), ("constant", -0.75)])
@pytest.mark.parametrize("size", ["same", "valid", "full"])
@pytest.mark.parametrize("correlate", [False, True])
def test_large_kernels_match_scipy(chelsea, mode, cval, size, correlate, engine):
    """Kernels of 50 taps and more (OpenCV filters those through its DFT), dense and rank-1,
    even-sized and off-centre, with every border: direct and separable equal scipy in float64."""
    image = chelsea[100:160, 200:250]
    rng = np.random.default_rng(11)
    dense, rank_one = rng.standard_normal((9, 8)), np.outer(rng.standard_normal(12), rng.standard_normal(7))
    for kernel, methods in ((dense, ["direct"]), (rank_one, ["direct", "separable"])):
        expected = reference(image, kernel, mode, cval=cval, correlate=correlate, size=size)
        for method in methods:
            out = imfilt.convolve(image, kernel, mode=mode, cval=cval, size=size, method=method,
                                  correlate=correlate, engine=engine)
            np.testing.assert_allclose(out, expected, atol=1e-5 * np.abs(kernel).sum(), err_msg=method)


@pytest.mark.parametrize("channels", [2, 5])
@pytest.mark.parametrize("method", METHODS)
def test_any_channel_count_with_a_constant_border(channels, method, engine):
    """Grey+alpha and 5-channel .npy arrays, interleaved, with a non-zero cval: each channel alone."""
    image = np.random.default_rng(channels).random((23, 17, channels)).astype(np.float32)
    kernel = np.outer([1.0, -2.0, 0.5], [0.25, 1.0, 2.0, -1.0])
    out = imfilt.convolve(image, kernel, mode="constant", cval=0.6, method=method, engine=engine)
    np.testing.assert_allclose(out, reference(image, kernel, "constant", cval=0.6), atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["sharpen", "gaussian:sigma=1.5", "sobel"])
def test_planar_and_interleaved_memory_give_the_same_result(chelsea, mode, name):
    """The filters work in the memory layout they are given: planar (as io reads) or interleaved."""
    planar = np.moveaxis(np.ascontiguousarray(np.moveaxis(chelsea, -1, 0)), 0, -1)
    kernel = load_kernel(name)
    interleaved_out = imfilt.convolve(chelsea, kernel, mode=mode, cval=0.3)
    planar_out = imfilt.convolve(planar, kernel, mode=mode, cval=0.3)
    np.testing.assert_allclose(planar_out, interleaved_out, atol=1e-6)  # SIMD order differs near edges


def test_gaussian_matches_scipy_gaussian_filter(chelsea, engine):
    """gaussian:sigma=s is scipy.ndimage.gaussian_filter with truncate=4."""
    out = imfilt.convolve(chelsea, builtin("gaussian", sigma=3.0), engine=engine)
    expected = ndi.gaussian_filter(chelsea.astype(np.float64), sigma=(3, 3, 0), mode="reflect", truncate=4.0)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_sobel_is_the_gradient_magnitude(chelsea, engine):
    gx = reference(chelsea, builtin("sobel-x").weights, "reflect")
    gy = reference(chelsea, builtin("sobel-y").weights, "reflect")
    np.testing.assert_allclose(imfilt.convolve(chelsea, builtin("sobel"), engine=engine), np.hypot(gx, gy), atol=5e-5)


def test_sobel_x_is_positive_on_a_rising_edge(engine):
    """Orientation: brighter to the right gives a positive sobel-x, zero sobel-y."""
    ramp = np.tile(np.arange(8.0), (8, 1))[..., None]
    assert (imfilt.convolve(ramp, builtin("sobel-x"), engine=engine)[2:-2, 2:-2] > 0).all()
    np.testing.assert_allclose(imfilt.convolve(ramp, builtin("sobel-y"), engine=engine)[2:-2, 2:-2], 0, atol=1e-5)


# --- the cost model ----------------------------------------------------------------------


@pytest.mark.parametrize("filters, picks", [
    (ndfilters, {(3, 3, False): "direct", (31, 31, False): "fft", (9, 9, True): "separable",
                 (3, 3, True): "direct", (63, 63, True): "fft"}),
    (cvfilters, {(3, 3, False): "direct", (31, 31, False): "direct", (255, 255, False): "direct",
                 (257, 257, False): "fft", (5, 5, True): "separable", (3, 3, True): "direct",
                 (63, 63, True): "separable", (101, 101, True): "separable", (103, 103, True): "direct", (1, 15, True): "direct"}),
])
def test_auto_picks_by_rank_and_size(filters, picks):
    """Each spatial backend's measured crossovers (docs/performance.md)."""
    for (kh, kw, separable), method in picks.items():
        assert choose_method((kh, kw), separable, filters.CROSSOVERS) == method, (kh, kw, separable)
    assert rank_one_factors(builtin("gaussian", sigma=2).weights) is not None
    assert rank_one_factors(builtin("sharpen").weights) is None


def test_rank_one_factors_rebuild_the_kernel():
    """The factors' outer product is the kernel; a rank-2 kernel (a sum of two outer products) has none."""
    rng = np.random.default_rng(4)
    column, row = rng.standard_normal(7), rng.standard_normal(4)
    found = rank_one_factors(np.outer(column, row))
    np.testing.assert_allclose(np.outer(*found), np.outer(column, row), rtol=1e-12)
    assert rank_one_factors(np.outer(column, row) + 1e-6 * np.outer(rng.standard_normal(7), row[::-1])) is None
    assert rank_one_factors(np.zeros((3, 3))) is None


def _count_rank_checks(monkeypatch) -> list:
    """Count the real rank checks (the cache misses) from here on."""
    calls = []
    real = convolve_module._rank_one.__wrapped__

    def counted(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(convolve_module, "_rank_one", functools.lru_cache(maxsize=64)(counted))
    return calls


def test_auto_never_checks_the_rank_of_a_kernel_too_large_to_separate(monkeypatch):
    """A 2000x2000 kernel: separable cannot win at that size, so auto asks for no rank (it took 6 s)."""
    calls = _count_rank_checks(monkeypatch)
    kernel = Kernel("big", np.ones((2000, 2000)))
    for engine in (cpu_engine(), ndimage_cpu_engine()):
        assert resolve_method(kernel.weights, "auto", engine) == "fft"
        assert Apply(kernel).method_on(engine) == "fft"
    assert calls == []


def test_a_run_checks_the_rank_once(monkeypatch, chelsea):
    """Planning, the --json record and the filtering itself share one rank check per kernel."""
    calls = _count_rank_checks(monkeypatch)
    op = Apply(load_kernel("gaussian:sigma=1"))
    result = op.run(Loaded(chelsea[:40, :50], 8, False), cpu_engine())
    assert result.facts["method"] == "separable"
    assert calls == [(9, 9)]


def test_separable_refuses_rank_two():
    with pytest.raises(UsageError, match="rank 1"):
        imfilt.convolve(np.zeros((5, 5, 1)), builtin("sharpen"), method="separable")


# --- properties --------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 3))
kshapes = st.tuples(st.integers(1, 6), st.integers(1, 6))


@st.composite
def cases(draw):
    h, w, c = draw(shapes)
    kh, kw = draw(kshapes)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    image = rng.random((h, w, c)).astype(np.float32)
    rank_one = draw(st.booleans())
    kernel = np.outer(rng.standard_normal(kh), rng.standard_normal(kw)) if rank_one else rng.standard_normal((kh, kw))
    size = draw(st.sampled_from(["same", "full"] + (["valid"] if kh <= h and kw <= w else [])))
    return image, kernel, rank_one, draw(st.sampled_from(MODES)), size, draw(st.booleans())


# the engine fixture is the same for every example (engines are stateless): no health check needed
ON_EVERY_ENGINE = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=100, **ON_EVERY_ENGINE)
@given(cases(), st.floats(-1, 1))
def test_every_method_equals_the_float64_reference(engine, case, cval):
    """direct = separable = FFT = scipy in float64, for any boundary, size and orientation, through
    both spatial backends (OpenCV, and the ndimage one the GPU uses), within docs/performance.md's bound."""
    image, kernel, rank_one, mode, size, correlate = case
    expected = reference(image, kernel, mode, cval=cval, correlate=correlate, size=size)
    tolerance = 1e-4 * max(1.0, np.abs(kernel).sum())
    for method in ["direct", "fft"] + (["separable"] if rank_one else []):
        out = imfilt.convolve(image, kernel, mode=mode, cval=cval, size=size, method=method,
                              correlate=correlate, engine=engine)
        np.testing.assert_allclose(out, expected, atol=tolerance, err_msg=f"{method} {engine.filters.__name__}")


@settings(max_examples=40, **ON_EVERY_ENGINE)
@given(cases(), st.floats(-3, 3), st.floats(-3, 3))
def test_linearity(engine, case, a, b):
    """conv(a·x + b·y) = a·conv(x) + b·conv(y) for boundaries that add (not a nonzero cval)."""
    image, kernel, _, mode, size, correlate = case
    other = np.random.default_rng(0).random(image.shape).astype(np.float32)
    kwargs = dict(mode=mode, size=size, correlate=correlate, method="fft", engine=engine)
    left = imfilt.convolve(a * image + b * other, kernel, **kwargs)
    right = a * imfilt.convolve(image, kernel, **kwargs) + b * imfilt.convolve(other, kernel, **kwargs)
    np.testing.assert_allclose(left, right, atol=1e-4 * max(1.0, np.abs(kernel).sum()) * (abs(a) + abs(b) + 1))


@settings(max_examples=30, **ON_EVERY_ENGINE)
@given(cases())
def test_zeros_in_zeros_out(engine, case):
    image, kernel, _, mode, size, correlate = case
    for method in ("direct", "fft"):
        out = imfilt.convolve(np.zeros_like(image), kernel, mode=mode, size=size, correlate=correlate, method=method,
                              engine=engine)
        assert not out.any()


@settings(max_examples=40, **ON_EVERY_ENGINE)
@given(cases())
def test_correlation_is_convolution_with_the_flipped_kernel(engine, case):
    """For odd sizes (where both anchor at the centre): correlate(x, k) = convolve(x, k[::-1, ::-1])."""
    image, kernel, _, mode, size, _ = case
    kernel = kernel[: kernel.shape[0] - 1 + kernel.shape[0] % 2, : kernel.shape[1] - 1 + kernel.shape[1] % 2]
    if size == "valid" and (kernel.shape[0] > image.shape[0] or kernel.shape[1] > image.shape[1]):
        return
    if kernel.size == 0:
        return
    correlated = imfilt.convolve(image, kernel, mode=mode, size=size, correlate=True, engine=engine)
    flipped = imfilt.convolve(image, kernel[::-1, ::-1], mode=mode, size=size, engine=engine)
    np.testing.assert_allclose(correlated, flipped, atol=1e-5 * max(1.0, np.abs(kernel).sum()))


def test_convolution_theorem_with_wrap(engine):
    """With periodic boundaries, convolution is the element-wise product of the two spectra."""
    rng = np.random.default_rng(5)
    image = rng.random((32, 40, 2))
    kernel = rng.standard_normal((5, 4))
    # the kernel placed so that its anchor (2, 2) sits at index (0, 0), as scipy anchors it
    padded = np.zeros((32, 40))
    padded[:5, :4] = kernel
    padded = np.roll(padded, (-2, -2), axis=(0, 1))
    expected = np.real(np.fft.ifft2(np.fft.fft2(image, axes=(0, 1)) * np.fft.fft2(padded)[..., None], axes=(0, 1)))
    for method in ("direct", "fft"):
        out = imfilt.convolve(image, kernel, mode="wrap", method=method, engine=engine)
        np.testing.assert_allclose(out, expected, atol=1e-5)


@settings(max_examples=30, **ON_EVERY_ENGINE)
@given(st.integers(1, 7), st.integers(1, 7), st.floats(-2, 2), st.sampled_from(MODES))
def test_a_softmax_kernel_conserves_mass(engine, kh, kw, level, mode):
    """Softmax makes the kernel a probability density: a constant image stays that constant."""
    kernel = imfilt.Kernel("k", np.random.default_rng(kh * 7 + kw).standard_normal((kh, kw))).normalized("softmax")
    image = np.full((9, 11, 1), level, np.float32)
    out = imfilt.convolve(image, kernel, mode=mode, cval=level, engine=engine)
    np.testing.assert_allclose(out, level, atol=1e-5)
