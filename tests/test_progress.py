"""Progress of the streamed runners: a callback told the share of an output done, as windows are."""

import pytest

from imfilt import tiled, tiled_fft
from imfilt.engine import cpu_engine
from imfilt.frequency import Lowpass, Spectrum
from imfilt.kernels import load_kernel
from imfilt.ops import Apply
from imfilt.pipeline import Output
from limits import pattern_tiff


def recorder():
    seen = []
    return seen, seen.append


def check_fractions(seen: list[float], at_least: int) -> None:
    assert len(seen) >= at_least
    assert seen == sorted(seen) and 0 < seen[0] and seen[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("scale", ["auto", "stretch"])  # stretch: a first pass for the bounds, then writing
def test_a_tiled_apply_reports_its_windows(tmp_path, scale):
    source = pattern_tiff(tmp_path / "in.tif", 200, 300)
    seen, progress = recorder()
    op = Apply(load_kernel("gaussian:sigma=2"))
    tiled.run_output(str(source), Output(str(tmp_path / "out.tif"), op), depth=None, scale=scale,
                     memory=tiled.parse_size("1M"), engine=cpu_engine(), progress=progress)
    windows = len(list(tiled.Plan(200, 300, tiled.apply_window(op, (200, 300, 3), 2**20)).windows()))
    check_fractions(seen, windows - 1)  # each window but the first is told as it is computed
    if scale == "stretch":
        assert max(f for f in seen if f <= 0.5) == pytest.approx(0.5)  # the first pass is half


@pytest.mark.parametrize("op", [Spectrum(), Spectrum(phase=True), Lowpass(radius=20)], ids=["spectrum", "phase", "lowpass"])
def test_the_out_of_core_fft_reports_both_passes_and_the_writing(tmp_path, op):
    source = pattern_tiff(tmp_path / "in.tif", 256, 320)
    seen, progress = recorder()
    tiled_fft.run_output(str(source), Output(str(tmp_path / "out.tif"), op), depth=None, scale="auto",
                         memory=tiled.parse_size("1M"), engine=cpu_engine(), progress=progress)
    check_fractions(seen, 6)
    rows, columns = tiled_fft.ROWS_SHARE, tiled_fft.ROWS_SHARE + tiled_fft.COLUMNS_SHARE
    assert pytest.approx(rows) in seen and pytest.approx(columns) in seen  # each pass ends where the next begins
    assert any(0 < f < rows for f in seen) and any(rows < f < columns for f in seen) and any(columns < f < 1 for f in seen)
