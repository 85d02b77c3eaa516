"""Out-of-core spectrum and lowpass here against the same jobs on a Dask LocalCluster.

    python benchmarks/huge_dask.py [SIZE] [--memory 1G] [--repeats 3] [--workers 2] [--folder DIR]

One SIZE x SIZE RGB tiled TIFF (huge.make_tiff), streamed (--memory below the whole-image need).
Each command is a whole CLI call, run here and with --scheduler alternately (A/B) after one
warm-up of each; the table gives medians, their ratio, and the load average before and after
(these machines are shared: compare ratios from one run, not seconds across runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from huge import sample_tiff

COMMANDS = {"spectrum": ["spectrum"], "lowpass r=200": ["lowpass", "--radius", "200"]}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("size", type=int, nargs="?", default=4000)
    parser.add_argument("--memory", default="1G")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--folder", default="/tmp/imfilt-huge")
    args = parser.parse_args()
    folder = Path(args.folder)
    image = sample_tiff(folder, args.size)
    imfilt = str(Path(sys.executable).parent / "imfilt")
    from distributed import LocalCluster

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      processes=True) as cluster:
        runs = {"here": [], "dask": ["--scheduler", cluster.scheduler_address]}
        load_before = os.getloadavg()[0]
        print(f"{image.name}: {args.size}x{args.size} RGB, --memory {args.memory}, {args.workers} Dask workers x 1 "
              f"thread, {os.cpu_count()} cores; load average {load_before:.1f}")
        print(f"{'command':16} {'here s':>8} {'dask s':>8} {'dask/here':>10}")
        for name, command in COMMANDS.items():
            times = {how: [] for how in runs}
            for repeat in range(args.repeats + 1):  # the first of each is a warm-up
                for how, extra in runs.items():
                    out = folder / f"{command[0]}.{how}.tif"
                    took = seconds([imfilt, *command, str(image), "-o", str(out), "--memory", args.memory,
                                    "--overwrite", *extra])
                    if repeat:
                        times[how].append(took)
            here, dask = statistics.median(times["here"]), statistics.median(times["dask"])
            same = (folder / f"{command[0]}.here.tif").read_bytes() == (folder / f"{command[0]}.dask.tif").read_bytes()
            print(f"{name:16} {here:8.2f} {dask:8.2f} {dask / here:10.2f}   files identical: {same}")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
