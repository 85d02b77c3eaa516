"""Images larger than memory: time and peak RSS of imfilt's tiled path against vips, same file.

    python benchmarks/huge.py [SIZE] [--folder DIR]    # SIZE x SIZE RGB tiled TIFF (default 20000)

Each command runs once under GNU time (/usr/bin/time), alternating imfilt and vips, and the
table gives seconds and peak resident memory. vips comes from `apt-get install libvips-tools`;
its Gaussian (gaussblur, min_ampl 0.2) truncates differently from imfilt's (radius 4 sigma).
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


def measure(command: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one run."""
    result = subprocess.run(["/usr/bin/time", "-f", "%e %M", *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr}")
    seconds, kilobytes = result.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kilobytes) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("size", type=int, nargs="?", default=20000)
    parser.add_argument("--folder", default="/tmp/imfilt-huge")
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / f"rgb{args.size}.tif"
    if not image.exists():
        make_tiff(image, args.size)
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
        ("lowpass R=100", imfilt + ["lowpass", str(image), "--radius", "100", "--temp-dir", str(folder), "-o", out("i.low.tif")],
         None),
    ]
    print(f"{args.size}x{args.size} RGB tiled TIFF ({image.stat().st_size / 2**20:.0f} MB), one run each, alternating")
    print("| operation | imfilt s | imfilt peak RSS | vips s | vips peak RSS |")
    print("|---|---|---|---|---|")
    for name, ours, theirs in cases:
        seconds, rss = measure(ours + ["--overwrite"])
        if theirs and shutil.which("vips"):
            vs, vrss = measure(theirs)
            vips = f"{vs:.1f} | {vrss:.0f} MB"
        else:
            vips = "– | –"
        print(f"| {name} | {seconds:.1f} | {rss:.0f} MB | {vips} |", flush=True)


if __name__ == "__main__":
    main()
