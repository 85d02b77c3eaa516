"""The library's own errors; only the CLI turns them into messages and exit codes.

Messages name files through ``shown``, so that a name cannot break a line or reach the
terminal's escape sequences.
"""

import os

import numpy as np


class ImfiltError(Exception):
    """Base class: the message is one line a user can act on."""


class UsageError(ImfiltError, ValueError):
    """A bad option value, kernel or argument: nothing is processed (exit 2).

    A ValueError, as scipy's and scikit-image's errors for bad arguments are, so code that
    catches those catches imfilt's.
    """


class KernelError(UsageError):
    """A kernel that cannot be read or used; the message names the file, line and column."""


class InputError(ImfiltError):
    """One input that cannot be read or written: the rest of a batch goes on (exit 1)."""


class EngineUnavailable(UsageError):
    """The requested engine cannot run on this machine."""


class LostCluster(ImfiltError):
    """The Dask scheduler went away in the middle of a run: the run ends there (exit 1)."""


class Stopped(ImfiltError):
    """On a Dask worker: the client that sent this job was interrupted, so the job ends unwritten."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, or a signal that asks a program to end (SIGTERM from kill, timeout or a job scheduler)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def check_image(image, what: str = "image"):
    """An image as the library takes it: real numbers, (H, W) or (H, W, C), with pixels.

    The one check at the top of every function of the API that takes an image, so that every
    method and engine refuses the same arrays with the same UsageError (a ValueError).
    """
    array = image if hasattr(image, "ndim") and hasattr(image, "dtype") else np.asarray(image)  # a GPU array stays
    if array.ndim not in (2, 3):
        raise UsageError(f"{what} must be an (H, W) or (H, W, C) array, got shape {array.shape}")
    if np.dtype(array.dtype).kind not in "buif":
        raise UsageError(f"{what} must hold real numbers, got {array.dtype}")
    if array.size == 0:
        raise UsageError(f"{what} is empty: shape {array.shape}")
    return array


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """The one check for every option with a fixed set of values."""
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def one_line(text: str) -> str:
    """A message as one line of printable text: a character that does not print (in a library's own
    words about a file, say) is escaped as repr escapes it. The last guard before stderr."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(name) -> str:
    """A file name (or any text a user gave) as messages show it: as it is when every character
    prints, else as Python's repr (quoted, with \\n, \\x1b, \\udcff for a byte that is not UTF-8).

    So one message is always one line, a name cannot forge a second one, and no escape sequence
    reaches the terminal. repr's result prints, so showing a shown name changes nothing.
    """
    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    name = str(name)
    return name if name.isprintable() else repr(name)
