"""For tests that run the imfilt command in a subprocess: under a hard address-space limit
(RLIMIT_AS) on big generated images, or interrupted in the middle of a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

_LIMITED = """
import resource, sys
limit = int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = ["imfilt"] + sys.argv[2:]
from imfilt.cli.main import main
try:
    main()
finally:
    # this program's own high-water mark (VmHWM: since exec); ru_maxrss would keep the parent's size
    # at the fork before the exec (a pytest process of 300 MB late in the suite)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(f"peak {peak / 1024:.0f}", file=sys.stderr)
"""


def run_limited(limit_mb: int, *args, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """imfilt ARGS in a process limited to ``limit_mb`` MB of address space: (the run, its peak RSS in MiB).

    One OpenBLAS thread: its per-thread buffers are address space too (and under a tight limit
    OpenBLAS's start-up can spin instead of failing).
    """
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _LIMITED, str(limit_mb), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    stderr, _, peak = done.stderr.rpartition("peak ")
    done.stderr = stderr
    return done, float(peak)


def pattern_tiff(path, height: int, width: int, tile: int = 256):
    """A tiled RGB TIFF written tile by tile, so the test never holds the image either."""
    import tifffile

    def tiles():
        y, x = np.mgrid[:tile, :tile]
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                yield np.stack([(x + left) % 251, (y + top) % 241, ((x + left) * (y + top)) % 239], -1).astype(np.uint8)

    tifffile.imwrite(path, tiles(), shape=(height, width, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb")
    return path


def interrupted(args: list, ready: Callable[[], bool], timeout: float = 60) -> tuple[int, bytes]:
    """imfilt ARGS sent SIGINT once ``ready()`` (or after ``timeout`` s): (its exit code, its stderr)."""
    process = subprocess.Popen([Path(sys.executable).parent / "imfilt", *map(str, args)], stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and not ready():
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=max(timeout, 180))
    return process.returncode, stderr
