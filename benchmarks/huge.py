"""Images larger than memory: time and peak RSS of imfilt's tiled path against vips, same file.

    python benchmarks/huge.py [SIZE] [--folder DIR]    # SIZE x SIZE RGB tiled TIFF (default 20000)

Each command runs once under GNU time (/usr/bin/time), alternating imfilt and vips, and the
table gives seconds and peak resident memory. vips comes from `apt-get install libvips-tools`;
its Gaussian (gaussblur, min_ampl 0.2) truncates differently from imfilt's (radius 4 sigma).
A command that fails (vips's whole-image FFT past the --cap address space, say) is a row that
says so, not the end of the table. --only picks cases by name (e.g. --only sobel,spectrum),
--skip-vips / --skip-imfilt leave one side out (its 31x31 float convolution takes ~30 min at 20000x20000).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def make_tiff(path: Path, size: int, tile: int = 256) -> None:
    """A photo-like tiled RGB TIFF (smooth waves plus noise), written tile by tile."""
    import tifffile

    rng = np.random.default_rng(0)

    def tiles():
        y, x = np.mgrid[:tile, :tile].astype(np.float32)
        for top in range(0, size, tile):
            for left in range(0, size, tile):
                base = 128 + 60 * np.sin((x + left) / 97.0) * np.cos((y + top) / 131.0)
                noise = rng.normal(0, 12, (tile, tile, 3))
                yield np.clip(base[..., None] + noise + [0, 20, -20], 0, 255).astype(np.uint8)

    tifffile.imwrite(path, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                     compression="zlib", compressionargs={"level": 1}, bigtiff=True)


def sample_tiff(folder: Path, size: int) -> Path:
    """The SIZE x SIZE test image in ``folder``, made once and kept for later runs."""
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / f"rgb{size}.tif"
    if not image.exists():
        make_tiff(image, size)
    return image


def measure(command: list[str], cap: int) -> str:
    """'seconds | peak RSS' of one run under an address-space cap of ``cap`` GiB, or why it failed."""
    limit = ["prlimit", f"--as={cap * 2**30}"] if cap else []
    result = subprocess.run(["/usr/bin/time", "-f", "%e %M", *limit, *command], capture_output=True, text=True)
    seconds, kilobytes = result.stderr.strip().splitlines()[-1].split()
    if result.returncode != 0:
        said = [line for line in result.stderr.strip().splitlines()[:-1] if not line.startswith("Command ")]
        reason = said[-1:] or [f"exit {result.returncode}"]
        return f"failed after {float(seconds):.1f} s ({reason[0][:80]}) | {int(kilobytes) / 1024:.0f} MB"
    return f"{float(seconds):.1f} | {int(kilobytes) / 1024:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("size", type=int, nargs="?", default=20000)
    parser.add_argument("--folder", default="/tmp/imfilt-huge")
    parser.add_argument("--only", help="comma-separated case names (first words: gaussian,sobel,31x31,spectrum,both,lowpass)")
    parser.add_argument("--skip-vips", action="store_true")
    parser.add_argument("--skip-imfilt", action="store_true")
    parser.add_argument("--cap", type=int, default=20, help="address-space cap in GiB for every command (0: none)")
    args = parser.parse_args()
    folder = Path(args.folder)
    image = sample_tiff(folder, args.size)
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(31, 31))
    np.savetxt(folder / "dense31.txt", dense)
    (folder / "dense31.mat").write_text("31 31 1 0\n" + "\n".join(" ".join(f"{v:.17g}" for v in row) for row in dense) + "\n")
    imfilt = [sys.executable, "-m", "imfilt"]
    out = lambda name: str(folder / name)  # noqa: E731
    vips_tiff = "[tile,compression=deflate,bigtiff]"
    cases = [
        ("gaussian sigma=3", imfilt + ["apply", str(image), "-k", "gaussian:sigma=3", "-o", out("i.gauss.tif")],
         ["vips", "gaussblur", str(image), out("v.gauss.tif") + vips_tiff, "3"]),
        ("sobel", imfilt + ["apply", str(image), "-k", "sobel", "-o", out("i.sobel.tif")],
         ["vips", "sobel", str(image), out("v.sobel.tif") + vips_tiff]),
        ("31x31 dense", imfilt + ["apply", str(image), "-k", str(folder / "dense31.txt"), "--scale", "clip", "-o", out("i.dense.tif")],
         ["vips", "conv", str(image), out("v.dense.tif") + vips_tiff, str(folder / "dense31.mat"), "--precision", "float"]),
        ("spectrum", imfilt + ["spectrum", str(image), "--temp-dir", str(folder), "-o", out("i.spectrum.tif")],
         ["vips", "spectrum", str(image), out("v.spectrum.tif") + vips_tiff]),
        # two maps of one image: one imfilt call decodes the input once for both
        ("both sobel and gaussian sigma=3", imfilt + ["apply", str(image), "-k", "sobel", "-k", "gaussian:sigma=3",
                                                      "--out-dir", out("both"), "--name", "{stem}.{op}.tif"],
         ["sh", "-c", f"vips sobel {image} {out('v.sobel.tif')}{vips_tiff} && "
                      f"vips gaussblur {image} {out('v.gauss.tif')}{vips_tiff} 3"]),
        ("lowpass R=100", imfilt + ["lowpass", str(image), "--radius", "100", "--temp-dir", str(folder), "-o", out("i.low.tif")],
         None),
    ]
    only = set(args.only.split(",")) if args.only else None
    print(f"{args.size}x{args.size} RGB tiled TIFF ({image.stat().st_size / 2**20:.0f} MB), one run each, alternating;"
          f" address space capped at {args.cap} GiB" if args.cap else "")
    print("| operation | imfilt s | imfilt peak RSS | vips s | vips peak RSS |")
    print("|---|---|---|---|---|")
    for name, ours, theirs in cases:
        if only is not None and name.split()[0] not in only:
            continue
        # --max-pixels: past 9459x9459 an image is over Pillow's decompression-bomb limit, which imfilt keeps
        ours = measure(ours + ["--overwrite", "--max-pixels", str(args.size**2)], args.cap) if not args.skip_imfilt else "– | –"
        vips = measure(theirs, args.cap) if theirs and shutil.which("vips") and not args.skip_vips else "– | –"
        print(f"| {name} | {ours} | {vips} |", flush=True)


if __name__ == "__main__":
    main()
