"""The out-of-core spectrum and lowpass keep their memory budget: measured under a hard limit."""

import numpy as np
import pytest
import tifffile
from limits import pattern_tiff, run_limited

LIMIT_MB = 600  # the tiled path's address space is ~430 MB before any pixel (libraries, thread stacks)
BUDGET_MB = 64


def _limited(*args):
    return run_limited(LIMIT_MB, *args)


@pytest.mark.parametrize("command", [["spectrum"], ["lowpass", "--radius", "40"]])
def test_out_of_core_fft_runs_in_its_budget_under_a_hard_limit(tmp_path, command):
    """4000x4000 RGB (192 MB as float32) under RLIMIT_AS = 600 MB: the whole-image path fails
    there; streamed at --memory 64M it passes, and its peak RSS is within the budget plus the
    same command's own on a tiny streamed image (the libraries, the interpreter)."""
    source = pattern_tiff(tmp_path / "big.tif", 4000, 4000)
    tiny = pattern_tiff(tmp_path / "tiny.tif", 32, 32, tile=16)
    out = tmp_path / "out.tif"
    whole, _ = _limited(*command, source, "-o", out, "--memory", "100G")
    assert whole.returncode == 1 and "not enough memory" in whole.stderr, whole.stderr
    base, baseline = _limited(*command, tiny, "-o", tmp_path / "tiny.out.tif", "--memory", "1K", "--temp-dir", tmp_path)
    assert base.returncode == 0, base.stderr
    tiled, peak = _limited(*command, source, "-o", out, "--memory", f"{BUDGET_MB}M", "--temp-dir", tmp_path)
    assert tiled.returncode == 0, tiled.stderr
    assert peak <= baseline + BUDGET_MB, (peak, baseline)
    got = tifffile.imread(out)
    assert got.shape == (4000, 4000, 3)
    if command[0] == "spectrum":  # log(1 + |F|) peaks at zero frequency, in the middle (255 for the largest)
        assert (got[2000, 2000] == got.max(axis=(0, 1))).all() and got[2000, 2000].max() == 255
    else:  # the zero frequency passes the low-pass untouched: each channel's mean stays
        stored = tifffile.imread(source).reshape(-1, 3)
        assert np.abs(got.reshape(-1, 3).mean(0) - stored.mean(0)).max() < 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "out.tif", "tiny.out.tif", "tiny.tif"]
