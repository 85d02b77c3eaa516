import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataclasses import replace

from imfilt.engine import ndfilters
from imfilt.engine.engine import cpu_engine, gpu_engine
from imfilt.errors import EngineUnavailable

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _gpu_or_skip():
    try:
        return gpu_engine()
    except EngineUnavailable as exc:
        pytest.skip(f"GPU engine not available here: {exc}")


def ndimage_cpu_engine():
    """The CPU engine with the GPU's filter backend (ndimage, here scipy's): that code runs here too."""
    return replace(cpu_engine(), filters=ndfilters)


@pytest.fixture(params=["cpu", "cpu-ndimage", pytest.param("gpu", marks=pytest.mark.gpu)])
def engine(request):
    """Every engine that can run here; GPU cases skip with the reason when there is no device."""
    if request.param == "gpu":
        return _gpu_or_skip()
    return cpu_engine() if request.param == "cpu" else ndimage_cpu_engine()


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def engine_name(request) -> str:
    """The engines the command line can choose (--engine); GPU cases skip with the reason."""
    if request.param == "gpu":
        _gpu_or_skip()
    return request.param


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / "chelsea.png").convert("RGB"), dtype=np.float32) / 255


@pytest.fixture
def small_rgb(tmp_path) -> Path:
    """A 24x32 RGB PNG with structure in every channel."""
    rng = np.random.default_rng(7)
    path = tmp_path / "small.png"
    Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(autouse=True)
def _restore_environment():
    """A run with workers sets OMP_NUM_THREADS & co. in this process: no test leaks that to the next."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
