"""Kernels: a small checked dataclass, the built-in registry, and the parsers.

A kernel spec is a built-in name with optional parameters (``gaussian:sigma=2``), a file
(text, libvips ``.mat``, ``.npy``, ``.npz`` or ``.safetensors`` with a tensor name) or an inline
ImageMagick matrix (``"3x3: 0,-1,0,..."``). A 4-D bank (N, C, kh, kw), as PyTorch stores a Conv2d's
weight, gives N kernels that each sum their responses over the C input channels (plus a bias).
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
from dataclasses import dataclass, replace
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError, KernelError, shown
from ..files import file_size, npy_header, open_regular

NORMALIZE = ("none", "sum", "softmax")
F32_MAX = float(np.finfo(np.float32).max)
# taps per side of any kernel (built-in, file, inline, library): larger ones are surely a mistake,
# and are refused before they are parsed; a 4097x4097 kernel is already 134 MB of weights
MAX_KERNEL_SIDE = 4097
MAX_BUILTIN_SIZE = MAX_KERNEL_SIDE
# a text or libvips kernel file is read whole: larger kernels go in a .npy
MAX_KERNEL_FILE_BYTES = 64 * 2**20
# ... and holds at most this many lines (rows, headers, comments, blank ones): a file of 21 million
# short lines took 3.6 GB and 14 s to be split into lines before its rows were counted
MAX_KERNEL_FILE_LINES = 16 * MAX_KERNEL_SIDE
_LINE_ENDS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines splits


@dataclass(frozen=True, eq=False)
class Kernel:
    """A 2-D weight matrix, or a stack of them whose responses combine as a gradient magnitude or a sum.

    ``weights`` has shape (kh, kw), or (n, kh, kw) with ``magnitude=True``: the response is
    sqrt(sum_i (image * weights[i])²), as for ``sobel``; or (C, kh, kw) with ``summed=True``: one
    map, sum_c (image[c] * weights[c]) + bias, over the image's C channels (a convolutional layer's
    kernel, one row of a PyTorch Conv2d weight).
    """

    name: str
    weights: np.ndarray
    magnitude: bool = False
    summed: bool = False
    bias: float = 0.0

    def __post_init__(self):
        w = np.array(self.weights, dtype=np.float64)
        if w.ndim != (3 if self.magnitude or self.summed else 2) or w.size == 0:
            raise KernelError(f"kernel {self.name}: must be a non-empty 2-D matrix, got shape {w.shape}")
        if self.magnitude and self.summed:
            raise KernelError(f"kernel {self.name}: a gradient magnitude is not summed over channels")
        check_side(f"kernel {self.name}", w.shape[-2], w.shape[-1])
        if not np.isfinite(w).all() or not math.isfinite(self.bias):
            raise KernelError(f"kernel {self.name}: contains NaN or infinity")
        # Responses to pixels in [0, 1] are bounded by sum |w|: beyond float32's range they overflow.
        with np.errstate(over="ignore"):  # a sum past float64's range is inf, and refused: no warning
            largest = np.abs(w).reshape(-1, *w.shape[-2:]).sum(axis=(-2, -1)).max()
        if largest > F32_MAX:
            raise KernelError(f"kernel {self.name}: its values are too large for float32 work "
                              f"(sum of |w| over {F32_MAX:.3g})")
        w.flags.writeable = False
        object.__setattr__(self, "weights", w)

    @property
    def parts(self) -> tuple[np.ndarray, ...]:
        """What one correlation takes: each matrix of a magnitude, or the whole (C, kh, kw) of a summed kernel."""
        return tuple(self.weights) if self.magnitude else (self.weights,)

    @property
    def matrices(self) -> tuple[np.ndarray, ...]:
        """Every 2-D matrix of the kernel (a summed kernel's one per input channel)."""
        return tuple(self.weights.reshape(-1, *self.shape))

    @property
    def channels(self) -> int | None:
        """The input channels a summed kernel takes; None: any (each channel is filtered alone)."""
        return self.weights.shape[0] if self.summed else None

    @property
    def shape(self) -> tuple[int, int]:
        return self.weights.shape[-2:]

    @property
    def sum(self) -> float:
        return float(sum(part.sum() for part in self.parts))

    def normalized(self, how: str) -> Kernel:
        """sum: divide by the sum (refused when it is 0); softmax: a probability density."""
        if how == "none":
            return self
        if how == "sum":
            sums = [part.sum() for part in self.parts]
            if any(abs(s) < 1e-12 * max(1.0, np.abs(p).sum()) for s, p in zip(sums, self.parts)):
                raise KernelError(f"kernel {self.name}: its sum is 0, so it cannot be normalized by its sum")
            parts = [part / s for part, s in zip(self.parts, sums)]
        elif how == "softmax":
            parts = [np.exp(part - part.max()) / np.exp(part - part.max()).sum() for part in self.parts]
        else:
            raise KernelError(f"unknown normalization {how!r}: choose from {', '.join(NORMALIZE)}")
        # a summed kernel's sum and softmax span all its channels (its one part); the bias stays
        return replace(self, weights=np.array(parts if self.magnitude else parts[0]))


# --- built-in kernels: module constants from 1-D factors, and small factories -------------

_SMOOTH = np.array([1.0, 2.0, 1.0])
_DIFF = np.array([1.0, 0.0, -1.0])  # convolved (flipped), it responds + to a rising edge
SOBEL_X = np.outer(_SMOOTH, _DIFF)
SOBEL_Y = SOBEL_X.T
PREWITT_X = np.outer(np.ones(3), _DIFF)
SCHARR_X = np.outer([3.0, 10.0, 3.0], _DIFF)
SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=float)
LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=float)
EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=float)
OUTLINE = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=float)
IDENTITY = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=float)


def check_side(what: str, height: int, width: int) -> None:
    """The one limit on a kernel's size, checked from its header or spec before its values are read."""
    if max(height, width) > MAX_KERNEL_SIDE:
        raise KernelError(f"{what}: {width}x{height} is over the {MAX_KERNEL_SIDE} taps a side that kernels may have")


def box(size: int = 3) -> np.ndarray:
    """size x size ones normalized by 1/size²."""
    if not 1 <= size <= MAX_BUILTIN_SIZE or size != int(size):
        raise KernelError(f"box: size must be a whole number from 1 to {MAX_BUILTIN_SIZE}, got {size:g}")
    size = int(size)
    return np.full((size, size), 1.0 / size**2)


def gaussian(sigma: float = 1.0, truncate: float = 4.0) -> np.ndarray:
    """Normalized to sum 1 with radius int(truncate·sigma + 0.5), as scipy.ndimage.gaussian_filter."""
    if sigma <= 0:
        raise KernelError(f"gaussian: sigma must be > 0, got {sigma:g}")
    if truncate <= 0:
        raise KernelError(f"gaussian: truncate must be > 0, got {truncate:g}")
    reach = truncate * sigma + 0.5  # checked as a float first: sigma=1e308 would overflow int()
    if 2 * reach > MAX_BUILTIN_SIZE:
        raise KernelError(f"gaussian: sigma={sigma:g}, truncate={truncate:g} makes a kernel over the "
                          f"{MAX_BUILTIN_SIZE} taps a side that built-ins allow")
    radius = int(reach)
    x = np.arange(-radius, radius + 1)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g)


def _constant(matrix: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: matrix


def _gradient(x_kernel: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: np.stack([x_kernel, x_kernel.T])


# name -> (factory, is gradient magnitude, one-line description)
BUILTINS: dict[str, tuple[Callable[..., np.ndarray], bool, str]] = {
    "identity": (_constant(IDENTITY), False, "leaves the image unchanged"),
    "box": (box, False, "mean of a size x size window (size=3)"),
    "gaussian": (gaussian, False, "Gaussian blur (sigma=1, truncate=4), as scipy.ndimage"),
    "sharpen": (_constant(SHARPEN), False, "5 at the centre, -1 at the 4 neighbours"),
    "laplacian": (_constant(LAPLACIAN), False, "4-neighbour Laplacian (zero sum)"),
    "outline": (_constant(OUTLINE), False, "8-neighbour edge detector (zero sum)"),
    "emboss": (_constant(EMBOSS), False, "relief lit from the top left"),
    "sobel": (_gradient(SOBEL_X), True, "gradient magnitude sqrt(gx² + gy²) of the Sobel pair"),
    "sobel-x": (_constant(SOBEL_X), False, "horizontal derivative (+ where it gets brighter to the right)"),
    "sobel-y": (_constant(SOBEL_Y), False, "vertical derivative (+ where it gets brighter downwards)"),
    "prewitt": (_gradient(PREWITT_X), True, "gradient magnitude of the Prewitt pair"),
    "prewitt-x": (_constant(PREWITT_X), False, "horizontal Prewitt derivative"),
    "prewitt-y": (_constant(PREWITT_X.T), False, "vertical Prewitt derivative"),
    "scharr": (_gradient(SCHARR_X), True, "gradient magnitude of the Scharr pair"),
}


def builtin(name: str, **params: float) -> Kernel:
    if name not in BUILTINS:
        raise KernelError(f"unknown kernel {name!r}: choose from {', '.join(BUILTINS)}, a file, or 'WxH: v,v,...'")
    factory, magnitude, _ = BUILTINS[name]
    try:
        weights = factory(**params)
    except TypeError:
        raise KernelError(f"kernel {name}: unknown parameter in {sorted(params)}") from None
    label = name + "".join(f"-{k}{params[k]:g}" for k in sorted(params))
    return Kernel(label, weights, magnitude)


def _parse_params(name: str, text: str) -> dict[str, float]:
    params = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        try:
            number = float(value)
        except ValueError:
            raise KernelError(f"kernel {name}: parameter {item!r} should be key=number") from None
        if not eq or not key:
            raise KernelError(f"kernel {name}: parameter {item!r} should be key=number")
        if not np.isfinite(number):
            raise KernelError(f"kernel {name}: {key} must be a finite number, got {value.strip()}")
        if key in params:
            raise KernelError(f"kernel {name}: {key} is given twice")
        params[key] = number
    return params


def distinct_names(kernels: list[Kernel]) -> list[Kernel]:
    """Kernels that share a name (two inline 3x3s) get -2, -3, ... so their outputs differ."""
    counts: dict[str, int] = {}
    named = []
    for kernel in kernels:
        counts[kernel.name] = counts.get(kernel.name, 0) + 1
        if counts[kernel.name] > 1:
            kernel = replace(kernel, name=f"{kernel.name}-{counts[kernel.name]}")
        named.append(kernel)
    return named


# --- parsers -----------------------------------------------------------------------------

_INLINE = re.compile(r"^\s*(\d+)(?:x(\d+))?\s*:(.*)$", re.S)
_NUMBER_SPLIT = re.compile(r"[,\s]+")
_TOKEN = re.compile(r"[^,\s]+")


def _number(token: str, where: str | Callable[[], str]) -> float:
    """A number or a fraction (1/9); ``where`` (or what it returns: built only for an error) names it."""
    try:
        value = float(Fraction(token)) if "/" in token else float(token)
    except (ValueError, ZeroDivisionError):
        raise KernelError(f"{where() if callable(where) else where}: {_short(token)!r} is not a number") from None
    if not np.isfinite(value):
        raise KernelError(f"{where() if callable(where) else where}: {_short(token)!r} is not a finite number")
    return value


def _short(text: str, keep: int = 40) -> str:
    return text if len(text) <= keep + 20 else f"{text[:keep]}... ({len(text)} characters)"


def _side(digits: str, label: str) -> int:
    """A size from a spec (int() refuses 4300 digits: a size that long is refused before)."""
    if len(digits) > 9:
        raise KernelError(f"kernel {label}: a side of {len(digits)} digits is over the {MAX_KERNEL_SIDE} taps "
                          "a side that kernels may have")
    return int(digits)


def parse_inline(spec: str) -> Kernel:
    """ImageMagick's '3x3: 0,-1,0,-1,5,-1,0,-1,0' (or '3: ...' for a square); in time linear in its length."""
    match = _INLINE.match(spec)
    label = repr(_short(spec))
    width = _side(match.group(1), label)
    height = _side(match.group(2) or match.group(1), label)
    check_side(f"kernel {label}", height, width)  # before a value is read
    tokens = [t for t in _NUMBER_SPLIT.split(match.group(3).strip()) if t]
    if len(tokens) != width * height:
        raise KernelError(f"kernel {label}: {width}x{height} needs {width * height} values, got {len(tokens)}")
    values = [_number(t, lambda: f"kernel {label}, value {i + 1}") for i, t in enumerate(tokens)]
    return Kernel(f"{width}x{height}", np.array(values).reshape(height, width))


def _tokens(line: str) -> list[tuple[str, int]]:
    """(token, 1-based column) for each number on a line; one more than a kernel may have at most."""
    return [(m.group(), m.start() + 1) for m in islice(_TOKEN.finditer(line), MAX_KERNEL_SIDE + 1)]


def _read_text(path: Path) -> list[str]:
    try:
        with open_regular(path) as f:
            size = file_size(f)
            if size > MAX_KERNEL_FILE_BYTES:
                raise KernelError(f"{shown(path)}: {size} bytes is more than a text kernel file may hold "
                                  f"({MAX_KERNEL_FILE_BYTES // 2**20} MiB): give large kernels as .npy")
            data = f.read(MAX_KERNEL_FILE_BYTES + 1)
    except InputError as exc:
        raise KernelError(str(exc)) from None
    except OSError as exc:
        raise KernelError(f"{shown(path)}: cannot read ({exc.strerror or exc})") from None
    if b"\0" in data:
        raise KernelError(f"{shown(path)}: not a text kernel file (binary data)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise KernelError(f"{shown(path)}: not a text kernel file (not UTF-8)") from None
    lines = sum(map(text.count, _LINE_ENDS)) - text.count("\r\n")  # counted in C, before a line is made
    if lines > MAX_KERNEL_FILE_LINES:
        raise KernelError(f"{shown(path)}: {lines} lines is more than a text kernel file may have "
                          f"({MAX_KERNEL_FILE_LINES}): give large kernels as .npy")
    return text.splitlines()  # handles CRLF


def _matrix_rows(path: Path, numbered: list[tuple[int, str]]) -> np.ndarray:
    """Rows of numbers -> matrix; errors name the line and column."""
    if len(numbered) > MAX_KERNEL_SIDE:
        raise KernelError(f"{shown(path)}: {len(numbered)} rows is over the {MAX_KERNEL_SIDE} taps a side that kernels may have")
    plain = _plain_matrix([line for _, line in numbered]) if numbered else None
    if plain is not None:
        return plain
    rows, width = [], None
    for lineno, line in numbered:
        tokens = _tokens(line)
        if len(tokens) > MAX_KERNEL_SIDE:
            raise KernelError(f"{shown(path)}:{lineno}: more than the {MAX_KERNEL_SIDE} taps a side that kernels may have")
        row = [_number(tok, f"{shown(path)}:{lineno}:{col}") for tok, col in tokens]
        if width is not None and len(row) != width:
            raise KernelError(f"{shown(path)}:{lineno}: row has {len(row)} values, the rows above have {width}")
        width = len(row)
        rows.append(row)
    if not rows:
        raise KernelError(f"{shown(path)}: no kernel matrix in the file")
    return np.array(rows)


def _plain_matrix(lines: list[str]) -> np.ndarray | None:
    """Rows of plain finite numbers parsed by numpy's own reader in one call (a 3000x3000 file: 19 s
    token by token, under 2 s so); None for anything else (a fraction, a bad or non-finite value,
    rows of different widths, too many taps), which ``_matrix_rows`` reads token by token to say where."""
    if any("/" in line or sum(map(line.count, " ,\t")) >= MAX_KERNEL_SIDE for line in lines):
        return None  # (fewer separators than that: fewer taps than the limit on the line)
    try:
        matrix = np.loadtxt(io.StringIO("\n".join(lines).replace(",", " ")), dtype=np.float64, ndmin=2,
                            comments=None)
    except ValueError:
        return None
    if matrix.shape[0] != len(lines) or matrix.shape[1] > MAX_KERNEL_SIDE or not np.isfinite(matrix).all():
        return None
    return matrix


def parse_text(path: Path) -> Kernel:
    """The kernels/*.txt format: optional `key: value` headers, then rows of numbers."""
    headers: dict[str, str] = {}
    body: list[tuple[int, str]] = []
    ended_block = False
    for lineno, raw in enumerate(_read_text(path), start=1):
        line = raw.split("#", 1)[0].rstrip()  # leading space kept: columns count from the line's start
        if not line.strip():
            ended_block = bool(body)
            continue
        key, colon, value = line.strip().partition(":")
        if colon and re.fullmatch(r"[A-Za-z_][\w-]*", key.strip()):
            if body:
                raise KernelError(f"{shown(path)}:{lineno}:1: header line after the matrix")
            if key.strip().lower() not in ("name", "scale", "normalize"):
                raise KernelError(f"{shown(path)}:{lineno}:1: unknown header {key.strip()!r} (name, scale, normalize)")
            headers[key.strip().lower()] = value.strip()
            continue
        if ended_block:
            raise KernelError(f"{shown(path)}:{lineno}:1: a second matrix block; one kernel per file")
        body.append((lineno, line))
    weights = _matrix_rows(path, body)
    if "scale" in headers:
        weights = weights * _number(headers["scale"], f"{shown(path)}: scale")
    kernel = Kernel(headers.get("name", path.stem), weights)
    normalize = headers.get("normalize", "none")
    if normalize not in NORMALIZE:
        raise KernelError(f"{shown(path)}: normalize: {normalize!r} is not one of {', '.join(NORMALIZE)}")
    return kernel.normalized(normalize)


def parse_vips(path: Path) -> Kernel:
    """libvips matrix file: first line `width height [scale [offset]]`, then the rows."""
    numbered = [(n, l.split("#", 1)[0].rstrip()) for n, l in enumerate(_read_text(path), start=1)]
    numbered = [(n, l) for n, l in numbered if l.strip()]
    if not numbered:
        raise KernelError(f"{shown(path)}: empty matrix file")
    lineno, header = numbered[0]
    fields = [_number(tok, f"{shown(path)}:{lineno}:{col}") for tok, col in _tokens(header)]
    if not 2 <= len(fields) <= 4 or fields[0] != int(fields[0]) or fields[1] != int(fields[1]):
        raise KernelError(f"{shown(path)}:{lineno}: libvips header should be 'width height [scale [offset]]'")
    width, height = int(fields[0]), int(fields[1])
    check_side(f"{shown(path)}:{lineno}", height, width)  # before the rows are read
    scale = fields[2] if len(fields) > 2 else 1.0
    if len(fields) > 3 and fields[3] != 0:
        raise KernelError(f"{shown(path)}:{lineno}: a matrix offset is not supported; use --scale offset")
    if scale == 0:
        raise KernelError(f"{shown(path)}:{lineno}: scale must not be 0")
    weights = _matrix_rows(path, numbered[1:])
    if weights.shape != (height, width):
        raise KernelError(f"{shown(path)}: header says {width}x{height}, the matrix is {weights.shape[1]}x{weights.shape[0]}")
    return Kernel(path.stem, weights / scale)


def is_kernel_file(spec: str) -> bool:
    """Whether a -k spec names a file (a spec can be longer than a path may be).

    A FIFO or a device counts (reading it is refused in one line); a folder does not.
    """
    try:
        return not _INLINE.match(spec) and not stat.S_ISDIR(os.stat(spec).st_mode)
    except (OSError, ValueError):  # e.g. ENAMETOOLONG, or a NUL in the spec
        return False


ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors")
_LISTED = 8  # a missing tensor's message lists the file's first few names


def _split_tensor(spec: str) -> tuple[str, str | None]:
    """'model.safetensors:features.0.weight' -> (file, tensor name); a name is optional."""
    for suffix in ARRAY_SUFFIXES:
        head, sep, name = spec.rpartition(suffix + ":")
        if sep and name and not Path(spec).is_file():
            return head + suffix, name
    return spec, None


def load_kernels(spec: str) -> list[Kernel]:
    """A spec -> kernels: one, or N for a bank: (N, kh, kw) filters each channel, a 4-D
    (N, C, kh, kw) bank (.npy, .npz's ``weight``, a .safetensors tensor) sums over C channels."""
    if not spec.strip():
        raise KernelError("-k: an empty kernel; give a built-in name, a kernel file or 'WxH: v,v,...'")
    if _INLINE.match(spec):
        return [parse_inline(spec)]
    spec, tensor = _split_tensor(spec)
    path = Path(spec)
    if path.suffix.lower() in ARRAY_SUFFIXES or is_kernel_file(spec):
        if not is_kernel_file(spec):
            raise KernelError(f"{shown(path)}: no such kernel file")
        try:
            if path.suffix.lower() in ARRAY_SUFFIXES:
                return _load_array_file(path, tensor)
            if path.suffix.lower() == ".mat":  # never sniffed: a .txt is always imfilt's own format
                return [parse_vips(path)]
            return [parse_text(path)]
        except KernelError as exc:  # e.g. a matrix too large for float32: the message names the file
            raise exc if str(exc).startswith(shown(path)) else KernelError(f"{shown(path)}: {exc}") from None
    name, _, params = spec.partition(":")
    if name not in BUILTINS and ("/" in spec or "." in name):
        raise KernelError(f"{shown(spec)}: no such kernel file")
    return [builtin(name, **_parse_params(name, params))]


def _load_array_file(path: Path, tensor: str | None) -> list[Kernel]:
    suffix = path.suffix.lower()
    if tensor is not None and suffix != ".safetensors":
        raise KernelError(f"{shown(path)}: only a .safetensors file takes a tensor name (':{tensor}')")
    if suffix == ".npy":
        return _bank(path, _load_npy(path), None, path.stem)
    if suffix == ".npz":
        weight, bias = _load_npz(path)
        return _bank(path, weight, bias, path.stem)
    weight, bias, base = _load_safetensors(path, tensor)
    return _bank(path, weight, bias, base)


def _load_npy(path: Path) -> np.ndarray:
    """Its header is checked first (real numbers, at most 4097 taps a side, as many bytes as it
    says): a header that claims a huge shape is refused, not allocated."""
    try:
        with open_regular(path) as f:
            npy_header(f, lambda shape, dtype: _check_npy_kernel(path, shape, dtype))
            f.seek(0)
            return np.load(f, allow_pickle=False)
    except KernelError:
        raise
    except InputError as exc:
        raise KernelError(str(exc)) from None
    except (ValueError, OSError, EOFError) as exc:
        raise KernelError(f"{shown(path)}: not a readable .npy array ({exc})") from None


def _check_npy_kernel(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise KernelError(f"{shown(path)}: a kernel must hold real numbers, got {dtype}")
    if len(shape) in (2, 3, 4):
        check_side(shown(path), *shape[-2:])


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An .npz with ``weight`` and, optionally, ``bias`` (np.savez(f, weight=w, bias=b)).

    Each array's header is checked as a .npy's is (real numbers, 4097 taps a side) and against
    what its member of the archive can hold, then exactly its bytes are read: np.load allocated
    the shape a header claimed before reading a byte (a 310-byte file asked for 125 GiB).
    """
    import zipfile

    try:
        with open_regular(path) as f, zipfile.ZipFile(f) as archive:
            names = [n.removesuffix(".npy") for n in archive.namelist()]
            if "weight" not in names:
                raise KernelError(f"{shown(path)}: no array 'weight' in the .npz; it has {_listed(names)}")
            weight = _npz_member(path, archive, "weight.npy")
            return weight, _npz_member(path, archive, "bias.npy") if "bias" in names else None
    except KernelError:
        raise
    except InputError as exc:
        raise KernelError(str(exc)) from None
    except (ValueError, OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile) as exc:
        raise KernelError(f"{shown(path)}: not a readable .npz of arrays ({exc})") from None


_DEFLATE_RATIO = 1032  # the most a deflate stream inflates to, per byte


def _npz_member(path: Path, archive, name: str) -> np.ndarray:
    """One array of an .npz: its header checked, then its bytes read, no more than the member holds."""
    import zipfile

    info = archive.getinfo(name)
    most = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_RATIO)
    with archive.open(info) as member:
        shape, dtype, fortran = npy_header(member, lambda shape, dtype: _check_npy_kernel(path, shape, dtype),
                                           size=min(info.file_size, most))
        count = int(np.prod(shape, dtype=object))
        data = member.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise KernelError(f"{shown(path)}: {name}'s header says {count * dtype.itemsize} bytes, it holds {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _listed(names: list[str]) -> str:
    listed = ", ".join(repr(n) for n in names[:_LISTED])
    return (listed + f" ... ({len(names)} in all)" if len(names) > _LISTED else listed) or "no arrays"


def _load_safetensors(path: Path, tensor: str | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The tensor ``tensor`` (or the file's only ``*weight``), its ``*bias`` when present, and a name."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            names = sorted(f.keys())
            if tensor is None:
                weights = [n for n in names if n.rsplit(".", 1)[-1] == "weight"] or names
                if len(weights) != 1:
                    raise KernelError(f"{shown(path)}: name the tensor, e.g. -k {path}:{weights[0] if weights else 'NAME'}; "
                                      f"it has {_listed(names)}")
                tensor = weights[0]
            if tensor not in names:
                raise KernelError(f"{shown(path)}: no tensor {tensor!r}; it has {_listed(names)}")
            bias_name = tensor[: -len("weight")] + "bias" if tensor.endswith("weight") else None
            weight = _tensor(f, path, tensor)
            bias = _tensor(f, path, bias_name) if bias_name in names else None
    except SafetensorError as exc:
        raise KernelError(f"{shown(path)}: not a readable .safetensors file ({exc})") from None
    except OSError as exc:
        raise KernelError(f"{shown(path)}: cannot read ({exc.strerror or exc})") from None
    label = tensor.removesuffix("weight").rstrip("._-")
    return weight, bias, f"{path.stem}.{label}" if label else path.stem


def _tensor(f, path: Path, name: str) -> np.ndarray:
    if f.get_slice(name).get_dtype() == "BF16":  # numpy has no bfloat16
        raise KernelError(f"{shown(path)}: tensor {name!r} is bfloat16, which numpy cannot hold; save it as float32")
    return f.get_tensor(name)


def _bank(path: Path, array: np.ndarray, bias: np.ndarray | None, base: str) -> list[Kernel]:
    """An array -> kernels: (kh, kw) one; (N, kh, kw) N, each per channel; (N, C, kh, kw) N summed."""
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise KernelError(f"{shown(path)}: a kernel must hold real numbers, got {array.dtype}")
    if array.ndim not in (2, 3, 4):
        raise KernelError(f"{shown(path)}: a kernel must be 2-D (kh, kw), a bank (N, kh, kw) or a convolutional layer's "
                          f"(N, C, kh, kw), got shape {array.shape}")
    if 0 in array.shape:
        raise KernelError(f"{shown(path)}: an empty kernel{' bank' if array.ndim > 2 else ''}, shape {array.shape}")
    if bias is not None:
        if array.ndim != 4:
            raise KernelError(f"{shown(path)}: a bias goes with a 4-D weight (N, C, kh, kw), not shape {array.shape}")
        if np.shape(bias) != array.shape[:1] or not np.issubdtype(bias.dtype, np.number) or np.iscomplexobj(bias):
            raise KernelError(f"{shown(path)}: the bias must hold {array.shape[0]} real numbers (one per kernel), "
                              f"got shape {np.shape(bias)} of {bias.dtype}")
    if array.ndim == 2:
        return [Kernel(base, array)]
    sep = "-" if base[-1:].isdigit() else ""
    if array.ndim == 3:
        return [Kernel(f"{base}{sep}{i}", k) for i, k in enumerate(array)]
    biases = np.zeros(len(array)) if bias is None else np.asarray(bias, dtype=np.float64)
    return [Kernel(f"{base}{sep}{i}", k, summed=True, bias=float(b)) for i, (k, b) in enumerate(zip(array, biases))]


def load_kernel(spec: str) -> Kernel:
    """One kernel from a built-in name, a file or an inline matrix."""
    kernels = load_kernels(spec)
    if len(kernels) != 1:
        raise KernelError(f"{shown(spec)}: holds a bank of {len(kernels)} kernels; use load_kernels")
    return kernels[0]
