"""Generate the small test patterns in samples/ (run from the repository root).

stripes.png: three bands, top to bottom, of vertical stripes at 8, 16 and 32 cycles across;
stripes-rotated.png: one stripe pattern at 30 degrees, whose spectrum peaks turn with it;
checkerboard.png: 16-pixel squares. All 256x256 grey, 8-bit.
"""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 256


def stripes() -> np.ndarray:
    x = np.arange(SIZE)
    bands = [0.5 + 0.5 * np.cos(2 * np.pi * cycles * x / SIZE) for cycles in (8, 16, 32)]
    rows = np.array_split(np.arange(SIZE), 3)
    image = np.empty((SIZE, SIZE))
    for band, index in zip(bands, rows):
        image[index, :] = band
    return image


def rotated_stripes(degrees: float = 30.0, cycles: float = 16.0) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    theta = np.deg2rad(degrees)
    return 0.5 + 0.5 * np.cos(2 * np.pi * cycles * (x * np.cos(theta) + y * np.sin(theta)) / SIZE)


def checkerboard(square: int = 16) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return ((x // square + y // square) % 2).astype(float)


if __name__ == "__main__":
    folder = Path(__file__).parent
    for name, image in [("stripes", stripes()), ("stripes-rotated", rotated_stripes()), ("checkerboard", checkerboard())]:
        Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(folder / f"{name}.png")
