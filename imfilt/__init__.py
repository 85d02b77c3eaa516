"""imfilt: filter images by convolution and in the Fourier domain.

The library works on numpy arrays of shape (H, W, C), float32 in [0, 1] units.
"""

__version__ = "0.2.0"

from .convolve import convolve
from .deconvolve import richardson_lucy, wiener
from .engine import Engine, get_engine
from .errors import ImfiltError, InputError, KernelError, UsageError
from .frequency import apply_mask, frequency_mask, lowpass, spectrum
from .io import read_image, write_image
from .kernels import Kernel, load_kernel, load_kernels
from .learn import learn_kernel
from .match import find_peaks, match_template
from .orientation import orientations

__all__ = [
    "Engine", "ImfiltError", "apply_mask", "frequency_mask", "lowpass", "spectrum", "InputError", "Kernel", "KernelError", "UsageError", "convolve", "get_engine",
    "load_kernel", "load_kernels", "match_template", "orientations", "find_peaks", "read_image", "write_image",
    "learn_kernel", "wiener", "richardson_lucy",
]
