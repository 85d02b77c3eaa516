"""Write docs/cli.md, the command reference, from the Typer app itself (run from anywhere).

The page is Typer's own Markdown (`typer --app app imfilt.cli.main utils docs`), the text of every command's
--help, under a note that says where it comes from. tests/test_docs.py regenerates it and fails
when the committed page differs, so it never drifts from --help: after changing a command or an
option, run `python docs/make_cli.py` and commit docs/cli.md with the change.
"""

import os
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "cli.md"
NOTE = ("Generated from the Typer app by `python docs/make_cli.py` (do not edit: `tests/test_docs.py` fails when this\n"
        "page differs from `--help`). What the options mean in more words: [usage.md](usage.md).\n")


def cli_reference() -> str:
    """Typer's Markdown for the imfilt app, with the note after its title."""
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "typer", "--app", "app", "imfilt.cli.main", "utils", "docs", "--name", "imfilt",
                           "--title", "imfilt command reference"],
                          capture_output=True, text=True, check=True, env=env)
    title, rest = done.stdout.strip().split("\n", 1)
    return f"{title}\n\n{NOTE}{rest}\n"


if __name__ == "__main__":
    PAGE.write_text(cli_reference(), encoding="utf-8")
    print(f"wrote {PAGE}")
