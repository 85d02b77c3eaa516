"""Template matching: a float64 brute-force NCC reference, hand-made cases, peaks, and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.errors import UsageError
from imfilt.ops.match import find_peaks, match_template

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def imfilt(*args):
    return runner.invoke(app, [str(a) for a in args])


def brute_ncc(image: np.ndarray, template: np.ndarray) -> np.ndarray:
    """The definition, one window at a time in float64: each channel minus its mean, sums over all."""
    image, template = np.atleast_3d(image).astype(np.float64), np.atleast_3d(template).astype(np.float64)
    th, tw = template.shape[:2]
    t = template - template.mean(axis=(0, 1))
    out = np.zeros((image.shape[0] - th + 1, image.shape[1] - tw + 1))
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            w = image[r : r + th, c : c + tw]
            w = w - w.mean(axis=(0, 1))
            norm = np.sqrt((w * w).sum() * (t * t).sum())
            out[r, c] = (w * t).sum() / norm if norm > 1e-9 else 0.0
    return out


def test_hand_computed_row(engine):
    """[1 2 3 2 1 5] against [1 2 3]: 1, 0, -1 and 3/sqrt(2·78/9) - the template is not flipped."""
    image = np.array([[1, 2, 3, 2, 1, 5]], dtype=np.float32) / 5
    template = np.array([[1, 2, 3]], dtype=np.float32) / 5
    expected = [1.0, 0.0, -1.0, 3 / np.sqrt(2 * 78 / 9)]
    np.testing.assert_allclose(match_template(image, template, engine=engine), [expected], atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(6, 20), w=st.integers(6, 20), th=st.integers(1, 6),
       tw=st.integers(1, 6), channels=st.sampled_from([1, 3]))
def test_equals_float64_brute_force(seed, h, w, th, tw, channels, engine):
    rng = np.random.default_rng(seed)
    image = rng.random((h, w, channels)).astype(np.float32)
    template = rng.random((th, tw, channels)).astype(np.float32)
    if th * tw == 1:  # a one-pixel template has no spread: every score is 0
        np.testing.assert_array_equal(match_template(image, template, engine=engine), 0)
        return
    got, expected = match_template(image, template, engine=engine), brute_ncc(image, template)
    # float32 sums lose digits to cancellation in a window whose values barely differ (random
    # draws can give a 2-pixel window 3e-6 apart, scored -0.9999972 for -1): compare where the
    # window's spread is at least 1e-4 (a fortieth of an 8-bit level), bound the rest
    image64 = image.astype(np.float64)
    spread = np.array([[image64[r : r + th, c : c + tw].std() for c in range(got.shape[1])] for r in range(got.shape[0])])
    well = spread >= 1e-4
    np.testing.assert_allclose(got[well], expected[well], atol=2e-6)
    assert np.all(np.abs(got) <= 1 + 1e-6)


def test_blocks_and_strips_join_exactly(engine):
    """Large images run in overlap-save blocks of rows and columns: exact across their seams and at the ends."""
    rng = np.random.default_rng(2)
    image = rng.random((1100, 1300, 3)).astype(np.float32)
    template = image[3:12, 100:107].copy()
    scores = match_template(image, template, engine=engine)
    for top, left in [(0, 0), (245, 245), (510, 510), (770, 770), (1060, 1265)]:  # seams of any block size, the ends
        window = image[top : top + 40 + 8, left : left + 30 + 6]
        np.testing.assert_allclose(scores[top : top + 40, left : left + 30], brute_ncc(window, template), atol=2e-6)


def test_low_contrast_windows_are_exact_too(engine):
    """Float64 sums: a window spread of a few 8-bit levels on a bright base is still exact."""
    rng = np.random.default_rng(3)
    image = (200 + rng.integers(0, 3, (40, 50, 3))).astype(np.float32) / 255
    template = image[10:18, 20:31].copy()
    np.testing.assert_allclose(match_template(image, template, engine=engine), brute_ncc(image, template), atol=2e-6)



@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shape", [(2, 3), (16, 24)])
def test_low_contrast_beside_high_contrast_keeps_the_bound(engine, channels, shape):
    """The hard case for FFT rounding: windows of spread ~3e-4 on a base of 0.9 in the same FFT
    blocks as full-contrast texture that the template matches. A float32 numerator is 4e-5 to
    7e-4 off here (its rounding scales with the block's largest values, not the window's);
    float64 keeps 2e-6."""
    rng = np.random.default_rng(11)
    image = (0.9 + rng.random((300, 500, channels)) * 1e-3).astype(np.float32)
    image[:, :150] = rng.random((300, 150, channels))
    th, tw = shape
    template = image[100 : 100 + th, 40 : 40 + tw].copy()  # from the texture: large numerators there
    scores = match_template(image, template, engine=engine)
    assert scores[100, 40] == pytest.approx(1.0, abs=1e-6)
    for top, left in [(100, 200), (0, 470), (250, 160), (120, 330)]:  # in the flat part, beside the texture
        window = image[top : top + 6 + th - 1, left : left + 6 + tw - 1]
        np.testing.assert_allclose(scores[top : top + 6, left : left + 6], brute_ncc(window, template), atol=2e-6)

def test_colour_matches_all_channels_together_each_minus_its_own_mean(engine):
    """A window that differs from the template by a different constant per channel scores 1."""
    rng = np.random.default_rng(4)
    image = rng.random((30, 40, 3)).astype(np.float32) * 0.5
    template = image[5:15, 7:20] + np.array([0.1, 0.3, -0.05], dtype=np.float32)
    scores = match_template(image, template, engine=engine)
    assert scores[5, 7] == pytest.approx(1.0, abs=1e-6) and np.unravel_index(scores.argmax(), scores.shape) == (5, 7)
    np.testing.assert_allclose(scores, brute_ncc(image, template), atol=2e-6)


def test_flat_windows_and_flat_templates_score_zero(engine):
    """No NaN and no warning (the suite turns RuntimeWarnings into errors): 0 where nothing varies."""
    image = np.full((20, 30, 3), 0.5, dtype=np.float32)
    image[:, 15:] = np.random.default_rng(5).random((20, 15, 3))
    template = image[2:7, 18:25].copy()
    scores = match_template(image, template, engine=engine)
    assert np.isfinite(scores).all() and (scores[:, :9] == 0).all()  # windows inside the flat half
    np.testing.assert_allclose(scores, brute_ncc(image, template), atol=2e-6)
    flat_template = np.full((5, 7, 3), 0.25, dtype=np.float32)
    assert (match_template(image, flat_template, engine=engine) == 0).all()


def test_same_size_puts_each_score_at_the_template_centre(engine):
    rng = np.random.default_rng(6)
    image, template = rng.random((20, 25, 3)).astype(np.float32), rng.random((4, 7, 3)).astype(np.float32)
    valid = match_template(image, template, engine=engine)
    same = match_template(image, template, size="same", engine=engine)
    assert same.shape == (20, 25)
    np.testing.assert_array_equal(same[2 : 2 + 17, 3 : 3 + 19], valid)
    assert (same[:2] == 0).all() and (same[19:] == 0).all() and (same[:, :3] == 0).all() and (same[:, 22:] == 0).all()


def test_mismatched_shapes_are_refused():
    with pytest.raises(UsageError, match="channel"):
        match_template(np.zeros((9, 9, 3)), np.zeros((3, 3, 1)))
    with pytest.raises(UsageError, match="does not fit"):
        match_template(np.zeros((9, 9)), np.zeros((10, 3)))


def test_a_patch_is_found_after_brightness_contrast_and_noise(chelsea, engine):
    rng = np.random.default_rng(8)
    patch = chelsea[100:140, 150:196]
    changed = np.clip(0.6 * patch + 0.15 + rng.normal(0, 0.02, patch.shape), 0, 1).astype(np.float32)
    scores = match_template(chelsea, changed, engine=engine)
    [best] = find_peaks(scores, changed.shape[:2])
    assert (best.row, best.col) == (100, 150) and best.score > 0.9


def test_a_mirrored_or_absent_patch_is_not_found(chelsea):
    mirrored = chelsea[100:140, 150:196, :][:, ::-1]
    absent = np.asarray(Image.open(SAMPLES / "coffee.png").convert("RGB"), dtype=np.float32)[100:140, 300:346] / 255
    for template in (mirrored, absent):
        assert find_peaks(match_template(chelsea, template), template.shape[:2], threshold=0.8) == []


def brute_peaks(scores, half, top, threshold=-np.inf):
    """Local maxima of their (2·half + 1) box, best first, none in the box of a better one: in loops."""
    h, w = scores.shape
    local = [(scores[r, c], r, c) for r in range(h) for c in range(w)
             if scores[r, c] >= scores[max(0, r - half[0]) : r + half[0] + 1, max(0, c - half[1]) : c + half[1] + 1].max()]
    kept = []
    for score, r, c in sorted(local, key=lambda x: -x[0]):
        if score >= threshold and all(abs(r - kr) > half[0] or abs(c - kc) > half[1] for _, kr, kc in kept):
            kept.append((score, r, c))
    return [(r, c) for _, r, c in kept[:top]]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), th=st.integers(1, 7), tw=st.integers(1, 7), top=st.integers(1, 6))
def test_peaks_equal_a_brute_force_non_maximum_suppression(seed, th, tw, top):
    scores = np.random.default_rng(seed).random((15, 18)).astype(np.float32)
    peaks = find_peaks(scores, (th, tw), top=top)
    assert [(p.row, p.col) for p in peaks] == brute_peaks(scores, (th // 2, tw // 2), top)
    assert [p.score for p in peaks] == sorted((p.score for p in peaks), reverse=True)


def test_two_copies_are_two_peaks_and_the_threshold_keeps_the_real_ones(chelsea):
    image = chelsea.copy()
    patch = chelsea[100:130, 150:180].copy()
    image[20:50, 300:330] = patch  # a second copy, far from the first
    peaks = find_peaks(match_template(image, patch), patch.shape[:2], top=5, threshold=0.95)
    assert sorted((p.row, p.col) for p in peaks) == [(20, 300), (100, 150)]


# --- the command ---------------------------------------------------------------------------


@pytest.fixture
def cat_and_eye(tmp_path, chelsea):
    cat, eye = tmp_path / "cat.png", tmp_path / "eye.png"
    Image.fromarray(np.rint(chelsea * 255).astype(np.uint8)).save(cat)
    Image.fromarray(np.rint(chelsea[80:120, 130:171] * 255).astype(np.uint8)).save(eye)
    return cat, eye


def test_cli_json_npy_and_picture(cat_and_eye, tmp_path):
    cat, eye = cat_and_eye
    result = imfilt("match", cat, "-t", eye, "--top", "2", "--json", "-o", tmp_path / "scores.npy")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    best = record["matches"][0]
    assert (best["row"], best["col"], best["centre"]) == (80, 130, [100, 150]) and best["score"] > 0.999
    assert len(record["matches"]) == 2 and record["shape"] == [261, 411, 1]
    scores = np.load(tmp_path / "scores.npy")[..., 0]
    image = np.asarray(Image.open(cat), dtype=np.float64) / 255
    template = np.asarray(Image.open(eye), dtype=np.float64) / 255
    assert scores.shape == (261, 411)
    np.testing.assert_allclose(scores[70:85, 120:135], brute_ncc(image[70 : 85 + 39, 120 : 135 + 40], template), atol=2e-6)
    assert imfilt("match", cat, "-t", eye, "-o", tmp_path / "scores.png").exit_code == 0
    picture = np.asarray(Image.open(tmp_path / "scores.png"))
    np.testing.assert_array_equal(picture, np.rint((np.clip(scores, -1, 1) + 1) / 2 * 255).astype(np.uint8))


def test_cli_threshold_and_gray(cat_and_eye, tmp_path):
    cat, eye = cat_and_eye
    result = imfilt("match", cat, "-t", eye, "--top", "5", "--threshold", "0.9", "--gray", "--json",
                    "-o", tmp_path / "s.npy")
    assert result.exit_code == 0, result.stderr
    matches = json.loads(result.stdout)["matches"]
    assert [(m["row"], m["col"]) for m in matches] == [(80, 130)]


def test_cli_bad_template_is_exit_2_and_a_template_too_big_costs_one_input(cat_and_eye, tmp_path):
    cat, eye = cat_and_eye
    result = imfilt("match", cat, "-t", tmp_path / "missing.png", "-o", tmp_path / "s.png")
    assert result.exit_code == 2 and "missing.png: no such file" in result.stderr and not (tmp_path / "s.png").exists()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "tiny.png")
    grey = tmp_path / "grey.png"
    Image.open(cat).convert("L").save(grey)
    result = imfilt("match", cat, tmp_path / "tiny.png", grey, "-t", eye, "--out-dir", tmp_path / "out", "--json")
    assert result.exit_code == 1
    assert "tiny.png: the 41x40 template does not fit" in result.stderr and "use --gray" in result.stderr
    assert [json.loads(line)["input"] for line in result.stdout.splitlines()] == [str(cat)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat.match.png"]


def test_cli_size_same_and_gray_are_wired(cat_and_eye, tmp_path):
    """--size same writes the input's size; a grey template needs --gray on a colour image."""
    cat, eye = cat_and_eye
    result = imfilt("match", cat, "-t", eye, "--size", "same", "--json", "-o", tmp_path / "same.npy")
    assert result.exit_code == 0 and json.loads(result.stdout)["shape"] == [300, 451, 1]
    best = json.loads(result.stdout)["matches"][0]
    assert (best["row"], best["col"]) == (80, 130)  # top-left corners, whichever the map's size
    same = np.load(tmp_path / "same.npy")[..., 0]
    assert same[80 + 20, 130 + 20] == same.max()  # the score sits at the template's centre
    Image.open(eye).convert("L").save(tmp_path / "grey-eye.png")
    assert imfilt("match", cat, "-t", tmp_path / "grey-eye.png", "-o", tmp_path / "g.png").exit_code == 1
    result = imfilt("match", cat, "-t", tmp_path / "grey-eye.png", "--gray", "--json", "-o", tmp_path / "g.npy")
    assert result.exit_code == 0 and json.loads(result.stdout)["matches"][0]["score"] > 0.99


def test_window_sums_of_both_backends_equal_float64_sums(engine):
    """filters.window_sums (OpenCV's box filter on the CPU, ndimage running sums elsewhere): every window's sum in float64."""
    rng = np.random.default_rng(8)
    planes = (0.8 + rng.random((2, 37, 300)) * 1e-3).astype(np.float32)
    got = engine.filters.window_sums(engine, engine.asarray(planes), (5, 9))
    windows = np.lib.stride_tricks.sliding_window_view(planes.astype(np.float64), (5, 9), axis=(1, 2))
    np.testing.assert_allclose([engine.to_host(g) for g in got], windows.sum(axis=(-2, -1)), rtol=1e-13)



def test_window_spread_of_both_backends_equals_float64(engine):
    """filters.window_spread (OpenCV's box filter and fused passes on the CPU, ndimage running sums
    elsewhere): each window's squared deviations from its channel means, summed over the channels."""
    rng = np.random.default_rng(10)
    planes = (0.8 + rng.random((3, 37, 300)) * 1e-3).astype(np.float32)
    buffers = [np.full((40, 300), np.nan) for _ in range(3)]  # larger than the planes, as match's last strip finds them
    got = engine.to_host(engine.filters.window_spread(engine, engine.asarray(planes), (5, 9), out=buffers))
    windows = np.lib.stride_tricks.sliding_window_view(planes.astype(np.float64), (5, 9), axis=(1, 2))
    deviations = windows - windows.mean(axis=(-2, -1), keepdims=True)
    expected = (deviations**2).sum(axis=(0, -2, -1))
    assert got.shape == (33, 292)
    np.testing.assert_allclose(got, expected, rtol=1e-7)  # double sums of ~90 leave ~1e-13: 1e-8 of a spread of 1e-5

def test_wide_low_contrast_image_keeps_the_bound(engine):
    """Window sums run along 4100-pixel rows and over several strips and blocks: still 2e-6 on a bright, low-contrast image."""
    rng = np.random.default_rng(9)
    image = (0.8 + rng.random((700, 4100, 3)) * 2e-3).astype(np.float32)  # a spread of ~6e-4, 1/6 of an 8-bit level
    template = image[300:308, 2000:2010].copy()
    scores = match_template(image, template, engine=engine)
    for top, left in [(0, 0), (250, 1000), (300, 2000), (690, 4088), (400, 4050)]:
        window = image[top : top + 3 + 7, left : left + 3 + 9]
        np.testing.assert_allclose(scores[top : top + 3, left : left + 3], brute_ncc(window, template), atol=2e-6)
