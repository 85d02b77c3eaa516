"""The commands: each parses its own options into operations and hands them to cli.run."""

from typing import Annotated, Optional

import typer

from .batch import Batch, app, batch_command, choice_enum, run
from ..ops.convolution import METHODS, MODES, SIZES
from ..ops.frequency import PROFILES, WINDOWS, Lowpass, Spectrum
from ..image.io import SCALES
from ..ops.kernels import NORMALIZE, distinct_names, is_kernel_file, load_kernels
from ..ops.operations import ALPHA_MODES, Apply
from ..ops.orientation import OrientedSpectrum

# The choices come from the library, so a value is named once.
Boundary = choice_enum("Boundary", MODES)
Size = choice_enum("Size", SIZES)
Method = choice_enum("Method", METHODS)
Normalize = choice_enum("Normalize", NORMALIZE)
Scale = choice_enum("Scale", SCALES)
Alpha = choice_enum("Alpha", ALPHA_MODES)
Window = choice_enum("Window", WINDOWS)
Profile = choice_enum("Profile", PROFILES)


@app.command("apply")
@batch_command
def apply(
    batch: Batch,
    kernel: Annotated[list[str], typer.Option(
        "-k", "--kernel", metavar="KERNEL", help="Built-in name[:key=value,...], kernel file (.txt, .mat, .npy) or 'WxH: v,v,...'. "
        "Repeat for one feature map per kernel. A bank gives one map per kernel: .npy (N, kh, kw) per channel; "
        "a convolutional layer's (N, C, kh, kw) from .npy, .npz (weight, bias) or FILE.safetensors:TENSOR "
        "(its .bias added) sums over the C channels.", show_default=False)],
    correlate: Annotated[bool, typer.Option("--correlate", help="Cross-correlate (do not flip the kernel): "
                                            "PyTorch's conv2d numbers for a layer's weight.")] = False,
    boundary: Annotated[Boundary, typer.Option(help="How the image is extended past its border.")] = Boundary.reflect,
    cval: Annotated[float, typer.Option(metavar="VALUE", help="The value outside the image for --boundary constant.")] = 0.0,
    size: Annotated[Size, typer.Option(help="same: as the input; valid: where the kernel fits; full: every overlap.")] = Size.same,
    method: Annotated[Method, typer.Option(help="All give the same numbers; auto picks the fastest.")] = Method.auto,
    normalize: Annotated[Optional[Normalize], typer.Option(
        help="Divide the kernel by its sum, or softmax it.  [default: as the kernel file says, else none]")] = None,
    scale: Annotated[Scale, typer.Option(
        help="Float responses -> pixels. auto: clip, or abs for edge detectors (sum <= 0, gradient magnitudes).")] = Scale.auto,
    alpha: Annotated[Alpha, typer.Option(help="premultiply: no colour bleeds from under transparency.")] = Alpha.premultiply,
    split_channels: Annotated[bool, typer.Option("--split-channels", help="One grey file per colour channel ({channel} in --name).")] = False,
    montage: Annotated[Optional[str], typer.Option(
        metavar="PATH", help="Also one picture of all the feature maps of each input, in a near-square grid, each "
        "scaled as its own output (at most 8192 pixels a side); {stem} in it for several inputs.")] = None,
) -> None:
    """Convolve each colour channel with each kernel: one output per kernel.

    Example:  imfilt apply samples/chelsea.png -k sobel -o chelsea.sobel.png
    """
    kernels = [k for spec in kernel for k in load_kernels(spec)]  # bad kernels: exit 2 before any image
    if normalize is not None:
        kernels = [k.normalized(normalize.value) for k in kernels]
    kernels = distinct_names(kernels)  # two inline 3x3s: 3x3 and 3x3-2
    ops = [Apply(k, mode=boundary.value, cval=cval, size=size.value, method=method.value, correlate=correlate,
                 gray=batch.gray, alpha=alpha.value) for k in kernels]
    run(batch, ops, scale=scale.value, split_channels=split_channels,
        reads=tuple(spec for spec in kernel if is_kernel_file(spec)), montage=montage)




@app.command("spectrum")
@batch_command
def spectrum(
    batch: Batch,
    window: Annotated[Window, typer.Option(help="hann tapers the borders, removing the bright cross they cause.")] = Window.none,
    phase: Annotated[bool, typer.Option("--phase", help="Write the phase instead of the log-magnitude.")] = False,
    orientation: Annotated[bool, typer.Option("--orientation", help="Also find the dominant orientations: the direction "
                                              "of stripes and edges, degrees counter-clockwise from the x axis (y up), "
                                              "0-180, with a strength (--json: orientation).")] = False,
) -> None:
    """Write the centred log-magnitude spectrum log(1 + |F|) of each channel.

    Zero frequency sits at row H//2, column W//2. Images scale by the maximum over all
    channels; .npy holds the values themselves.

    Example:  imfilt spectrum samples/stripes-rotated.png -o rotated.spectrum.png --orientation
    """
    kind = OrientedSpectrum if orientation else Spectrum
    run(batch, [kind(window=window.value, phase=phase, gray=batch.gray)])


@app.command("lowpass")
@batch_command
def lowpass(
    batch: Batch,
    radius: Annotated[float, typer.Option("--radius", "-R", min=0, metavar="R", help="Radius in pixels of the spectrum picture.",
                                          show_default=False)],
    profile: Annotated[Profile, typer.Option(help="ideal: a sharp circle; gaussian and butterworth: soft edges.")] = Profile.ideal,
    order: Annotated[float, typer.Option(min=0.01, metavar="N", help="Order of the Butterworth profile.")] = 2.0,
    highpass: Annotated[bool, typer.Option("--highpass", help="Keep what is outside the circle instead.")] = False,
    band: Annotated[Optional[float], typer.Option(min=0, metavar="INNER", help="Inner radius: keep INNER < d <= RADIUS (band-pass).")] = None,
    mask_out: Annotated[Optional[str], typer.Option(
        metavar="PATH", help="Also write the mask as an image (white = kept); {stem} in it for several inputs.")] = None,
    scale: Annotated[Scale, typer.Option(
        help="Float results -> pixels. auto: clip, or offset (0 = mid-grey) for --highpass and --band.")] = Scale.auto,
) -> None:
    """Filter in the frequency domain: keep the frequencies inside a circle of --radius.

    Cutting the high frequencies is a blur; --json reports the fraction of coefficients kept.

    Example:  imfilt lowpass samples/astronaut.png --radius 30 -o astronaut.lowpass.png
    """
    run(batch, [Lowpass(radius, profile=profile.value, order=order, highpass=highpass, band=band, gray=batch.gray)],
        scale=scale.value, extras={"mask": mask_out})
