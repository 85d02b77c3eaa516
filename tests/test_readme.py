"""The README runs as written: its shell commands, in a fresh folder after the set-up, exit 0 and print what it shows.

A newcomer clones the repository, runs the set-up command and then the tour. This test does the
same in a temporary folder holding what a clone holds for the tour (samples/, kernels/, the scripts
of docs/): the set-up command's imfilt part first (the virtual environment and pip are this
test run's own), then every command of every ```sh block in order, then every Python snippet that
starts with an import. Lines that install, start or stop servers are skipped. When a plain ```
block follows a block of one command, it is what that command prints: each of its lines but "..."
must be a line of the command's output.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
SETUP = re.compile(r"python3 -m venv|\. \.venv/bin/activate|pip install|python -m pytest")
SERVER = re.compile(r"^(dask |kill |sleep |wait )|--scheduler")


def blocks(text: str) -> list[tuple[str, str]]:
    return [(match.group(1), match.group(2)) for match in FENCE.finditer(text)]


def shell_commands(block: str) -> list[str]:
    """The commands of a ```sh block: continuation lines joined, comments and blank lines left out."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if SETUP.search(line):  # the set-up: keep what it runs after installing (the first imfilt job)
            line = " && ".join(part.strip() for part in line.split("&&") if not SETUP.search(part))
            if not line:
                continue
        if SERVER.search(line):
            continue
        commands.append(line)
    return commands


def steps(text: str) -> list[tuple[str, str, list[str] | None]]:
    """("sh" | "python", code, the output shown after it or None), in the README's order."""
    found, fenced = [], blocks(text)
    for index, (language, body) in enumerate(fenced):
        if language == "sh":
            commands = shell_commands(body)
            shown = None
            if len(commands) == 1 and index + 1 < len(fenced) and fenced[index + 1][0] == "":
                following = text[text.index(body) + len(body):]
                if following.startswith("```\n\n```\n"):  # the very next block
                    shown = [line for line in fenced[index + 1][1].splitlines() if line.strip() and line != "..."]
            found += [("sh", command, shown) for command in commands]
        elif language == "python" and body.startswith(("import ", "from ")):
            found.append(("python", body, None))
    return found


def test_the_parser_reads_the_set_up_and_skips_servers():
    """The set-up line keeps only its imfilt job; server lines and comments are dropped."""
    block = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && imfilt apply a.png -k box\n"
             "# a comment\ndask scheduler --port 8786\nimfilt spectrum a.png \\\n  -o s.png   # trailing\n"
             "imfilt apply x --scheduler tcp://h:8786\n")
    assert shell_commands(block) == ["imfilt apply a.png -k box", "imfilt spectrum a.png    -o s.png   # trailing"]


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A folder that holds what a fresh clone offers the tour, and no outputs."""
    for folder in ("samples", "kernels"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "docs").mkdir()
    for script in (ROOT / "docs").glob("*.py"):
        shutil.copy(script, tmp_path / "docs")
    return tmp_path


def machine_free(line: str) -> str:
    """A line without what depends on the machine's cores: jobs run at once, as many as the cores."""
    return re.sub(r"\d+ workers? here; peak memory ~(\d+) MB( per worker)?", r"N workers here; peak memory ~\1 MB", line)


def test_every_readme_command_runs_as_written(clone: Path):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = steps(text)
    assert any(kind == "sh" and code.startswith("imfilt apply samples/chelsea.png") for kind, code, _ in found[:1])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "200"}
    for kind, code, shown in found:
        argv = ["bash", "-c", f"set -eo pipefail; {code}"] if kind == "sh" else [sys.executable, "-c", code]
        done = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{code}\nexit {done.returncode}\n{done.stderr[-2000:]}"
        if shown:
            printed = set(map(machine_free, (done.stdout + done.stderr).splitlines()))
            missing = [line for line in shown if machine_free(line) not in printed]
            assert not missing, f"{code}\nprints no line\n" + "\n".join(missing)
