"""Outputs whose bytes differ between two corpus runs: are their pixels the same?

    python benchmarks/corpus.py --keep /tmp/before     # on the commit before the change
    python benchmarks/corpus.py --keep /tmp/after      # on the change
    python benchmarks/corpus_pixels.py /tmp/before /tmp/after   # exit 1 if any pixel differs

A change of codec or encoder setting (a faster deflate, tiles for strips) changes the bytes of
every file it writes but should keep every value: this decodes each PNG (OpenCV) and TIFF
(tifffile) that differs and compares the arrays exactly, shape and dtype too. Any other file that
differs (.npy, JPEG, standard output) is listed for a look by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import tifffile


def decoded(path: Path) -> np.ndarray | None:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return tifffile.imread(path)
    if suffix == ".png":
        return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return None


def main(before: Path, after: Path) -> int:
    same = differ = unchecked = 0
    for path in sorted(p for p in after.rglob("*") if p.is_file()):
        name = path.relative_to(after)
        old = before / name
        if not old.is_file() or old.read_bytes() == path.read_bytes():
            continue
        a, b = decoded(old), decoded(path)
        if a is None or b is None:
            unchecked += 1
            print(f"bytes differ, not decoded here: {name}")
        elif a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b):
            same += 1
        else:
            differ += 1
            print(f"pixels differ: {name}")
    print(f"{same} files with other bytes and the same pixels; {differ} with other pixels; {unchecked} not decoded")
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
