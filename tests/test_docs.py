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
    from imfilt.cli.main import app
    import typer.main

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in typer.main.get_command(app).commands:
        assert f"## `imfilt {name}`" in page


def test_the_readme_is_a_front_door():
    """At most 12,000 characters: the pitch, set-up, tour, one line per command, links into docs/."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 12_000, f"README.md has {len(text)} characters"
    for page in ("docs/cli.md", "docs/usage.md", "docs/large-images.md", "docs/performance.md", "docs/design.md",
                 "docs/gpu.md", "CONTRIBUTING.md", "CHANGELOG.md"):
        assert f"]({page})" in text, f"README.md does not link {page}"


def anchors(page: Path) -> set[str]:
    """The anchors a forge gives the headings of a Markdown page (GitHub's rule: lower case,
    punctuation but - and _ dropped, spaces to -), fenced code left out."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_anchors_follow_the_forges_rule():
    assert anchors(ROOT / "docs" / "usage.md") >= {"--dry-run", "imfilt-apply", "exit-codes"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(page):
    """Every relative link and picture of a page names a file or folder that exists, and a heading there."""
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
        if anchor:
            assert anchor in anchors(path), f"{page.relative_to(ROOT)} links {target}: no such heading"


def test_the_version_is_one_version():
    """pyproject.toml, imfilt.__version__, `imfilt --version` and the changelog's newest release agree."""
    import tomllib

    from typer.testing import CliRunner

    import imfilt
    from imfilt.cli.main import app

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert imfilt.__version__ == version
    assert CliRunner().invoke(app, ["--version"]).stdout.strip().endswith(version)
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    assert released and released[0] == version
