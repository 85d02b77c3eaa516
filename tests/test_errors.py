"""Every error path: exactly one line on stderr, the exit code of docs/usage.md, nothing written,
inputs unchanged, no temporary file; signals; and a fuzz test over mutated images and kernels."""

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from imfilt.cli.batch import worker_count
from imfilt.cli.main import app
from imfilt.image.io import read_image

runner = CliRunner()
BIN = Path(sys.executable).parent


def imfilt(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rgb(seed=0, shape=(12, 16, 3)) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A folder holding a.png, b.png, a 2-frame GIF, float files with NaN/inf and odd arrays."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(rgb(0)).save("a.png")
    Image.fromarray(rgb(1)).save("b.png")
    Image.fromarray(rgb(2)).save("m.png")  # an existing file that a run must not replace
    frames = [Image.fromarray(rgb(i)).convert("P") for i in range(2)]
    frames[0].save("anim.gif", save_all=True, append_images=frames[1:])
    tifffile.imwrite("pages.tif", np.stack([rgb(3), rgb(4)]), photometric="rgb")
    nan = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    nan[3, 4, 1] = np.nan
    np.save("nan.npy", nan)
    inf = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    inf[0, 0] = np.inf
    tifffile.imwrite("inf.tif", inf)
    np.save("empty.npy", np.zeros((0, 0), np.float32))
    np.save("nochannels.npy", np.zeros((4, 4, 0), np.float32))
    np.save("five.npy", np.random.default_rng(0).random((6, 6, 5)).astype(np.float32))
    np.save("bank0.npy", np.zeros((0, 3, 3)))
    Path("big.txt").write_text("1e39 0\n0 1\n")
    np.save("k3.npy", np.ones((3, 3)) / 9)
    Path("afile").write_text("not a folder")
    Path("emptydir").mkdir()
    Path("folder.png").mkdir()
    Path("list0.txt").write_bytes(b"a.png\0b.png\0")
    return tmp_path


# (arguments, exit code, a piece of the one line on stderr); run in the `work` folder
ERRORS = [
    # 1. secondary outputs get the checks of main ones
    (["lowpass", "a.png", "-R", "3", "-o", "lp.png", "--mask-out", "a.png"], 2, "both an input and an output"),
    (["lowpass", "a.png", "-R", "3", "-o", "lp.png", "--mask-out", "m.png"], 2, "m.png: exists"),
    (["lowpass", "a.png", "-R", "3", "-o", "x.png", "--mask-out", "x.png"], 2, "would both write"),
    (["lowpass", "a.png", "b.png", "-R", "3", "--out-dir", "o", "--mask-out", "mask.png"], 2, "put {stem} in it"),
    (["lowpass", "a.png", "-R", "3", "-o", "lp.png", "--mask-out", "afile/mask.png"], 2, "is a file, not a folder"),
    (["lowpass", "a.png", "-R", "3", "-o", "lp.png", "--mask-out", "mask.xyz"], 2, "unknown output format"),
    # 2. an output that is another input of the run
    (["apply", "a.png", "a.sobel.png", "-k", "sobel", "--overwrite"], 2, "both an input and an output"),
    (["apply", "m.png", "a.png", "-k", "box", "--name", "m.png", "--overwrite", "--out-dir", "."], 2, "both an input"),
    (["apply", "a.png", "-k", "k3.npy", "-o", "k3.npy", "--overwrite"], 2, "both an input and an output"),
    (["match", "a.png", "-t", "b.png", "-o", "b.png", "--overwrite"], 2, "both an input and an output"),
    # 4. nothing to do
    (["apply", "emptydir", "-k", "box"], 1, "emptydir: no image in this folder"),
    (["apply", "nothing*.png", "-k", "box"], 1, "no image matches this pattern"),
    (["apply", "folder.png", "-k", "box"], 1, "folder.png: no image in this folder"),
    (["spectrum", "emptydir"], 1, "no image in this folder"),
    # 5. non-finite numbers, frames
    (["apply", "nan.npy", "-k", "box", "-o", "o.npy"], 1, "nan.npy: 1 sample is NaN or infinite"),
    (["lowpass", "inf.tif", "-R", "2", "-o", "o.tif"], 1, "inf.tif: 1 sample is NaN or infinite"),
    (["apply", "a.png", "-k", "box", "--boundary", "constant", "--cval", "nan", "-o", "o.png"], 2, "cval must be a finite"),
    (["apply", "a.png", "-k", "big.txt", "-o", "o.png"], 2, "too large for float32"),
    (["apply", "a.png", "-k", "3x3: 1e39,0,0,0,1e39,0,0,0,1e39", "-o", "o.png"], 2, "too large for float32"),
    (["apply", "anim.gif", "-k", "box", "-o", "o.png"], 1, "has 2 frames"),
    (["spectrum", "pages.tif", "-o", "o.png"], 1, "has 2 frames"),
    (["lowpass", "a.png", "-R", "nan", "-o", "o.png"], 2, "--radius"),
    # 6. kernel parameters
    *[(["apply", "a.png", "-k", f"gaussian:{p}", "-o", "o.png"], 2, why) for p, why in [
        ("sigma=nan", "finite"), ("sigma=inf", "finite"), ("sigma=0", "sigma must be > 0"),
        ("sigma=-1", "sigma must be > 0"), ("truncate=-1", "truncate must be > 0"),
        ("sigma=2,sigma=3", "sigma is given twice"), ("sigma=5000", "over the 4097 taps"), ("size=3", "unknown parameter")]],
    *[(["apply", "a.png", "-k", f"box:size={v}", "-o", "o.png"], 2, why) for v, why in [
        ("nan", "finite"), ("inf", "finite"), ("1e6", "from 1 to 4097"), ("2.5", "whole number"), ("0", "from 1")]],
    # 7. output places, decided at planning
    (["apply", "a.png", "-k", "box", "--out-dir", "afile"], 2, "afile: is a file, not a folder"),
    (["apply", "a.png", "-k", "box", "-o", "afile/x.png"], 2, "is a file, not a folder"),
    (["apply", "a.png", "-k", "box", "--out-dir", "/proc/imfilt-cannot"], 2, "cannot make the output folder"),
    # 9. Dask and pipes
    (["apply", "-", "-k", "box", "-o", "o.png", "--scheduler", "tcp://127.0.0.1:1"], 2, "standard input and output"),
    (["apply", "a.png", "-k", "box", "-o", "-", "--scheduler", "tcp://127.0.0.1:1"], 2, "standard input and output"),
    *[(["apply", "a.png", "-k", "box", "-o", "o.png", "--scheduler", address], 2, "not a Dask scheduler address")
      for address in ["garbage", "tcp://", "http://example.org:80", "tcp://host:99999"]],
    # 10. odd arrays and options
    (["apply", "empty.npy", "-k", "box", "-o", "o.npy"], 1, "must hold pixels"),
    (["apply", "nochannels.npy", "-k", "box", "-o", "o.npy"], 1, "must hold pixels"),
    (["apply", "five.npy", "-k", "box", "-o", "o.png"], 1, ".png holds at most 4 channels"),
    (["apply", "--from", "list0.txt", "-k", "box", "--out-dir", "o"], 2, "add -0"),
    (["apply", "a.png", "-k", "box", "-o", "-", "--format", "gif"], 2, "--format 'gif'"),
    (["apply", "a.png", "-k", "", "-o", "o.png"], 2, "an empty kernel"),
    (["apply", "a.png", "-k", "bank0.npy", "--out-dir", "o"], 2, "an empty kernel bank"),
    (["apply", "a.png", "-k", "box", "--overwrite", "--skip-existing", "--out-dir", "o"], 2, "contradict"),
    (["apply", "a.png", "-k", "box", "-o", "o.png", "--max-pixels", "10"], 1, "safety limit of 10;"),
    (["apply", "a.png", "-k", "box", "-j", "0"], 2, "--jobs"),
    (["lowpass", "a.png", "--radius", "-1"], 2, "--radius"),
    (["apply", "a.png"], 2, "Missing option '-k'"),
    (["apply", "a.png", "-k", "box", "--boundary", "sideways"], 2, "'sideways' is not one of"),
    # 12. .npy holds float32 only
    (["apply", "a.png", "-k", "box", "--depth", "8", "-o", "x.npy"], 2, ".npy holds 32-bit"),
    # names longer than the system takes (ENAMETOOLONG), as inputs, folders, templates, kernels
    (["apply", "a" * 5000, "-k", "box"], 2, "(5000 characters): File name too long"),
    (["apply", "a.png", "-k", "box", "--out-dir", "d" * 5000], 2, "File name too long"),
    (["match", "a.png", "-t", "t" * 5000], 2, "File name too long"),
    (["apply", "a.png", "-k", "k" * 5000], 2, "unknown kernel"),
]


@pytest.mark.parametrize("args, code, message", ERRORS, ids=[" ".join(map(str, a))[:60] for a, _, _ in ERRORS])
def test_every_error_is_one_line_and_writes_nothing(work, args, code, message):
    before = snapshot(work)
    result = imfilt(*args, input=b"")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.stderr
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "Error:" not in lines[0] and "internal error" not in lines[0]
    created = {name for name in snapshot(work) if name not in before}
    assert not created, created  # nothing written, no temporary file
    assert all((work / name).read_bytes() == data for name, data in before.items())  # inputs untouched


def test_usage_errors_from_the_console_script_are_one_line(work):
    """The real entry point, not the test runner: Typer's own usage errors too."""
    for args in (["apply", "a.png", "-k", "box", "-j", "0"], ["apply", "a.png"], ["lowpass", "a.png", "-R", "-1"]):
        run = subprocess.run([BIN / "imfilt", *args], capture_output=True, text=True)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "--help" in run.stderr


def test_a_rerun_on_a_folder_does_not_feed_on_its_outputs(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rgb(i)).save(folder / f"p{i}.png")
    for _ in range(3):  # docs/usage.md's resume recipe, run again and again
        assert imfilt("apply", folder, "-k", "sobel", "--skip-existing").exit_code == 0
    assert sorted(os.listdir(folder)) == ["p0.png", "p0.sobel.png", "p1.png", "p1.sobel.png"]
    only_outputs = tmp_path / "outs"
    only_outputs.mkdir()
    (folder / "p0.sobel.png").rename(only_outputs / "p0.sobel.png")
    result = imfilt("apply", only_outputs, "-k", "sobel")
    assert result.exit_code == 1 and "1 left out as outputs of this run" in result.stderr
    assert imfilt("apply", only_outputs / "p0.sobel.png", "-k", "sobel").exit_code == 0  # named: an input


def test_one_empty_folder_costs_only_itself(work):
    result = imfilt("apply", "emptydir", "a.png", "-k", "box", "--out-dir", "o")
    assert result.exit_code == 1 and (work / "o" / "a.box.png").exists()
    assert result.stderr.splitlines()[0].startswith("emptydir: no image")


def test_mask_out_with_stem_for_several_inputs_and_on_its_own_checks(work):
    result = imfilt("lowpass", "a.png", "b.png", "-R", "3", "--out-dir", "o", "--mask-out", "o/{stem}.mask.npy", "--json")
    assert result.exit_code == 0, result.stderr
    mask = np.load(work / "o" / "a.mask.npy")[..., 0]
    u, v = np.arange(12)[:, None] - 6, np.arange(16)[None, :] - 8
    np.testing.assert_array_equal(mask, (u**2 + v**2 <= 9).astype(np.float32))
    assert '"mask":' in result.stdout


def test_relative_mask_out_is_made_absolute_for_dask_workers(work):
    from imfilt.ops.frequency import Lowpass
    from imfilt.run.planning import Settings, plan

    jobs = plan(["a.png"], [Lowpass(3)], Settings(), out="lp.png", extras={"mask": "m2.png"}, absolute=True)
    (output,) = jobs[0].outputs
    assert output.path == str(work / "lp.png") and output.extras == (("mask", str(work / "m2.png")),)


def test_output_folders_are_made_at_planning(work):
    assert imfilt("apply", "a.png", "-k", "box", "-o", "new/deeper/x.png").exit_code == 0
    assert imfilt("apply", "a.png", "-k", "box", "--name", "sub/{stem}{ext}", "--out-dir", "o").exit_code == 0
    assert (work / "new" / "deeper" / "x.png").exists() and (work / "o" / "sub" / "a.png").exists()


def test_two_inline_kernels_of_one_size_get_distinct_names(work):
    result = imfilt("apply", "a.png", "-k", "3x3: 0,0,0,0,1,0,0,0,0", "-k", "3x3: 0,0,0,0,2,0,0,0,0",
                    "-k", "gaussian:sigma=1,truncate=2", "-k", "gaussian:truncate=2,sigma=1", "--out-dir", "o")
    assert result.exit_code == 0, result.stderr
    assert sorted(os.listdir(work / "o")) == ["a.3x3-2.png", "a.3x3.png", "a.gaussian-sigma1-truncate2-2.png",
                                              "a.gaussian-sigma1-truncate2.png"]
    single, double = read_image(work / "o" / "a.3x3.png"), read_image(work / "o" / "a.3x3-2.png")
    np.testing.assert_allclose(double, np.clip(2 * single, 0, 1), atol=1 / 255)


def test_a_txt_kernel_is_never_read_as_a_libvips_matrix(work):
    """'2 1' then '1 1' is imfilt's 2x2 matrix, not a libvips header for the kernel [[1, 1]]."""
    Path("k.txt").write_text("2 1\n1 1\n")
    assert imfilt("apply", "a.png", "-k", "k.txt", "--correlate", "--boundary", "nearest", "-o", "k.npy").exit_code == 0
    image = read_image(work / "a.png")
    padded = np.pad(image, ((1, 0), (1, 0), (0, 0)), mode="edge")  # even kernel: scipy's anchor, n // 2
    expected = 2 * padded[:-1, :-1] + padded[:-1, 1:] + padded[1:, :-1] + padded[1:, 1:]
    np.testing.assert_allclose(np.load(work / "k.npy"), expected, atol=1e-5)


@pytest.mark.parametrize("requested, inputs, cores, expected", [
    (None, 3, 2, 2), (None, 9, 2, 2), (1000, 30, 2, 2), (1000, 1, 16, 1), (4, 3, 16, 3), (2, 100, 2, 2)])
def test_workers_are_capped_by_cores_and_inputs(requested, inputs, cores, expected):
    assert worker_count(requested, inputs, cores) == expected


def test_short_writes_to_an_unbuffered_pipe_end_with_141(tmp_path):
    Image.fromarray(rgb(0, (300, 400, 3))).save(tmp_path / "p.png")
    command = f"{BIN / 'imfilt'} apply {tmp_path / 'p.png'} -k box -o - --format npy | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.stdout.strip() == "141" and run.stderr == ""


@pytest.mark.parametrize("args", [["-o", "-"], ["-o", "x.png", "--json"]])
def test_a_closed_standard_output_is_one_line(tmp_path, args):
    Image.fromarray(rgb(0)).save(tmp_path / "a.png")
    run = subprocess.run(f"{BIN / 'imfilt'} apply a.png -k box {' '.join(args)} >&-", shell=True, cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "standard output is closed" in run.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


def test_an_unreachable_scheduler_ends_promptly_with_one_line(small_rgb, tmp_path):
    start = time.monotonic()
    run = subprocess.run([BIN / "imfilt", "apply", small_rgb, "-k", "box", "-o", tmp_path / "o.png",
                          "--scheduler", "tcp://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "cannot reach the Dask scheduler" in run.stderr and time.monotonic() - start < 30


# --- signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs, sig, group", [("1", signal.SIGTERM, False), ("2", signal.SIGTERM, False),
                                              ("2", signal.SIGTERM, True), ("1", signal.SIGHUP, False),
                                              (None, signal.SIGTERM, False), (None, signal.SIGINT, True)])
def test_a_signal_ends_the_run_as_ctrl_c_does(tmp_path, jobs, sig, group):
    """group: the signal goes to every process of the run, as `timeout` and a terminal send it.
    -j 1: one job at a time; -j 2: worker processes; None (the default): jobs on threads."""
    (tmp_path / "in").mkdir()
    for i in range(30):
        Image.fromarray(rgb(i, (200, 240, 3))).save(tmp_path / "in" / f"p{i:02}.png")
    process = subprocess.Popen([BIN / "imfilt", "apply", tmp_path / "in", "-k", "gaussian:sigma=6", "--method", "direct",
                                "--out-dir", tmp_path / "out", *(["-j", jobs] if jobs else [])], stderr=subprocess.PIPE,
                               start_new_session=group)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((tmp_path / "out").glob("*.png"))) < 2:
        time.sleep(0.02)
    if group:
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + sig, stderr
    names = os.listdir(tmp_path / "out")
    assert 2 <= len(names) < 30 and not [n for n in names if n.startswith(".")]  # no .part file
    how = "interrupted" if sig == signal.SIGINT else f"stopped by {signal.Signals(sig).name}"
    assert f"{how}; {len(names)} written".encode() in stderr
    assert b"Traceback" not in stderr and b"leaked" not in stderr
    for name in names:  # every output that is there is whole
        assert Image.open(tmp_path / "out" / name).load() is not None


# --- fuzz: mutated images and kernel text -----------------------------------------------------


def _seeds() -> dict[str, bytes]:
    image = Image.fromarray(rgb(5, (10, 14, 3)))
    out = {}
    for fmt in ("PNG", "JPEG", "TIFF"):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        out[fmt.lower()] = buffer.getvalue()
    return out


SEEDS = _seeds()


@st.composite
def mutated(draw):
    kind = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[kind])
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
            if not data:
                data = bytearray(b"\0")
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return kind, bytes(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated())
def test_fuzzed_images_fail_cleanly(tmp_path, case):
    kind, data = case
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    source = folder / f"in.{kind}"
    source.write_bytes(data)
    start = time.monotonic()
    result = imfilt("apply", source, "-k", "box", "-o", folder / "out.png", "--max-pixels", "1000000")
    assert time.monotonic() - start < 30  # a hang, not a timing: generous on a loaded machine
    assert result.exit_code in (0, 1), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 1
    assert sorted(p.name for p in folder.iterdir()) == (["in." + kind, "out.png"] if result.exit_code == 0 else ["in." + kind])
    assert source.read_bytes() == data


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="0123456789 .,-+e/#:\n\rabcnamesclizeorftmx\t\ufeff", max_size=60))
def test_fuzzed_kernel_text_is_a_kernel_or_exit_2(tmp_path, small_rgb, text):
    kernel = tmp_path / "k.txt"
    kernel.write_text(text, encoding="utf-8")
    out = tmp_path / "fuzz-out.npy"
    out.unlink(missing_ok=True)
    result = imfilt("apply", small_rgb, "-k", kernel, "-o", out, "--method", "direct")
    assert result.exit_code in (0, 2), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1 and str(kernel) in result.stderr and not out.exists()
    else:
        assert np.isfinite(np.load(out)).all()


def test_corrupt_files_print_one_line_each_from_the_console_script(tmp_path):
    """Decoders' own warnings and log lines (Pillow, tifffile) never reach stderr."""
    rng = np.random.default_rng(11)
    paths = []
    for kind, data in sorted(SEEDS.items()):
        for i in range(6):
            damaged = bytearray(data)
            for at in rng.integers(0, len(damaged), 3):
                damaged[at] = int(rng.integers(0, 256))
            path = tmp_path / f"{kind}{i}.{kind}"
            path.write_bytes(bytes(damaged))
            paths.append(path)
    run = subprocess.run([BIN / "imfilt", "apply", *paths, "-k", "box", "--out-dir", tmp_path / "out"],
                         capture_output=True, text=True)
    lines = run.stderr.strip().splitlines()
    failed = [line for line in lines[:-1]]
    assert run.returncode in (0, 1) and lines[-1].startswith("imfilt: ")
    assert all(line.startswith(str(tmp_path)) and "internal error" not in line for line in failed), run.stderr
    assert len(failed) == len(paths) - len(os.listdir(tmp_path / "out"))


@pytest.mark.parametrize("args", [["apply", "{samples}", "-k", "sobel", "--dry-run"], ["kernels"]])
def test_listings_into_a_closed_pipe_end_with_141(args):
    samples = Path(__file__).resolve().parent.parent / "samples"
    command = " ".join(a.format(samples=samples) for a in args)
    run = subprocess.run(["bash", "-c", f"{BIN / 'imfilt'} {command} | true; echo ${{PIPESTATUS[0]}}"],
                         capture_output=True, text=True)
    assert run.stdout.strip() == "141" and run.stderr == ""


@pytest.mark.parametrize("args, code, message", [
    (["kernels", "show", "sharpen", "-o", "nofolder/x.txt"], 1, "cannot write"),
    (["apply", "a.png", "-k", "gaussian:sigma=1e308", "-o", "o.png"], 2, "over the 4097 taps"),
    (["apply", "a.png", "-k", "gaussian:sigma=1,truncate=1e308", "-o", "o.png"], 2, "over the 4097 taps"),
    (["spectrum", "a.png", "-o", "o.png", "--temp-dir", "nofolder"], 2, "--temp-dir nofolder: no such folder"),
])
def test_more_errors_found_by_review(work, args, code, message):
    before = snapshot(work)
    result = imfilt(*args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and message in lines[0], result.stderr
    assert snapshot(work) == before


def test_a_full_disk_behind_standard_output_is_one_line(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    Image.fromarray(rgb(0)).save(tmp_path / "a.png")
    run = subprocess.run(f"{BIN / 'imfilt'} apply a.png -k box -o - > /dev/full", shell=True, cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip() == "<stdout>: cannot write (No space left on device)"


def test_resume_redoes_an_output_whose_mask_is_missing(work):
    args = ["lowpass", "a.png", "-R", "3", "--out-dir", "o", "--mask-out", "o/{stem}.mask.png"]
    assert imfilt(*args).exit_code == 0
    (work / "o" / "a.mask.png").unlink()
    result = imfilt(*args, "--skip-existing")
    assert result.exit_code == 0, result.stderr
    assert (work / "o" / "a.mask.png").exists()


@pytest.mark.parametrize("args, message", [
    (["apply", "nan.npy", "-k", "box", "-o", "t.npy"], "NaN or infinite"),
    (["spectrum", "inf.tif", "-o", "t.tif"], "NaN or infinite"),
    (["apply", "pages.tif", "-k", "box", "-o", "t.tif"], "has 2 frames"),
    (["apply", "a.png", "-k", "box", "-o", "t.tif", "--max-pixels", "10"], "safety limit of 10;"),
])
def test_streamed_inputs_get_the_checks_of_whole_ones(work, args, message):
    """--memory 1K streams these small files window by window: the same refusals as in memory."""
    tifffile.imwrite("a.tif", rgb(0), tile=(16, 16))
    args = ["a.tif" if a == "a.png" else a for a in args]
    before = snapshot(work)
    result = imfilt(*args, "--memory", "1K")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.stderr
    assert snapshot(work) == before


def test_an_inline_kernel_longer_than_a_file_name_runs(work):
    """A 1x600 inline matrix is 1206 characters: it is never taken for a path."""
    result = imfilt("apply", "a.png", "-k", "1x600:" + ",".join(["1"] * 600), "--normalize", "sum", "-o", "k.png")
    assert result.exit_code == 0, result.stderr
    assert (work / "k.png").exists()


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy", ".zarr"])
@pytest.mark.parametrize("memory", ["2G", "20K"])  # whole, and streamed in tiles
def test_long_output_names(work, suffix, memory):
    """A 250-character name is legal: its temporary is named within the 255 bytes a name may have
    (it was 'internal error: OSError'); a 260-character one is one line, exit 1, nothing left."""
    legal = "c" * (250 - len(suffix)) + suffix
    result = imfilt("apply", "a.png", "-k", "box", "-o", legal, "--memory", memory)
    assert result.exit_code == 0 and (work / legal).exists(), result.stderr
    before = snapshot(work)
    result = imfilt("apply", "a.png", "-k", "box", "-o", "d" * 260 + suffix, "--memory", memory)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "cannot write (File name too long)" in lines[0], result.stderr
    assert snapshot(work) == before and not [p for p in work.iterdir() if p.name.startswith(".")]


def test_an_array_with_more_channels_than_opencv_takes_is_filtered(tmp_path):
    """A (3, 60, 700) .npy is an image of 700 channels to imfilt: filtered plane by plane (OpenCV
    takes at most 512 channels at once: it was an internal error), equal to scipy's per plane."""
    import scipy.ndimage as ndi

    from imfilt.image.io import load

    array = np.random.default_rng(0).random((3, 60, 700), dtype=np.float32)
    np.save(tmp_path / "chw.npy", array)
    result = imfilt("apply", tmp_path / "chw.npy", "-k", "box", "-o", tmp_path / "out.npy")
    assert result.exit_code == 0, result.stderr
    got = load(str(tmp_path / "out.npy")).pixels
    expected = ndi.uniform_filter(array.astype(np.float64), size=(3, 3, 1), mode="reflect")
    assert np.abs(got - expected).max() < 1e-5
