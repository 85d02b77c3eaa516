"""Batches: many inputs, failures that cost one input, parallel workers, resume, Dask."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.main import app

runner = CliRunner()
BIN = Path(sys.executable).parent


def imfilt(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def make_photos(folder: Path, count: int, size=(48, 64)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        path = folder / f"img{i:02}.png"
        Image.fromarray((rng.random(size + (3,)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_bad_file_costs_only_itself(tmp_path):
    make_photos(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnonsense")
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    result = imfilt("apply", tmp_path / "in", "-k", "box", "--out-dir", tmp_path / "out", "-j", "1")
    assert result.exit_code == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["img00.box.png", "img01.box.png", "img02.box.png"]
    errors = [line for line in result.stderr.splitlines() if not line.startswith("imfilt:")]
    assert len(errors) == 2 and any("broken.png" in e for e in errors) and any("empty.jpg: empty file" in e for e in errors)
    assert "3 written, 2 inputs failed" in result.stderr


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"bad")
    make_photos(tmp_path / "in", 2)
    result = imfilt("apply", tmp_path / "in", "-k", "box", "--out-dir", tmp_path / "out", "-j", "1", "--fail-fast")
    assert result.exit_code == 1 and "--fail-fast" in result.stderr
    assert not list((tmp_path / "out").iterdir())


def test_fail_fast_with_workers_reports_what_was_already_running(tmp_path):
    """Jobs the workers had taken finish whole and are counted; none starts after the failure."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"bad")
    make_photos(tmp_path / "in", 40, size=(96, 128))  # enough work that a loaded machine still stops early
    result = imfilt("apply", tmp_path / "in", "-k", "gaussian:sigma=4", "--method", "direct", "--out-dir",
                    tmp_path / "out", "-j", "2", "--fail-fast")
    written = len(list((tmp_path / "out").iterdir()))
    assert result.exit_code == 1 and written < 40
    assert f"imfilt: {written} written, 1 input failed" in result.stderr


def test_two_workers_write_the_same_bytes_as_one(tmp_path):
    make_photos(tmp_path / "in", 6)
    for jobs in ("1", "2"):
        result = imfilt("apply", tmp_path / "in", "-k", "sobel", "-k", "gaussian:sigma=3", "--out-dir", tmp_path / jobs,
                        "-j", jobs)
        assert result.exit_code == 0, result.stderr
    assert contents(tmp_path / "1") == contents(tmp_path / "2") and len(contents(tmp_path / "1")) == 12


def test_json_lines_and_nothing_else_on_stdout(tmp_path):
    make_photos(tmp_path / "in", 3)
    result = imfilt("lowpass", tmp_path / "in", "--radius", "5", "--out-dir", tmp_path / "out", "--json", "-j", "2")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3 and {r["op"] for r in records} == {"lowpass5"}
    assert set(records[0]) >= {"input", "output", "op", "engine", "seconds", "shape", "skipped"}


def test_skip_existing_does_only_what_is_missing(tmp_path):
    make_photos(tmp_path / "in", 4)
    args = ["spectrum", tmp_path / "in", "--out-dir", tmp_path / "out", "-j", "1"]
    assert imfilt(*args).exit_code == 0
    (tmp_path / "out" / "img01.spectrum.png").unlink()
    kept = (tmp_path / "out" / "img02.spectrum.png").stat().st_mtime_ns
    result = imfilt(*args, "--skip-existing", "--json")
    assert result.exit_code == 0
    records = {Path(r["input"]).name: r["skipped"] for r in map(json.loads, result.stdout.splitlines())}
    assert records == {"img00.png": True, "img01.png": False, "img02.png": True, "img03.png": True}
    assert (tmp_path / "out" / "img01.spectrum.png").exists()
    assert (tmp_path / "out" / "img02.spectrum.png").stat().st_mtime_ns == kept


def test_from_a_nul_separated_list_with_odd_names(tmp_path):
    odd = ["with space.png", "ünïcødé.png", "new\nline.png"]
    for name, source in zip(odd, make_photos(tmp_path / "src", 3)):
        source.rename(tmp_path / "src" / name)
    listing = b"\0".join(os.fsencode(tmp_path / "src" / n) for n in odd) + b"\0"
    result = runner.invoke(app, ["apply", "--from", "-", "-0", "-k", "box", "--out-dir", str(tmp_path / "out"), "-j", "1"],
                           input=listing)
    assert result.exit_code == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == sorted(n.replace(".png", ".box.png") for n in odd)


def test_find_print0_pipeline(tmp_path):
    make_photos(tmp_path / "in" / "sub", 2)
    cmd = f"find {tmp_path / 'in'} -name '*.png' -print0 | {BIN / 'imfilt'} apply --from - -0 -k sharpen --out-dir {tmp_path / 'out'}"
    assert subprocess.run(cmd, shell=True).returncode == 0
    assert len(os.listdir(tmp_path / "out")) == 2


def test_recursive_folders_and_globs(tmp_path):
    make_photos(tmp_path / "in" / "deeper", 2)
    make_photos(tmp_path / "in", 1)
    assert imfilt("apply", tmp_path / "in", "-k", "box", "--out-dir", tmp_path / "a").exit_code == 0
    assert len(os.listdir(tmp_path / "a")) == 1
    result = imfilt("apply", tmp_path / "in", "-r", "-k", "box", "--out-dir", tmp_path / "b")
    assert result.exit_code == 2 and "would both write" in result.stderr  # img00 twice: refused up front
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())
    assert imfilt("apply", str(tmp_path / "in" / "deeper" / "*.png"), "-k", "box", "--out-dir", tmp_path / "c").exit_code == 0
    assert len(os.listdir(tmp_path / "c")) == 2


def test_progress_bar_on_a_terminal_only(tmp_path):
    """script(1) gives imfilt a terminal: the bar shows done/total; on a pipe nothing is drawn."""
    if shutil.which("script") is None:
        pytest.skip("script(1) is not installed")
    make_photos(tmp_path / "in", 4)
    command = f"{BIN / 'imfilt'} apply {tmp_path / 'in'} -k box --out-dir {tmp_path / 'out'} -j 1"
    on_terminal = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True)
    assert "4/4" in on_terminal.stdout and "img/s" in on_terminal.stdout
    on_pipe = subprocess.run(command + " --overwrite", shell=True, capture_output=True, text=True)
    assert on_pipe.stderr == "imfilt: 4 written\n" and on_pipe.stdout == ""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_keeps_finished_outputs_and_leaves_no_partial_file(tmp_path, jobs):
    make_photos(tmp_path / "in", 40, size=(400, 400))
    process = subprocess.Popen([BIN / "imfilt", "apply", tmp_path / "in", "-k", "gaussian:sigma=8", "--out-dir",
                                tmp_path / "out", "-j", jobs], stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline and len(list((tmp_path / "out").glob("*.png"))) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and b"Traceback" not in stderr
    names = os.listdir(tmp_path / "out")
    assert 2 <= len(names) < 40 and not [n for n in names if n.startswith(".")]
    assert f"interrupted; {len(names)} written".encode() in stderr
    for name in names:
        Image.open(tmp_path / "out" / name).load()  # every file kept is whole


# --- Dask: a real scheduler and worker on 127.0.0.1 --------------------------------------

# Only these tests need Dask: without it they skip, and the batch tests above still run.
needs_dask = pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                reason="dask.distributed is not installed (pip install 'imfilt[distributed]')")


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """`dask scheduler` and `dask worker` as separate processes, listening on loopback only."""
    folder = tmp_path_factory.mktemp("dask")
    address_file = folder / "scheduler.json"
    local = ["--dashboard-address", "127.0.0.1:0"]
    scheduler = subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file",
                                  address_file, *local], stderr=subprocess.DEVNULL, cwd=folder)
    worker = subprocess.Popen([BIN / "dask", "worker", "--scheduler-file", address_file, "--host", "127.0.0.1",
                               "--nworkers", "1", "--nthreads", "2", *local], stderr=subprocess.DEVNULL, cwd=folder)
    try:
        from distributed import Client

        deadline = time.time() + 60
        while not address_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(address_file.read_text())["address"]
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for process in (worker, scheduler):
            process.kill()  # a graceful Dask shutdown takes seconds; nothing of theirs needs saving
            process.wait(30)


@needs_dask
def test_dask_outputs_are_identical_to_local(tmp_path, dask_cluster):
    make_photos(tmp_path / "in", 5)
    (tmp_path / "in" / "bad.png").write_bytes(b"junk")
    local = imfilt("apply", tmp_path / "in", "-k", "sobel", "--out-dir", tmp_path / "local", "-j", "1")
    remote = imfilt("apply", tmp_path / "in", "-k", "sobel", "--out-dir", tmp_path / "remote", "--scheduler",
                    dask_cluster, "--json")
    assert local.exit_code == remote.exit_code == 1, remote.stderr
    assert contents(tmp_path / "local") == contents(tmp_path / "remote") and len(contents(tmp_path / "local")) == 5
    assert len(remote.stdout.splitlines()) == 5 and "bad.png" in remote.stderr


@needs_dask
def test_dask_local_cluster(tmp_path):
    from distributed import LocalCluster

    make_photos(tmp_path / "in", 3)
    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      processes=True) as cluster:
        result = imfilt("spectrum", tmp_path / "in", "--out-dir", tmp_path / "out", "--scheduler", cluster.scheduler_address)
    assert result.exit_code == 0, result.stderr
    assert len(os.listdir(tmp_path / "out")) == 3


@needs_dask
def test_unreachable_scheduler_is_exit_2(tmp_path):
    make_photos(tmp_path / "in", 1)
    result = imfilt("apply", tmp_path / "in", "-k", "box", "--out-dir", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9")
    assert result.exit_code == 2 and "cannot reach the Dask scheduler" in result.stderr


def test_dask_match_is_identical_to_local(tmp_path, dask_cluster):
    """imfilt match: many images against one template, the same maps and records on Dask."""
    photos = make_photos(tmp_path / "in", 3)
    Image.open(photos[1]).crop((10, 5, 30, 21)).save(tmp_path / "template.png")
    args = ("match", tmp_path / "in", "-t", tmp_path / "template.png", "--json")
    local = imfilt(*args, "--out-dir", tmp_path / "local")
    remote = imfilt(*args, "--out-dir", tmp_path / "remote", "--scheduler", dask_cluster)
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    assert contents(tmp_path / "local") == contents(tmp_path / "remote") and len(contents(tmp_path / "local")) == 3
    best = {Path(r["input"]).name: r["matches"][0] for r in map(json.loads, remote.stdout.splitlines())}
    assert (best["img01.png"]["row"], best["img01.png"]["col"]) == (5, 10) and best["img01.png"]["score"] > 0.999


@needs_dask
def test_dask_deconvolve_is_identical_to_local(tmp_path, dask_cluster):
    """imfilt deconvolve: a batch option like any other; the same files on Dask."""
    make_photos(tmp_path / "in", 2)
    args = ("deconvolve", tmp_path / "in", "-k", "gaussian:sigma=1", "--method", "richardson-lucy", "--iterations", "3")
    local = imfilt(*args, "--out-dir", tmp_path / "local")
    remote = imfilt(*args, "--out-dir", tmp_path / "remote", "--scheduler", dask_cluster)
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    assert contents(tmp_path / "local") == contents(tmp_path / "remote") and len(contents(tmp_path / "local")) == 2
