"""An apply output of an image that fits goes through the streamed runner in bands (planning.bands_pay;
several outputs at once: test_shared_decode.py), its input decoded in bands of rows (from a megapixel,
planning.BANDED_PIXELS) or decoded whole by io's decoders: the same bytes as the whole-image path
(an operation run on the whole image), which is kept for --montage and to compare with."""

import json
import threading

import numpy as np
import pytest
from PIL import Image

from imfilt.run import pipeline, planning
from imfilt.ahead import Ahead
from test_streamed_png import _png16, _photo, _refused, _run, _tiff

ASYM = "5x3: 1,2,0,-1,3, 0,4,1,0,-2, -1,0,2,5,1"


def _files(path):
    """A file's bytes, or a zarr store's files and their bytes."""
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return path.read_bytes()


def _paths(monkeypatch, name: str) -> None:
    """Which path an image that fits takes: "bands" (decoded in bands of rows from 1 pixel), "decoded"
    (streamed from a whole decode), "whole" (the operation on the whole image: never streamed)."""
    rows, streamed = {"bands": (1, 1), "decoded": (1 << 62, 1), "whole": (1 << 62, 1 << 62)}[name]
    monkeypatch.setattr(planning, "BANDED_PIXELS", rows)
    monkeypatch.setattr(planning, "STREAMED_PIXELS", streamed)


@pytest.fixture
def both(tmp_path, monkeypatch):
    """Run ``apply SOURCE -o OUT OPTIONS`` in bands, from a whole decode and whole (_paths): the
    banded and whole CLI results, and both outputs' bytes (None where nothing was written); the
    run from a whole decode must equal the whole one."""

    streamed = []  # each call of the streamed runner: the banded runs must go through it, the whole one not
    run_outputs = pipeline.tiled.run_outputs
    monkeypatch.setattr(pipeline.tiled, "run_outputs", lambda *a, **k: streamed.append(a[0]) or run_outputs(*a, **k))

    def run(source, suffix, *options):
        results, outputs = [], []
        for name in ("bands", "decoded", "whole"):
            _paths(monkeypatch, name)
            streamed.clear()
            (tmp_path / name).mkdir(exist_ok=True)
            out = tmp_path / name / f"out{suffix}"  # the same name: a zarr store's metadata holds it
            results.append(_run("apply", source, "-o", out, *options))
            outputs.append(_files(out) if out.exists() else None)
            assert bool(streamed) == (name != "whole")  # twice where the rows' decoder gave up
        (bands, decoded, whole), (mine, from_decode, theirs) = results, outputs
        assert (decoded.exit_code, decoded.stderr.replace("decoded", "whole"), from_decode) == \
            (whole.exit_code, whole.stderr, theirs)
        return [bands, whole], [mine, theirs]

    return run


def _input(tmp_path, kind):
    photo = np.tile(_photo(), (3, 2, 1))  # 210 x 202: several bands at the test's budget
    path = tmp_path / f"in.{kind}"
    if kind == "png":
        Image.fromarray(photo).save(path)
    elif kind == "rgba.png":
        Image.fromarray(np.dstack([photo, np.roll(photo[..., 1], 40, axis=1)])).save(path)
    elif kind == "grey.png":
        Image.fromarray(photo[..., 0]).save(path)
    elif kind == "16.png":
        _png16(path, photo.astype(np.uint16) * 257 + np.arange(photo.shape[1])[None, :, None].astype(np.uint16))
    elif kind == "jpg":
        Image.fromarray(photo).save(path, quality=90)
    elif kind == "tif":
        _tiff(path, photo)
    elif kind == "npy":
        np.save(path, photo.astype(np.float32) / 255)
    return path


OPTIONS = [
    ["-k", "box"], ["-k", "sobel"], ["-k", "gaussian:sigma=2"], ["-k", "box:size=31"], ["-k", ASYM, "--correlate"],
    ["-k", ASYM, "--boundary", "wrap"], ["-k", ASYM, "--boundary", "constant", "--cval", "0.3"],
    ["-k", ASYM, "--boundary", "mirror", "--size", "full"], ["-k", ASYM, "--size", "valid"],
    ["-k", "gaussian:sigma=3", "--method", "fft"], ["-k", "laplacian", "--scale", "stretch"], ["-k", "sobel", "--gray"],
    ["-k", "gaussian:sigma=2", "--depth", "16"],
]


@pytest.mark.parametrize("options", OPTIONS, ids=" ".join)
def test_banded_png_equals_the_whole_image_path(tmp_path, both, options):
    (bands, whole), (mine, theirs) = both(_input(tmp_path, "png"), ".png", *options)
    assert bands.exit_code == whole.exit_code == 0, bands.stderr + whole.stderr
    assert mine == theirs


@pytest.mark.parametrize("kind", ["rgba.png", "grey.png", "16.png", "jpg", "tif", "npy"])
@pytest.mark.parametrize("suffix", [".png", ".npy", ".tif", ".zarr", ".jpg", ".webp", ".bmp"])
def test_banded_inputs_and_outputs_equal_the_whole_image_path(tmp_path, both, kind, suffix):
    (bands, whole), (mine, theirs) = both(_input(tmp_path, kind), suffix, "-k", "gaussian:sigma=2", "--alpha", "keep")
    assert bands.exit_code == whole.exit_code == 0, bands.stderr + whole.stderr
    assert mine == theirs


@pytest.mark.parametrize("fmt", ["png", "tif", "npy", "jpg", "webp", "bmp"])
def test_banded_standard_output_is_the_whole_image_path_s_bytes(tmp_path, monkeypatch, fmt):
    """`-o -` streams in bands too: the file is made in memory (its encoded bytes only), then written."""
    streamed = []
    run_outputs = pipeline.tiled.run_outputs
    monkeypatch.setattr(pipeline.tiled, "run_outputs", lambda *a, **k: streamed.append(a[0]) or run_outputs(*a, **k))
    source, results = _input(tmp_path, "png"), []
    for name in ("bands", "whole"):
        _paths(monkeypatch, name)
        results.append(_run("apply", source, "-k", "gaussian:sigma=2", "--boundary", "wrap", "-o", "-", "--format", fmt))
    assert [r.exit_code for r in results] == [0, 0] and len(streamed) == 1, results[0].stderr + results[1].stderr
    assert results[0].stdout_bytes == results[1].stdout_bytes and len(results[0].stdout_bytes) > 1000


@pytest.mark.parametrize("kind", ["png", "jpg", "16.png", "rgba.png", "tif"])
def test_banded_standard_input_is_the_whole_image_path_s_bytes(tmp_path, monkeypatch, kind):
    """`apply - -o -`: a PNG or JPEG on standard input is decoded in bands from its bytes; a TIFF
    (not read in bands from standard input) goes the whole way. The same bytes either way."""
    from typer.testing import CliRunner

    from imfilt.cli.main import app

    streamed = []
    open_source = pipeline.tiled.open_source
    monkeypatch.setattr(pipeline.tiled, "open_source", lambda *a: streamed.append(a) or open_source(*a))
    data, results = _input(tmp_path, kind).read_bytes(), []
    for name in ("bands", "whole"):
        _paths(monkeypatch, name)
        results.append(CliRunner().invoke(app, ["apply", "-", "-k", ASYM, "-o", "-"], input=data))
    assert [r.exit_code for r in results] == [0, 0], results[0].stderr + results[1].stderr
    assert results[0].stdout_bytes == results[1].stdout_bytes and results[0].stderr == ""
    assert streamed == [("-", data)]  # tried in bands, from the bytes read, in the first run only


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".bmp", ".png"])
def test_more_channels_than_the_format_holds_fail_as_on_the_whole_image_path(tmp_path, both, suffix):
    """JPEG, WebP and BMP gather the bands and encode once; five channels are refused with the whole path's line."""
    path = tmp_path / "five.npy"
    np.save(path, np.random.default_rng(3).random((210, 202, 5), dtype=np.float32))
    (bands, whole), (mine, theirs) = both(path, suffix, "-k", "box")
    assert bands.exit_code == whole.exit_code == 1 and mine is theirs is None
    assert bands.stderr.replace("bands", "whole") == whole.stderr and "holds at most 4 channels" in bands.stderr


SPLIT = [
    ("png", ".png", ["-k", "sobel"]), ("png", ".png", ["-k", "laplacian", "--scale", "stretch"]),
    ("png", ".tif", ["-k", "box", "-k", "sobel", "-k", ASYM]), ("rgba.png", ".png", ["-k", "sobel", "--alpha", "keep"]),
    ("grey.png", ".npy", ["-k", "gaussian:sigma=2"]), ("16.png", ".png", ["-k", "laplacian", "--scale", "stretch"]),
    ("png", ".jpg", ["-k", "box"]), ("png", ".zarr", ["-k", "sobel"]),
]


@pytest.mark.parametrize("kind, suffix, options", SPLIT, ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_split_channels_in_bands_equal_the_whole_image_path(tmp_path, monkeypatch, kind, suffix, options):
    """--split-channels: each colour channel's file scaled on its own (stretch: its own bounds), alpha dropped."""
    streamed = []
    run_outputs = pipeline.tiled.run_outputs
    monkeypatch.setattr(pipeline.tiled, "run_outputs", lambda *a, **k: streamed.append(a[0]) or run_outputs(*a, **k))
    source, outputs = _input(tmp_path, kind), []
    for name in ("bands", "whole"):
        _paths(monkeypatch, name)
        result = _run("apply", source, "--split-channels", "--name", "{op}.{channel}" + suffix, "--out-dir",
                      tmp_path / name, "--json", *options)
        assert result.exit_code == 0, result.stderr
        outputs.append(({p.name: _files(p) for p in sorted((tmp_path / name).iterdir())}, result.stdout))
    assert len(streamed) == 1
    (mine, mine_json), (theirs, theirs_json) = outputs
    assert mine == theirs and len(mine) == (1 if kind == "grey.png" else 3) * options.count("-k")
    assert [{**json.loads(line), "seconds": 0, "output": 0} for line in mine_json.splitlines()] == \
        [{**json.loads(line), "seconds": 0, "output": 0} for line in theirs_json.splitlines()]


@pytest.mark.parametrize("kind", ["png", "rgba.png", "grey.png", "16.png", "jpg", "tif", "npy"])
@pytest.mark.parametrize("command", [["spectrum"], ["lowpass", "-R", "20", "--mask-out"]])
def test_an_image_read_whole_through_its_source_is_io_load_s(tmp_path, monkeypatch, kind, command):
    """From a megapixel, an image processed whole (spectrum, lowpass) is read by the streamed path's
    source in bands into one array (pipeline._read_whole): io.load's values, so the same files."""
    read = []
    read_whole = pipeline.tiled.read_whole
    monkeypatch.setattr(pipeline.tiled, "read_whole", lambda *a: read.append(a) or read_whole(*a))
    source, outputs = _input(tmp_path, kind), []
    for name, threshold in (("source", 1), ("load", 1 << 62)):
        monkeypatch.setattr(planning, "BANDED_PIXELS", threshold)
        (tmp_path / name).mkdir()
        args = [*command, tmp_path / name / "mask.png"] if "--mask-out" in command else command
        result = _run(*args, source, "-o", tmp_path / name / "out.tif")
        assert result.exit_code == 0, result.stderr
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())})
    assert len(read) == 1 and outputs[0] == outputs[1]


@pytest.mark.parametrize("path", ["bands", "decoded", "whole"])
@pytest.mark.parametrize("command", [["apply", "-k", "sobel"], ["spectrum"]])
def test_a_channel_field_in_a_name_splits_nothing_without_split_channels(tmp_path, monkeypatch, path, command):
    """Only --split-channels makes a file per channel: a '{channel}' in a name is a name (a review found
    'o{channel}.png' split into or/og/ob.png)."""
    _paths(monkeypatch, path)
    out = tmp_path / "out"
    out.mkdir()
    result = _run(*command, _input(tmp_path, "png"), "-o", out / "o{channel}.png")
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in out.iterdir()] == ["o{channel}.png"] and Image.open(out / "o{channel}.png").mode == "RGB"


def test_a_depth_the_format_does_not_hold_is_refused_on_standard_output_as_whole(tmp_path, monkeypatch):
    """`-o - --format png --depth 32` wrote an all-black PNG in bands (a review found it): the whole path refuses it."""
    _paths(monkeypatch, "bands")
    result = _run("apply", _input(tmp_path, "png"), "-k", "box", "-o", "-", "--format", "png", "--depth", "32")
    assert result.exit_code == 1 and "holds 8/16-bit images, not 32" in result.stderr and result.stdout_bytes == b""


def test_standard_input_over_the_pixel_limit_is_never_decoded_in_bands(tmp_path, monkeypatch):
    """--max-pixels holds for standard input as for a file: a small file of many pixels (a
    decompression bomb) fails with the whole path's one line, before any row is decoded."""
    from typer.testing import CliRunner

    from imfilt.cli.main import app

    _paths(monkeypatch, "bands")
    opened = []
    monkeypatch.setattr(pipeline.tiled, "open_source", lambda *a: opened.append(a))
    data = _input(tmp_path, "png").read_bytes()
    result = CliRunner().invoke(app, ["apply", "-", "-k", "box", "-o", "-", "--max-pixels", "1000"], input=data)
    assert result.exit_code == 1 and "<stdin>" in result.stderr and "1000" in result.stderr, result.stderr
    assert result.stdout_bytes == b"" and opened == []


def test_a_signal_while_standard_output_is_written_in_bands_waits_for_the_whole_file(tmp_path, monkeypatch):
    """What went to standard output cannot be taken back: as on the whole-image path, a signal
    waits until the file is written and counted (a review saw 64 KiB of a PNG, then '0 written')."""
    import os
    import signal

    from imfilt.image import tiles

    _paths(monkeypatch, "bands")
    source = _input(tmp_path, "png")
    expected = _run("apply", source, "-k", "sobel", "-o", "-").stdout_bytes
    write_stdout = tiles.write_stdout

    def signalled(data):
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C just as the file goes out
        write_stdout(data)

    monkeypatch.setattr(tiles, "write_stdout", signalled)
    result = _run("apply", source, "-k", "sobel", "-o", "-")
    assert result.exit_code == 130, result.stderr
    assert result.stderr == "imfilt: interrupted; 1 written\n" and result.stdout_bytes == expected


def test_a_truncated_png_on_standard_input_fails_as_on_the_whole_image_path(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from imfilt.cli.main import app

    data = _input(tmp_path, "png").read_bytes()
    results = []
    for name in ("bands", "whole"):
        _paths(monkeypatch, name)
        results.append(CliRunner().invoke(app, ["apply", "-", "-k", "box", "-o", "-"], input=data[: len(data) // 2]))
    assert [r.exit_code for r in results] == [1, 1] and results[0].stderr == results[1].stderr
    assert results[0].stdout_bytes == b"" and "<stdin>" in results[0].stderr


@pytest.mark.parametrize("size", ["valid", "full"])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_banded_outputs_of_another_size_equal_the_whole_image_path(tmp_path, both, size, suffix):
    """--size valid or full: the bands are whole rows of the output, not of the input (a TIFF came
    out tiled, not in strips, when the two widths were compared)."""
    (bands, whole), (mine, theirs) = both(_input(tmp_path, "png"), suffix, "-k", ASYM, "--size", size)
    assert bands.exit_code == whole.exit_code == 0, bands.stderr + whole.stderr
    assert mine == theirs


@pytest.mark.parametrize("name", ["progressive.jpg", "interlaced.png", "cmyk.jpg", "rotated.jpg", "a.webp", "a.bmp"])
def test_inputs_that_do_not_stream_run_whole(tmp_path, both, name):
    """What the streamed runner refuses (as it refuses them above --memory) runs on the whole-image path."""
    (bands, whole), (mine, theirs) = both(_refused(tmp_path / name), ".png", "-k", "box")
    assert bands.exit_code == whole.exit_code == 0 and bands.stderr == whole.stderr == ""
    assert mine == theirs


@pytest.mark.parametrize("name", ["truncated.png", "truncated.jpg"])
def test_a_damaged_input_fails_as_on_the_whole_image_path(tmp_path, both, name):
    """The whole-image path has the last word: the same exit code and the same one line, nothing written."""
    (bands, whole), outputs = both(_refused(tmp_path / name), ".png", "-k", "box")
    assert bands.exit_code == whole.exit_code == 1
    assert bands.stderr == whole.stderr and len(bands.stderr.strip().splitlines()) == 1
    assert outputs == [None, None] and not any((tmp_path / "bands").iterdir()) and not any((tmp_path / "whole").iterdir())


def test_the_json_record_is_the_whole_image_one(tmp_path, both):
    (bands, whole), _ = both(_input(tmp_path, "png"), ".png", "-k", "sobel", "--json")
    records = [json.loads(r.stdout) for r in (bands, whole)]
    for record in records:
        record.pop("seconds")
        record.pop("output")
    assert records[0] == records[1] and list(records[0]) == list(records[1])  # the keys in the same order too


# --- Ahead: the thread under each step -------------------------------------------------------


def test_ahead_gives_every_item_in_order_and_ends_its_thread():
    with Ahead(iter(range(100)), depth=3) as items:
        assert list(items) == list(range(100))
    assert not items.worker.is_alive()


def test_ahead_raises_the_producers_error_at_its_item():
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"), Ahead(items()) as ahead:
        for item in ahead:
            got.append(item)
    assert got == [1, 2] and not ahead.worker.is_alive()


def test_ahead_left_early_stops_its_thread_and_closes_the_source():
    closed, made = threading.Event(), []

    def items():
        try:
            for i in range(10**9):
                made.append(i)
                yield i
        finally:
            closed.set()

    with Ahead(items(), depth=2) as ahead:
        assert next(ahead) == 0
    assert closed.is_set() and not ahead.worker.is_alive()
    assert len(made) <= 4  # never more than depth ahead of the reader (+ one in hand)


def test_ahead_makes_the_next_item_while_the_reader_holds_this_one():
    """The producer runs beside the reader (no timing: the reader waits for the producer's sign)."""
    making = [threading.Event() for _ in range(4)]

    def items():
        for i in range(4):
            making[i].set()
            yield i

    with Ahead(items()) as ahead:
        for i in ahead:
            if i < 3:
                assert making[i + 1].wait(timeout=10)  # made while item i is still in the reader's hands


@pytest.mark.parametrize("options", [[], ["--memory", "1M"]], ids=["banded", "tiled"])
@pytest.mark.parametrize("renamed", [True, False], ids=["after-rename", "before-rename"])
def test_a_signal_at_the_rename_of_a_streamed_output_counts_what_is_there(tmp_path, monkeypatch, options, renamed):
    """A streamed output does not hold signals back (it can take minutes): one that came after
    its file was renamed into place, before it was counted, said '0 written' beside a whole file
    (a CI run's SIGHUP test). The interruption is raised where the rename is, just after or before it."""
    import os

    _paths(monkeypatch, "bands")
    source, out = _input(tmp_path, "png"), tmp_path / "out.png"
    replace = os.replace

    def interrupted_replace(made, target):
        if str(target) == str(out) and renamed:
            replace(made, target)
        if str(target) == str(out):
            raise KeyboardInterrupt
        replace(made, target)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    result = _run("apply", source, "-k", ASYM, "-o", out, *options)
    assert result.exit_code == 130, result.stderr
    assert result.stderr == f"imfilt: interrupted; {int(renamed)} written\n"
    assert out.exists() == renamed and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    if renamed:
        assert Image.open(out).load() is not None


def test_a_job_on_a_thread_leaves_the_main_thread_s_hold_on_signals_alone():
    """Jobs run on threads by default; one that wrote an output (entering and leaving
    WHILE_WRITING) switched off the main thread's hold while it was counting a result."""
    hold = pipeline.WHILE_WRITING
    with hold:
        worker = threading.Thread(target=lambda: hold.__enter__() or hold.__exit__(None, None, None))
        worker.start()
        worker.join()
        assert hold.active
    assert not hold.active


def test_an_image_below_a_megapixel_streams_in_one_band_on_the_calling_thread(tmp_path, monkeypatch):
    """Every apply of an image that fits goes through the runner; below BANDED_PIXELS it is decoded
    whole and filtered in one band, with no reading or writing thread (a batch runs its jobs side by
    side), and --dry-run has no band to tell of in its text."""
    from imfilt.run import tiled

    made = []
    monkeypatch.setattr(tiled, "Ahead", lambda *a, **k: made.append(a) or Ahead(*a, **k))
    streamed = []
    run_outputs = pipeline.tiled.run_outputs
    monkeypatch.setattr(pipeline.tiled, "run_outputs", lambda *a, **k: streamed.append(k) or run_outputs(*a, **k))
    path = tmp_path / "in.png"
    Image.fromarray(_photo(300, 451)).save(path)  # more rows than a band of a larger image (tiled.TILE)
    result = _run("apply", path, "-k", "sobel", "-o", tmp_path / "out.png")
    assert result.exit_code == 0, result.stderr
    assert len(streamed) == 1 and streamed[0]["one_band"] and made == []
    plan = _run("apply", path, "-k", "sobel", "-o", tmp_path / "o.png", "--dry-run")
    assert plan.exit_code == 0 and "in bands of" not in plan.stdout
    record = json.loads(_run("apply", path, "-k", "sobel", "-o", tmp_path / "o.png", "--dry-run", "--json").stdout
                        .splitlines()[0])
    assert record["streamed"] == {"banded": True, "window": [300, 451], "bands": 1}


def test_an_image_larger_than_memory_below_a_megapixel_keeps_its_windows(tmp_path):
    """One band is for images that fit: a small image streamed within --memory (a review found one
    of 4000x200 in one band of 656 rows, its reading thread off) keeps the windows --dry-run plans."""
    path = tmp_path / "tall.png"
    Image.fromarray(np.tile(_photo(), (58, 2, 1))[:4000]).save(path)  # 4000 x 202
    options = ["-k", "box", "-k", "sobel", "--out-dir", tmp_path / "o", "--memory", "50M", "--json"]
    plan = _run("apply", path, *options, "--dry-run")
    result = _run("apply", path, *options)
    assert result.exit_code == plan.exit_code == 0, result.stderr + plan.stderr
    windows = [json.loads(line)["window"] for line in result.stdout.splitlines()]
    planned = [json.loads(line)["streamed"]["window"] for line in plan.stdout.splitlines()[:-1]]
    assert windows == planned and windows[0][0] <= 256


@pytest.mark.parametrize("size", [(300, 451), (768, 1024)])  # 1024x768: over a band's 128 MB, raised to hold it
@pytest.mark.parametrize("kernel", ["3x3: 1,0,-1, 2,0,-2, 3,0,-3", "gaussian:sigma=3"])
def test_an_fft_of_an_image_below_a_megapixel_is_the_whole_image_s(tmp_path, both, kernel, size):
    """In bands of 256 rows an FFT method rounds otherwise than over the whole image (one level in 91 samples of
    chelsea.png, the corpus found): an image below a megapixel is one band, so the whole image's bytes
    (the fixture compares the run from a whole decode with the whole path's)."""
    path = tmp_path / "in.png"
    Image.fromarray(_photo(*size)).save(path)
    (bands, whole), _ = both(path, ".png", "-k", kernel, "--method", "fft", "--boundary", "constant", "--cval", "0.25")
    assert bands.exit_code == whole.exit_code == 0, bands.stderr + whole.stderr
