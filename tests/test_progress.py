"""Progress on a terminal: a streamed job moves the bar as its windows are done, and the bar
weighs inputs by their pixels. Nothing is drawn when stderr is not a terminal."""

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imfilt.run import tiled, tiled_fft
from imfilt.cli.batch import progress_weights
from imfilt.engine.engine import cpu_engine
from imfilt.ops.frequency import Lowpass, Spectrum
from imfilt.ops.kernels import load_kernel
from imfilt.ops.operations import Apply
from imfilt.run.planning import Job, Output, Settings
from limits import pattern_tiff

BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_terminal(*args, stdout_too: bool = False) -> tuple[int, list[str], str]:
    """imfilt ARGS with stderr (and stdout, if asked) on a pseudo-terminal: (exit code, the lines
    the terminal was sent, each redraw one, escape codes removed; standard output when a pipe)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR"):
        env.pop(name, None)
    process = subprocess.Popen([BIN / "imfilt", *map(str, args)], stdin=subprocess.DEVNULL,
                               stdout=slave if stdout_too else subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    sent = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the last holder of the terminal has gone
            break
        if not data:
            break
        sent += data
    os.close(master)
    stdout = b"" if stdout_too else process.stdout.read()
    process.wait(timeout=60)
    text = ANSI.sub("", sent.decode(errors="replace"))
    return process.returncode, [line for line in re.split(r"[\r\n]+", text) if line.strip()], stdout.decode()


def percents(lines: list[str]) -> list[int]:
    return [int(m[1]) for line in lines if (m := re.search(r"(\d+)%", line))]


def random_png(path: Path, height: int, width: int) -> Path:
    rng = np.random.default_rng(height)
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
    return path


# --- what the bar shows -------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["spectrum", "--memory", "4M"],  # row pass, column pass, writing: 600x600 in chunks of 256
    ["apply", "-k", "gaussian:sigma=3", "--memory", "1M"],  # windows of 16 rows
])
def test_a_streamed_job_moves_the_bar_as_its_windows_are_done(tmp_path, command):
    source = random_png(tmp_path / "in.png", 600, 600)
    code, lines, _ = on_terminal(command[0], source, *command[1:], "-o", tmp_path / "out.tif", "--json")
    assert code == 0
    between = {p for p in percents(lines) if 0 < p < 100}
    # today's main drew nothing for one input: no bar at all
    assert len(between) >= 2, lines
    assert percents(lines) == sorted(percents(lines))  # never backwards


def test_the_bar_weighs_inputs_by_their_pixels(tmp_path):
    """After a 32x32 input, with a 1500x1500 one to go, the bar is near 0%, not at half."""
    small = random_png(tmp_path / "a-small.png", 32, 32)
    large = random_png(tmp_path / "b-large.png", 1500, 1500)
    # two outputs: the large one is read whole (one output would go in bands and move the bar as it goes)
    code, lines, _ = on_terminal("apply", small, large, "-k", "gaussian:sigma=8", "-k", "box", "--out-dir", tmp_path / "out")
    assert code == 0
    after_small = [int(m[1]) for line in lines if (m := re.search(r"(\d+)%\s+1/2 images", line))]
    # the first frame after the small one (later ones move with the large one's outputs)
    assert after_small and after_small[0] < 10, lines
    assert any("2/2 images" in line for line in lines) or "imfilt: 2 written" in lines[-1]


def test_json_lines_go_to_standard_output_while_the_bar_is_drawn(tmp_path):
    """The bar on stderr once took over print(): --json > file wrote the lines to the terminal."""
    sources = [random_png(tmp_path / f"in{i}.png", 40, 40) for i in range(2)]
    code, lines, stdout = on_terminal("apply", *sources, "-k", "box", "--out-dir", tmp_path / "out", "--json")
    assert code == 0
    assert [json_line.startswith('{"input"') for json_line in stdout.splitlines()] == [True, True]
    assert not any('"input"' in line for line in lines)


STREAMED = ["-k", "gaussian:sigma=3", "--memory", "1M"]  # a 400x400 input: windows of 16 rows


def test_nothing_is_drawn_when_quiet_or_json_shares_the_terminal(tmp_path):
    source = random_png(tmp_path / "in.png", 400, 400)
    code, lines, _ = on_terminal("apply", source, *STREAMED, "-o", tmp_path / "a.tif", "-q")
    assert code == 0 and lines == []
    code, lines, _ = on_terminal("apply", source, *STREAMED, "-o", tmp_path / "b.tif", "--json", stdout_too=True)
    assert code == 0 and not percents(lines) and len(lines) == 1 and '"tiled": true' in lines[0]


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path):
    source = random_png(tmp_path / "in.png", 400, 400)
    done = subprocess.run([BIN / "imfilt", "apply", source, *STREAMED, "-o", tmp_path / "out.tif"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == ""


# --- the weights and the runners' callbacks, directly -------------------------------------


def job(shape, outputs=1, skip=False, refused=None, source="x.png"):
    return Job(source, tuple(Output(f"{source}.{i}.png", None, skip=skip) for i in range(outputs)), Settings(),
               shape=shape, refused=refused)


def test_progress_weights_are_pixels_times_outputs():
    weights = progress_weights([job((100, 200, 3)), job((10, 10, 1), outputs=3), job((1000, 1000, 4))])
    assert weights == [20_000, 300, 1_000_000]


def test_progress_weights_of_unknown_refused_and_skipped_inputs():
    # unknown size (standard input, an unread header): the median known input
    weights = progress_weights([job((10, 10, 3)), job(None), job((20, 20, 3)), job((30, 30, 3))])
    assert weights == [100, 400, 400, 900]
    assert progress_weights([job(None, source="-")]) == [1]  # nothing known: any weight will do
    # refused at planning, or nothing to write: next to nothing (they end at once)
    weights = progress_weights([job((100, 100, 3)), job(None, refused="bad"), job((100, 100, 3), skip=True)])
    assert weights[0] == 10_000 and 0 < weights[1] <= 10 and 0 < weights[2] <= 10


def recorder():
    seen = []
    return seen, seen.append


def check_fractions(seen: list[float], at_least: int) -> None:
    assert len(seen) >= at_least
    assert seen == sorted(seen) and 0 < seen[0] and seen[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("scale", ["auto", "stretch"])  # stretch: a first pass for the bounds, then writing
def test_a_tiled_apply_reports_its_windows(tmp_path, scale):
    source = pattern_tiff(tmp_path / "in.tif", 200, 300)
    seen, progress = recorder()
    op = Apply(load_kernel("gaussian:sigma=2"))
    tiled.run_output(str(source), Output(str(tmp_path / "out.tif"), op), depth=None, scale=scale,
                     memory=tiled.parse_size("1M"), engine=cpu_engine(), progress=progress)
    windows = len(list(tiled.Plan(200, 300, tiled.apply_window(op, (200, 300, 3), 2**20)).windows()))
    check_fractions(seen, windows - 1)  # each window but the first is told as it is computed
    if scale == "stretch":
        assert max(f for f in seen if f <= 0.5) == pytest.approx(0.5)  # the first pass is half


@pytest.mark.parametrize("op", [Spectrum(), Spectrum(phase=True), Lowpass(radius=20)], ids=["spectrum", "phase", "lowpass"])
def test_the_out_of_core_fft_reports_both_passes_and_the_writing(tmp_path, op):
    source = pattern_tiff(tmp_path / "in.tif", 256, 320)
    seen, progress = recorder()
    tiled_fft.run_output(str(source), Output(str(tmp_path / "out.tif"), op), depth=None, scale="auto",
                         memory=tiled.parse_size("1M"), engine=cpu_engine(), progress=progress)
    check_fractions(seen, 6)
    rows, columns = tiled_fft.ROWS_SHARE, tiled_fft.ROWS_SHARE + tiled_fft.COLUMNS_SHARE
    assert pytest.approx(rows) in seen and pytest.approx(columns) in seen  # each pass ends where the next begins
    assert any(0 < f < rows for f in seen) and any(rows < f < columns for f in seen) and any(columns < f < 1 for f in seen)
