"""Input built to exhaust imfilt (hardening, round 3): one bad input fails alone, in the run and in
--dry-run; kernels are sized before they are parsed; FIFOs and devices are refused, never read.

The special files are real (mkfifo, /dev/zero) and run in a real process under an address-space
limit and a time limit: a regression fails the test instead of hanging it or filling memory.
"""

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import imfilt as lib
from imfilt.cli.main import app
from imfilt.errors import KernelError
from imfilt.ops.kernels import Kernel, load_kernels
import bombs
from limits import run_limited

runner = CliRunner()


def imfilt(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def npy_header_only(path, shape, descr="<f4", extra=b"\0" * 64):
    """A .npy whose header claims ``shape`` but which holds only ``extra`` bytes of data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(extra)
    return path


def sparse_npy(path, shape):
    """A .npy of float32 zeros that holds what its header says, in a sparse file (no disk used)."""
    npy_header_only(path, shape, extra=b"")
    with open(path, "r+b") as f:
        f.truncate(f.seek(0, os.SEEK_END) + int(np.prod(shape)) * 4)
    return path


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray((np.random.default_rng(0).random((12, 16, 3)) * 255).astype(np.uint8)).save("good.png")
    return tmp_path


# --- one bad input fails alone --------------------------------------------------------------

UNSIZABLE = {  # input -> (how it is made, a piece of the one line naming it)
    "zerod.npy": (lambda p: np.save(p, np.float32(1)), "must be a real (H, W) or (H, W, C) array, got float32 ()"),
    "oned.npy": (lambda p: np.save(p, np.zeros(5, np.float32)), "got float32 (5,)"),
    "complex.npy": (lambda p: np.save(p, np.zeros((4, 4), np.complex64)), "must be a real"),
    "empty.npy": (lambda p: np.save(p, np.zeros((0, 5), np.float32)), "must hold pixels"),
    "lying.npy": (lambda p: npy_header_only(p, (100000, 100000, 3)), "its header says 120000000128 bytes, the file has 192"),
    "huge.npy": (lambda p: sparse_npy(p, (10000, 10000)), "10000x10000 = 100000000 pixels is over the safety limit"),
    "short.npy": (lambda p: npy_header_only(p, (300, 300, 3)), "its header says 1080128 bytes, the file has 192"),
    "fourd.npy": (lambda p: npy_header_only(p, (2, 2, 2, 2)), "got float32 (2, 2, 2, 2)"),
}


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("name", sorted(UNSIZABLE))
def test_an_input_the_planner_cannot_size_fails_alone(work, name, dry):
    """One line naming it, exit 1 at the end, the good input processed (a 0-d .npy was
    'internal error: ValueError: min() arg is an empty sequence' and nothing was processed)."""
    make, why = UNSIZABLE[name]
    make(work / name)
    result = imfilt("apply", name, "good.png", "-k", "box", "--out-dir", "o", *(["--dry-run"] if dry else []))
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "internal error" not in result.stderr + result.stdout
    if dry:
        lines = [line for line in result.stdout.splitlines() if line.startswith(name)]
        assert len(lines) == 1 and lines[0].startswith(f"{name}: would fail: ") and why in lines[0], result.stdout
        assert "good.png (16x12, 3 channels) -> o/good.box.png" in result.stdout and not (work / "o").exists()
    else:
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith(f"{name}: ") and why in lines[0], result.stderr
        assert lines[1] == f"imfilt: 1 written, 1 input failed: {name}" and len(lines) == 2
        assert (work / "o" / "good.box.png").exists()


def test_the_run_and_the_dry_run_give_one_reason(work):
    for name, (make, _) in UNSIZABLE.items():
        make(work / name)
    names = sorted(UNSIZABLE)
    run = imfilt("spectrum", *names, "good.png", "--out-dir", "o")
    dry = imfilt("spectrum", *names, "good.png", "--out-dir", "o2", "--dry-run")
    reasons = sorted(line for line in run.stderr.splitlines() if not line.startswith("imfilt:"))
    would = sorted(line.replace(": would fail: ", ": ") for line in dry.stdout.splitlines() if ": would fail: " in line)
    assert run.exit_code == dry.exit_code == 1 and reasons == would and len(reasons) == len(names)


# --- kernels: sized before they are parsed, 4097 taps a side for every kind -----------------


def test_a_kernel_npy_whose_header_claims_a_huge_shape_is_exit_2_naming_it(work):
    """It was 'internal error: MemoryError', exit 1: np.load allocated 74.5 GiB first."""
    npy_header_only(work / "huge.npy", (100000, 100000), descr="<f8")
    result = imfilt("apply", "good.png", "-k", "huge.npy", "-o", "o.png")
    assert result.exit_code == 2 and result.stderr == ("imfilt: huge.npy: 100000x100000 is over the 4097 taps a "
                                                       "side that kernels may have\n")


@pytest.mark.parametrize("name, write", [
    ("wide.txt", lambda p: p.write_text(" ".join(["1"] * 4098) + "\n")),
    ("tall.txt", lambda p: p.write_text("1\n" * 4098)),
    ("wide.mat", lambda p: p.write_text("4098 1\n" + " ".join(["1"] * 4098) + "\n")),
    ("wide.npy", lambda p: np.save(p, np.ones((1, 4098)))),
    ("bank.npy", lambda p: np.save(p, np.ones((2, 4098, 1)))),
    ("short.npy", lambda p: npy_header_only(p, (300, 300), extra=b"")),
])
def test_every_kernel_file_is_checked_by_size_before_it_is_parsed(work, name, write):
    """A 1x9000 .npy kernel ran (the 4097-tap limit held for built-ins only)."""
    write(work / name)
    result = imfilt("apply", "good.png", "-k", name, "-o", "o.png")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"imfilt: {name}"), result.stderr
    assert "4097 taps a side" in lines[0] or "its header says" in lines[0]
    assert not (work / "o.png").exists()


def test_a_text_kernel_file_larger_than_any_kernel_is_refused_unread(work):
    with open(work / "sparse.txt", "wb") as f:  # 65 MiB of holes: refused by its size, never read
        f.truncate(65 * 2**20)
    result = imfilt("apply", "good.png", "-k", "sparse.txt", "-o", "o.png")
    assert result.exit_code == 2 and "sparse.txt: 68157440 bytes is more than a text kernel file may hold" in result.stderr


def test_the_limit_holds_for_inline_and_library_kernels():
    with pytest.raises(KernelError, match="4098x1 is over the 4097 taps"):  # W x H, as ImageMagick
        Kernel("wide", np.ones((1, 4098)))
    with pytest.raises(KernelError, match="4098x1 is over the 4097 taps"):
        load_kernels("4098x1:" + ",".join(["1"] * 4098))
    with pytest.raises(KernelError, match="a side of 5000 digits"):
        load_kernels("9" * 5000 + "x1: 1")  # int() itself refuses 4300 digits
    assert load_kernels("1x4097:" + ",".join(["1"] * 4097))[0].shape == (4097, 1)


def test_inline_matrices_parse_in_linear_time(work):
    """A 1x60000 inline matrix took 13.9 s to parse: each value's error context copied the whole spec."""
    start = time.monotonic()
    result = imfilt("apply", "good.png", "-k", "1x60000:" + ",".join(["1"] * 60000), "-o", "o.png")
    assert result.exit_code == 2 and "1x60000 is over the 4097 taps" in result.stderr
    assert len(result.stderr) < 200  # the spec is shown cut, not its 120007 characters
    start = time.monotonic()
    kernel = load_kernels("64x64:" + ",".join(str(i) for i in range(4096)))[0]
    assert kernel.weights[63, 0] == 64 * 63 and time.monotonic() - start < 2


# --- FIFOs and devices: refused in one line, never read --------------------------------------


@pytest.fixture
def specials(work):
    """A FIFO that no one writes to, and /dev/zero behind an image's name."""
    os.mkfifo(work / "fifo.png")
    os.symlink("/dev/zero", work / "zero.png")
    return work


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_fifos_and_devices_as_inputs_are_refused_and_the_rest_run(specials, dry):
    """/dev/zero as x.png was read until the OOM killer ended it at 19 GB; a FIFO with one writer hung."""
    done, _ = run_limited(800, "apply", "zero.png", "fifo.png", "good.png", "-k", "box", "--out-dir", "o",
                             *(["--dry-run"] if dry else []), timeout=60)
    assert done.returncode == 1, done.stderr
    text = done.stdout if dry else done.stderr
    assert "zero.png: " + ("would fail: " if dry else "") + "not a regular file (a device)" in text, text
    assert "fifo.png: " + ("would fail: " if dry else "") + "not a regular file (a FIFO)" in text, text
    if not dry:
        assert done.stderr.strip().splitlines()[-1] == "imfilt: 1 written, 2 inputs failed: zero.png, fifo.png"
        assert (specials / "o" / "good.box.png").exists()


@pytest.mark.parametrize("args, message", [
    (["apply", "good.png", "-k", "fifo.png", "-o", "o.png"], "imfilt: fifo.png: not a regular file (a FIFO)"),
    (["apply", "good.png", "-k", "zero.png", "-o", "o.png"], "imfilt: zero.png: not a regular file (a device)"),
    (["apply", "good.png", "-k", "/dev/zero", "-o", "o.png"], "imfilt: /dev/zero: not a regular file (a device)"),
    (["apply", "good.png", "-k", "k.npy", "-o", "o.png"], "imfilt: k.npy: not a regular file (a FIFO)"),
    (["match", "good.png", "-t", "fifo.png", "-o", "o.png"], "imfilt: template fifo.png: not a regular file (a FIFO)"),
    (["match", "good.png", "-t", "zero.png", "-o", "o.png"], "imfilt: template zero.png: not a regular file (a device)"),
])
def test_fifos_and_devices_as_kernels_and_templates_are_exit_2(specials, args, message):
    """They said 'no such kernel file', or were read without end."""
    os.mkfifo(specials / "k.npy")
    done, _ = run_limited(800, *args, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert not (specials / "o.png").exists()


# --- names that cannot forge a line ----------------------------------------------------------

BIN = Path(sys.executable).parent
FORGED = "bad\nimfilt: FORGED.png: all good.png"
ESCAPE = "esc\x1b[31mred\x07.png"
NOT_UTF8 = os.fsdecode(b"x\xff\tname.png")


def run_imfilt(*args, cwd):
    return subprocess.run([BIN / "imfilt", *args], capture_output=True, cwd=cwd, timeout=120)


@pytest.fixture
def odd_names(work):
    """Three junk files whose names hold a newline, a terminal escape, a tab and a byte that is not UTF-8."""
    for name in (FORGED, ESCAPE, NOT_UTF8):
        (work / name).write_bytes(b"junk")
    return work


def test_names_are_shown_escaped_in_errors_and_the_summary(odd_names):
    """A name with a newline printed a second line starting 'imfilt: FORGED.png'; escapes reached the terminal."""
    done = run_imfilt("apply", FORGED, ESCAPE, NOT_UTF8, "good.png", "-k", "box", "--out-dir", "o", cwd=odd_names)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 1 and len(lines) == 4, lines
    assert lines[0] == r"'bad\nimfilt: FORGED.png: all good.png': not an image, or a format imfilt cannot read"
    assert lines[1].startswith(r"'esc\x1b[31mred\x07.png': ")
    assert lines[2].startswith(r"'x\udcff\tname.png': ")
    assert lines[3] == (r"imfilt: 1 written, 3 inputs failed: 'bad\nimfilt: FORGED.png: all good.png', "
                        r"'esc\x1b[31mred\x07.png', 'x\udcff\tname.png'")
    assert b"\x1b" not in done.stderr and b"\x07" not in done.stderr and b"\t" not in done.stderr


def test_names_are_shown_escaped_in_the_dry_run(odd_names):
    for name in (FORGED, NOT_UTF8):
        shutil.copy(odd_names / "good.png", odd_names / f"ok-{name}")
    done = run_imfilt("apply", f"ok-{FORGED}", f"ok-{NOT_UTF8}", ESCAPE, "-k", "box", "--out-dir", "o", "--dry-run",
                      cwd=odd_names)
    lines = done.stdout.decode().splitlines()
    assert done.returncode == 1 and len(lines) == 4 and done.stderr == b"", (lines, done.stderr)
    assert lines[0].startswith(r"'ok-bad\nimfilt: FORGED.png: all good.png' (16x12, 3 channels) -> "
                               r"'o/ok-bad\nimfilt: FORGED.png: all good.box.png'  [box]")
    assert lines[1].startswith(r"'ok-x\udcff\tname.png' (16x12, 3 channels) -> 'o/ok-x\udcff\tname.box.png'")
    assert lines[2] == r"'esc\x1b[31mred\x07.png': would fail: not an image, or a format imfilt cannot read"
    assert b"\x1b" not in done.stdout and b"\t" not in done.stdout


def test_json_records_keep_the_names_bytes_and_escape_control_characters(odd_names):
    """A name that is not UTF-8 made --json fail (UnicodeEncodeError), and writing it ('internal error')."""
    shutil.copy(odd_names / "good.png", odd_names / NOT_UTF8)
    shutil.copy(odd_names / "good.png", odd_names / ESCAPE)
    for dry in (["--dry-run"], []):
        done = run_imfilt("apply", NOT_UTF8, ESCAPE, "-k", "box", "--out-dir", "o", "--json", *dry, cwd=odd_names)
        assert done.returncode == 0 and done.stderr == (b"" if dry else b"imfilt: 2 written\n"), done.stderr
        records = [json.loads(line) for line in done.stdout.decode("ascii").splitlines()[:2]]
        assert [os.fsencode(r["input"]) for r in records] == [os.fsencode(NOT_UTF8), os.fsencode(ESCAPE)]
        assert b"\x1b" not in done.stdout
    assert sorted(os.listdir(odd_names / "o")) == sorted([os.fsdecode(b"x\xff\tname.box.png"), "esc\x1b[31mred\x07.box.png"])


@pytest.mark.parametrize("args, start", [
    (["apply", "good.png", "-k", "k\n.txt", "-o", "o.png"], r"imfilt: 'k\n.txt': no such kernel file"),
    (["apply", "good.png", "-k", "box", "-o", "o\x1b.gif"], r"imfilt: 'o\x1b.gif': unknown output format"),
    (["apply", "good.png", "-k", "box", "--out-dir", "d\n", "--name", "{stem}"], r"imfilt: 'd\n/good': unknown output"),
    (["match", "good.png", "-t", "t\n.png"], r"imfilt: template 't\n.png': no such file"),
])
def test_names_in_usage_errors_are_shown_escaped(work, args, start):
    done = run_imfilt(*args, cwd=work)
    assert done.returncode == 2 and done.stderr.decode().startswith(start) and done.stderr.count(b"\n") == 1, done.stderr


# --- the library's API: one clear ValueError for arrays that are not images -------------------

NOT_IMAGES = {
    "0-d": (np.float32(1), "must be an (H, W) or (H, W, C) array, got shape ()"),
    "1-D": (np.zeros(5, np.float32), "got shape (5,)"),
    "4-D": (np.zeros((2, 3, 4, 1), np.float32), "got shape (2, 3, 4, 1)"),
    "no rows": (np.zeros((0, 4), np.float32), "is empty: shape (0, 4)"),
    "no channels": (np.zeros((3, 3, 0), np.float32), "is empty: shape (3, 3, 0)"),
    "complex": (np.zeros((3, 3), np.complex64), "must hold real numbers, got complex64"),
    "text": (np.array([["a", "b"]]), "must hold real numbers, got <U1"),
}
API = {
    **{f"convolve {m}": (lambda x, m=m: lib.convolve(x, np.ones((1, 3)), method=m)) for m in ("direct", "separable", "fft", "auto")},
    "convolve valid": lambda x: lib.convolve(x, np.ones((1, 1)), size="valid"),
    "spectrum": lambda x: lib.spectrum(x),
    "lowpass": lambda x: lib.lowpass(x, 2),
    "apply_mask": lambda x: lib.apply_mask(x, np.ones((3, 3))),
    "match_template": lambda x: lib.match_template(x, np.ones((1, 1))),
    "write_image": lambda x: lib.write_image("never-written.npy", x),
    "learn_kernel": lambda x: lib.learn_kernel(x, x, (1, 1)),
    "wiener": lambda x: lib.wiener(x, np.ones((1, 3)) / 3),
    "richardson_lucy": lambda x: lib.richardson_lucy(x, np.ones((1, 3)) / 3, iterations=1),
}


@pytest.mark.parametrize("case", sorted(NOT_IMAGES))
@pytest.mark.parametrize("call", sorted(API))
def test_every_api_function_refuses_a_non_image_with_one_value_error(tmp_path, monkeypatch, call, case):
    """They ended in unpacking errors, OpenCV or numpy errors, or a ComplexWarning, different per method."""
    monkeypatch.chdir(tmp_path)
    array, message = NOT_IMAGES[case]
    with pytest.raises(lib.UsageError) as raised:
        API[call](array)
    assert isinstance(raised.value, ValueError) and message in str(raised.value)
    assert os.listdir(tmp_path) == []


def test_the_template_is_checked_as_the_image_is():
    with pytest.raises(ValueError, match="template is empty: shape"):
        lib.match_template(np.ones((4, 4)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="template must be an"):
        lib.match_template(np.ones((4, 4)), np.ones(3))


def test_argument_errors_are_value_errors():
    """scipy and scikit-image users catch ValueError for a bad argument."""
    for call in (lambda: lib.convolve(np.ones((3, 3)), np.ones((3, 3)), mode="sideways"),
                 lambda: lib.load_kernel("gaussian:sigma=-1"), lambda: lib.lowpass(np.ones((3, 3)), -1),
                 lambda: lib.Kernel("k", np.ones(3))):
        with pytest.raises(ValueError):
            call()
    assert issubclass(lib.UsageError, ValueError) and issubclass(lib.KernelError, ValueError)
    assert not issubclass(lib.InputError, ValueError)  # a bad file is not a bad argument


# --- decompression bombs: inflated no further than the header says ---------------------------


@pytest.mark.parametrize("memory", ["2G", "1K"], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", ["png16", "png8", "tiff-tile"])
def test_a_bomb_is_read_as_its_header_says_within_a_hard_memory_limit(tmp_path, kind, memory):
    """100x100 PNGs and a 256x256 16-bit TIFF tile whose pixels inflate to 512 MiB: they took
    2.2 GB and more (5.4 GB for the 16-bit PNG, 'libpng warning: IDAT: Too much image data' on
    stderr for the 8-bit one). Read as the header says: exit 0, silent, zeros, under 600 MB of
    address space (python, numpy, scipy, OpenCV and libvips take ~450 MB of it)."""
    path = tmp_path / ("bomb.tif" if kind == "tiff-tile" else "bomb.png")
    if kind == "tiff-tile":
        bombs.tiff_tile_bomb(path, 2**29)
    else:
        bombs.png_bomb(path, 2**29, depth=int(kind[3:]))
    out = tmp_path / "out.tif"
    start = time.monotonic()
    done, _ = run_limited(600, "apply", path, "-k", "box", "-o", out, "--memory", memory, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert time.monotonic() - start < 60
    import tifffile

    result = tifffile.imread(out)
    assert result.shape[:2] == ((256, 256) if kind == "tiff-tile" else (100, 100)) and not result.any()


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt", b"iCCP"])
def test_a_text_or_icc_bomb_is_refused_in_one_line(tmp_path, kind):
    """A compressed text chunk that inflates to 256 MiB: OpenCV's libpng printed 'libpng warning:
    zTXt: truncated' and read on. Pillow refuses it past its MAX_TEXT_CHUNK (as it does an ICC
    profile): one line, exit 1, memory bounded."""
    path = bombs.png_text_bomb(tmp_path / "text.png", 2**28, kind)
    done, _ = run_limited(600, "apply", path, "-k", "box", "-o", tmp_path / "o.png", timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"{path}: truncated or corrupt image (Decompressed data too large")


def test_a_png_with_less_data_than_its_header_says_is_still_corrupt(tmp_path):
    """The bound cuts what is too much, never makes up what is missing."""
    data = Path(bombs.png_bomb(tmp_path / "short.png", 100 * 601 - 600)).read_bytes()  # one row short
    (tmp_path / "short.png").write_bytes(data)
    result = imfilt("apply", tmp_path / "short.png", "-k", "box", "-o", tmp_path / "o.png")
    assert result.exit_code == 1 and "truncated or corrupt image" in result.stderr


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("planes, transparent", [(1, None), (2, None), (3, None), (3, (1, 2, 3)), (4, None)])
def test_the_bound_changes_nothing_in_a_well_formed_16bit_png(interlace, planes, transparent):
    """pypng on the original bytes is the reference (interlaced, grey+alpha, a tRNS key, many IDAT chunks)."""
    import io

    import png

    from imfilt.inflate import bounded_png

    rng = np.random.default_rng(planes)
    pixels = rng.integers(0, 65536, (37, 23 * planes), dtype=np.uint16)
    buffer = io.BytesIO()
    png.Writer(23, 37, greyscale=planes < 3, alpha=planes in (2, 4), bitdepth=16, interlace=interlace,
               transparent=transparent, chunk_limit=300).write(buffer, pixels.tolist())
    data = buffer.getvalue()
    reference = png.Reader(bytes=data).asDirect()
    bounded = png.Reader(file=bounded_png(data)).asDirect()
    assert bounded[3]["planes"] == reference[3]["planes"]
    assert [list(row) for row in bounded[2]] == [list(row) for row in reference[2]]


# --- no orphans ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """The processes a process started (from any of its threads), by /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _alive(pids: list[int]) -> list[int]:
    def running(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    return [pid for pid in pids if running(pid)]


@pytest.mark.skipif(not Path("/proc/self/task/").exists() or sys.platform != "linux", reason="Linux: /proc and prctl")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_nothing_of_a_run_outlives_it(tmp_path, sig):
    """kill -9 of a -j 2 run left its two workers and multiprocessing's resource tracker alive (parent 1)
    for minutes; after SIGTERM the tracker outlived the run. Now the workers die with the parent, and
    a run that handles its signal waits for all of them before it exits."""
    (tmp_path / "in").mkdir()
    for i in range(30):
        Image.fromarray((np.random.default_rng(i).random((200, 240, 3)) * 255).astype(np.uint8)).save(tmp_path / "in" / f"p{i:02}.png")
    process = subprocess.Popen([BIN / "imfilt", "apply", tmp_path / "in", "-k", "gaussian:sigma=6", "--method", "direct",
                                "--out-dir", tmp_path / "out", "-j", "2"], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((tmp_path / "out").glob("*.png"))) < 2:
        time.sleep(0.02)
    children = _children(process.pid)
    try:
        assert len(children) >= 2, children  # two workers (and the resource tracker)
        process.send_signal(sig)
        process.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert process.returncode == 128 + sig and _alive(children) == []
        else:
            deadline = time.time() + 10
            while _alive(children) and time.time() < deadline:
                time.sleep(0.05)
            assert _alive(children) == []
    finally:
        for pid in _alive(children):
            os.kill(pid, signal.SIGKILL)


# --- a lost Dask scheduler ---------------------------------------------------------------------


@contextlib.contextmanager
def _cluster(tmp_path, worker_args: list[str]):
    """A scheduler and one worker on 127.0.0.1 (`dask` CLIs) that has joined: (the scheduler, the
    worker, the address); both killed after."""
    from distributed import Client

    address_file, local = tmp_path / "scheduler.json", ["--dashboard-address", "127.0.0.1:0"]
    scheduler = subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file",
                                  address_file, *local], stderr=subprocess.DEVNULL, cwd=tmp_path)
    worker = subprocess.Popen([BIN / "dask", "worker", "--scheduler-file", address_file, "--host", "127.0.0.1",
                               "--nthreads", "1", *worker_args, *local], stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.time() + 60
        while not address_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)  # written whole
        address = json.loads(address_file.read_text())["address"]
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        yield scheduler, worker, address
    finally:
        for process in (worker, scheduler):
            if process.poll() is None:
                process.kill()
                process.wait(30)


@contextlib.contextmanager
def _cluster_mid_run(tmp_path, worker_args: list[str]):
    """_cluster's, and an imfilt run over 40 photos on it that has written 2 outputs: (the
    scheduler, the worker, the run, the address); all killed after."""
    (tmp_path / "in").mkdir()
    for i in range(40):
        Image.fromarray((np.random.default_rng(i).random((200, 240, 3)) * 255).astype(np.uint8)).save(tmp_path / "in" / f"p{i:02}.png")
    with _cluster(tmp_path, worker_args) as (scheduler, worker, address):
        run = subprocess.Popen([BIN / "imfilt", "apply", tmp_path / "in", "-k", "gaussian:sigma=6", "--method", "direct",
                                "--out-dir", tmp_path / "out", "--scheduler", address], stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 60
            while len(list((tmp_path / "out").glob("*.png"))) < 2 and time.time() < deadline:
                time.sleep(0.02)
            yield scheduler, worker, run, address
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(30)


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="dask.distributed is not installed")
def test_a_result_lost_with_its_worker_is_a_lost_cluster_not_a_wait_for_ever(tmp_path, monkeypatch):
    """A job was done, then its worker was killed before the run fetched its result: distributed
    waits for the job to run again, and with no worker left the run hung (a CI run timed out)."""
    from distributed import Client
    import imfilt.run.distributed as on_dask
    from imfilt.errors import LostCluster

    monkeypatch.setattr(on_dask, "NO_WORKERS_WAIT", 2)
    with _cluster(tmp_path, ["--no-nanny"]) as (_, worker, address), Client(address, timeout="30s") as client:
        future = client.submit(sum, [1, 2, 3])
        assert on_dask._Workers(client, address).result(future) == 6
        worker.kill()
        worker.wait(30)
        start = time.monotonic()
        with pytest.raises(LostCluster, match="none left for 2 s"):
            on_dask._Workers(client, address).result(client.submit(sum, [4, 5]))
        with pytest.raises(LostCluster, match="none left for 2 s"):
            on_dask._Workers(client, address).result(future)
        assert time.monotonic() - start < 30


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="dask.distributed is not installed")
def test_losing_the_scheduler_mid_run_is_one_line_and_exit_1(tmp_path):
    """It printed distributed's ERROR log with two tracebacks and then imfilt's own traceback (or
    'internal error: FutureCancelledError')."""
    with _cluster_mid_run(tmp_path, ["--nworkers", "1"]) as (scheduler, _, run, address):
        scheduler.kill()
        start = time.monotonic()
        _, stderr = run.communicate(timeout=120)
        lines = stderr.decode().splitlines()
        assert run.returncode == 1 and len(lines) == 1, stderr.decode()
        assert re.fullmatch(rf"imfilt: lost the connection to the Dask scheduler at {address}; \d+ written", lines[0])
        assert time.monotonic() - start < 60


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="dask.distributed is not installed")
def test_losing_the_last_worker_mid_run_is_one_line_and_exit_1(tmp_path):
    """With its only worker killed (no nanny to restart it), the run waited forever: distributed
    keeps the jobs for a worker that never comes. Now NO_WORKERS_WAIT seconds, then one line."""
    from imfilt.run.distributed import NO_WORKERS_WAIT

    with _cluster_mid_run(tmp_path, ["--no-nanny"]) as (_, worker, run, address):
        worker.kill()
        start = time.monotonic()
        _, stderr = run.communicate(timeout=NO_WORKERS_WAIT + 60)
        lines = stderr.decode().splitlines()
        assert run.returncode == 1 and len(lines) == 1, stderr.decode()
        assert re.fullmatch(rf"imfilt: lost the Dask workers at {address}: none left for {NO_WORKERS_WAIT} s; \d+ written",
                            lines[0])
        assert time.monotonic() - start < NO_WORKERS_WAIT + 30


# --- --dry-run runs exactly the run's checks -------------------------------------------------

from test_errors import ERRORS, work as errors_work  # noqa: E402  (the error table and its folder)


def _reasons(result, dry: bool) -> list[str]:
    """The lines that say why, as the run prints them (the dry run's 'X: would fail: why' -> 'X: why')."""
    if result.exit_code == 2 or not dry:
        return [line for line in result.stderr.splitlines() if not line.startswith("imfilt: ") or result.exit_code == 2]
    return [line.replace(": would fail: ", ": ", 1) for line in result.stdout.splitlines() if ": would fail: " in line]


# What the dry run cannot foresee without reading the pixels, or without making a folder (strict:
# a case that starts to agree must be moved back into the table).
FORESEEN_ONLY_BY_THE_RUN = {
    "nan.npy": "NaN and infinite samples are found in the pixels, which a dry run does not read",
    "inf.tif": "NaN and infinite samples are found in the pixels, which a dry run does not read",
    "five.npy": "the result's channels (--gray, --alpha drop, the operation) meet the format when it is written",
    "/proc/imfilt-cannot": "/proc lets root write by its permissions, and refuses mkdir: only making the folder tells",
}


def _dry_run_case(args, code, message):
    why = next((why for item, why in FORESEEN_ONLY_BY_THE_RUN.items() if item in map(str, args)), None)
    marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
    return pytest.param(args, code, message, marks=marks, id=" ".join(map(str, args))[:60])


@pytest.mark.parametrize("args, code, message", [_dry_run_case(*case) for case in ERRORS])
def test_the_dry_run_and_the_run_give_the_same_exit_code_and_message(errors_work, args, code, message):
    """A read-only output folder, a .npy over the pixel limit and one with a lying header each
    gave different answers (see also test_the_run_and_the_dry_run_give_one_reason)."""
    dry = imfilt(*args, "--dry-run", input=b"")
    run = imfilt(*args, input=b"")
    assert (dry.exit_code, _reasons(dry, True)) == (run.exit_code, _reasons(run, False)), (dry.stdout, dry.stderr)
    assert run.exit_code == code and any(message in line for line in _reasons(run, False))


@pytest.mark.parametrize("spec", ["3x3: 1e308,1e308,1e308,0,0,0,0,0,0", "1x2: 1e308,-1e308"])
def test_kernel_values_near_float64_s_limit_are_one_line_without_numpy_s_warning(work, spec):
    """numpy's 'RuntimeWarning: overflow encountered in reduce' reached stderr before the message."""
    done = run_imfilt("apply", "good.png", "-k", spec, "-o", "o.png", cwd=work)
    assert done.returncode == 2 and done.stderr.count(b"\n") == 1 and b"too large for float32" in done.stderr, done.stderr


@pytest.mark.parametrize("memory", ["2G", "1K"], ids=["whole", "streamed"])
def test_a_corrupt_tile_is_one_line_whole_or_streamed(tmp_path, memory):
    """On the streamed path it was 'internal error: TiffFileError: corrupted tile ...'."""
    import tifffile

    path = tmp_path / "t.tif"
    tifffile.imwrite(path, (np.random.default_rng(0).random((32, 48, 3)) * 65535).astype(np.uint16), tile=(16, 16),
                     compression="zlib", photometric="rgb")
    with tifffile.TiffFile(path) as tiff:
        offset, count = tiff.pages.first.dataoffsets[1], tiff.pages.first.databytecounts[1]
    with open(path, "r+b") as f:  # the second tile: a zlib stream that ends too soon
        f.seek(offset)
        f.write(zlib.compress(b"\0" * 100)[: count // 2].ljust(count, b"\0"))
    result = imfilt("apply", path, "-k", "box", "-o", tmp_path / "o.tif", "--memory", memory)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "internal error" not in lines[0], result.stderr
    assert lines[0].startswith(f"{path}: ") and "corrupt" in lines[0] and not (tmp_path / "o.tif").exists()


def test_an_endless_standard_input_is_read_no_further_than_an_image_may_take(work):
    """`yes | imfilt apply - ...` read until memory ran out; now up to --memory (or what the pixel
    limit lets an image take), then one line, exit 1."""
    start = time.monotonic()
    limited = f"ulimit -v {1000 * 1024}; {BIN / 'imfilt'} apply - -k box -o o.png --memory 10M"  # a regression: MemoryError
    done = subprocess.run(f"yes | ({limited})", shell=True, cwd=work,
                          capture_output=True, timeout=120)
    assert done.returncode == 1 and done.stderr == (b"<stdin>: more than 10485760 bytes, more than --memory or the "
                                                    b"pixel limit allows an image to take; give a file\n"), done.stderr
    assert not (work / "o.png").exists() and time.monotonic() - start < 60
    with open(work / "good.png", "rb") as image:  # an image is read whole, as before
        assert subprocess.run([BIN / "imfilt", "apply", "-", "-k", "box", "-o", "o.png", "--memory", "10M"], stdin=image,
                              cwd=work).returncode == 0


def test_reading_an_endless_standard_input_obeys_sigterm(work):
    """A read that would go on for gigabytes ends at once on SIGTERM (it once ignored it), writing nothing."""
    run = subprocess.Popen([BIN / "imfilt", "apply", "-", "-k", "box", "-o", "o.png", "--memory", "6G"], cwd=work,
                           stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    yes = subprocess.Popen(["yes"], stdout=run.stdin)
    try:
        time.sleep(1.0)  # reading by now
        run.send_signal(signal.SIGTERM)
        start = time.monotonic()
        _, stderr = run.communicate(timeout=60)
        assert run.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), stderr
        assert time.monotonic() - start < 10 and len(stderr.splitlines()) <= 1
        assert not (work / "o.png").exists() and not list(work.glob(".o.png*"))
    finally:
        yes.kill()
        run.kill()


# --- temporaries a killed run left -------------------------------------------------------------


def test_a_run_removes_the_temporaries_a_killed_run_left_and_only_those(work):
    """'.NAME.XXXXXXXX.part' files and folders beside this run's outputs, whose writer is gone."""
    (work / "o").mkdir()
    left = [work / "o" / ".good.box.png.k2j4h1x0.part", work / "o" / ".good.box.tif.a1b2c3d4.part"]
    left[0].write_bytes(b"half a png")
    left[1].mkdir()
    (left[1] / "good.box.tif").write_bytes(b"half a tiff")
    others = [work / "o" / ".other.png.k2j4h1x0.part", work / "o" / ".good.box.png.notours", work / "o" / "x.part"]
    for path in others:
        path.write_bytes(b"not this run's")
    result = imfilt("apply", "good.png", "-k", "box", "--out-dir", "o")
    assert result.exit_code == 0, result.stderr
    assert not left[0].exists() and (work / "o" / "good.box.png").exists()
    result = imfilt("apply", "good.png", "-k", "box", "-o", "o/good.box.tif", "--memory", "1K")
    assert result.exit_code == 0 and not left[1].exists(), result.stderr
    assert all(path.exists() for path in others)


_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_temporary_that_another_run_still_writes_is_left_alone(work):
    """Another process holds the lock (as a running imfilt does on each temporary it writes)."""
    (work / "o").mkdir()
    part = work / "o" / ".good.box.png.abcdefgh.part"
    part.write_bytes(b"being written")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, part], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert imfilt("apply", "good.png", "-k", "box", "--out-dir", "o").exit_code == 0
        assert part.exists()
    finally:
        holder.communicate(b"", timeout=30)
    assert imfilt("apply", "good.png", "-k", "box", "--out-dir", "o", "--overwrite").exit_code == 0
    assert not part.exists()


def test_two_runs_at_once_on_one_output(work):
    """A run that starts while another streams the same output (through a locked temporary
    folder) leaves that folder alone: both end whole."""
    import tifffile

    tifffile.imwrite(work / "big.tif", (np.random.default_rng(0).random((600, 800, 3)) * 255).astype(np.uint8),
                     tile=(64, 64), photometric="rgb")
    slow = subprocess.Popen([BIN / "imfilt", "apply", "big.tif", "-k", "gaussian:sigma=3", "--method", "direct", "-o",
                             "out.tif", "--memory", "300K"], cwd=work, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list(work.glob(".out.tif.*.part")) and time.time() < deadline:
        time.sleep(0.01)
    assert list(work.glob(".out.tif.*.part")), "the slow run wrote no temporary"
    quick = run_imfilt("apply", "good.png", "-k", "box", "-o", "out.tif", "--overwrite", cwd=work)
    _, stderr = slow.communicate(timeout=300)
    assert quick.returncode == 0 and slow.returncode == 0, (quick.stderr, stderr)
    assert tifffile.imread(work / "out.tif").shape == (600, 800, 3)  # the slow run renamed its output last
    assert not list(work.glob(".*.part"))


def test_a_file_far_larger_than_its_header_s_image_is_not_read_whole(work):
    """A 16x12 PNG followed by 1 GiB (of holes): it was read whole before decoding ('not enough
    memory' under a limit); now its size is checked against its header's image first."""
    with open(work / "good.png", "ab") as f:
        f.truncate(f.seek(0, os.SEEK_END) + 2**30)
    done, _ = run_limited(600, "apply", "good.png", "-k", "box", "-o", "o.png", timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("good.png: ") and "is more than an image of 192 pixels may take" in done.stderr
