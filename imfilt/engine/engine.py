"""Engines hand the operations their array modules: xp, ndi (ndimage), fft and filters.

Operations are written once against an Engine; the CPU and GPU engines differ only in the
modules they carry and in host/device transfers (see ../shared/STYLE.md, convention 1).
``filters`` is the spatial-filter backend: OpenCV on the CPU (cvfilters.py), the ndimage module
on the GPU (ndfilters.py); both compute scipy.ndimage's correlation.
"""

from __future__ import annotations

import atexit
import functools
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Callable

import numpy as np

from ..errors import EngineUnavailable, check_image

ENGINES = ("auto", "cpu", "gpu")
FFT_BACKENDS = ("scipy", "pyfftw")
# real images: the real transforms, and the 1-D ones that a tiled image's rows and columns take
_FFT_FUNCTIONS = ("rfft2", "irfft2", "rfft", "irfft", "fft", "ifft")
NO_GPU = "no CUDA device: install imfilt[gpu] on a machine with a GPU, or use --engine cpu"


@dataclass(frozen=True)
class Engine:
    name: str
    xp: ModuleType
    ndi: Any  # scipy.ndimage or cupyx.scipy.ndimage (the CPU engine imports it on first use)
    fft: Any  # namespace with rfft2, irfft2, fftshift, next_fast_len
    filters: ModuleType  # correlate, correlate_separable, magnitude (see ndfilters.py)
    threads: int = 1
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False, compare=False)
    _pid: int = field(default_factory=os.getpid, repr=False, compare=False)  # the process that owns _pool

    def asarray(self, array) -> Any:
        """Host array -> engine array (a device copy on the GPU)."""
        return self.xp.asarray(array)

    def to_host(self, array) -> np.ndarray:
        return array.get() if hasattr(array, "get") else np.asarray(array)

    def planes(self, image) -> Any:
        """An (H, W, C) or (H, W) host image -> float32 (C, H, W) planes on the engine.

        On the CPU the planes are a view of the image's memory, planar (as io reads images) or
        interleaved: the filters work in either layout, so no layout copy is made. An image that
        is already on the GPU stays there (no round trip through the host).
        """
        image = check_image(image)
        xp = self.xp
        if xp is not np and isinstance(image, xp.ndarray):
            planes = xp.moveaxis(image[..., None] if image.ndim == 2 else image, -1, 0)
            return xp.ascontiguousarray(planes, dtype=np.float32)
        image = np.asarray(image, dtype=np.float32)
        image = image[..., None] if image.ndim == 2 else image
        planes = np.moveaxis(image, -1, 0)
        if xp is np or planes.flags.c_contiguous:
            return planes if xp is np else self.asarray(planes)
        # interleaved memory: copied to the device as it is, and made planar there, where a
        # transpose runs at the device's bandwidth (on the host it cost more than the transfer)
        return xp.ascontiguousarray(xp.moveaxis(self.asarray(np.ascontiguousarray(image)), -1, 0))

    def image(self, planes, flat: bool = False) -> np.ndarray:
        """(C, H, W) planes -> a float32 host image, (H, W, C) (a view of planar memory) or (H, W)."""
        out = self.to_host(planes).astype(np.float32, copy=False)
        return out[0] if flat else np.moveaxis(out, 0, -1)

    def map(self, fn: Callable, items) -> list:
        """Run fn over items; the CPU engine uses its threads (ndimage releases the GIL)."""
        # a forked child (multiprocessing's fork) inherits the pool but not its threads: a job
        # submitted there would wait forever, so the child runs the items itself
        if self._pool is None or os.getpid() != self._pid:
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))

    def one_thread(self) -> Engine:
        """This engine computing on one thread, with its filters: for many small FFTs, where more
        measured slower."""
        if self.name != "cpu" or self.threads == 1:
            return self
        single = cpu_engine(1)
        return single if single.filters is self.filters else replace(single, filters=self.filters)


class _OnFirstUse:
    """A module or namespace made when first used: a CLI call that filters through OpenCV never
    pays for importing scipy.ndimage and scipy.fft (~0.14 s)."""

    def __init__(self, make: Callable[[], Any]):
        self._make = functools.cache(make)

    def __getattr__(self, name: str):
        return getattr(self._make(), name)


def _import_ndimage() -> ModuleType:
    import scipy.ndimage

    return scipy.ndimage


def _scipy_fft_namespace(threads: int, backend_name: str) -> SimpleNamespace:
    """scipy.fft bound to a worker count and, for "pyfftw", FFTW registered as its backend."""
    import scipy.fft as sfft

    backend = "scipy"
    if backend_name == "pyfftw":
        import pyfftw
        import pyfftw.interfaces.scipy_fft as backend

        # FFTW_ESTIMATE plans were slower than scipy.fft on this kind of machine (docs/product.md):
        # plan with MEASURE, and keep the plans as wisdom for the next run
        pyfftw.config.PLANNER_EFFORT = "FFTW_MEASURE"
        pyfftw.interfaces.cache.enable()
        pyfftw.interfaces.cache.set_keepalive_time(60)
        _load_fftw_wisdom(pyfftw)
        atexit.register(save_fftw_wisdom)

    def bind(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with sfft.set_backend(backend, only=True):
                return fn(*args, workers=threads, **kwargs)

        return call

    namespace = SimpleNamespace(**{name: bind(getattr(sfft, name)) for name in _FFT_FUNCTIONS})
    namespace.fftshift = sfft.fftshift
    namespace.next_fast_len = functools.partial(sfft.next_fast_len, real=True)
    return namespace


def fftw_wisdom_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imfilt" / "fftw-wisdom.bin"


def _load_fftw_wisdom(pyfftw) -> None:
    try:
        pyfftw.import_wisdom(tuple(fftw_wisdom_path().read_bytes().split(b"\0\0")))
    except (OSError, ValueError):
        pass  # no wisdom yet: plans are made as needed


def save_fftw_wisdom() -> None:
    """Keep FFTW's plans for the next run (planning with MEASURE takes seconds)."""
    import pyfftw

    path = fftw_wisdom_path()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # through a temporary file and a rename, so a process reading it meanwhile sees old or new wisdom
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0\0".join(pyfftw.export_wisdom()))
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        # a read-only home: plans are simply made again next time


def default_fft_backend() -> str:
    return os.environ.get("IMFILT_FFT", "scipy")


def cpu_engine(threads: int | None = None, fft_backend: str | None = None) -> Engine:
    """The CPU engine; IMFILT_FFT is read on every call, so the cache never hides a new value."""
    return _cpu_engine(threads or os.cpu_count() or 1, fft_backend or default_fft_backend())


@functools.lru_cache(maxsize=None)
def _cpu_engine(threads: int, fft_backend: str) -> Engine:
    from . import cvfilters

    if fft_backend not in FFT_BACKENDS:
        raise EngineUnavailable(f"unknown FFT backend {fft_backend!r} (IMFILT_FFT): choose from {', '.join(FFT_BACKENDS)}")
    pool = ThreadPoolExecutor(threads, thread_name_prefix="imfilt") if threads > 1 else None
    fft = _OnFirstUse(functools.partial(_scipy_fft_namespace, threads, fft_backend))
    return Engine("cpu", np, _OnFirstUse(_import_ndimage), fft, cvfilters, threads, pool)


@functools.lru_cache(maxsize=None)
def gpu_engine() -> Engine:
    """cupy, cupyx.scipy.ndimage and cupyx.scipy.fft: imported only when asked for."""
    try:
        import cupy
        import cupyx.scipy.fft as cufft
        import cupyx.scipy.ndimage as cundi
    except ImportError as exc:
        raise EngineUnavailable(NO_GPU) from exc
    try:
        if not cupy.is_available():
            raise EngineUnavailable(NO_GPU)
    except RuntimeError as exc:  # CUDARuntimeError when the driver is missing
        raise EngineUnavailable(NO_GPU) from exc
    fft = SimpleNamespace(**{name: getattr(cufft, name) for name in _FFT_FUNCTIONS})
    fft.fftshift = cufft.fftshift
    fft.next_fast_len = functools.partial(cufft.next_fast_len, real=True)
    from . import ndfilters

    return Engine("gpu", cupy, cundi, fft, ndfilters)


# --engine auto, measured (benchmarks/gpu.py; docs/gpu.md): on an H200 against the CPU engine on 16
# cores, transfers included, the GPU won where the work is FFTs (dense kernels 8.5-9.3x, spectrum
# 4.8x, match 3.9-6.2x, lowpass 1.2x at 4096x4096) and lost on 3x3 and separable filters (0.1-1.4x),
# whose CPU time is below the cost of moving the image to the device and back. Below 4096x4096
# nothing was measured, so auto stays on the CPU there.
GPU_MIN_PIXELS = 4096 * 4096


def prefers_gpu(work: str, pixels: int) -> bool:
    """Whether --engine auto sends this work ("fft" or "spatial") on an image of this size to the GPU."""
    return work == "fft" and pixels >= GPU_MIN_PIXELS


def auto_engine(work: str, pixels: int, threads: int | None = None) -> Engine:
    """The engine --engine auto runs this work on: the GPU where it was measured faster and is present."""
    if prefers_gpu(work, pixels):
        try:
            return gpu_engine()
        except EngineUnavailable:
            pass
    return cpu_engine(threads)


def get_engine(name: str = "auto", threads: int | None = None) -> Engine:
    """Engine by name: auto takes the GPU when cupy and a CUDA device are present."""
    if name == "cpu":
        return cpu_engine(threads)
    if name == "gpu":
        return gpu_engine()
    if name == "auto":
        try:
            return gpu_engine()
        except EngineUnavailable:
            return cpu_engine(threads)
    raise EngineUnavailable(f"unknown engine {name!r}: choose from {', '.join(ENGINES)}")
