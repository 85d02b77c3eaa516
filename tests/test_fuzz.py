"""A fuzz test over every reader (PNG 8 and 16 bit, JPEG, TIFF whole and tiled, .npy, zarr, kernel
text and .npy kernels), with decompression bombs among its seeds, run by imfilt's own entry point
in one process under a hard address-space limit (RLIMIT_AS) and a time limit.

Every outcome must be exit 0, 1 (a bad image) or 2 (a bad kernel), one line on stderr when it
is not 0 and none when it is, nothing left behind (no temporary, no output of a failed input),
each case within seconds; and nothing from a C library on the process's own stderr. The
mutations are drawn from a fixed seed: a failure names its case, and its file is kept.
"""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import bombs

LIMIT_MB = 1000  # python, numpy, scipy, OpenCV, libvips and zarr take ~450 MB of address space
CASE_SECONDS = 15  # a hang or a runaway read, not a timing: generous on a loaded 2-core machine

# Runs each case's arguments through the console entry point, in this one process, and reports
# its exit code, what it wrote to sys.stderr and its time, as JSON on stdout.
_DRIVER = """
import contextlib, io, json, resource, sys, time
limit = int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from imfilt.cli.main import app
results = []
for args in json.load(open(sys.argv[2])):
    err, start = io.StringIO(), time.monotonic()
    with contextlib.redirect_stderr(err):
        try:
            app(args, prog_name="imfilt")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    results.append({"args": args, "code": code, "stderr": err.getvalue(), "seconds": time.monotonic() - start})
print(json.dumps(results))
"""


def _rgb(shape=(10, 14, 3)) -> np.ndarray:
    return (np.random.default_rng(5).random(shape) * 255).astype(np.uint8)


def _encoded(fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_rgb()).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _tiff16_tiled() -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, (_rgb((32, 48, 3)).astype(np.uint16) * 257), tile=(16, 16), compression="zlib", photometric="rgb")
    return buffer.getvalue()


def _png16() -> bytes:
    import png

    buffer = io.BytesIO()
    png.Writer(14, 10, greyscale=False, bitdepth=16).write(buffer, (_rgb().astype(np.uint16) * 257).reshape(10, -1).tolist())
    return buffer.getvalue()


def _npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(1).random((9, 11, 3)).astype(np.float32))
    return buffer.getvalue()


IMAGE_SEEDS = {  # suffix -> bytes
    ".png": _encoded("PNG"), ".jpg": _encoded("JPEG"), ".tif": _encoded("TIFF"), ".tiff": _tiff16_tiled(),
    ".webp": _encoded("WEBP", lossless=True), ".npy": _npy(),
}
KERNEL_SEEDS = {".txt": b"name: k\nscale: 1/9\n1 1 1\n1, 1, 1\n1 1 1 # ones\n", ".mat": b"3 3 9\n1 1 1\n1 1 1\n1 1 1\n"}


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to four flips, cuts or insertions of random bytes."""
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        at = int(rng.integers(0, max(1, len(data))))
        action = rng.integers(0, 3)
        if action == 0 and data:
            data[at] = int(rng.integers(0, 256))
        elif action == 1:
            del data[max(at, 1):]
        else:
            data[at:at] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    return bytes(data)


def _zarr_store(path: Path) -> Path:
    import zarr

    array = zarr.create_array(path, shape=(8, 8, 3), chunks=(4, 4, 3), dtype="uint8")
    array[:] = _rgb((8, 8, 3))
    return path


def _cases(folder: Path) -> tuple[list[list[str]], dict[int, str]]:
    """Every case's arguments, and which are kernels (those may be exit 2, not 1)."""
    rng = np.random.default_rng(2026)
    cases, kinds = [], {}

    def add(kind: str, source: Path, args: list[str]):
        kinds[len(cases)] = kind
        cases.append([str(a) for a in args])

    n = 0
    for suffix, data in IMAGE_SEEDS.items():
        for i in range(12):
            case = folder / f"c{n}"
            case.mkdir()
            source = case / f"in{suffix}"
            source.write_bytes(_mutate(data, rng))
            memory = ["--memory", "1K"] if i % 2 else []  # streamed, where the format streams
            add("image", source, ["apply", source, "-k", "box", "-o", case / "out.tif", "--max-pixels", "1000000", *memory])
            n += 1
    for i in range(6):  # a zarr store with one file of it mutated
        case = folder / f"c{n}"
        store = _zarr_store(case / "in.zarr")
        files = sorted(p for p in store.rglob("*") if p.is_file())
        target = files[int(rng.integers(0, len(files)))]
        target.write_bytes(_mutate(target.read_bytes(), rng))
        add("image", store, ["apply", store, "-k", "box", "-o", case / "out.tif", *(["--memory", "1K"] if i % 2 else [])])
        n += 1
    for name, make in (("png16.png", lambda p: bombs.png_bomb(p, 2**28)), ("png8.png", lambda p: bombs.png_bomb(p, 2**28, depth=8)),
                       ("tile.tif", lambda p: bombs.tiff_tile_bomb(p, 2**28)), ("seed16.png", lambda p: p.write_bytes(_png16())),
                       ("packbits.tif", lambda p: bombs.tiff_codec_bomb(p, 2**28, "packbits")),
                       ("lzma.tif", lambda p: bombs.tiff_codec_bomb(p, 2**28, "lzma", depth=8)),
                       ("zstd.zarr", lambda p: bombs.zarr_chunk_bomb(p, 2**28, "zstd"))):
        for memory in ([], ["--memory", "1K"]):
            case = folder / f"c{n}"
            case.mkdir()
            make(case / name)
            add("image", case / name, ["apply", case / name, "-k", "box", "-o", case / "out.tif", *memory])
            n += 1
    for suffix, data in KERNEL_SEEDS.items():
        for i in range(8):
            case = folder / f"c{n}"
            case.mkdir()
            Image.fromarray(_rgb()).save(case / "in.png")
            kernel = case / f"k{suffix}"
            kernel.write_bytes(_mutate(data, rng))
            add("kernel", kernel, ["apply", case / "in.png", "-k", kernel, "-o", case / "out.tif"])
            n += 1
    case = folder / f"c{n}"  # a kernel .npy whose header claims 10^10 taps
    case.mkdir()
    Image.fromarray(_rgb()).save(case / "in.png")
    with open(case / "k.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (100000, 100000)})
    add("kernel", case / "k.npy", ["apply", case / "in.png", "-k", case / "k.npy", "-o", case / "out.tif"])
    return cases, kinds


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS as Linux counts it")
def test_every_reader_under_a_hard_memory_limit(tmp_path):
    cases, kinds = _cases(tmp_path)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    before = [sorted(p.name for p in (tmp_path / f"c{i}").iterdir()) for i in range(len(cases))]
    start = time.monotonic()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _DRIVER, str(LIMIT_MB), tmp_path / "cases.json"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]  # no crash, nothing from a C library
    results = json.loads(done.stdout)
    assert len(results) == len(cases)
    for i, result in enumerate(results):
        folder, code, lines = tmp_path / f"c{i}", result["code"], result["stderr"].splitlines()
        where = f"case c{i}: {' '.join(result['args'])}\n{result['stderr']}"
        assert code in ((0, 2) if kinds[i] == "kernel" else (0, 1)), where
        assert len(lines) == (0 if code == 0 else 1) and "internal error" not in result["stderr"], where
        assert result["seconds"] < CASE_SECONDS, where
        left = sorted(p.name for p in folder.iterdir())
        expected = sorted(before[i] + (["out.tif"] if code == 0 else []))
        assert left == expected, where  # no temporary, no output of a failed input
    print(f"{len(cases)} cases in {time.monotonic() - start:.1f} s;",
          {code: sum(r["code"] == code for r in results) for code in (0, 1, 2)})
