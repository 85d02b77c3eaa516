"""Kernels: built-ins, the file formats, and every way a kernel can be wrong."""

from pathlib import Path

import numpy as np
import pytest

from imfilt.errors import KernelError
from imfilt.ops.kernels import BUILTINS, Kernel, load_kernel, load_kernels

KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def test_box_is_normalized_by_one_ninth():
    np.testing.assert_array_equal(load_kernel("box").weights, np.full((3, 3), 1 / 9))
    np.testing.assert_allclose(load_kernel("box:size=5").weights, np.full((5, 5), 1 / 25))


def test_gaussian_radius_and_sum():
    """radius int(4s + 0.5): sigma 2 -> 17x17, sigma 0.3 -> 3x3; sum 1."""
    assert load_kernel("gaussian:sigma=2").shape == (17, 17)
    assert load_kernel("gaussian:sigma=0.3").shape == (3, 3)
    assert load_kernel("gaussian:sigma=2").sum == pytest.approx(1.0)


def test_every_builtin_loads_and_edge_detectors_sum_to_zero():
    for name in BUILTINS:
        kernel = load_kernel(name)
        assert np.isfinite(kernel.weights).all()
    for name in ("laplacian", "outline", "sobel-x", "sobel-y", "prewitt-x"):
        assert load_kernel(name).sum == 0


def test_inline_imagemagick_matrix():
    kernel = load_kernel("3x3: 0,-1,0,-1,5,-1,0,-1,0")
    np.testing.assert_array_equal(kernel.weights, load_kernel("sharpen").weights)
    assert load_kernel("2x1: 1 2").weights.tolist() == [[1.0, 2.0]]


def test_shipped_text_files():
    np.testing.assert_allclose(load_kernel(str(KERNELS / "box5.txt")).weights, np.full((5, 5), 1 / 25))
    assert load_kernel(str(KERNELS / "motion-blur.txt")).sum == pytest.approx(1.0)
    diffusion = load_kernel(str(KERNELS / "diffusion.txt")).weights
    assert diffusion.sum() == pytest.approx(1.0) and diffusion[1, 1] == diffusion.max()


def test_libvips_matrix_file_divides_by_scale(tmp_path):
    path = tmp_path / "k.mat"
    path.write_text("3 1 2\n2 4 6\n")
    assert load_kernel(str(path)).weights.tolist() == [[1.0, 2.0, 3.0]]
    assert load_kernel(str(KERNELS / "laplacian-of-gaussian.mat")).shape == (5, 5)


def test_text_with_bom_crlf_comments_and_even_size(tmp_path):
    path = tmp_path / "k.txt"
    path.write_bytes(b"\xef\xbb\xbf# a comment\r\nname: pair\r\n\r\n1, 2  # trailing\r\n3, 4\r\n\r\n")
    kernel = load_kernel(str(path))
    assert kernel.name == "pair" and kernel.weights.tolist() == [[1, 2], [3, 4]]


def test_npy_kernel_and_bank(tmp_path):
    np.save(tmp_path / "one.npy", np.eye(3))
    np.save(tmp_path / "bank.npy", np.stack([np.eye(3), np.ones((3, 3))]))
    assert load_kernel(str(tmp_path / "one.npy")).weights.tolist() == np.eye(3).tolist()
    assert [k.name for k in load_kernels(str(tmp_path / "bank.npy"))] == ["bank0", "bank1"]


def test_softmax_is_a_probability_density():
    kernel = Kernel("k", np.array([[0.0, 1.0], [2.0, 3.0]])).normalized("softmax")
    assert kernel.weights.sum() == pytest.approx(1.0) and (kernel.weights > 0).all()
    np.testing.assert_allclose(kernel.weights, np.exp([[0, 1], [2, 3]]) / np.exp([0, 1, 2, 3]).sum())


def test_sum_normalization_of_a_zero_sum_kernel_is_refused():
    with pytest.raises(KernelError, match="sum is 0"):
        load_kernel("laplacian").normalized("sum")


@pytest.mark.parametrize("content, message", [
    (b"", "no kernel matrix"),
    (b"# only a comment\n", "no kernel matrix"),
    (b"1 2 3\n4 5\n", r":2: row has 2 values"),
    (b"1 2\n3 x\n", r":2:3: 'x' is not a number"),
    (b"  1  2\n  3  oops\n", r":2:6: 'oops' is not a number"),  # columns count leading spaces
    (b"1 nan\n", r":1:3: 'nan' is not a finite number"),
    (b"1 inf\n", "not a finite number"),
    (b"1 2\n\n3 4\n", r":3:1: a second matrix block"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
    (b"colour: red\n1\n", "unknown header"),
    (b"normalize: maybe\n1\n", "not one of"),
])
def test_bad_kernel_files_name_file_line_and_column(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(KernelError, match=message) as info:
        load_kernel(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("spec, message", [
    ("nosuchkernel", "unknown kernel 'nosuchkernel': choose from"),
    ("missing/file.txt", "no such kernel file"),
    ("3x3: 1,2,3", "needs 9 values, got 3"),
    ("gaussian:sigma=0", "sigma must be > 0"),
    ("gaussian:width=3", "unknown parameter"),
    ("box:size=2.5", "whole number"),
    ("box:size", "key=number"),
])
def test_bad_kernel_specs(spec, message):
    with pytest.raises(KernelError, match=message):
        load_kernel(spec)
