"""Several apply outputs of one input streamed together (planning.stream_groups, tiled.run_outputs): the
input is decoded once for all of them, each output's bytes are the whole-image path's, and a
failure or a signal leaves only whole files, counted."""

import json
import os
import threading

import numpy as np
import pytest
import tifffile
from PIL import Image

from imfilt.ahead import fan_out
from imfilt.image import decoded
from imfilt.ops.operations import Apply
from imfilt.run import pipeline, planning
from test_banded import ASYM, _files, _input, _paths
from test_streamed_png import _run

ASYM2 = "5x3: 2,0,1,3,-1, 1,1,0,-2,4, 0,3,-1,2,1"


def _kernel(name):
    from imfilt.ops.kernels import load_kernel

    return load_kernel(name)


def _layer(folder):
    """A (3, 3, 5, 5) convolutional layer: three maps that share the planes of each window."""
    weights = np.random.default_rng(2).normal(size=(3, 3, 5, 5)).astype(np.float32)
    np.save(folder / "layer.npy", weights)
    return folder / "layer.npy"


@pytest.fixture
def outputs_of(tmp_path, monkeypatch):
    """Run ``apply SOURCE OPTIONS --out-dir DIR`` in bands (from 1 pixel) and whole: both CLI
    results and both folders' files, and how many times the streamed runner was called."""
    calls = []
    run_outputs = pipeline.tiled.run_outputs
    monkeypatch.setattr(pipeline.tiled, "run_outputs", lambda *a, **k: calls.append(a[0]) or run_outputs(*a, **k))

    def run(source, *options):
        results, files = [], []
        for name in ("bands", "whole"):
            _paths(monkeypatch, name)
            folder = tmp_path / name
            results.append(_run("apply", source, *options, "--out-dir", folder, "--json"))
            files.append({p.name: _files(p) for p in sorted(folder.iterdir())} if folder.exists() else {})
        return results, files, len(calls)

    return run


SHARED = [
    ["-k", "sobel", "-k", "gaussian:sigma=2", "-k", ASYM],
    ["-k", "box", "-k", ASYM, "--boundary", "wrap"],
    ["-k", ASYM, "-k", "box:size=31", "--boundary", "constant", "--cval", "0.3"],
    ["-k", "laplacian", "-k", "sobel", "--scale", "stretch"],
    ["-k", ASYM, "-k", ASYM2, "--size", "full", "--boundary", "mirror", "--correlate"],  # one output size
    ["-k", ASYM, "-k", ASYM2, "--size", "valid", "--boundary", "wrap"],
    ["-k", "sobel", "-k", "box", "--gray", "--depth", "16"],
    ["-k", "LAYER"],
]


@pytest.mark.parametrize("options", SHARED, ids=" ".join)
def test_several_outputs_in_bands_are_the_whole_image_path_s_bytes(tmp_path, monkeypatch, outputs_of, options):
    options = [str(_layer(tmp_path)) if o == "LAYER" else o for o in options]
    (bands, whole), (mine, theirs), calls = outputs_of(_input(tmp_path, "png"), *options)
    assert bands.exit_code == whole.exit_code == 0, bands.stderr + whole.stderr
    assert calls == 1 and len(mine) >= 2 and mine == theirs
    _paths(monkeypatch, "bands")
    plan = _run("apply", _input(tmp_path, "png"), *options, "--out-dir", tmp_path / "plan", "--dry-run", "--json")
    assert [json.loads(line)["streamed"]["banded"] for line in plan.stdout.splitlines()[:-1]] == [True] * len(mine)


@pytest.mark.parametrize("kind", ["rgba.png", "16.png", "jpg", "tif", "npy"])
@pytest.mark.parametrize("suffix", [".png", ".npy", ".tif", ".zarr"])
def test_several_outputs_of_each_input_kind_in_bands(tmp_path, outputs_of, kind, suffix):
    (bands, whole), (mine, theirs), calls = outputs_of(_input(tmp_path, kind), "-k", "gaussian:sigma=2", "-k", ASYM,
                                                       "--name", "{stem}.{op}" + suffix)
    assert bands.exit_code == whole.exit_code == 0, bands.stderr + whole.stderr
    assert calls == 1 and len(mine) == 2 and mine == theirs


def test_the_records_are_the_whole_image_ones(tmp_path, outputs_of):
    (bands, whole), _, _ = outputs_of(_input(tmp_path, "png"), "-k", "sobel", "-k", "box")
    records = [[json.loads(line) for line in r.stdout.splitlines()] for r in (bands, whole)]
    for record in records[0] + records[1]:
        record.pop("seconds")
        record["output"] = os.path.basename(record["output"])
    assert records[0] == records[1] and len(records[0]) == 2


def test_a_png_is_decoded_once_for_all_its_outputs(tmp_path, monkeypatch):
    """Each row of the input leaves libvips once, whatever the number of outputs (a spy on the real decoder)."""
    _paths(monkeypatch, "bands")
    rows = []
    decode = decoded.DecodedRows._decode
    monkeypatch.setattr(decoded.DecodedRows, "_decode", lambda self, a, b: rows.append(b - a) or decode(self, a, b))
    source = _input(tmp_path, "png")
    result = _run("apply", source, "-k", "sobel", "-k", "box:size=31", "-k", ASYM, "--out-dir", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert len(list((tmp_path / "out").iterdir())) == 3
    assert sum(rows) == Image.open(source).height


def test_which_outputs_go_in_bands_together(tmp_path, monkeypatch):
    """Apply outputs of one size into files that stream (or standard output as PNG), at most
    MAX_TOGETHER of them; JPEG, WebP and BMP gather their bands and encode once."""
    _paths(monkeypatch, "bands")

    def bands(*names, kernels=("box", ASYM), size="same"):
        outputs = [planning.Output(name, Apply(_kernel(k), size=size)) for name, k in zip(names, kernels)]
        return planning.bands_pay((210, 202, 3), outputs, True, planning.Settings())

    assert bands("a.png", "b.png") and bands("a.png", "b.npy") and bands("a.png", "b.png", size="valid", kernels=("box",) * 2)
    assert bands("a.png", "b.tif") and bands("a.png", "b.zarr") and bands("-") and bands("a.jpg", "b.webp", "c.bmp", kernels=("box",) * 3)
    assert not bands("a.png", "b.png", size="valid")  # 3x3 and 5x3 kernels: two output sizes
    many = [f"{i}.png" for i in range(planning.MAX_TOGETHER + 1)]
    assert bands(*many[:-1], kernels=["box"] * len(many)) and not bands(*many, kernels=["box"] * len(many))


# --- images larger than memory --------------------------------------------------------------


@pytest.fixture
def big_tiff(tmp_path):
    image = (np.random.default_rng(11).random((300, 101, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, photometric="rgb", compression="zlib", tile=(32, 32))
    return tmp_path / "big.tif"


@pytest.mark.parametrize("memory", ["2000K", "200K"])
@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_several_tiled_outputs_equal_the_whole_image_ones(tmp_path, big_tiff, memory, suffix):
    """2000K: bands of whole rows, one for the three outputs, bit for bit; 200K: windows bounded in
    both dimensions, so each output streams alone (a shared 2-D window would cost the others their
    whole rows), where OpenCV's rounding by position may move a stored level by one."""
    from imfilt.image.io import load

    options = ["-k", "sobel", "-k", ASYM, "-k", "box:size=5", "--boundary", "wrap", "--name", "{stem}.{op}" + suffix]
    tiled = _run("apply", big_tiff, *options, "--out-dir", tmp_path / "tiled", "--memory", memory, "--json")
    whole = _run("apply", big_tiff, *options, "--out-dir", tmp_path / "whole", "--json")
    assert tiled.exit_code == whole.exit_code == 0, tiled.stderr + whole.stderr
    windows = {os.path.basename(r["output"]): r["window"] for r in map(json.loads, tiled.stdout.splitlines())}
    plan = _run("apply", big_tiff, *options, "--out-dir", tmp_path / "plan", "--memory", memory, "--dry-run", "--json")
    planned = {os.path.basename(r["output"]): r["streamed"]["window"] for r in map(json.loads, plan.stdout.splitlines())
               if "output" in r}
    assert planned == windows  # --dry-run foresees each output's window
    if memory == "2000K":
        assert {tuple(w) for w in windows.values()} == {(16, 101)}  # one band of whole rows for the three
    else:
        assert all(w[1] < 101 for w in windows.values())
    for name in sorted(os.listdir(tmp_path / "whole")):
        got, expected = load(str(tmp_path / "tiled" / name)), load(str(tmp_path / "whole" / name))
        if memory == "2000K":
            assert np.array_equal(got.pixels, expected.pixels), name
        else:
            tolerance = 1e-5 if suffix == ".npy" else 1 / 255 + 1e-7
            assert np.abs(got.pixels - expected.pixels).max() <= tolerance, name


def test_outputs_of_very_different_reaches_do_not_share_a_window_that_costs_one_its_whole_rows(tmp_path):
    """box alone fits bands of whole rows at this budget, box:size=31 does not: each streams alone,
    and box is the whole image's result bit for bit (a review found one level off when they shared)."""
    from imfilt.image.io import load

    source = tmp_path / "a.png"
    Image.open("samples/astronaut.png").save(source)
    options = ["-k", "box", "-k", "box:size=31", "--boundary", "constant", "--cval", "0.7", "--name", "{stem}.{op}.tif"]
    for name, memory in (("tiled", "5M"), ("whole", "2G")):
        result = _run("apply", source, *options, "--out-dir", tmp_path / name, "--memory", memory)
        assert result.exit_code == 0, result.stderr
    for name in ("a.box.tif", "a.box-size31.tif"):
        got, expected = load(str(tmp_path / "tiled" / name)), load(str(tmp_path / "whole" / name))
        exact = name == "a.box.tif"
        assert np.array_equal(got.pixels, expected.pixels) if exact else np.abs(got.pixels - expected.pixels).max() <= 1 / 255 + 1e-7


def test_more_outputs_than_share_a_decode_go_in_groups_and_dry_run_says_which(tmp_path, big_tiff):
    kernels = [arg for i in range(planning.MAX_TOGETHER + 1) for arg in ("-k", f"box:size={2 * i + 1}")]
    run = _run("apply", big_tiff, *kernels, "--out-dir", tmp_path / "o", "--memory", "1M", "--json", "--name", "{op}.npy")
    plan = _run("apply", big_tiff, *kernels, "--out-dir", tmp_path / "p", "--memory", "1M", "--json", "--name", "{op}.npy",
                "--dry-run")
    assert run.exit_code == plan.exit_code == 0, run.stderr + plan.stderr
    windows = [json.loads(line)["window"] for line in run.stdout.splitlines()]
    planned = [json.loads(line)["streamed"]["window"] for line in plan.stdout.splitlines()[:-1]]
    assert planned == windows and len(windows) == planning.MAX_TOGETHER + 1


def test_a_tiled_output_that_cannot_share_runs_alone(tmp_path, big_tiff):
    """--size valid with kernels of two sizes: two output sizes, so each output reads the input itself."""
    result = _run("apply", big_tiff, "-k", "box", "-k", ASYM, "--size", "valid", "--out-dir", tmp_path / "o",
                  "--memory", "200K", "--json")
    assert result.exit_code == 0, result.stderr
    shapes = [json.loads(line)["shape"] for line in result.stdout.splitlines()]
    assert shapes == [[298, 99, 3], [298, 97, 3]]


# --- failures and signals -------------------------------------------------------------------


@pytest.mark.parametrize("renamed", [True, False], ids=["after-rename", "before-rename"])
@pytest.mark.parametrize("options", [[], ["--memory", "1M"]], ids=["banded", "tiled"])
def test_a_signal_at_one_output_s_rename_counts_the_files_that_are_there(tmp_path, monkeypatch, renamed, options):
    """The interruption is raised where the first output's file is renamed (on its writer's thread):
    the others end or finish, and the summary counts exactly the whole files there, nothing partial."""
    _paths(monkeypatch, "bands")
    source, folder = _input(tmp_path, "png"), tmp_path / "out"
    first = folder / "in.box.png"
    replace = os.replace

    def interrupted_replace(made, target):
        if str(target) == str(first):
            if renamed:
                replace(made, target)
            raise KeyboardInterrupt
        replace(made, target)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    result = _run("apply", source, "-k", "box", "-k", "sobel", "-k", ASYM, "--out-dir", folder, *options)
    there = sorted(p.name for p in folder.iterdir())
    assert result.exit_code == 130, result.stderr
    assert result.stderr == f"imfilt: interrupted; {len(there)} written\n"
    assert (first.name in there) == renamed and not [name for name in there if name.startswith(".")]
    for name in there:
        assert Image.open(folder / name).load() is not None


def test_a_damaged_input_fails_once_and_writes_none_of_its_outputs(tmp_path, monkeypatch):
    _paths(monkeypatch, "bands")
    source = _input(tmp_path, "png")
    data = source.read_bytes()
    source.write_bytes(data[: len(data) * 2 // 3])
    result = _run("apply", source, "-k", "box", "-k", "sobel", "--out-dir", tmp_path / "out")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "in.png" in result.stderr and not any((tmp_path / "out").iterdir())


# --- fan_out: one consumer per output, each on its thread -----------------------------------


def test_fan_out_gives_each_consumer_its_parts_in_order():
    got = [[], [], []]
    threads = set()

    def consumer(k):
        def consume(parts):
            threads.add(threading.get_ident())
            got[k].extend(parts)
        return consume

    fan_out(([i, -i, str(i)] for i in range(50)), [consumer(k) for k in range(3)])
    assert got == [list(range(50)), [-i for i in range(50)], [str(i) for i in range(50)]]
    assert len(threads) == 3 and threading.get_ident() not in threads


def test_fan_out_raises_a_consumer_s_error_after_ending_the_others():
    ended = []

    def failing(parts):
        for part in parts:
            if part == 3:
                raise OSError("disk full")

    def patient(parts):
        try:
            for _ in parts:
                pass
        finally:
            ended.append(threading.current_thread())

    made = []

    def items():
        for i in range(10**6):
            made.append(i)
            yield [i, i]

    with pytest.raises(OSError, match="disk full"):
        fan_out(items(), [failing, patient])
    assert len(ended) == 1 and not ended[0].is_alive()
    assert len(made) < 100  # the items stopped soon after the failure


def test_fan_out_ends_every_consumer_when_the_items_fail():
    ended, seen = [], []

    def consumer(parts):
        try:
            seen.extend(parts)
        except BaseException as exc:
            ended.append(type(exc).__name__)
            raise

    def items():
        yield [1, 1]
        raise ValueError("bad pixels")

    with pytest.raises(ValueError, match="bad pixels"):
        fan_out(items(), [consumer, consumer])
    assert ended == ["_Abandoned", "_Abandoned"] and seen == [1, 1]


def test_fan_out_does_not_wait_for_a_consumer_that_stopped_asking():
    """A TIFF writer stops at its last tile and never asks for the end."""
    got = []

    def takes_two(parts):
        got.extend([next(parts), next(parts)])

    fan_out(([i, i] for i in range(2)), [takes_two, lambda parts: got.extend(parts)])
    assert sorted(got) == [0, 0, 1, 1]


def test_fan_out_waits_for_its_writers_when_a_signal_interrupts_the_wait():
    """A Ctrl-C while the writers finish: fan_out raises it only once both have ended (on Python
    3.11 an interrupted Thread.join made is_alive() False of a running thread, and a review found
    a writer's temporary file left behind by a real SIGINT, 4 runs in 80)."""
    import signal
    import time

    finished = []

    def writer(seconds):
        def write(parts):
            try:
                list(parts)
            finally:
                time.sleep(seconds)  # renaming its file, say
                finished.append(seconds)
        return write

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            fan_out(iter([[1, 1]]), [writer(0.6), writer(0)])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert sorted(finished) == [0, 0.6]


def test_the_stretch_pass_never_reads_the_source_beside_the_writing_pass(tmp_path, monkeypatch):
    """--scale stretch reads the windows twice. The writing pass's reader used to start (and read
    ahead) before the bounds pass, both then reading one PNG whose rows decode in order: "out of
    order read" now and then. A spy on the real decoder, slowed down, sees any overlap."""
    import time

    _paths(monkeypatch, "bands")
    inside, overlaps = [], []
    rows = decoded.DecodedRows._rows

    def spied(self, start, stop):
        if inside:
            overlaps.append((start, stop))
        inside.append(1)
        try:
            time.sleep(0.01)
            return rows(self, start, stop)
        finally:
            inside.pop()

    monkeypatch.setattr(decoded.DecodedRows, "_rows", spied)
    source = _input(tmp_path, "png")
    result = _run("apply", source, "-k", "laplacian", "--scale", "stretch", "-o", tmp_path / "out.png", "--memory", "200K")
    assert result.exit_code == 0, result.stderr
    assert overlaps == []
