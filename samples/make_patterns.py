"""Generate the small test patterns in samples/ (run from the repository root). All 256x256 grey.

stripes-mixed.png: three stripe patterns added up: 8 cycles across, 24 cycles down and a
  diagonal of (12, 12) cycles; its spectrum is three pairs of dots around the centre.
stripes.png: vertical stripes, 16 cycles across: two dots on the centre row.
stripes-rotated.png: the same stripes turned 30 degrees: the dots turn with them.
checkerboard.png: 16-pixel squares: dots on a grid of odd harmonics.

And one template for `imfilt match`, cut from a photo:
chelsea-eye.png: the cat's left eye from chelsea.png (rows 82-151, columns 133-207), at 70%
  contrast, 15% brighter and with a little noise, so a match finds it but not with score 1.
"""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 256
Y, X = np.mgrid[0:SIZE, 0:SIZE] / SIZE


def wave(cycles_x: float, cycles_y: float) -> np.ndarray:
    return np.cos(2 * np.pi * (cycles_x * X + cycles_y * Y))


def stripes(degrees: float = 0.0, cycles: float = 16.0) -> np.ndarray:
    theta = np.deg2rad(degrees)
    return 0.5 + 0.5 * wave(cycles * np.cos(theta), cycles * np.sin(theta))


def stripes_mixed() -> np.ndarray:
    return 0.5 + (wave(8, 0) + wave(0, 24) + wave(12, 12)) / 6


def checkerboard(square: int = 16) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return ((x // square + y // square) % 2).astype(float)


def chelsea_eye(folder: Path) -> np.ndarray:
    photo = np.asarray(Image.open(folder / "chelsea.png").convert("RGB"), dtype=np.float64) / 255
    noise = np.random.default_rng(0).normal(0, 0.02, (70, 75, 3))
    return np.clip(0.7 * photo[82:152, 133:208] + 0.15 + noise, 0, 1)


PATTERNS = {"stripes-mixed": stripes_mixed, "stripes": stripes, "stripes-rotated": lambda: stripes(30.0),
            "checkerboard": checkerboard}

if __name__ == "__main__":
    folder = Path(__file__).parent
    for name, make in PATTERNS.items():
        Image.fromarray(np.rint(make() * 255).astype(np.uint8)).save(folder / f"{name}.png")
    Image.fromarray(np.rint(chelsea_eye(folder) * 255).astype(np.uint8)).save(folder / "chelsea-eye.png")
