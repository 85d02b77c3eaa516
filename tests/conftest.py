from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imfilt.engine import cpu_engine, gpu_engine
from imfilt.errors import EngineUnavailable

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _gpu_or_skip():
    try:
        return gpu_engine()
    except EngineUnavailable as exc:
        pytest.skip(f"GPU engine not available here: {exc}")


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def engine(request):
    """Every engine that can run here; GPU cases skip with the reason when there is no device."""
    return cpu_engine() if request.param == "cpu" else _gpu_or_skip()


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
