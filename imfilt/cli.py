"""The command line: the Typer app with every command registered, and the console entry point."""

from . import commands, commands_kernels, commands_learn, commands_match  # noqa: F401  (importing the commands registers them on the app)
from .batch import app

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point."""
    app()
