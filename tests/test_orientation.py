"""`imfilt spectrum --orientation`: the direction of stripes and edges, from the power spectrum.

Angles are degrees counter-clockwise from the x axis (right) with y pointing up, in [0, 180):
the direction along which the intensity stays constant. The stripes are drawn here from that
definition; the rotated photos are turned by scipy.ndimage.rotate.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.ops.orientation import orientation_plane, orientations

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
runner = CliRunner()


def stripes(degrees, period, shape=(200, 256), noise=0.0, seed=0):
    """Intensity constant along (cos θ, sin θ) with y up, i.e. along (col, -row) in the array."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    theta = np.radians(degrees)
    across = -np.sin(theta) * cols + np.cos(theta) * -rows  # the distance across the stripes
    image = 0.5 + 0.5 * np.cos(2 * np.pi * across / period)
    return (image + np.random.default_rng(seed).normal(0, noise, shape)).astype(np.float32)


def angle_error(a, b):
    return abs((a - b + 90.0) % 180.0 - 90.0)


@pytest.mark.parametrize("image, expected", [
    (np.tile(np.arange(64) % 8 < 4, (64, 1)).astype(np.float32), 90.0),  # columns alternate: vertical stripes
    (np.tile((np.arange(64) % 8 < 4)[:, None], (1, 64)).astype(np.float32), 0.0),  # rows alternate: horizontal
    (((np.add.outer(np.arange(64), np.arange(64)) % 8) < 4).astype(np.float32), 45.0),  # row + col constant: up-right
    (((np.subtract.outer(np.arange(64), np.arange(64)) % 8) < 4).astype(np.float32), 135.0),  # row - col: up-left
])
def test_the_angle_convention_on_hand_made_stripes(image, expected):
    """Counter-clockwise from x with y up: a line of constant row + col rises to the right (45°)."""
    found = orientations(image)
    assert angle_error(found[0]["angle"], expected) < 0.5, found


@pytest.mark.parametrize("period", [3.0, 5.5, 12.0, 30.0])
def test_stripes_at_many_angles_and_periods_with_noise(period):
    """Within 1° at every angle (37° -> 37.0 ± 1), with noise of twice the stripes' amplitude."""
    for i, degrees in enumerate(np.arange(0.0, 180.0, 7.3)):
        image = stripes(degrees, period, noise=1.0, seed=i)
        found = orientations(image)
        assert angle_error(found[0]["angle"], degrees) <= 1.0, (degrees, found)
        assert found[0]["strength"] > 0.7 and 0 <= found[0]["angle"] < 180
    found = orientations(stripes(37.0, period, noise=0.5))
    assert abs(found[0]["angle"] - 37.0) <= 1.0


def test_peaks_are_interpolated_not_read_off_the_grid():
    """Noise-free stripes at angles between the grid's directions come out within 0.2°."""
    for degrees in (11.3, 37.0, 52.7, 101.1, 163.9):
        assert angle_error(orientations(stripes(degrees, 9.0))[0]["angle"], degrees) < 0.2


def test_two_superposed_patterns_give_two_angles():
    image = stripes(37.0, 9.0) + stripes(112.0, 13.0) + stripes(0, 1, noise=0.3, seed=5) - 0.5
    found = orientations(image)
    assert len(found) >= 2
    assert sorted(round(f["angle"]) for f in found[:2]) == [37, 112], found
    assert all(0.35 < f["strength"] < 0.65 for f in found[:2]), found


def test_noise_alone_has_no_strong_orientation():
    found = orientations(np.random.default_rng(3).random((128, 160)).astype(np.float32))
    assert not found or found[0]["strength"] < 0.5 or len(found) > 2, found


@pytest.mark.parametrize("name", ["brick.png", "astronaut.png"])
def test_a_rotated_photo_turns_its_orientation_by_the_rotation(name):
    """The central square (no corners filled in by the rotation) of the photo, turned by 25° and 60°."""
    gray = np.asarray(Image.open(SAMPLES / name).convert("L"), dtype=np.float32) / 255
    height, width = gray.shape
    side = int(min(height, width) / np.sqrt(2)) - 4
    top, left = (height - side) // 2, (width - side) // 2
    before = orientations(gray[top : top + side, left : left + side])[0]["angle"]
    for degrees in (25.0, 60.0):
        turned = ndi.rotate(gray, degrees, reshape=False, order=3, mode="reflect")  # counter-clockwise as shown
        after = orientations(turned[top : top + side, left : left + side])[0]["angle"]
        assert angle_error(after - before, degrees) <= 1.0, (before, after)


def test_every_engine_finds_the_same_angles(engine):
    image = stripes(37.0, 7.0, shape=(96, 130), noise=0.3)
    found = orientation_plane(engine, engine.asarray(image))
    assert angle_error(found[0]["angle"], 37.0) <= 1.0
    assert found == orientations(image)


def test_on_the_command_line(tmp_path):
    """--json carries them best first; without it one line for people on stderr; colour is read by its luminance."""
    rgb = np.stack([stripes(37.0, 9.0), stripes(37.0, 9.0), stripes(112.0, 13.0) * 0.1], axis=-1)
    Image.fromarray(np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    result = runner.invoke(app, ["spectrum", str(tmp_path / "a.png"), "--orientation", "--json", "-o",
                                 str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert abs(record["orientation"][0]["angle"] - 37.0) <= 1.0 and "note" not in record
    assert set(record["orientation"][0]) == {"angle", "strength"}
    result = runner.invoke(app, ["spectrum", str(tmp_path / "a.png"), "--orientation", "-o", str(tmp_path / "t.png")])
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr.startswith(f"{tmp_path / 'a.png'}: orientation 37.0° (strength ")
    result = runner.invoke(app, ["spectrum", str(tmp_path / "a.png"), "--json", "-o", str(tmp_path / "u.png")])
    assert "orientation" not in json.loads(result.stdout)  # only when asked


def test_an_image_over_memory_is_processed_whole_for_its_orientation(tmp_path):
    """--orientation needs the whole spectrum: a TIFF over --memory is not streamed (a plain spectrum is)."""
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.rint(stripes(37.0, 9.0, shape=(120, 140)) * 200).astype(np.uint8))
    common = ["spectrum", str(tmp_path / "a.tif"), "--memory", "100K", "--json", "--out-dir", str(tmp_path)]
    oriented = json.loads(runner.invoke(app, common + ["--orientation", "--name", "o.tif"]).stdout)
    plain = json.loads(runner.invoke(app, common + ["--name", "p.tif"]).stdout)
    assert plain.get("tiled") and not oriented.get("tiled")
    assert abs(oriented["orientation"][0]["angle"] - 37.0) <= 1.0
