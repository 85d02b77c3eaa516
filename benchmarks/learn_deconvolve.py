"""imfilt learn and deconvolve: times on a 4096x4096 RGB photo, scikit-image as the peer; PSNR figures.

    python benchmarks/learn_deconvolve.py                 # all three sections
    python benchmarks/learn_deconvolve.py [learn|deconvolve|psnr ...] [--size 4096] [--repeat 3]

learn       a 15x15 kernel from a target made by apply: an asymmetric blur as float (nothing
            clipped) and as 8-bit (clipped, rounded: few samples clipped), the same from the photo
            without noise (its black and white regions flat: many clipped, most with flat patches), and a strong random kernel (many clipped: each is one patch
            more to subtract); imfilt.ops.learn.learn_kernel, median of --repeat runs; the design matrix
            it avoids, timed on a 512x512 crop for scale
deconvolve  wiener (balance 0.01) and richardson-lucy (30 iterations) on the same blurred image,
            imfilt vs skimage.restoration per channel (its richardson_lucy once: it takes minutes)
psnr        the docs' figures: the 512x512 astronaut blurred by a Gaussian σ=2 (reflect) with noise
            σ=0.005, deconvolved with each boundary, and by scikit-image
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

import imfilt
from imfilt.ops.deconvolve import richardson_lucy, wiener
from imfilt.ops.kernels import gaussian
from imfilt.ops.learn import clipped, learn_kernel

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def photo(size: int, noise: float = 0.01) -> np.ndarray:
    """The astronaut, enlarged (cubic) to size x size, with a little noise: a photo's content at 4096².
    Without noise it keeps the photo's saturated regions (black, white) flat."""
    small = np.asarray(Image.open(ROOT / "samples" / "astronaut.png").convert("RGB"), dtype=np.float32) / 255
    big = ndi.zoom(small, (size / small.shape[0], size / small.shape[1], 1), order=3)
    big += np.random.default_rng(0).normal(0, noise, big.shape).astype(np.float32) if noise else 0
    return np.round(np.clip(big, 0, 1) * 255) / 255  # an 8-bit photo


def psnr(result: np.ndarray, truth: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((np.clip(result, 0, 1) - truth) ** 2)))


def bench_learn(size: int, repeat: int) -> None:
    rng = np.random.default_rng(1)
    blur = gaussian(2.5, truncate=2.8) + rng.uniform(-0.002, 0.002, (15, 15))  # 15x15, asymmetric
    strong = rng.uniform(-0.05, 0.1, (15, 15))
    strong[7, 7] += 1 - strong.sum()
    noisy, clean = photo(size), photo(size, noise=0)
    cases = [("an asymmetric blur, float target", noisy, blur, False), ("an asymmetric blur", noisy, blur, True),
             ("an asymmetric blur, no noise: flat saturated regions", clean, blur, True),
             ("a strong random kernel", noisy, strong, True)]
    for name, image, kernel, rounded in cases:
        target = imfilt.convolve(image, kernel)
        left_out = None
        if rounded:
            target = np.round(np.clip(target, 0, 1) * 255) / 255
            left_out = clipped(target, 8)
        runs = repeat if left_out is None or left_out.mean() < 0.02 else 1
        seconds, fit = timed(lambda: learn_kernel(image, target, (15, 15), left_out=left_out), runs)
        print(f"learn 15x15 ({name}), {size}x{size} RGB: {'median of ' + str(runs) if runs > 1 else 'one run'}"
              f" {seconds:.2f} s; max |K - true| {np.abs(fit.kernel - kernel).max():.2e}, rmse {fit.rmse * 255:.3f} "
              f"levels, {100 * fit.left_out:.2f}% left out as clipped (load average {os.getloadavg()[0]:.1f})")
    image = noisy
    side = min(512, size)
    crop, goal = image[:side, :side], target[:side, :side]
    padded = np.pad(crop, ((7, 7), (7, 7), (0, 0)), mode="symmetric")

    def design_matrix():
        x = np.stack([padded[u0 : u0 + side, u1 : u1 + side] for u0 in range(15) for u1 in range(15)], -1)
        x = x.reshape(-1, 225).astype(np.float64)
        return x.T @ x, x.T @ goal.reshape(-1)

    naive, _ = timed(design_matrix, 1)
    ours, _ = timed(lambda: learn_kernel(crop, goal, (15, 15)), 3)
    print(f"  on a {side}x{side} crop: the design matrix ({side * side * 3} x 225) and its products {naive:.2f} s, "
          f"learn_kernel {ours:.3f} s; at {size}² the matrix alone would hold "
          f"{size * size * 3 * 225 * 8 / 2**30:.0f} GiB")


def bench_deconvolve(size: int, repeat: int) -> None:
    from skimage import restoration

    truth = photo(size)
    kernel = gaussian(2.0)
    blurred = imfilt.convolve(truth, kernel)
    rows = []
    ours, out = timed(lambda: wiener(blurred, kernel, balance=0.01), repeat)
    theirs, ref = timed(lambda: np.stack([restoration.wiener(blurred[..., c], kernel, balance=0.01, clip=False)
                                          for c in range(3)], -1), repeat)
    rows.append(("wiener, balance 0.01", ours, repeat, theirs, repeat, psnr(out, truth), psnr(ref, truth)))
    ours, out = timed(lambda: richardson_lucy(blurred, kernel, iterations=30), repeat)
    theirs, ref = timed(lambda: np.stack([restoration.richardson_lucy(blurred[..., c], kernel, num_iter=30, clip=False)
                                          for c in range(3)], -1), 1)
    rows.append(("richardson-lucy, 30 iterations", ours, repeat, theirs, 1, psnr(out, truth), psnr(ref, truth)))
    print(f"deconvolve {size}x{size} RGB, Gaussian σ=2 (17x17), float32; blurred: {psnr(blurred, truth):.2f} dB")
    for name, a, ra, b, rb, pa, pb in rows:
        print(f"  {name:32} imfilt {a:7.2f} s (median of {ra}) {pa:6.2f} dB   scikit-image {b:7.2f} s "
              f"({'median of ' + str(rb) if rb > 1 else 'one run'}) {pb:6.2f} dB   {b / a:5.1f}x")


def bench_psnr() -> None:
    from skimage import restoration

    truth = np.asarray(Image.open(ROOT / "samples" / "astronaut.png").convert("RGB"), dtype=np.float64) / 255
    kernel = gaussian(2.0)
    noise = np.random.default_rng(0).normal(0, 0.005, truth.shape)
    blurred = (np.stack([ndi.convolve(truth[..., c], kernel, mode="reflect") for c in range(3)], -1) + noise)
    blurred = blurred.astype(np.float32)
    print(f"PSNR, 512x512 astronaut, Gaussian σ=2 (reflect) + noise σ=0.005: blurred {psnr(blurred, truth):.2f} dB")
    for mode in ("reflect", "mirror", "nearest", "wrap", "constant"):
        w = psnr(wiener(blurred, kernel, balance=0.01, mode=mode), truth)
        r = psnr(richardson_lucy(blurred, kernel, iterations=30, mode=mode), truth)
        print(f"  --boundary {mode:8}  wiener {w:6.2f} dB   richardson-lucy {r:6.2f} dB")
    sw = psnr(np.stack([restoration.wiener(blurred[..., c], kernel, balance=0.01, clip=False) for c in range(3)], -1), truth)
    sr = psnr(np.stack([restoration.richardson_lucy(blurred[..., c], kernel, num_iter=30, clip=False)
                        for c in range(3)], -1), truth)
    print(f"  scikit-image          wiener {sw:6.2f} dB   richardson_lucy {sr:6.2f} dB  (its defaults: a Laplacian "
          f"regularizer; zeros outside)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", default=["learn", "deconvolve", "psnr"])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for section in args.sections:
        if section == "learn":
            bench_learn(args.size, args.repeat)
        elif section == "deconvolve":
            bench_deconvolve(args.size, args.repeat)
        elif section == "psnr":
            bench_psnr()
        else:
            parser.error(f"unknown section {section!r}")


if __name__ == "__main__":
    main()
