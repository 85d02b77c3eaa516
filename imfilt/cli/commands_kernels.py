"""`imfilt kernels`: list the built-ins, show one kernel as apply uses it, draw it, write it."""

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .batch import app, choice_enum, say
from .commands import Normalize
from ..errors import InputError, UsageError, shown
from ..image.io import atomic_write
from ..ops.kernel_view import KERNEL_FORMATS, builtin_rows, facts, format_number, kernel_file, matrix_text, oriented, picture
from ..ops.kernels import load_kernels

KernelFormat = choice_enum("KernelFormat", KERNEL_FORMATS)
kernels_app = typer.Typer(invoke_without_command=True, no_args_is_help=False, rich_markup_mode=None)
app.add_typer(kernels_app, name="kernels")


def _fail(exc: Exception, debug: bool):
    if debug:
        raise exc
    say(f"imfilt: {exc}")
    raise typer.Exit(2)


@kernels_app.callback()
def kernels(ctx: typer.Context,
            json_: Annotated[bool, typer.Option("--json", help="One JSON object per kernel.")] = False) -> None:
    """List the built-in kernels, or show one: matrix, sum, rank, anchor; a picture; a file.

    The list gives parameters and defaults, size, sum, separability and the method --method auto
    runs (the choice depends on the kernel only, so it holds for a 4096x4096 image too).

    Example:  imfilt kernels show gaussian:sigma=2 -o gaussian.png
    """
    if ctx.invoked_subcommand is None:
        list_(json_)


@kernels_app.command("list")
def list_(json_: Annotated[bool, typer.Option("--json", help="One JSON object per kernel.")] = False) -> None:
    """List the built-in kernels (the same as plain 'imfilt kernels')."""
    rows = builtin_rows()
    if json_:
        for row in rows:
            print(json.dumps(row))
        return
    table = [["name", "parameters", "WxH", "sum", "separable", "auto", "what it does"]]
    for row in rows:
        params = ",".join(f"{k}={v:g}" for k, v in row["params"].items()) or "-"
        total = row["sum"] if not row["magnitude"] else "/".join(f"{s:g}" for s in row["sum"])
        table.append([row["name"], params, "x".join(map(str, row["shape"][::-1])), f"{total:g}" if isinstance(total, float) else total,
                      "yes" if row["separable"] else "no", row["auto_method"], row["description"]])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@kernels_app.command("show")
def show(
    kernel: Annotated[str, typer.Argument(metavar="KERNEL", show_default=False, hidden=True)],  # in the help text:
    # typer would print its type
    normalize: Annotated[Optional[Normalize], typer.Option(
        help="As apply's --normalize: divide by the sum, or softmax into a probability density.")] = None,
    flipped: Annotated[bool, typer.Option("--flipped", help="Show the kernel turned 180°: what a true convolution "
                                          "multiplies each neighbour by (apply without --correlate).")] = False,
    output: Annotated[Optional[str], typer.Option("-o", "--output", metavar="PATH", help="Write a picture (.png) or a "
                                                  "kernel file (.txt, .mat, .npy, .npz; - = standard output).")] = None,
    format: Annotated[Optional[KernelFormat], typer.Option(help="Kernel file format for -o.  [default: from its extension]")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="The facts and matrix as one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing (with -o).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Show a kernel as apply uses it (after its file's headers, scale and --normalize): the
    matrix, its sum, rank and anchor; draw it (-o k.png) or write it as a kernel file.

    KERNEL: a built-in name[:key=value,...], a kernel file (.txt, .mat, .npy, .npz, FILE.safetensors:TENSOR) or
    'WxH: v,v,...'. A convolutional layer's (N, C, kh, kw) is drawn as a grid: a row per kernel, a column per channel.

    Example:  imfilt kernels show sobel-x --flipped;  imfilt kernels show box:size=5 -o box5.txt
    """
    try:
        kernels = load_kernels(kernel)
        if normalize is not None:
            kernels = [k.normalized(normalize.value) for k in kernels]
        target = _output_kind(output, format, overwrite)
    except UsageError as exc:
        _fail(exc, debug)
    views = [oriented(k, flipped) for k in kernels]
    if json_:
        for k, view in zip(kernels, views):
            matrices = [m.tolist() for m in view.parts]
            print(json.dumps({**facts(k, flipped), "matrix": matrices if k.magnitude else matrices[0]}))
    elif output != "-" and not quiet:
        for k, view in zip(kernels, views):
            _print_kernel(k, view, flipped, normalize.value if normalize else None)
    if output is not None:
        try:
            data = _png(picture(views)) if target == "png" else kernel_file(views, target)
        except UsageError as exc:
            _fail(exc, debug)
        try:
            if output == "-":
                sys.stdout.buffer.write(data)
            else:
                atomic_write(output, lambda f: f.write(data))
        except InputError as exc:  # a folder that is not there, a full disk: one line
            if debug:
                raise
            say(f"imfilt: {exc}")
            raise typer.Exit(1) from None


def _output_kind(output: Optional[str], format, overwrite: bool) -> Optional[str]:
    if output is None:
        if format is not None:
            raise UsageError("--format says how to write -o FILE: give -o too")
        return None
    suffix = "" if output == "-" else Path(output).suffix.lower().lstrip(".")
    kind = format.value if format is not None else suffix
    if kind not in KERNEL_FORMATS + ("png",):
        raise UsageError(f"{shown(output)}: write a picture (.png) or a kernel file (.txt, .mat, .npy, .npz), or give --format")
    if output == "-" and kind == "png" or (output == "-" and kind in ("npy", "npz") and sys.stdout.isatty()):
        raise UsageError("refusing to write binary data to a terminal: use -o FILE or redirect standard output")
    if output != "-" and Path(output).exists() and not overwrite:
        raise UsageError(f"{shown(output)}: exists; use --overwrite to replace it")
    return kind


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _print_kernel(kernel, view, flipped: bool, normalize: Optional[str]) -> None:
    f = facts(kernel, flipped)
    what = f"gradient magnitude sqrt({' + '.join(f'g{i}²' for i in range(len(kernel.parts)))}) of" if kernel.magnitude else ""
    if kernel.summed:
        what = f"x {kernel.channels} input channels, summed, plus bias {format_number(kernel.bias)}"
    turned = " (flipped: as a convolution multiplies)" if flipped else ""
    print(f"{shown(kernel.name)}: {f['shape'][1]}x{f['shape'][0]} (WxH) {what}".rstrip() + turned)
    for i, matrix in enumerate(view.matrices):
        if kernel.magnitude or kernel.summed:
            print(f"{'g' if kernel.magnitude else 'channel '}{i}:")
        print(matrix_text(matrix))
    print(f"sum {f['sum']}, rank {f['rank']}{' (separable)' if f['separable'] else ''}, "
          f"anchor row {f['anchor'][0]} col {f['anchor'][1]}, --method auto: {f['auto_method']}")
    if normalize == "softmax":
        print("softmax: a probability density (every weight > 0, they sum to 1) - the propagator: "
              "each pixel becomes the expected value of a neighbour drawn with these probabilities")
