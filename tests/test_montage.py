"""`apply --montage`: one picture of each input's feature maps, checked against the outputs
themselves (read back by Pillow) and the layout its --json reports."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.montage import SEPARATOR, layout

runner = CliRunner()


def imfilt(*args):
    return runner.invoke(app, [str(a) for a in args])


def records(result):
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def photo(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    return tmp_path / "a.png"


@pytest.mark.parametrize("count, grid", [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (5, (2, 3)), (9, (3, 3)), (10, (3, 4))])
def test_the_grid_is_near_square(count, grid):
    assert (layout([(20, 30)] * count).rows, layout([(20, 30)] * count).cols) == grid


def test_each_cell_is_that_output_as_written(photo, tmp_path):
    """Five maps (a 4-D bank's grey ones and colour ones): a 2x3 grid, each cell the output file's
    pixels (grey repeated into colour), white separators and empty cells."""
    np.savez(tmp_path / "bank.npz", weight=np.random.default_rng(1).standard_normal((2, 3, 3, 3)), bias=[0.5, -0.2])
    out = records(imfilt("apply", photo, "-k", tmp_path / "bank.npz", "-k", "sobel", "-k", "box", "-k", "sharpen",
                         "--out-dir", tmp_path / "o", "--montage", tmp_path / "m.png", "--json"))
    sheet = out[-1]
    assert sheet["op"] == "montage" and sheet["output"] == str(tmp_path / "m.png")
    assert (sheet["maps"], sheet["grid"], sheet["cell"], sheet["scale"]) == (5, [2, 3], [20, 30], 1.0)
    assert sheet["shape"] == [2 * 20 + SEPARATOR, 3 * 30 + 2 * SEPARATOR, 3]
    picture = np.asarray(Image.open(tmp_path / "m.png"))
    assert picture.shape == tuple(sheet["shape"])
    for index, record in enumerate(out[:-1]):
        row, col = divmod(index, 3)
        cell = picture[row * 22 : row * 22 + 20, col * 32 : col * 32 + 30]
        written = np.asarray(Image.open(record["output"]))
        written = written[..., None] if written.ndim == 2 else written
        np.testing.assert_array_equal(cell, np.broadcast_to(written, cell.shape), err_msg=record["op"])
    assert (picture[20:22] == 255).all() and (picture[:, 30:32] == 255).all() and (picture[22:, 64:] == 255).all()


def test_a_grid_over_8192_pixels_is_scaled_down_and_says_so(tmp_path):
    Image.fromarray(np.full((4500, 7, 3), 100, np.uint8)).save(tmp_path / "tall.png")
    sheet = records(imfilt("apply", tmp_path / "tall.png", "-k", "box", "-k", "identity", "-k", "sharpen",
                           "--out-dir", tmp_path / "o", "--montage", tmp_path / "m.png", "--json"))[-1]
    assert sheet["grid"] == [2, 2] and sheet["scale"] < 1
    assert max(sheet["shape"][:2]) <= 8192 and sheet["shape"][0] > 8100
    picture = np.asarray(Image.open(tmp_path / "m.png"))
    assert picture.shape == tuple(sheet["shape"]) and picture[100, 2, 0] == 100  # the box of a flat image


def test_several_inputs_need_stem_and_get_one_montage_each(photo, tmp_path):
    Image.open(photo).save(tmp_path / "b.png")
    result = imfilt("apply", photo, tmp_path / "b.png", "-k", "box", "--out-dir", tmp_path / "o",
                    "--montage", tmp_path / "m.png")
    assert result.exit_code == 2 and "put {stem} in it" in result.stderr
    out = records(imfilt("apply", tmp_path, "-k", "box", "-k", "sobel", "--out-dir", tmp_path / "o",
                         "--montage", tmp_path / "{stem}.montage.png", "--json"))
    assert sorted(r["output"] for r in out if r["op"] == "montage") == [str(tmp_path / "a.montage.png"),
                                                                        str(tmp_path / "b.montage.png")]
    # run again on the folder: the montages are not taken for inputs, and existing ones are kept
    result = imfilt("apply", tmp_path, "-k", "box", "-k", "sobel", "--out-dir", tmp_path / "o",
                    "--montage", tmp_path / "{stem}.montage.png")
    assert result.exit_code == 2 and "exists; use --overwrite" in result.stderr
    out = records(imfilt("apply", tmp_path, "-k", "box", "-k", "sobel", "--out-dir", tmp_path / "o",
                         "--montage", tmp_path / "{stem}.montage.png", "--skip-existing", "--json"))
    assert len(out) == 6 and all(r["skipped"] for r in out)


def test_a_missing_montage_is_made_from_outputs_that_are_skipped(photo, tmp_path):
    assert imfilt("apply", photo, "-k", "box", "-k", "sobel", "--out-dir", tmp_path / "o").exit_code == 0
    out = records(imfilt("apply", photo, "-k", "box", "-k", "sobel", "--out-dir", tmp_path / "o", "--skip-existing",
                         "--montage", tmp_path / "m.png", "--json"))
    assert [r["skipped"] for r in out] == [True, True, False] and out[-1]["maps"] == 2


def test_a_float_montage_holds_the_values_and_standard_output_is_refused(photo, tmp_path):
    """.npy: each cell holds the map's float32 values themselves (as the .npy outputs), white = 1.0."""
    out = records(imfilt("apply", photo, "-k", "sobel-x", "-k", "box", "--out-dir", tmp_path / "o", "--name", "{op}.npy",
                         "--montage", tmp_path / "m.npy", "--json"))
    picture = np.load(tmp_path / "m.npy")
    assert picture.dtype == np.float32 and picture.shape == tuple(out[-1]["shape"]) == (20, 62, 3)
    np.testing.assert_array_equal(picture[:, :30], np.load(tmp_path / "o" / "sobel-x.npy"))  # negative values kept
    np.testing.assert_array_equal(picture[:, 32:], np.load(tmp_path / "o" / "box.npy"))
    assert (picture[:, 30:32] == 1.0).all() and picture.min() < 0
    result = imfilt("apply", photo, "-k", "box", "--out-dir", tmp_path / "p", "--montage", "-")
    assert result.exit_code == 2 and "--montage writes a file" in result.stderr


def test_dry_run_shows_the_montage_and_counts_its_memory(photo, tmp_path):
    plain = imfilt("apply", photo, "-k", "box", "-k", "sobel", "--out-dir", tmp_path / "o", "--dry-run", "--json")
    sheet = imfilt("apply", photo, "-k", "box", "-k", "sobel", "--out-dir", tmp_path / "o", "--montage",
                   tmp_path / "m.png", "--dry-run", "--json")
    records = [json.loads(line) for line in sheet.stdout.splitlines()]
    assert records[2]["output"] == str(tmp_path / "m.png") and records[2]["method"] == "montage"
    before = json.loads(plain.stdout.splitlines()[-1])["plan"]["peak_memory_mb"]
    assert records[-1]["plan"]["peak_memory_mb"] >= before and not (tmp_path / "m.png").exists()
