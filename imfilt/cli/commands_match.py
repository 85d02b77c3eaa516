"""`imfilt match`: find a template in images; the score maps are outputs, the matches --json."""

from typing import Annotated, Optional

import typer

from .batch import Batch, app, batch_command, choice_enum, run
from ..errors import InputError, UsageError
from ..image.io import load
from ..ops.match import MATCH_SIZES, Match

MatchSize = choice_enum("MatchSize", MATCH_SIZES)


def load_template(path: str, max_pixels: Optional[int] = None):
    """The template is part of the whole run: a bad one is exit 2, before any image is read."""
    if path == "-":
        raise UsageError("the template cannot be read from standard input: give its file")
    try:
        loaded = load(path, max_pixels=max_pixels)
    except InputError as exc:
        raise UsageError(f"template {exc}") from None
    return loaded.pixels[..., :-1] if loaded.alpha else loaded.pixels


@app.command("match")
@batch_command
def match(
    batch: Batch,
    template: Annotated[str, typer.Option("-t", "--template", metavar="IMAGE", help="The image to look for.",
                                          show_default=False)],
    size: Annotated[MatchSize, typer.Option(
        help="valid: one score per position where the template fits; same: the input's size, "
        "scores at the template's centre, 0 where it does not fit.")] = MatchSize.valid,
    top: Annotated[int, typer.Option(min=1, metavar="N", help="Report the N best matches, none within half "
                                     "a template of a better one.")] = 1,
    threshold: Annotated[Optional[float], typer.Option(min=-1, max=1, metavar="S", help="Report only matches "
                                                       "scoring at least S (-1..1).")] = None,
) -> None:
    """Find a template by normalized cross-correlation: a score map per input, matches with --json.

    The score is the correlation coefficient of the template and the window under it (-1..1,
    as OpenCV's TM_CCOEFF_NORMED): each channel minus its mean, summed over all channels. Flat
    windows score 0. Images show -1..1 as black..white; .npy holds the scores. --json gives
    each match's top-left row and col, its centre and its score, best first.

    Example:  imfilt match samples/chelsea.png -t eye.png --top 2 --json -o chelsea.match.png
    """
    pixels = load_template(template, batch.max_pixels)
    run(batch, [Match(pixels, template_name=template, size=size.value, top=top, threshold=threshold,
                      gray=batch.gray)], scale="auto", reads=(template,))
