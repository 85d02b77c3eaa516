"""The documentation as a maintained part of the project: generated pages current, links alive, sizes kept.

docs/cli.md is regenerated here from the Typer app and must equal the committed page, so the
command reference never drifts from --help (after changing an option: `python docs/make_cli.py`).
"""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def _make_cli():
    spec = importlib.util.spec_from_file_location("make_cli", ROOT / "docs" / "make_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_what_the_app_generates():
    """docs/cli.md == Typer's Markdown of the app now (regenerate with `python docs/make_cli.py`)."""
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == _make_cli().cli_reference(), "docs/cli.md is stale: run `python docs/make_cli.py`"


def test_the_cli_reference_has_every_command():
    from imfilt.cli import app
    import typer.main

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in typer.main.get_command(app).commands:
        assert f"## `imfilt {name}`" in page
