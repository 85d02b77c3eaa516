"""The GPU engine against the CPU engine, in one run (benchmarks/gpu.sh runs it on the GPU machine).

    python benchmarks/gpu.py [--sizes 4096,16384] [--batch 100] [--json FILE]

For each operation and size: the CPU engine (host arrays in and out), the GPU engine with the
host-to-device and device-to-host transfers (the library call a user makes: numpy in, numpy out),
and the GPU engine on arrays already on the device (the operation's core; match has none of its
own: it streams strips from the host). Medians of alternating runs after one warm-up call, whose
time (first call: cuFFT plans, kernel compiles) is reported apart. For the 3x3 filters the device
time is set against the memory-bandwidth floor: reading and writing H·W·3 float32 once at
4.3 TB/s. A batch of photos through the command line, CPU against GPU, closes the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imfilt.ops.convolution import convolve, correlate_planes  # noqa: E402
from imfilt.engine.engine import EngineUnavailable, cpu_engine, gpu_engine  # noqa: E402
from imfilt.ops.frequency import frequency_mask, half_plane_mask, lowpass, mask_planes, spectrum, spectrum_planes  # noqa: E402
from imfilt.ops.kernels import Kernel, builtin, load_kernel  # noqa: E402
from imfilt.ops.match import match_template  # noqa: E402

H200_BANDWIDTH = 4.3e12  # bytes/s, device to device
CPU_LIMIT_S = 12.0  # one CPU call estimated above this is not run at the large size (scaled from the small one)


def photo_like(size: int) -> np.ndarray:
    """A smooth random field with edges and noise, made fast enough for 16384² (tiles of 1024²)."""
    import cv2

    rng = np.random.default_rng(0)
    tile = cv2.resize(rng.random((16, 16, 3)).astype(np.float32), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    tile += (cv2.resize(rng.random((8, 8)).astype(np.float32), (1024, 1024), interpolation=cv2.INTER_NEAREST) > 0.5)[..., None] * 0.2
    tile = np.clip(tile + rng.normal(0, 0.02, tile.shape).astype(np.float32), 0, 1)
    reps = -(-size // 1024)
    return np.ascontiguousarray(np.tile(tile, (reps, reps, 1))[:size, :size])


def kernels() -> dict[str, Kernel]:
    rng = np.random.default_rng(1)
    named = {name: load_kernel(spec) for name, spec in [
        ("box", "box"), ("sobel", "sobel"), ("sharpen", "sharpen"),
        ("gaussian s=2", "gaussian:sigma=2"), ("gaussian s=10", "gaussian:sigma=10")]}
    for n in (15, 31, 63):
        named[f"dense {n}x{n}"] = Kernel(f"dense{n}", rng.standard_normal((n, n)))
    return named


def operations(image_shape) -> list[tuple[str, callable, callable]]:
    """(name, host call(image, engine) -> host, device call(planes, engine) -> device or None)."""
    ops = []
    for name, kernel in kernels().items():
        def host(image, engine, kernel=kernel):
            return convolve(image, kernel, engine=engine)

        def device(planes, engine, kernel=kernel):
            responses = [correlate_planes(engine, planes, part) for part in kernel.parts]
            return engine.filters.magnitude(engine, responses) if kernel.magnitude else responses[0]
        ops.append((name, host, device))
    mask = frequency_mask(image_shape[:2], 60)
    half = half_plane_mask(mask)
    ops.append(("spectrum", lambda image, engine: spectrum(image, engine=engine),
                lambda planes, engine: spectrum_planes(engine, planes)))
    ops.append(("lowpass r=60", lambda image, engine: lowpass(image, 60, engine=engine),
                lambda planes, engine: mask_planes(engine, planes, engine.asarray(half))))
    for t in (64, 256):
        def match(image, engine, t=t):  # a patch of the image itself, a quarter of the way in
            top, left = image.shape[0] // 4, image.shape[1] // 3
            return match_template(image, image[top : top + t, left : left + t], engine=engine)
        ops.append((f"match {t}x{t}", match, None))
    return ops


def timed(fn, sync) -> float:
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def measure(fns: list, sync, repeat: int) -> list[float]:
    """Median seconds of each function, run in turns after one warm-up each (returned first)."""
    first = [timed(fn, sync) for fn in fns]
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, spent in zip(fns, times):
            spent.append(timed(fn, sync))
    return first, [statistics.median(t) for t in times]


def bench_size(size: int, gpu, repeat: int, cpu_estimates: dict) -> list[dict]:
    import cupy

    cpu = cpu_engine()
    image = photo_like(size)
    planes = gpu.planes(image)
    sync = cupy.cuda.Device().synchronize
    rows = []
    for name, host, device in operations(image.shape):
        row = {"op": name, "size": size}
        estimate = cpu_estimates.get(name, 0.0) * (size / 4096) ** 2
        if estimate > CPU_LIMIT_S:
            row["cpu_s"], row["cpu_estimated"] = estimate, True
        else:
            _, [row["cpu_s"]] = measure([lambda: host(image, cpu)], lambda: None, 1 if size > 4096 else repeat)
            if size == 4096:
                cpu_estimates[name] = row["cpu_s"]
        fns = [lambda: host(image, gpu)] + ([lambda: device(planes, gpu)] if device else [])
        first, medians = measure(fns, sync, repeat if size <= 4096 else 2)
        row["gpu_first_s"], row["gpu_s"] = first[0], medians[0]
        if device:
            row["gpu_device_s"] = medians[1]
        if name in ("box", "sharpen", "sobel"):
            floor = 2 * image.nbytes / H200_BANDWIDTH * (2 if name == "sobel" else 1)  # sobel: two responses
            row["floor_s"] = floor
        rows.append(row)
        print(json.dumps(row), flush=True)
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


def bench_batch(count: int) -> list[dict]:
    """One CLI call over `count` photos of 640x480 (PNG): CPU engine against GPU engine."""
    from PIL import Image

    folder = Path(tempfile.mkdtemp())
    (folder / "in").mkdir()
    base = (photo_like(1024)[:480, :640] * 255).astype(np.uint8)
    for i in range(count):
        Image.fromarray(np.roll(base, i * 7, axis=1)).save(folder / "in" / f"p{i:03d}.png", compress_level=1)
    rows = []
    imfilt = [sys.executable, "-m", "imfilt"]
    cases = [("cpu", []), ("gpu", []), ("gpu", ["-j", "1"])]
    for spec in ("gaussian:sigma=2",):
        for engine, extra in cases:
            out = folder / f"out-{engine}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            done = subprocess.run(imfilt + ["apply", str(folder / "in"), "-k", spec, "-q", "--overwrite", "--engine", engine,
                                            "--out-dir", str(out), *extra], capture_output=True, text=True)
            seconds = time.perf_counter() - start
            row = {"op": f"batch {count} x 640x480 {spec}", "engine": engine + (" " + " ".join(extra) if extra else ""),
                   "seconds": seconds, "images_per_s": count / seconds, "rc": done.returncode}
            if done.returncode:
                row["stderr"] = done.stderr[-500:]
            rows.append(row)
            print(json.dumps(row), flush=True)
    shutil.rmtree(folder)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| op | size | CPU s | GPU s (with transfers) | GPU device-only s | first GPU call s | "
             "GPU speed-up (with transfers) | device time / bandwidth floor |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "size" not in r:
            continue
        cpu = f"{r['cpu_s']:.3f}" + (" (est.)" if r.get("cpu_estimated") else "")
        device = f"{r['gpu_device_s'] * 1e3:.2f} ms" if "gpu_device_s" in r else "-"
        floor = f"{r['gpu_device_s'] / r['floor_s']:.1f}x" if "floor_s" in r and "gpu_device_s" in r else "-"
        lines.append(f"| {r['op']} | {r['size']}² | {cpu} | {r['gpu_s']:.4f} | {device} | {r['gpu_first_s']:.3f} | "
                     f"{r['cpu_s'] / r['gpu_s']:.1f}x | {floor} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4096,16384")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        gpu = gpu_engine()
    except EngineUnavailable as exc:
        print(f"no GPU here ({exc}): nothing to measure")
        return
    import cupy

    print(f"cupy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
          f"device {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CPU threads {os.cpu_count()}", flush=True)
    rows, estimates = [], {}
    for size in map(int, args.sizes.split(",")):
        rows += bench_size(size, gpu, args.repeat, estimates)
    if args.batch:
        rows += bench_batch(args.batch)
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
