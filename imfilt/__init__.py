"""imfilt: filter images by convolution and in the Fourier domain.

The library works on numpy arrays of shape (H, W, C), float32 in [0, 1] units.

Its functions are imported when first used (PEP 562), so that `import imfilt.cli.main` and
`imfilt --version` do not pay for numpy, OpenCV and the rest before they are needed.
"""

from importlib import import_module

__version__ = "0.2.0"

# name -> the module that defines it
_API = {
    "convolve": "ops.convolution",
    "richardson_lucy": "ops.deconvolve", "wiener": "ops.deconvolve",
    "Engine": "engine.engine", "get_engine": "engine.engine",
    "ImfiltError": "errors", "InputError": "errors", "KernelError": "errors", "UsageError": "errors",
    "apply_mask": "ops.frequency", "frequency_mask": "ops.frequency", "lowpass": "ops.frequency", "spectrum": "ops.frequency",
    "read_image": "image.io", "write_image": "image.io",
    "Kernel": "ops.kernels", "load_kernel": "ops.kernels", "load_kernels": "ops.kernels",
    "learn_kernel": "ops.learn",
    "find_peaks": "ops.match", "match_template": "ops.match",
    "orientations": "ops.orientation",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'imfilt' has no attribute {name!r}")
    value = getattr(import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
