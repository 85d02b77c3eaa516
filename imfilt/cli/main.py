"""The command line: the console entry point, and the Typer app with every command registered.

``imfilt --version`` is answered before the app is built: it needs none of the libraries.
"""

import sys

from .. import __version__

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point."""
    if sys.argv[1:] == ["--version"]:  # what the app's own --version prints, without importing it
        print(f"imfilt {__version__}")
        return
    _app()()


def _app():
    from . import commands, commands_kernels, commands_learn, commands_match  # noqa: F401  (importing registers them)
    from .batch import app

    return app


def __getattr__(name: str):  # `from imfilt.cli.main import app`: the app, built on first use
    if name == "app":
        return _app()
    raise AttributeError(f"module 'imfilt.cli.main' has no attribute {name!r}")
