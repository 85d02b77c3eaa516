"""`imfilt kernels`: the list, show as apply uses it, pictures, and files that round-trip."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app
from imfilt.ops.kernel_view import diverging_colours
from imfilt.ops.kernels import BUILTINS, load_kernel, load_kernels

MOTION_BLUR = str(Path(__file__).resolve().parent.parent / "kernels" / "motion-blur.txt")

runner = CliRunner()


def imfilt(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_list_names_every_builtin_with_its_facts():
    result = imfilt("kernels", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert list(rows) == list(BUILTINS)
    assert rows["gaussian"]["params"] == {"sigma": 1.0, "truncate": 4.0} and rows["gaussian"]["shape"] == [9, 9]
    assert rows["gaussian"]["separable"] and rows["gaussian"]["auto_method"] == "separable"
    assert not rows["sharpen"]["separable"] and rows["sharpen"]["rank"] == 2 and rows["sharpen"]["sum"] == 1
    assert rows["laplacian"]["sum"] == 0 and rows["sobel"]["magnitude"] and rows["sobel"]["sum"] == [0, 0]
    table = imfilt("kernels").stdout
    assert "gaussian" in table and "sigma=1,truncate=4" in table and imfilt("kernels", "list").stdout == table


def show_json(*args):
    result = imfilt("kernels", "show", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_show_is_what_apply_uses_after_headers_scale_and_normalize(tmp_path):
    path = tmp_path / "k.txt"
    path.write_text("name: lopsided\nscale: 1/10\nnormalize: none\n1 2 0\n3 4 0\n")
    [shown] = show_json(path)
    np.testing.assert_array_equal(shown["matrix"], np.array([[1, 2, 0], [3, 4, 0]]) * 0.1)  # as the header scales it
    assert shown["shape"] == [2, 3] and shown["anchor"] == [1, 1] and shown["rank"] == 2
    [normalized] = show_json(path, "--normalize", "sum")
    np.testing.assert_allclose(np.sum(normalized["matrix"]), 1.0)


def test_flipped_is_what_convolution_multiplies():
    """Convolving an impulse prints the flipped kernel around it; --flipped shows exactly that."""
    [shown] = show_json("2x3: 1,2,3,4,5,6", "--flipped")
    impulse = np.zeros((7, 7))
    impulse[3, 3] = 1
    kernel = load_kernel("2x3: 1,2,3,4,5,6").weights
    response = ndi.convolve(impulse, kernel, mode="constant")
    # correlating with the flipped matrix, anchored where it says, is the convolution
    flipped = np.array(shown["matrix"])
    assert flipped.tolist() == [[6, 5], [4, 3], [2, 1]] and shown["anchor"] == [1, 0]
    correlated = ndi.correlate(impulse, flipped, mode="constant", origin=(0, -1))
    np.testing.assert_array_equal(response, correlated)


def test_softmax_is_a_probability_density_and_says_so():
    result = imfilt("kernels", "show", "3x3: 0,-1,0,-1,5,-1,0,-1,0", "--normalize", "softmax")
    assert result.exit_code == 0 and "probability density" in result.stdout
    [shown] = show_json("3x3: 0,-1,0,-1,5,-1,0,-1,0", "--normalize", "softmax")
    matrix = np.array(shown["matrix"])
    assert (matrix > 0).all() and matrix.sum() == pytest.approx(1.0)
    expected = np.exp([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
    np.testing.assert_allclose(matrix, expected / expected.sum())


@pytest.mark.parametrize("fmt", ["txt", "mat", "npy"])
@pytest.mark.parametrize("spec", ["gaussian:sigma=0.7", "sharpen", "3x2: 0.1,-2e-7,3,4,5,1e10", MOTION_BLUR])
def test_files_round_trip(tmp_path, spec, fmt):
    out = tmp_path / f"k.{fmt}"
    result = imfilt("kernels", "show", spec, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(load_kernel(str(out)).weights, load_kernel(spec).weights)


def test_a_bank_round_trips_as_npy_and_a_gradient_pair_is_refused_in_one_file(tmp_path):
    bank = np.random.default_rng(1).standard_normal((3, 4, 5))
    np.save(tmp_path / "bank.npy", bank)
    assert imfilt("kernels", "show", tmp_path / "bank.npy", "-o", tmp_path / "copy.npy", "-q").exit_code == 0
    np.testing.assert_array_equal(np.stack([k.weights for k in load_kernels(str(tmp_path / "copy.npy"))]), bank)
    result = imfilt("kernels", "show", tmp_path / "bank.npy", "-o", tmp_path / "bank.txt")
    assert result.exit_code == 2 and "--format npy" in result.stderr and not (tmp_path / "bank.txt").exists()
    result = imfilt("kernels", "show", "sobel", "--format", "txt", "-o", tmp_path / "sobel.out")
    assert result.exit_code == 2 and "sobel-x and sobel-y" in result.stderr


def test_format_option_and_standard_output(tmp_path):
    result = imfilt("kernels", "show", "emboss", "--format", "txt", "-o", "-")
    assert result.exit_code == 0 and result.stdout.startswith("name: emboss\n")
    (tmp_path / "e.kernel").write_text(result.stdout)
    np.testing.assert_array_equal(load_kernel(str(tmp_path / "e.kernel")).weights, load_kernel("emboss").weights)


def test_errors_are_exit_2_with_one_line(tmp_path):
    (tmp_path / "exists.png").write_bytes(b"keep")
    for args, message in [(("nope",), "unknown kernel 'nope'"), (("box", "-o", tmp_path / "k.gif"), "picture (.png)"),
                          (("box", "-o", tmp_path / "exists.png"), "exists"), (("box", "--format", "npy"), "give -o")]:
        result = imfilt("kernels", "show", *args)
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "exists.png").read_bytes() == b"keep"


def test_diverging_colours_are_white_at_zero_and_symmetric():
    colours = diverging_colours(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), 2.0)
    assert colours[2].tolist() == [247, 247, 247]
    assert colours[0, 2] > colours[0, 0] and colours[4, 0] > colours[4, 2]  # blue below 0, red above
    assert (colours[1] != colours[3]).any() and abs(int(colours[1].sum()) - int(colours[3].sum())) < 80


def test_picture_has_one_cell_per_weight_in_its_colour(tmp_path):
    result = imfilt("kernels", "show", "3x2: -1,0,2,0,1,0", "-o", tmp_path / "k.png", "-q")
    assert result.exit_code == 0, result.stderr
    image = np.asarray(Image.open(tmp_path / "k.png").convert("RGB"))
    cell, caption = 64, 18
    assert image.shape[0] == caption + 2 * cell
    corner = lambda r, c: image[caption + r * cell + 3, c * cell + 3].tolist()  # away from the labels
    limit_colours = diverging_colours(np.array([-1.0, 0.0, 2.0, 1.0]), 2.0).tolist()
    assert [corner(0, 0), corner(0, 1), corner(0, 2), corner(1, 1)] == limit_colours
