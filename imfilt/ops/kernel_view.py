"""Kernels as data: their facts, their matrices as text, pictures of them, and kernel files.

What is shown is what `imfilt apply` uses: the kernel after its file's headers, scale and
--normalize; ``flipped`` shows what a true convolution multiplies each neighbour by (the
kernel turned 180°). Files are written in each format imfilt reads, so they round-trip.
"""

from __future__ import annotations

import inspect
import io
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw

from .convolution import rank_one_factors, resolve_method
from ..engine.engine import cpu_engine
from ..errors import UsageError
from .kernels import BUILTINS, Kernel, builtin

KERNEL_FORMATS = ("txt", "mat", "npy", "npz")
# A diverging colour map (ColorBrewer RdBu, reversed): blue for negative, white for 0, red for positive.
_DIVERGING = np.array([(33, 102, 172), (103, 169, 207), (209, 229, 240), (247, 247, 247),
                       (253, 219, 199), (239, 138, 98), (178, 24, 43)], dtype=np.float64)
LABEL_MAX_SIZE = 11  # cells are labelled with their values up to 11x11


def oriented(kernel: Kernel, flipped: bool) -> Kernel:
    """The kernel as written, or turned 180° (what a true convolution multiplies each neighbour by)."""
    return replace(kernel, weights=kernel.weights[..., ::-1, ::-1]) if flipped else kernel


def facts(kernel: Kernel, flipped: bool = False) -> dict:
    """Shape, sum, rank, anchor and the method `--method auto` runs, for each matrix of the kernel.

    The anchor is the matrix cell over the output pixel: the centre rounded down, as
    scipy.ndimage places kernels; in the flipped matrix of an even size it is rounded up.
    """
    shape = kernel.shape
    anchor = [n - 1 - n // 2 for n in shape] if flipped else [n // 2 for n in shape]
    ranks = [int(np.linalg.matrix_rank(m)) for m in kernel.matrices]
    several = kernel.magnitude or kernel.summed  # a rank per matrix: each part, or each input channel
    out = {
        "name": kernel.name,
        "shape": list(shape),
        "sum": [round(float(p.sum()), 12) for p in kernel.parts] if kernel.magnitude else round(kernel.sum, 12),
        "rank": ranks if several else ranks[0],
        "separable": all(rank_one_factors(m) is not None for m in kernel.matrices),
        "anchor": anchor,  # row, column of the matrix shown
        "auto_method": resolve_method(kernel.parts[0], "auto", cpu_engine()),  # the default engine's choice
        "magnitude": kernel.magnitude,
    }
    if kernel.summed:  # one kernel of a convolutional layer: C input channels summed, plus a bias
        out.update(channels=kernel.channels, bias=kernel.bias)
    return out


def builtin_rows() -> list[dict]:
    """One row per built-in: name, parameters with their defaults, and the facts of the default kernel."""
    rows = []
    for name, (factory, _, description) in BUILTINS.items():
        params = {p.name: p.default for p in inspect.signature(factory).parameters.values()}
        row = {"name": name, "params": params, "description": description}
        row.update({k: v for k, v in facts(builtin(name)).items() if k != "name"})
        rows.append(row)
    return rows


def format_number(value: float) -> str:
    """Shortest text that reads back as the same float64."""
    text = repr(float(value))
    return "0" if text in ("0.0", "-0.0") else text.removesuffix(".0")


def matrix_text(matrix: np.ndarray) -> str:
    """Rows of numbers, columns aligned, each number exact."""
    cells = [[format_number(v) for v in row] for row in matrix]
    width = max(len(c) for row in cells for c in row)
    return "\n".join(" ".join(c.rjust(width) for c in row) for row in cells)


def _single(kernel: Kernel, fmt: str) -> np.ndarray:
    if kernel.magnitude:
        raise UsageError(f"kernel {kernel.name} is the gradient magnitude of {len(kernel.parts)} kernels, which a "
                         f".{fmt} file cannot hold: write each part (e.g. sobel-x and sobel-y)")
    return kernel.weights


def kernel_file(kernels: list[Kernel], fmt: str) -> bytes:
    """The kernels as a file in one of imfilt's kernel formats (txt, mat: one kernel; npy: a bank too;
    npz: a convolutional layer's weight (N, C, kh, kw) and bias)."""
    if fmt not in KERNEL_FORMATS:
        raise UsageError(f"format must be one of {', '.join(KERNEL_FORMATS)}, got {fmt!r}")
    matrices = [_single(k, fmt) for k in kernels]
    summed = any(k.summed for k in kernels)
    if summed and fmt in ("txt", "mat"):
        raise UsageError(f"a .{fmt} file holds one 2-D kernel, not a layer's (N, C, kh, kw): use --format npz or npy")
    if fmt in ("npy", "npz"):
        buffer = io.BytesIO()
        weight = matrices[0] if len(matrices) == 1 and not summed else np.stack(matrices)
        biases = np.array([k.bias for k in kernels])
        if fmt == "npz":
            np.savez(buffer, weight=weight, **({"bias": biases} if summed else {}))
        elif summed and biases.any():
            raise UsageError("a .npy file holds no bias: write --format npz (weight and bias)")
        else:
            np.save(buffer, weight)
        return buffer.getvalue()
    if len(matrices) > 1:
        raise UsageError(f"a .{fmt} file holds one kernel, not a bank of {len(matrices)}: use --format npy")
    matrix = matrices[0]
    if fmt == "txt":
        return f"name: {kernels[0].name}\n{matrix_text(matrix)}\n".encode()
    return f"{matrix.shape[1]} {matrix.shape[0]} 1 0\n{matrix_text(matrix)}\n".encode()  # libvips: w h scale offset


def diverging_colours(values: np.ndarray, limit: float) -> np.ndarray:
    """Values in [-limit, limit] -> uint8 RGB: blue below 0, white at 0, red above; symmetric."""
    position = (np.clip(values / limit, -1, 1) + 1) / 2 * (len(_DIVERGING) - 1) if limit > 0 else \
        np.full(np.shape(values), (len(_DIVERGING) - 1) / 2)
    low = np.clip(np.floor(position).astype(int), 0, len(_DIVERGING) - 2)
    fraction = (position - low)[..., None]
    return np.rint(_DIVERGING[low] * (1 - fraction) + _DIVERGING[low + 1] * fraction).astype(np.uint8)


def bank_picture(kernels: list[Kernel], cell: int | None = None) -> Image.Image:
    """A convolutional layer's kernels as a grid: one row per kernel (its name and bias on the left),
    one column per input channel; one colour scale for all, centred on 0."""
    rows, cols = len(kernels), max(k.channels for k in kernels)
    kh, kw = kernels[0].shape
    limit = max(float(np.abs(k.weights).max()) for k in kernels)
    cell = cell or int(np.clip(min(480 // max(kh, kw), 4096 // (rows * (kh + 1)), 1600 // (cols * (kw + 1))), 2, 64))
    gap, label, header = max(2, cell // 2), 150, 18
    width = label + cols * (kw * cell + gap)
    height = header + rows * (kh * cell + gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c in range(cols):
        draw.text((label + c * (kw * cell + gap) + 2, 3), f"channel {c}", fill=(0, 0, 0))
    for r, kernel in enumerate(kernels):
        top = header + r * (kh * cell + gap)
        draw.text((2, top + max(0, (kh * cell - 11) // 2)), f"{kernel.name}  bias {format_number(round(kernel.bias, 6))}",
                  fill=(0, 0, 0))
        for c, matrix in enumerate(kernel.weights):
            colours = np.repeat(np.repeat(diverging_colours(matrix, limit), cell, axis=0), cell, axis=1)
            canvas.paste(Image.fromarray(colours), (label + c * (kw * cell + gap), top))
    return canvas


def picture(kernels: list[Kernel], cell: int | None = None) -> Image.Image:
    """Each matrix drawn as coloured cells (one colour scale for all, centred on 0), side by side,
    labelled with their values when small, under a caption with the name and the sum.
    A convolutional layer's kernels (summed over channels) are drawn as a grid (bank_picture)."""
    if all(k.summed for k in kernels):
        return bank_picture(kernels, cell)
    matrices = [(k.name + (f" g{i}" if k.magnitude else ""), m) for k in kernels for i, m in enumerate(k.parts)]
    limit = max(float(np.abs(m).max()) for _, m in matrices)
    largest = max(max(m.shape) for _, m in matrices)
    cell = cell or int(np.clip(480 // largest, 4, 64))
    caption, gap = 18, 8
    widths = [max(m.shape[1] * cell, 120) for _, m in matrices]
    canvas = Image.new("RGB", (sum(widths) + gap * (len(matrices) - 1), caption + max(m.shape[0] for _, m in matrices) * cell),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (name, matrix), width in zip(matrices, widths):
        colours = np.repeat(np.repeat(diverging_colours(matrix, limit), cell, axis=0), cell, axis=1)
        canvas.paste(Image.fromarray(colours), (x, caption))
        draw.text((x + 2, 3), f"{name}  sum {format_number(round(float(matrix.sum()), 6))}", fill=(0, 0, 0))
        if max(matrix.shape) <= LABEL_MAX_SIZE and cell >= 32:
            for (r, c), value in np.ndenumerate(matrix):
                dark = abs(value) > 0.6 * limit  # white text on the saturated cells
                draw.text((x + c * cell + cell // 2, caption + r * cell + cell // 2), f"{value:.3g}",
                          fill=(255, 255, 255) if dark else (0, 0, 0), anchor="mm")
        x += width + gap
    return canvas
