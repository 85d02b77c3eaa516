"""`imfilt learn` and `imfilt deconvolve`: the convolution theorem run backwards.

learn finds the kernel behind a filtered image (a kernel file out, its fit as --json); deconvolve
is a batch command like apply, undoing a known blur.
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .batch import Batch, Engine, app, batch_command, choice_enum, err, run
from .commands import Boundary, Normalize, Scale
from ..ops.deconvolve import METHODS, Deconvolve
from ..engine.engine import auto_engine, get_engine
from ..errors import InputError, UsageError, shown
from ..image.io import atomic_write, load
from ..ops.kernel_view import facts, kernel_file
from ..ops.kernels import Kernel, distinct_names, is_kernel_file, load_kernels
from ..ops.learn import check_pair, clipped, learn_kernel, parse_kernel_size
from ..ops.operations import luminance

DeconvolveMethod = choice_enum("DeconvolveMethod", METHODS)
LEARNED_FORMATS = ("txt", "mat", "npy")  # one 2-D kernel


def _read(path: str, what: str, max_pixels: Optional[int], gray: bool):
    """An image of the pair, its alpha dropped, and its clipped samples (None for float images):
    a bad one is exit 2, before any fitting. With --gray a pixel is clipped where any channel is."""
    if path == "-":
        raise UsageError(f"the {what} cannot be read from standard input: give its file")
    try:
        loaded = load(path, max_pixels=max_pixels)
    except InputError as exc:
        raise UsageError(f"{what} {exc}") from None
    pixels = loaded.pixels[..., :-1] if loaded.alpha else loaded.pixels
    cut = clipped(pixels, loaded.depth)
    if gray:
        pixels = luminance(pixels)
        cut = None if cut is None else cut.any(axis=-1, keepdims=True)
    return pixels, cut


def _kernel_format(output: str, overwrite: bool, json_: bool, sources: tuple[str, ...]) -> str:
    if output == "-":
        if json_:
            raise UsageError("--json and -o - both write to standard output: choose one")
        return "txt"
    kind = Path(output).suffix.lower().lstrip(".")
    if kind not in LEARNED_FORMATS:
        raise UsageError(f"{shown(output)}: a learned kernel is written as a kernel file: .txt, .mat or .npy")
    if any(os.path.exists(s) and os.path.exists(output) and os.path.samefile(s, output) for s in sources):
        raise UsageError(f"{shown(output)} is one of the images: not overwritten")
    if os.path.exists(output) and not overwrite:
        raise UsageError(f"{shown(output)}: exists; use --overwrite to replace it")
    return kind


@app.command("learn")
def learn(
    input: Annotated[str, typer.Argument(metavar="INPUT", show_default=False, hidden=True)],  # in the help text:
    target: Annotated[str, typer.Argument(metavar="TARGET", show_default=False, hidden=True)],  # typer prints <str>
    size: Annotated[str, typer.Option("--size", "-s", metavar="N|HxW", help="Kernel size: N (square) or rows x "
                                      "columns, e.g. 3x5.", show_default=False)],
    output: Annotated[str, typer.Option("-o", "--output", metavar="KERNEL", help="Kernel file to write (.txt, .mat, "
                                        ".npy); - prints it.", show_default=False)],
    correlate: Annotated[bool, typer.Option("--correlate", help="Learn the kernel as apply --correlate uses it.")] = False,
    boundary: Annotated[Boundary, typer.Option(help="The boundary mode apply will use (it matters at the edges "
                                               "of a same-size target).")] = Boundary.reflect,
    cval: Annotated[float, typer.Option(metavar="VALUE", help="The value outside the image for --boundary constant.")] = 0.0,
    ridge: Annotated[float, typer.Option(min=0, metavar="λ", help="Tikhonov regularization: minimize mean(residual²) "
                                         "+ λ·sum(K²); for flat images or kernels wider than the image's detail.")] = 0.0,
    gray: Annotated[bool, typer.Option("--gray", help="Fit the luminance (ITU-R 601) of both images.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="The fit as one JSON object on standard output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing kernel file.")] = False,
    engine: Annotated[Engine, typer.Option(help="auto uses the GPU when cupy and a CUDA device are present.")] = Engine.cpu,
    max_pixels: Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Raise the decompression-bomb limit (pixels).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Learn the kernel K for which 'imfilt apply INPUT -k K' comes closest to TARGET (least squares).

    One kernel for all channels, in the units apply reads pixels (0..1). Target samples at 0 or
    the maximum of an 8- or 16-bit target are left out (clipping hid their value). A target that
    is no convolution is fitted all the same: --json reports rmse (in 8-bit levels) and r2.

    INPUT: the image before filtering. TARGET: the same image filtered, of the input's size or
    the valid size (H-kh+1)x(W-kw+1).

    Example:  imfilt learn photo.png photo.sharpened.png --size 3 -o sharpen.txt --json
    """
    start = time.perf_counter()
    try:
        shape = parse_kernel_size(size)
        kind = _kernel_format(output, overwrite, json_, (input, target))
        if engine.value != "auto":
            get_engine(engine.value)  # no GPU: exit 2 before any image is read
        image, _ = _read(input, "input", max_pixels, gray)
        goal, cut = _read(target, "target", max_pixels, gray)
        check_pair(image.shape, goal.shape, shape)  # mismatched sizes: exit 2, before any fitting
        # learn is FFT work: auto takes the GPU where FFTs were measured faster on it
        chosen = auto_engine("fft", image.shape[0] * image.shape[1]) if engine.value == "auto" else get_engine(engine.value)
    except UsageError as exc:
        _fail(exc, debug, 2)
    try:
        fit = learn_kernel(image, goal, shape, correlate=correlate, mode=boundary.value, cval=cval, ridge=ridge,
                           left_out=cut, engine=chosen)
        kernel = Kernel("learned" if output == "-" else Path(output).stem, fit.kernel)
        data = kernel_file([kernel], kind)
        if output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            atomic_write(output, lambda f: f.write(data))
    except (InputError, UsageError) as exc:
        _fail(exc, debug, 1)
    about = facts(kernel)
    record = {"input": input, "target": target, "kernel": output, "size": list(shape),
              "rmse": round(fit.rmse * 255, 6), "r2": None if fit.r2 is None else round(fit.r2, 9),
              "clipped": round(fit.left_out, 6), "sum": about["sum"], "rank": about["rank"],
              "method": about["auto_method"], "seconds": round(time.perf_counter() - start, 4)}
    if json_:
        print(json.dumps(record, ensure_ascii=False))
    elif not quiet:
        r2 = "-" if fit.r2 is None else f"{fit.r2:.6f}"
        err.print(f"imfilt: learned a {shape[0]}x{shape[1]} kernel (sum {about['sum']:.6g}, rank {about['rank']}): "
                  f"rmse {record['rmse']:.4g} levels of 255, r2 {r2}, {100 * fit.left_out:.2f}% left out as clipped"
                  + ("" if output == "-" else f" -> {output}"), markup=False)


def _fail(exc: Exception, debug: bool, code: int):
    if debug:
        raise exc
    err.print(f"imfilt: {exc}", markup=False)
    raise typer.Exit(code)


@app.command("deconvolve")
@batch_command
def deconvolve(
    batch: Batch,
    kernel: Annotated[list[str], typer.Option(
        "-k", "--kernel", metavar="KERNEL", help="The blur: a built-in name[:key=value,...], kernel file (one "
        "'imfilt learn' wrote, too) or 'WxH: v,v,...'. Repeat for one output per kernel.", show_default=False)],
    method: Annotated[DeconvolveMethod, typer.Option(
        help="wiener: X = conj(H)·Y / (|H|² + balance); richardson-lucy: iterations of x·K'(y / K(x)).")]
        = DeconvolveMethod.wiener,
    balance: Annotated[float, typer.Option(metavar="B", help="wiener: the noise-to-signal power ratio; larger "
                                           "amplifies noise less.")] = 0.01,
    iterations: Annotated[int, typer.Option(min=1, metavar="N", help="richardson-lucy: the number of iterations.")] = 30,
    correlate: Annotated[bool, typer.Option("--correlate", help="The blur was apply --correlate with this kernel.")] = False,
    boundary: Annotated[Boundary, typer.Option(help="How the blur extended the image past its border.")] = Boundary.reflect,
    cval: Annotated[float, typer.Option(metavar="VALUE", help="The value outside the image for --boundary constant.")] = 0.0,
    normalize: Annotated[Optional[Normalize], typer.Option(
        help="Divide the kernel by its sum, or softmax it.  [default: as the kernel file says, else none]")] = None,
    scale: Annotated[Scale, typer.Option(help="Float results -> pixels; auto = clip (ringing can pass 0 and 1).")] = Scale.auto,
) -> None:
    """Undo a known blur: each channel deconvolved by the kernel (alpha is carried through).

    The image is extended by --boundary as the blur extended it, so its borders do not ring:
    wiener pads the image by reflection (or as --boundary says) before the FFT and crops after;
    richardson-lucy runs apply's own convolutions with that boundary. .npy keeps float results.

    Example:  imfilt deconvolve blurred.png -k gaussian:sigma=2 --method richardson-lucy -o sharp.png
    """
    kernels = [k for spec in kernel for k in load_kernels(spec)]  # bad kernels: exit 2 before any image
    if normalize is not None:
        kernels = [k.normalized(normalize.value) for k in kernels]
    kernels = distinct_names(kernels)
    ops = [Deconvolve(k, method=method.value, balance=balance, iterations=iterations, mode=boundary.value, cval=cval,
                      correlate=correlate, gray=batch.gray) for k in kernels]
    run(batch, ops, scale=scale.value, reads=tuple(spec for spec in kernel if is_kernel_file(spec)))

