"""Regression corpus: every command and option family on the sample photos, and the sha256 of every output.

    python benchmarks/corpus.py                                    # the manifest on standard output
    python benchmarks/corpus.py -o benchmarks/corpus-main.sha256   # ... into a file
    python benchmarks/corpus.py --compare benchmarks/corpus-main.sha256   # exit 1 if any output differs
    python benchmarks/corpus.py --only lowpass --keep /tmp/corpus  # some cases; keep the files to look at
    (then benchmarks/corpus_pixels.py compares the pixels of two kept runs whose bytes differ)

A change that should keep every pixel (a refactor of the pixel path, a lighter start) runs
``--compare`` against the manifest committed from main: each line names an output by its case and
file, so a difference says which command, which option and which file. The cases run in this
process through the Typer app, as the tests do (``--subprocess`` runs ``python -m imfilt`` instead,
slower, to check that both agree). Inputs made here (an RGBA and a 16-bit PNG, a tiled TIFF, a .npy,
a zarr store, a kernel bank) are hashed too: ``input/...`` lines, so a change in a library that
writes them shows as such and not as an imfilt difference. Standard output is hashed as the case's
``stdout`` (``--json`` lines with their timings removed); the exit code is a line of its own
(``exit-0  NAME/exit``); a zarr store is one line (the hash of its files' names and hashes).
About 15 s on two cores (``--subprocess``: about 100 s).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
KERNELS = ROOT / "kernels"

# Inline kernels that pin orientation: asymmetric, one of rank 1 (for --method separable), one even-sized.
ASYM = "5x3: 1,2,0,-1,3, 0,4,1,0,-2, -1,0,2,5,1"
RANK1 = "3x3: 1,0,-1, 2,0,-2, 3,0,-3"
EVEN = "4x2: 1,2,3,4, 0,1,0,-1"
POSITIVE = "3x3: 1,2,1, 0,3,5, 1,1,2"
BUILTINS = ["identity", "box", "box:size=5", "gaussian", "gaussian:sigma=2", "sharpen", "laplacian", "outline",
            "emboss", "sobel", "sobel-x", "sobel-y", "prewitt", "prewitt-x", "prewitt-y", "scharr"]
MODES = ["reflect", "mirror", "nearest", "wrap", "constant"]


def make_inputs(folder: Path) -> None:
    """Copy the samples the cases use and make the inputs that no sample covers."""
    import png
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True)
    for name in ["chelsea.png", "chelsea-eye.png", "brick.png", "rocket.jpg", "stripes.png", "astronaut.png"]:
        shutil.copy(SAMPLES / name, folder / name)
    for path in sorted(KERNELS.iterdir()):
        shutil.copy(path, folder / path.name)
    rgb = np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"))
    height, width = rgb.shape[:2]
    # alpha: a ramp from transparent (left) to opaque, with a fully transparent square
    alpha = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    alpha[100:160, 200:260] = 0
    Image.fromarray(np.dstack([rgb, alpha])).save(folder / "rgba.png")
    # 16-bit colour: the photo times 257, plus a pattern in the low byte so 16 bits matter
    low = (np.arange(height)[:, None, None] * 7 + np.arange(width)[None, :, None] * 3 + np.arange(3)) % 256
    rgb16 = (rgb.astype(np.uint16) * 256 + low.astype(np.uint16))
    with open(folder / "rgb16.png", "wb") as f:
        png.Writer(width, height, greyscale=False, bitdepth=16).write(f, rgb16.reshape(height, -1).tolist())
    tifffile.imwrite(folder / "chelsea.tif", rgb, tile=(64, 64), compression="zlib", photometric="rgb")
    np.save(folder / "chelsea.npy", rgb.astype(np.float32) / 255)
    # a photo of a megapixel and more, which one apply output streams in bands of rows even though it fits
    big = np.tile(np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB")), (3, 3, 1))[:1100, :1300]
    Image.fromarray(big).save(folder / "big.png")
    Image.fromarray(np.dstack([big, np.tile(alpha, (4, 3))[:1100, :1300]])).save(folder / "big-rgba.png")
    Image.fromarray(big).save(folder / "big.jpg", quality=90)
    tifffile.imwrite(folder / "big.tif", big, tile=(64, 64), compression="zlib", photometric="rgb")
    np.save(folder / "big.npy", big.astype(np.float32) / 255)
    with open(folder / "big16.png", "wb") as f:
        wide = big.astype(np.uint16) * 257
        png.Writer(big.shape[1], big.shape[0], greyscale=False, bitdepth=16).write(f, wide.reshape(len(big), -1).tolist())
    bank = np.stack([np.arange(25, dtype=np.float32).reshape(5, 5) / 300,  # asymmetric: pins orientation
                     np.eye(5, dtype=np.float32)[::-1] / 5,
                     np.pad(np.outer([1, 2, 1], [-1, 0, 1]).astype(np.float32), 1)])
    np.save(folder / "bank.npy", bank)


def cases() -> list[tuple[str, list[str], dict]]:
    """(name, imfilt arguments, extras) for every case; paths relative to the run's folder, outputs under out/NAME/."""
    out: list[tuple[str, list[str], dict]] = []

    def case(name, args, **extras):
        out.append((name, [a.replace("@", f"out/{name}/") for a in args], extras))

    c = "in/chelsea.png"
    # apply: every built-in, the shipped kernel files, inline kernels, a bank
    case("apply-builtins", ["apply", c, "--out-dir", "@"] + [a for k in BUILTINS for a in ("-k", k)])
    case("apply-kernel-files", ["apply", c, "--out-dir", "@", "-k", "in/box5.txt", "-k", "in/diffusion.txt",
                                "-k", "in/emboss.txt", "-k", "in/laplacian-of-gaussian.mat", "-k", "in/motion-blur.txt",
                                "-k", "in/sharpen.txt", "-k", ASYM, "-k", EVEN])
    case("apply-bank", ["apply", c, "--out-dir", "@", "-k", "in/bank.npy"])
    # boundary modes x methods
    for mode in MODES:
        cval = ["--cval", "0.25"] if mode == "constant" else []
        for method in ["direct", "fft"]:
            case(f"apply-{mode}-{method}", ["apply", c, "--out-dir", "@", "--boundary", mode, "--method", method,
                                            "-k", ASYM, "-k", RANK1, "-k", EVEN] + cval)
        case(f"apply-{mode}-separable", ["apply", c, "--out-dir", "@", "--boundary", mode, "--method", "separable",
                                         "-k", RANK1, "-k", "gaussian:sigma=1.5"] + cval)
    # sizes x methods
    for size in ["valid", "full"]:
        for method in ["direct", "fft"]:
            case(f"apply-{size}-{method}", ["apply", c, "--out-dir", "@", "--size", size, "--method", method,
                                            "-k", ASYM, "-k", RANK1, "-k", EVEN])
        case(f"apply-{size}-separable", ["apply", c, "--out-dir", "@", "--size", size, "--method", "separable",
                                         "-k", RANK1])
    for method in ["direct", "separable", "fft"]:
        ks = ["-k", RANK1, "-k", "sobel-x"] + ([] if method == "separable" else ["-k", ASYM, "-k", EVEN])
        case(f"apply-correlate-{method}", ["apply", c, "--out-dir", "@", "--correlate", "--method", method] + ks)
    case("apply-auto-large", ["apply", c, "--out-dir", "@", "-k", "gaussian:sigma=6", "-k", "box:size=31"])
    for normalize in ["sum", "softmax"]:
        case(f"apply-normalize-{normalize}", ["apply", c, "--out-dir", "@", "--normalize", normalize, "-k", POSITIVE])
    for scale in ["clip", "abs", "stretch", "offset"]:
        case(f"apply-scale-{scale}", ["apply", c, "--out-dir", "@", "--scale", scale, "-k", "laplacian", "-k", "sobel-x",
                                      "-k", "sharpen"])
    for alpha in ["premultiply", "keep", "drop"]:
        case(f"apply-alpha-{alpha}", ["apply", "in/rgba.png", "--out-dir", "@", "--alpha", alpha,
                                      "-k", "gaussian:sigma=2", "-k", "sobel"])
    case("apply-gray", ["apply", c, "--out-dir", "@", "--gray", "-k", "box", "-k", "sobel"])
    case("apply-gray-rgba", ["apply", "in/rgba.png", "--out-dir", "@", "--gray", "-k", "gaussian:sigma=2"])
    case("apply-split-channels", ["apply", c, "--out-dir", "@", "--split-channels", "-k", "box", "-k", "sobel-y"])
    case("apply-grey-input", ["apply", "in/brick.png", "--out-dir", "@", "-k", "sobel", "-k", "gaussian:sigma=2"])
    # depths: 8-bit and 16-bit inputs, 8/16/32-bit outputs
    case("apply-depth-16", ["apply", c, "--out-dir", "@", "--depth", "16", "-k", "gaussian:sigma=2"])
    case("apply-depth-16-tif", ["apply", c, "-o", "@chelsea.tif", "--depth", "16", "-k", "gaussian:sigma=2"])
    case("apply-depth-32-tif", ["apply", c, "-o", "@chelsea.tif", "--depth", "32", "-k", "sobel-x"])
    case("apply-rgb16", ["apply", "in/rgb16.png", "--out-dir", "@", "-k", "gaussian:sigma=2", "-k", "sobel"])
    case("apply-rgb16-depth-8", ["apply", "in/rgb16.png", "--out-dir", "@", "--depth", "8", "-k", "box"])
    case("apply-rgb16-tif", ["apply", "in/rgb16.png", "-o", "@rgb16.tif", "-k", "box"])
    # output formats, and input formats other than PNG
    for ext in ["png", "jpg", "tif", "npy", "zarr", "webp", "bmp"]:
        case(f"apply-out-{ext}", ["apply", c, "-o", f"@chelsea.box.{ext}", "-k", "box:size=5"])
    case("apply-jpeg-input", ["apply", "in/rocket.jpg", "--out-dir", "@", "-k", "gaussian:sigma=2", "-k", "sobel"])
    case("apply-tif-input", ["apply", "in/chelsea.tif", "--out-dir", "@", "-k", "sobel"])
    case("apply-npy-input", ["apply", "in/chelsea.npy", "--out-dir", "@", "-k", "sobel"])
    case("apply-zarr-input", ["apply", "in/chelsea.zarr", "-o", "@chelsea.sobel.zarr", "-k", "sobel"])
    for fmt in ["png", "tif", "npy"]:
        case(f"apply-stdout-{fmt}", ["apply", c, "-o", "-", "--format", fmt, "-k", "emboss"])
    case("apply-stdin", ["apply", "-", "-o", "-", "-k", "sharpen"], stdin="in/chelsea.png")
    # a batch: several inputs, worker processes, a name template
    case("batch-jobs-2", ["apply", c, "in/brick.png", "in/rocket.jpg", "in/astronaut.png", "-j", "2", "--out-dir", "@",
                          "--name", "{stem}-{op}{ext}", "-k", "gaussian:sigma=2", "-k", "sobel"])
    # streamed in tiles (--memory below the image)
    tiny = ["--memory", "256K"]
    case("tiled-apply-png", ["apply", c, "--out-dir", "@", "-k", "box", "-k", "gaussian:sigma=2", "-k", "sobel"] + tiny)
    case("tiled-apply-valid", ["apply", c, "--out-dir", "@", "--size", "valid", "-k", ASYM] + tiny)
    case("tiled-apply-fft", ["apply", c, "--out-dir", "@", "--method", "fft", "-k", "gaussian:sigma=3"] + tiny)
    case("tiled-apply-gray", ["apply", c, "--out-dir", "@", "--gray", "-k", "sobel-x"] + tiny)
    case("tiled-apply-rgba", ["apply", "in/rgba.png", "--out-dir", "@", "-k", "gaussian:sigma=2"] + tiny)
    for ext in ["tif", "npy", "zarr"]:
        case(f"tiled-apply-out-{ext}", ["apply", c, "-o", f"@chelsea.sobel.{ext}", "-k", "sobel"] + tiny)
    case("tiled-apply-depth-32", ["apply", c, "-o", "@chelsea.tif", "--depth", "32", "-k", "laplacian"] + tiny)
    case("tiled-apply-tif-input", ["apply", "in/chelsea.tif", "-o", "@chelsea.tif", "-k", "gaussian:sigma=2"] + tiny)
    case("tiled-apply-npy-input", ["apply", "in/chelsea.npy", "-o", "@chelsea.npy", "-k", "box"] + tiny)
    case("tiled-apply-zarr-input", ["apply", "in/chelsea.zarr", "-o", "@chelsea.zarr", "-k", "box"] + tiny)
    case("tiled-apply-jpeg-input", ["apply", "in/rocket.jpg", "-o", "@rocket.png", "-k", "box"] + tiny)
    case("tiled-apply-rgb16", ["apply", "in/rgb16.png", "-o", "@rgb16.png", "-k", "gaussian:sigma=2"] + tiny)
    case("tiled-apply-split", ["apply", c, "--out-dir", "@", "--split-channels", "--name", "{stem}.{op}.{channel}.tif",
                               "-k", "laplacian", "--scale", "stretch"] + tiny)  # each channel its own stretch
    case("tiled-apply-three-tif", ["apply", c, "--out-dir", "@", "--name", "{stem}.{op}.tif", "-k", "box", "-k", "sobel",
                                   "-k", ASYM, "--boundary", "wrap"] + tiny)  # one decode, one window for the three
    # one output of a megapixel image: streamed in bands though it fits (planning.bands_pay)
    b = "in/big.png"
    for name, kernel in [("box", "box"), ("sobel", "sobel"), ("gaussian", "gaussian:sigma=2"), ("box31", "box:size=31"),
                         ("asym", ASYM), ("even", EVEN)]:
        case(f"banded-{name}", ["apply", b, "-o", "@big.png", "-k", kernel])
    for mode in MODES:
        case(f"banded-{mode}", ["apply", b, "-o", "@big.png", "--boundary", mode, "-k", ASYM, "--cval", "0.25"])
    for size in ["valid", "full"]:
        case(f"banded-{size}", ["apply", b, "-o", "@big.png", "--size", size, "-k", ASYM])
    for method in ["separable", "fft"]:
        case(f"banded-{method}", ["apply", b, "-o", "@big.png", "--method", method, "-k", RANK1])
    case("banded-correlate", ["apply", b, "-o", "@big.png", "--correlate", "-k", ASYM])
    case("banded-gray", ["apply", b, "-o", "@big.png", "--gray", "-k", "sobel"])
    case("banded-stretch", ["apply", b, "-o", "@big.png", "--scale", "stretch", "-k", "laplacian"])
    for alpha in ["premultiply", "keep", "drop"]:
        case(f"banded-alpha-{alpha}", ["apply", "in/big-rgba.png", "-o", "@big.png", "--alpha", alpha, "-k", "sobel"])
    for ext in ["tif", "npy", "zarr", "jpg", "webp", "bmp"]:  # JPEG, WebP, BMP: bands gathered, encoded once
        case(f"banded-out-{ext}", ["apply", b, "-o", f"@big.{ext}", "-k", "gaussian:sigma=2"])
    case("banded-alpha-webp", ["apply", "in/big-rgba.png", "-o", "@big.webp", "--alpha", "keep", "-k", "sobel"])
    case("banded-depth-16", ["apply", b, "-o", "@big.png", "--depth", "16", "-k", "gaussian:sigma=2"])
    # several outputs of a megapixel image: streamed together from one decode (planning.stream_groups)
    case("banded-three", ["apply", b, "--out-dir", "@", "-k", "box", "-k", "sobel", "-k", ASYM, "--json"])
    case("banded-three-npy", ["apply", b, "--out-dir", "@", "--name", "{stem}.{op}.npy", "-k", "gaussian:sigma=2",
                              "-k", EVEN, "--boundary", "constant", "--cval", "0.25"])
    case("banded-bank", ["apply", b, "--out-dir", "@", "-k", "in/bank.npy"])
    case("banded-split", ["apply", b, "--out-dir", "@", "--split-channels", "-k", "sobel", "-k", "laplacian",
                          "--scale", "stretch", "--json"])  # one grey file per channel, each its own stretch
    case("banded-split-rgba-tif", ["apply", "in/big-rgba.png", "--out-dir", "@", "--split-channels", "--alpha", "keep",
                                   "--name", "{stem}.{op}.{channel}.tif", "-k", "gaussian:sigma=2"])
    for fmt in ["png", "tif", "npy", "jpg"]:  # standard output streams in bands too (made in memory, then written)
        case(f"banded-stdout-{fmt}", ["apply", b, "-o", "-", "--format", fmt, "-k", "gaussian:sigma=2"])
    for name in ["big.png", "big.jpg", "big.tif"]:  # standard input: PNG and JPEG in bands from its bytes, TIFF whole
        case(f"banded-stdin-{name}", ["apply", "-", "-o", "-", "-k", ASYM], stdin=f"in/{name}")
    for name in ["big.jpg", "big.tif", "big.npy", "big16.png"]:
        case(f"banded-in-{name}", ["apply", f"in/{name}", "-o", "@out.png", "-k", "sharpen", "--json"])
    # images of a megapixel that run whole (spectrum, lowpass, a montage): read through the streamed source
    for name in ["big.png", "big-rgba.png", "big16.png", "big.jpg", "big.tif", "big.npy"]:
        case(f"whole-spectrum-{name}", ["spectrum", f"in/{name}", "-o", "@out.png", "--json"])
    case("whole-lowpass-mask", ["lowpass", b, "-o", "@out.tif", "-R", "40", "--mask-out", "@mask.png", "--json"])
    case("whole-lowpass-stdin", ["lowpass", "-", "-o", "-", "-R", "40"], stdin="in/big.png")
    case("whole-montage", ["apply", b, "--out-dir", "@", "-k", "sobel", "-k", "box", "--montage", "@sheet.png"])
    # spectrum
    for name, extra in [("default", []), ("hann", ["--window", "hann"]), ("phase", ["--phase"]), ("gray", ["--gray"]),
                        ("phase-hann-gray", ["--phase", "--window", "hann", "--gray"])]:
        case(f"spectrum-{name}", ["spectrum", c, "--out-dir", "@"] + extra)
    case("spectrum-npy", ["spectrum", c, "-o", "@chelsea.npy"])
    case("spectrum-depth-16", ["spectrum", c, "-o", "@chelsea.tif", "--depth", "16"])
    case("spectrum-grey-input", ["spectrum", "in/stripes.png", "--out-dir", "@", "--window", "hann"])
    case("spectrum-stdout", ["spectrum", c, "-o", "-", "--format", "png"])
    fft_memory = ["--memory", "2M"]
    case("tiled-spectrum", ["spectrum", c, "-o", "@chelsea.png"] + fft_memory)
    case("tiled-spectrum-npy-hann", ["spectrum", c, "-o", "@chelsea.npy", "--window", "hann"] + fft_memory)
    # lowpass (with --json: the fraction of coefficients kept)
    for name, extra in [("ideal", []), ("gaussian", ["--profile", "gaussian"]),
                        ("butterworth", ["--profile", "butterworth", "--order", "3"]),
                        ("highpass", ["--highpass"]), ("band", ["--band", "10"]),
                        ("gaussian-highpass", ["--profile", "gaussian", "--highpass"]),
                        ("gray", ["--gray"])]:
        case(f"lowpass-{name}", ["lowpass", c, "--out-dir", "@", "-R", "30", "--json"] + extra)
    case("lowpass-mask-out", ["lowpass", c, "-o", "@chelsea.png", "-R", "25", "--profile", "butterworth",
                              "--mask-out", "@mask.png", "--json"])
    case("lowpass-npy", ["lowpass", c, "-o", "@chelsea.npy", "-R", "30", "--highpass"])
    case("lowpass-scale-stretch", ["lowpass", c, "-o", "@chelsea.png", "-R", "30", "--band", "5", "--scale", "stretch"])
    case("tiled-lowpass", ["lowpass", c, "-o", "@chelsea.png", "-R", "30", "--mask-out", "@mask.png", "--json"]
         + fft_memory)
    case("tiled-lowpass-tif", ["lowpass", c, "-o", "@chelsea.tif", "-R", "30", "--profile", "gaussian", "--highpass",
                               "--depth", "16"] + fft_memory)
    # match (with --json: the peaks)
    t = ["-t", "in/chelsea-eye.png"]
    case("match-valid", ["match", c, "-o", "@chelsea.png", "--top", "3", "--json"] + t)
    case("match-same", ["match", c, "-o", "@chelsea.png", "--size", "same", "--json"] + t)
    case("match-npy", ["match", c, "-o", "@chelsea.npy", "--threshold", "0.4", "--top", "5", "--json"] + t)
    case("match-gray-tif", ["match", c, "-o", "@chelsea.tif", "--gray", "--depth", "16", "--json"] + t)
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_hashes(folder: Path, prefix: str) -> dict[str, str]:
    """sha256 of every file under ``folder``, keyed by prefix/relative path; a zarr store is one entry,
    the sha256 of its files' names and hashes."""
    entries = {}
    for path in sorted(folder.iterdir()):
        name = f"{prefix}/{path.name}"
        if path.is_file():
            entries[name] = sha256(path)
        elif path.suffix == ".zarr":
            listing = "".join(f"{d}  {n}\n" for n, d in tree_hashes_flat(path).items())
            entries[name] = hashlib.sha256(listing.encode()).hexdigest()
        elif path.is_dir():
            entries.update(tree_hashes(path, name))
    return entries


def tree_hashes_flat(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def without_timings(stdout: bytes, is_json: bool) -> bytes:
    """--json lines with the seconds removed (they differ from run to run); other output as it is."""
    if not is_json:
        return stdout
    lines = []
    for line in stdout.decode().splitlines():
        record = json.loads(line)
        record.pop("seconds", None)
        lines.append(json.dumps(record, sort_keys=True))
    return ("\n".join(lines) + "\n").encode()


def run_case(args: list[str], stdin: bytes | None, subprocess_mode: bool) -> tuple[int, bytes, bytes]:
    if subprocess_mode:
        done = subprocess.run([sys.executable, "-m", "imfilt", *args], input=stdin, capture_output=True)
        return done.returncode, done.stdout, done.stderr
    from typer.testing import CliRunner

    from imfilt.cli.main import app
    result = CliRunner().invoke(app, args, input=stdin)
    return result.exit_code, result.stdout_bytes, result.stderr_bytes


def run_corpus(work: Path, only: str | None, subprocess_mode: bool, verbose: bool) -> dict[str, str]:
    """Run the cases in ``work``; the manifest {name: sha256}."""
    here = os.getcwd()
    os.chdir(work)
    try:
        make_inputs(Path("in"))
        done = run_case(["apply", "in/chelsea.png", "-o", "in/chelsea.zarr", "-k", "identity", "--depth", "32"],
                        None, subprocess_mode)  # a zarr input, written by imfilt as users make one
        if done[0] != 0:
            raise SystemExit(f"corpus: could not make in/chelsea.zarr: {done[2].decode()}")
        manifest = tree_hashes(Path("in"), "input")
        for name, args, extras in cases():
            if only and only not in name:
                continue
            Path("out", name).mkdir(parents=True)
            stdin = Path(extras["stdin"]).read_bytes() if "stdin" in extras else None
            start = time.perf_counter()
            code, stdout, stderr = run_case(args, stdin, subprocess_mode)
            if verbose:
                print(f"{time.perf_counter() - start:6.2f} s  {name}", file=sys.stderr)
            if code != 0:
                print(f"corpus: {name} exited {code}: {stderr.decode().strip()[-500:]}", file=sys.stderr)
            manifest[f"{name}/exit"] = f"exit-{code}"  # read as it is
            if stdout:
                manifest[f"{name}/stdout"] = hashlib.sha256(without_timings(stdout, "--json" in args)).hexdigest()
            manifest.update(tree_hashes(Path("out", name), name))
        return manifest
    finally:
        os.chdir(here)


def read_manifest(path: Path) -> dict[str, str]:
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            entries[name] = digest
    return entries


def compare(old: dict[str, str], new: dict[str, str], only: str | None) -> list[str]:
    """One line per difference: changed, missing (in the old manifest only) or new."""
    if only:
        old = {k: v for k, v in old.items() if k.startswith("input/") or only in k.split("/")[0]}
    lines = [f"changed  {k}" for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]
    lines += [f"missing  {k}" for k in sorted(old.keys() - new.keys())]
    lines += [f"new      {k}" for k in sorted(new.keys() - old.keys())]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, help="write the manifest here (default: standard output)")
    parser.add_argument("--compare", type=Path, metavar="MANIFEST", help="report every difference from MANIFEST; exit 1 if any")
    parser.add_argument("--only", metavar="TEXT", help="only the cases whose name contains TEXT")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="run in DIR (new) and keep the outputs")
    parser.add_argument("--subprocess", action="store_true", help="run each case as python -m imfilt (slower)")
    parser.add_argument("-v", "--verbose", action="store_true", help="each case's time on standard error")
    options = parser.parse_args()

    start = time.perf_counter()
    if options.keep:
        options.keep.mkdir(parents=True)
        manifest = run_corpus(options.keep.resolve(), options.only, options.subprocess, options.verbose)
    else:
        with tempfile.TemporaryDirectory(prefix="imfilt-corpus-") as work:
            manifest = run_corpus(Path(work), options.only, options.subprocess, options.verbose)
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(manifest.items()))
    if options.output:
        options.output.write_text(text)
    elif not options.compare:
        sys.stdout.write(text)
    print(f"corpus: {len(manifest)} hashes in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if options.compare:
        differences = compare(read_manifest(options.compare), manifest, options.only)
        for line in differences:
            print(line)
        print(f"corpus: {len(differences)} differences from {options.compare}", file=sys.stderr)
        sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
