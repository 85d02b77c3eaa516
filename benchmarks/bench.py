"""imfilt benchmarks: medians and ratios from one run (tests never assert timings).

    python benchmarks/bench.py            # docs/performance.md's tables: inprocess, cli, batch
    python benchmarks/bench.py [inprocess|convolve|crossover|png|cli|frequency|batch ...]

inprocess  the everyday filters vs OpenCV float32 on the same 4096x4096x3 array, alternating A/B
convolve   each method vs per-channel scipy.ndimage.convolve in float64, 2048x2048 RGB
crossover  direct vs separable vs FFT by kernel size: where --method auto switches
png        Pillow's PNG encoder settings on a 4096x4096 photo-like image
cli        one CLI call per op on a 4096x4096 photo-like PNG vs the vips CLI, with peak RSS
outputs    three maps of that PNG: one imfilt call (one decode) vs a call per kernel vs the three vips commands
frequency  spectrum and lowpass on 4096x4096 RGB vs numpy.fft in float64; scipy vs pyfftw
batch      100 photos of 640x480 and 40 smaller ones: the default (threads), -j 1, -j 2 (processes),
           xargs -P2 vips gaussblur
match      imfilt.match_template vs cv2.matchTemplate (TM_CCOEFF_NORMED), 4096x4096 RGB photo
streampng  8192x8192 RGB PNG and JPEG: decoders (Pillow whole, libvips in bands) and a streamed
           apply against the whole-image one, seconds and peak RSS
layer      a (64, 3, 7, 7) convolutional layer on a 4096x4096 RGB photo: imfilt's 64 feature maps
           against the same sums with scipy.ndimage by hand, and torch.nn.functional.conv2d (CPU)
           when torch is installed
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

import imfilt
import imfilt.ops.operations
from imfilt.ops.convolution import rank_one_factors
from imfilt.engine.engine import cpu_engine
from imfilt.ops.kernels import builtin

ROOT = Path(__file__).resolve().parent.parent


def median_time(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def photo_like(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random field with edges and a little noise: compresses like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    base = ndi.zoom(rng.random((size // 64, size // 64, 3)), (64, 64, 1), order=3)
    edges = (ndi.zoom(rng.random((size // 128, size // 128)), 128, order=0) > 0.5)[..., None] * 0.2
    return np.clip(base + edges + rng.normal(0, 0.02, base.shape), 0, 1).astype(np.float32)


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in row) + " |")
    sys.stdout.flush()


def baseline(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    x = image.astype(np.float64)
    return np.stack([ndi.convolve(x[..., c], kernel, mode="reflect") for c in range(x.shape[2])], axis=-1)


def alternating(fns: list, repeat: int = 5) -> list[float]:
    """Median seconds of each function, run in turns (A, B, A, B, ...) so that a busy machine
    slows every peer alike."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def bench_inprocess() -> None:
    """The everyday filters against OpenCV float32 on the same 4096x4096x3 array, border reflect."""
    import cv2

    image = photo_like(4096)  # interleaved (H, W, 3) float32, as OpenCV holds images
    engine = cpu_engine()
    rng = np.random.default_rng(3)
    reflect = {"borderType": cv2.BORDER_REFLECT}

    def peer_filter2d(kernel):  # convolution = correlation with the flipped kernel
        flipped = np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float32)
        return lambda: cv2.filter2D(image, cv2.CV_32F, flipped, **reflect)

    def peer_separable(kernel):
        column, row = (f.astype(np.float32) for f in rank_one_factors(kernel[::-1, ::-1]))
        return lambda: cv2.sepFilter2D(image, cv2.CV_32F, row, column, **reflect)

    def peer_sobel():
        gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3, **reflect)
        return cv2.magnitude(gx, cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3, **reflect))

    dense = {n: rng.standard_normal((n, n)) for n in (15, 31)}
    cases = [("box 3x3", builtin("box"), "cv2.filter2D", peer_filter2d(builtin("box").weights)),
             ("sharpen 3x3", builtin("sharpen"), "cv2.filter2D", peer_filter2d(builtin("sharpen").weights)),
             ("sobel magnitude", builtin("sobel"), "cv2.Sobel x2 + cv2.magnitude", peer_sobel)]
    for sigma in (2, 10):
        gauss = builtin("gaussian", sigma=sigma)
        cases.append((f"gaussian sigma={sigma}", gauss, "cv2.sepFilter2D", peer_separable(gauss.weights)))
    for n, kernel in dense.items():
        cases.append((f"dense {n}x{n}", imfilt.Kernel(f"{n}x{n}", kernel), "cv2.filter2D", peer_filter2d(kernel)))
    rows = []
    for label, kernel, peer_name, peer in cases:
        ours = lambda: imfilt.convolve(image, kernel, engine=engine)  # noqa: E731
        difference = float(np.abs(ours() - peer()).max())
        mine, theirs = alternating([ours, peer])
        rows.append([label, imfilt.ops.operations.Apply(kernel).method_on(engine), mine * 1000, peer_name, theirs * 1000,
                     f"{mine / theirs:.2f}x", f"{difference:.1e}"])
    table("in-process: 4096x4096x3 float32, border reflect, ms (median of 5, alternating A/B)",
          ["op", "auto picks", "imfilt.convolve", "OpenCV float32 peer", "peer", "ratio", "max |diff|"], rows)


def bench_convolve() -> None:
    image = photo_like(2048)
    engine = cpu_engine()
    rng = np.random.default_rng(1)
    rows = []
    cases = [(f"{n}x{n}", rng.standard_normal((n, n)), builtin("box", size=n)) for n in (3, 5, 9, 15, 31, 63)]
    cases += [(f"gaussian sigma={s}", None, builtin("gaussian", sigma=s)) for s in (2, 10)]
    for label, dense, rank_one in cases:
        kernel = dense if dense is not None else rank_one.weights
        slow = kernel.shape[0] >= 31
        base = median_time(lambda: baseline(image, kernel), repeat=1 if slow else 3)
        direct = median_time(lambda: imfilt.convolve(image, kernel, method="direct", engine=engine)) \
            if kernel.shape[0] <= 15 else float("nan")
        separable = median_time(lambda: imfilt.convolve(image, rank_one, method="separable", engine=engine))
        fft = median_time(lambda: imfilt.convolve(image, kernel, method="fft", engine=engine))
        auto = imfilt.ops.operations.Apply(imfilt.Kernel("k", kernel)).method_on(engine)
        rows.append([label, base, direct, separable, fft, base / min(x for x in (direct, separable, fft) if x == x),
                     base / fft, auto])
    table("convolve: 2048x2048 RGB, seconds (median of 3; baseline of 1 from 31x31 up)",
          ["kernel", "scipy f64 per channel", "direct", "separable (rank-1 twin)", "fft", "best speed-up",
           "fft speed-up", "auto picks"], rows)
    print("\nseparable times the rank-1 kernel of the same size (box n, or the Gaussian itself);"
          " direct is not timed from 31x31 (minutes).")


def bench_crossover() -> None:
    """direct vs separable vs FFT by kernel size on the CPU engine (OpenCV filters), run in turns."""
    image = photo_like(2048)
    engine = cpu_engine()
    rng = np.random.default_rng(2)
    rows = []
    for n in (3, 5, 7, 9, 11, 15, 21, 31, 45, 63, 95, 127, 191, 255):
        dense, box = rng.standard_normal((n, n)), builtin("box", size=n)
        direct, separable, fft = alternating([
            lambda: imfilt.convolve(image, dense, method="direct", engine=engine),
            lambda: imfilt.convolve(image, box, method="separable", engine=engine),
            lambda: imfilt.convolve(image, dense, method="fft", engine=engine)], repeat=3)
        rows.append([n, direct, separable, fft, imfilt.ops.operations.Apply(imfilt.Kernel("k", dense)).method_on(engine),
                     imfilt.ops.operations.Apply(box).method_on(engine)])
    table("crossover: 2048x2048 RGB, seconds (median of 3, in turns)",
          ["n (n x n)", "direct", "separable (box)", "fft", "auto: dense", "auto: rank 1"], rows)


def bench_png() -> None:
    from imfilt.image.png import encode_png

    stored = np.rint(photo_like(4096) * 255).astype(np.uint8)
    image = Image.fromarray(stored)
    rows = []
    encoders = [("Pillow default (level 6)", lambda b: image.save(b, "PNG")),
                ("Pillow level 1", lambda b: image.save(b, "PNG", compress_level=1)),
                ("Pillow level 1, Z_RLE", lambda b: image.save(b, "PNG", compress_level=1, compress_type=3)),
                ("imfilt png.py, 1 thread", lambda b: encode_png(stored, b, threads=1)),
                ("imfilt png.py, 2 threads (default)", lambda b: encode_png(stored, b, threads=2))]
    for label, save in encoders:
        buffer = io.BytesIO()
        seconds = median_time(lambda: (buffer.seek(0), buffer.truncate(), save(buffer)), 1 if "default (" in label else 3)
        rows.append([label, seconds, f"{buffer.tell() / 2**20:.1f} MiB"])
    table("PNG encoding of a 4096x4096 RGB photo-like image", ["encoder", "seconds", "size"], rows)


def run_measured(cmd: list[str]) -> tuple[float, int | None]:
    """(seconds, peak RSS in bytes) of one command. The peak comes from GNU time, which forks
    afresh: a child started from this (large) process would report this process's peak as its own."""
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    with tempfile.NamedTemporaryFile("r") as report:
        wrapped = [gnu_time, "-f", "%M", "-o", report.name] + cmd if gnu_time else cmd
        start = time.perf_counter()
        subprocess.run(wrapped, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        text = report.read().strip().splitlines()
    return seconds, int(text[-1]) * 1024 if gnu_time and text else None


def alternating_commands(commands: list[list[str]], repeat: int = 3) -> list[tuple[float, int]]:
    """Median seconds and the largest peak RSS of each command, run in turns."""
    runs = [[] for _ in commands]
    for _ in range(repeat):
        for cmd, spent in zip(commands, runs):
            spent.append(run_measured(cmd))
    return [(statistics.median(t for t, _ in r), max((m or 0) for _, m in r) or None) for r in runs]


def bench_cli() -> None:
    """One CLI call on a 4096x4096 photo-like PNG, op by op against the vips CLI, with peak memory."""
    folder = Path(tempfile.mkdtemp())
    source = folder / "big.png"
    Image.fromarray(np.rint(photo_like(4096) * 255).astype(np.uint8)).save(source, compress_level=1)
    (folder / "box.mat").write_text("3 3 9 0\n1 1 1\n1 1 1\n1 1 1\n")
    dense = np.random.default_rng(0).integers(1, 10, (31, 31))  # not separable: a dense 31x31 convolution
    (folder / "dense.mat").write_text(f"31 31 {dense.sum()} 0\n" + "\n".join(" ".join(map(str, r)) for r in dense) + "\n")
    imfilt_cmd = [sys.executable, "-m", "imfilt"]
    out, peer_out = str(folder / "out.png"), str(folder / "vips.png")
    cases = [
        (["apply", "-k", "box"], ["conv", str(source), peer_out, str(folder / "box.mat")]),
        (["apply", "-k", "sobel"], ["sobel", str(source), peer_out]),
        (["apply", "-k", "gaussian:sigma=2"], ["gaussblur", str(source), peer_out, "2"]),
        (["apply", "-k", str(folder / "dense.mat")], ["conv", str(source), peer_out, str(folder / "dense.mat")]),
        (["spectrum"], ["spectrum", str(source), peer_out]),
        (["lowpass", "--radius", "30"], None),
    ]
    vips = shutil.which("vips")
    rows = []
    for args, peer_args in cases:
        commands = [imfilt_cmd + args + [str(source), "-o", out, "--overwrite", "-q"]]
        if vips and peer_args:
            commands.append([vips] + peer_args)
        measured = alternating_commands(commands, repeat=5)
        (mine, mine_rss), (theirs, theirs_rss) = measured[0], (measured[1] if len(measured) > 1 else (None, None))
        peer = f"vips {peer_args[0]}" if vips and peer_args else "-"
        rows.append([f"imfilt {' '.join(args).replace(str(folder) + '/', '')}", mine, f"{mine_rss / 2**20:.0f} MiB" if mine_rss else "-", peer,
                     theirs if theirs else "-", f"{theirs_rss / 2**20:.0f} MiB" if theirs_rss else "-",
                     f"{mine / theirs:.2f}x" if theirs else "-"])
    table("the whole CLI on a 4096x4096 RGB PNG, seconds (median of 5, alternating A/B) and peak RSS",
          ["command", "seconds", "peak RSS", "vips peer", "seconds", "peak RSS", "ratio"], rows)
    if not vips:
        print("\nvips is not installed (apt-get install libvips-tools): the peer columns are empty.")
    shutil.rmtree(folder)


def bench_outputs() -> None:
    """Three maps of one 4096x4096 photo-like PNG: one imfilt call (one decode), three imfilt calls,
    and the three vips commands, alternating, with peak RSS."""
    folder = Path(tempfile.mkdtemp())
    source = folder / "big.png"
    Image.fromarray(np.rint(photo_like(4096) * 255).astype(np.uint8)).save(source, compress_level=1)
    (folder / "box.mat").write_text("3 3 9 0\n1 1 1\n1 1 1\n1 1 1\n")
    imfilt_cmd = [sys.executable, "-m", "imfilt", "apply", str(source), "--out-dir", str(folder / "out"), "--overwrite", "-q"]
    kernels = ["sobel", "gaussian:sigma=2", "box"]
    peers = [["sobel", str(source), str(folder / "v1.png")], ["gaussblur", str(source), str(folder / "v2.png"), "2"],
             ["conv", str(source), str(folder / "v3.png"), str(folder / "box.mat")]]
    one_call = imfilt_cmd + [arg for k in kernels for arg in ("-k", k)]
    three_calls = ["sh", "-c", " && ".join(" ".join(imfilt_cmd + ["-k", k]) for k in kernels)]
    commands = [one_call, three_calls]
    vips = shutil.which("vips")
    if vips:
        commands.append(["sh", "-c", " && ".join(" ".join([vips] + args) for args in peers)])
    measured = alternating_commands(commands, repeat=5)
    names = ["imfilt apply -k sobel -k gaussian:sigma=2 -k box (one call)", "imfilt apply, one call per kernel",
             "vips sobel; vips gaussblur 2; vips conv (box)"]
    base = measured[-1][0] if vips else None
    rows = [[name, seconds, f"{rss / 2**20:.0f} MiB" if rss else "-", f"{seconds / base:.2f}x" if base else "-"]
            for name, (seconds, rss) in zip(names, measured)]
    table("three maps of a 4096x4096 RGB PNG, seconds (median of 5, alternating) and the largest peak RSS of one process",
          ["commands", "seconds", "peak RSS", "against vips"], rows)
    shutil.rmtree(folder)


def bench_frequency() -> None:
    image = photo_like(4096)
    x64 = image.astype(np.float64)

    def numpy_spectrum():
        return np.fft.fftshift(np.log1p(np.abs(np.fft.fft2(x64, axes=(0, 1)))), axes=(0, 1))

    def numpy_lowpass():
        mask = imfilt.frequency_mask(image.shape[:2], 200)[..., None]
        spectrum = np.fft.fftshift(np.fft.fft2(x64, axes=(0, 1)), axes=(0, 1))
        return np.real(np.fft.ifft2(np.fft.ifftshift(spectrum * mask, axes=(0, 1)), axes=(0, 1)))

    rows = []
    base_s, base_l = median_time(numpy_spectrum, 1), median_time(numpy_lowpass, 1)
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()  # no saved FFTW wisdom: measure the planning too
    for backend in ("scipy", "pyfftw"):
        engine = cpu_engine(None, backend)
        first = median_time(lambda: imfilt.lowpass(image, 200, engine=engine), 1)  # FFTW_MEASURE plans here
        spec = median_time(lambda: imfilt.spectrum(image, engine=engine))
        low = median_time(lambda: imfilt.lowpass(image, 200, engine=engine))
        rows.append([backend, base_s, spec, base_s / spec, base_l, first, low, base_l / low])
    table("frequency: 4096x4096 RGB, seconds (numpy.fft float64 baseline, median of 1; imfilt median of 3)",
          ["FFT backend", "numpy spectrum", "imfilt spectrum", "ratio", "numpy lowpass", "imfilt lowpass, first call",
           "imfilt lowpass", "ratio"], rows)


def write_photos(folder: Path, sizes: list[tuple[int, int]]) -> list[str]:
    folder.mkdir(parents=True)
    for i, (height, width) in enumerate(sizes):
        pixels = photo_like(-(-max(height, width) // 128) * 128, seed=i)[:height, :width]  # sizes of 128s
        Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(folder / f"{i:03}.png")
    return sorted(str(p) for p in folder.iterdir())


def bench_batch() -> None:
    """Throughput of one imfilt call over many photos, against vips with xargs -P2."""
    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(5)
    batches = {
        "100 photos of 640x480": write_photos(folder / "large", [(480, 640)] * 100),
        "40 photos of 300x450 to 512x512": write_photos(
            folder / "small", [(int(rng.integers(300, 513)), int(rng.integers(450, 513))) for _ in range(40)]),
    }
    vips = shutil.which("vips")
    rows = []
    for label, files in batches.items():
        out = folder / "out"
        out.mkdir(exist_ok=True)
        imfilt_cmd = [sys.executable, "-m", "imfilt", "apply", "-k", "gaussian:sigma=2", "-q", "--overwrite",
                      "--out-dir", str(out)] + files
        commands = [imfilt_cmd + ["-j", "1"], imfilt_cmd, imfilt_cmd + ["-j", "2"]]
        names = ["imfilt -j 1", "imfilt (default: threads)", "imfilt -j 2 (processes)"]
        if vips:
            names.append("xargs -P2 vips gaussblur 2")
            commands.append(["sh", "-c", f"cd {files[0].rsplit('/', 1)[0]} && ls *.png | "
                             f"xargs -P2 -I{{}} {vips} gaussblur {{}} {out}/v{{}} 2"])
        measured = alternating_commands(commands)
        base = measured[0][0]
        peer = measured[3][0] if vips else None
        for name, (seconds, rss) in zip(names, measured):
            rows.append([label, name, seconds, f"{len(files) / seconds:.1f}", f"{base / seconds:.2f}x",
                         f"{peer / seconds:.2f}x" if peer else "-", f"{rss / 2**20:.0f} MiB" if rss else "-"])
    table("batch, gaussian sigma=2, seconds (median of 3, alternating)",
          ["batch", "how", "seconds", "images/s", "speed vs -j 1", "speed vs vips", "peak RSS"], rows)
    if not vips:
        print("\nvips is not installed (apt-get install libvips-tools): no vips rows.")
    shutil.rmtree(folder)


def bench_match(rounds: int = 3) -> None:
    import cv2  # a runtime dependency (the CPU engine's filters)

    from imfilt.ops.match import match_template

    # a real photo (the astronaut) enlarged to 4096x4096, with a little noise so no window is flat
    photo = Image.open(ROOT / "samples" / "astronaut.png").convert("RGB").resize((4096, 4096), Image.LANCZOS)
    rng = np.random.default_rng(3)
    image = np.clip(np.asarray(photo, dtype=np.float32) / 255 + rng.normal(0, 0.01, (4096, 4096, 3)), 0, 1).astype(np.float32)
    # each library gets the layout it reads images into: imfilt planar (an (H, W, C) view of
    # channels-first memory, as imfilt.read_image gives), OpenCV interleaved
    planar = np.moveaxis(np.ascontiguousarray(np.moveaxis(image, -1, 0)), 0, -1)
    engine = cpu_engine()
    rows = []
    for n in (64, 256):
        template = np.ascontiguousarray(image[1500 : 1500 + n, 1900 : 1900 + n])
        times = {"imfilt": [], "cv2": []}
        cpu = {"imfilt": [], "cv2": []}  # user + system seconds of the process, all threads: steadier under load
        for _ in range(rounds):  # A/B alternately: the machine is shared, so both see the same load
            for name in ("imfilt", "cv2"):
                start, start_cpu = time.perf_counter(), sum(os.times()[:2])
                if name == "imfilt":
                    ours = match_template(planar, template, engine=engine)
                else:
                    cv2.setNumThreads(os.cpu_count())  # all the cores (imfilt's engine may have set fewer for its own calls)
                    theirs = cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(sum(os.times()[:2]) - start_cpu)
        found = [np.unravel_index(np.argmax(m), m.shape) for m in (ours, theirs)]
        wall = {name: statistics.median(t) for name, t in times.items()}
        busy = {name: statistics.median(t) for name, t in cpu.items()}
        rows.append([f"{n}x{n}", wall["imfilt"], wall["cv2"], f"{wall['imfilt'] / wall['cv2']:.2f}x",
                     f"{busy['imfilt']:.2f} / {busy['cv2']:.2f} s", f"{busy['imfilt'] / busy['cv2']:.2f}x",
                     f"{float(np.abs(ours - theirs).max()):.1e}", f"{tuple(map(int, found[0]))} / {tuple(map(int, found[1]))}"])
    table(f"match: 4096x4096 RGB photo, seconds (median of {rounds}, alternately; load {os.getloadavg()[0]:.1f})",
          ["template", "imfilt match_template", "cv2.matchTemplate", "imfilt / cv2, wall", "CPU: imfilt / cv2",
           "imfilt / cv2, CPU", "max |score diff|", "best (row, col): imfilt / cv2"], rows)
    print(f"\ncv2 {cv2.__version__}, {cv2.getNumThreads()} threads; the template was cut at (1500, 1900).")


# Each decoder reads the whole image in its own process (for its peak RSS) and checks a sum.
_DECODERS = {
    "Pillow, whole": "from PIL import Image; Image.MAX_IMAGE_PIXELS = None; a = np.asarray(Image.open(p))",
    "imfilt decoded.py (libvips sequential), 256-row bands": "from imfilt.image.decoded import DecodedRows; "
    "d = DecodedRows(p); [d[t : t + 256, :] for t in range(0, d.shape[0], 256)]",
    # random access decodes the whole image into a scratch file in TMPDIR first
    "libvips random, 256x4096 windows": "import pyvips; im = pyvips.Image.new_from_file(p); "
    "[im.crop(x, t, min(4096, im.width - x), min(256, im.height - t)).numpy() for t in range(0, im.height, 256) "
    "for x in range(0, im.width, 4096)]",
}


def bench_streampng(size: int = 8192) -> None:
    """PNG and JPEG larger than memory: how they are decoded, and a streamed apply against a whole one."""
    folder = Path(tempfile.mkdtemp())
    stored = np.rint(photo_like(size) * 255).astype(np.uint8)
    paths = {"PNG": folder / "big.png", "JPEG": folder / "big.jpg"}
    imfilt.write_image(paths["PNG"], stored / np.float32(255))
    Image.fromarray(stored).save(paths["JPEG"], quality=90)
    del stored
    rows = []
    for kind, path in paths.items():
        commands = [[sys.executable, "-c", f"import numpy as np; p = {str(path)!r}; {code}"] for code in _DECODERS.values()]
        measured = alternating_commands(commands)
        for label, (seconds, rss) in zip(_DECODERS, measured):
            rows.append([kind, label, seconds, f"{rss / 2**20:.0f} MiB", f"{seconds / measured[0][0]:.2f}x"])
        apply = [sys.executable, "-m", "imfilt", "apply", str(path), "-k", "gaussian:sigma=3", "--overwrite", "-q"]
        streamed, whole = folder / "streamed.png", folder / "whole.png"
        measured = alternating_commands([apply + ["-o", str(streamed)], apply + ["-o", str(whole), "--memory", "64G"]])
        same = "same bytes" if streamed.read_bytes() == whole.read_bytes() else "DIFFERENT BYTES"
        for label, (seconds, rss) in zip(("apply gaussian:sigma=3 -> .png, streamed", f"... whole image ({same})"),
                                         measured):
            rows.append([kind, label, seconds, f"{rss / 2**20:.0f} MiB", f"{seconds / measured[0][0]:.2f}x"])
    table(f"{size}x{size} RGB PNG and JPEG, seconds (median of 3, in turns) and peak RSS",
          ["input", "how", "seconds", "peak RSS", "ratio to the first"], rows)
    shutil.rmtree(folder)


def gabor_bank(count: int = 64, size: int = 7, seed: int = 0) -> np.ndarray:
    """(count, 3, size, size): Gabor kernels at 8 orientations, a few wavelengths and two phases,
    weighted differently per colour channel, as a trained net's first layer looks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: size, : size] - (size - 1) / 2
    bank = []
    for i in range(count):
        theta, wavelength, phase = np.pi * (i % 8) / 8, 2.5 + (i // 8) % 4, np.pi / 2 * (i // 32)
        along = x * np.cos(theta) + y * np.sin(theta)
        gabor = np.exp(-(x**2 + y**2) / (2 * (size / 4) ** 2)) * np.cos(2 * np.pi * along / wavelength + phase)
        bank.append(np.stack([gabor * w for w in rng.uniform(0.2, 1.0, 3)]))
    return np.array(bank, dtype=np.float32) / size


def bench_layer(size: int = 4096, by_hand_maps: int = 8) -> None:
    """64 feature maps of a 4096x4096 RGB photo, cross-correlation with zero padding (PyTorch's
    conv2d): imfilt (--correlate --boundary constant), scipy.ndimage by hand, torch on the CPU."""
    from imfilt.image.io import Loaded
    from imfilt.ops.kernels import Kernel
    from imfilt.ops.operations import Apply

    photo = np.asarray(Image.open(ROOT / "samples" / "astronaut.png").convert("RGB").resize((size, size), Image.LANCZOS))
    image = photo.astype(np.float32) / 255
    weight = gabor_bank()
    kernels = [Kernel(f"g{i}", w, summed=True) for i, w in enumerate(weight)]
    engine = cpu_engine()
    rows = []
    first = {}
    for method in ("auto", "fft"):
        loaded = Loaded(image, 8, False)
        start = time.perf_counter()
        for i, kernel in enumerate(kernels):
            out = Apply(kernel, mode="constant", correlate=True, method=method).run(loaded, engine).pixels
            if i == 0:
                first[method] = out[..., 0]
        rows.append([f"imfilt, --method {method} ({Apply(kernels[0], method=method).method_on(engine)})",
                     time.perf_counter() - start, 64])
        del loaded
    planes = np.ascontiguousarray(image.transpose(2, 0, 1))
    start = time.perf_counter()
    for n in range(by_hand_maps):  # the obvious scipy: one correlate per (kernel, channel), summed
        by_hand = sum(ndi.correlate(planes[c], weight[n, c], mode="constant") for c in range(3))
        if n == 0:
            first["scipy"] = by_hand
    spent = time.perf_counter() - start
    rows.append([f"scipy.ndimage.correlate by hand, float32 ({by_hand_maps} maps, x{64 // by_hand_maps})",
                 spent * 64 / by_hand_maps, 64])
    try:
        import torch
    except ImportError:
        rows.append(["torch.nn.functional.conv2d: torch is not installed", "-", "-"])
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        batch, kernel = torch.from_numpy(planes[None]), torch.from_numpy(weight)
        start = time.perf_counter()
        with torch.no_grad():
            maps = torch.nn.functional.conv2d(batch, kernel, padding=3)
        rows.append([f"torch {torch.__version__} conv2d, float32, {torch.get_num_threads()} threads",
                     time.perf_counter() - start, 64])
        first["torch"] = maps[0, 0].numpy()
        del maps
    table(f"A (64, 3, 7, 7) layer on a {size}x{size} RGB photo (seconds for all 64 maps)",
          ["what", "seconds", "maps"], rows)
    reference = first["scipy"]
    for name, values in first.items():
        print(f"map 0, {name}: max |difference| from scipy's = {np.abs(values - reference).max():.2e}")


SECTIONS = {"inprocess": bench_inprocess, "convolve": bench_convolve, "crossover": bench_crossover, "png": bench_png, "cli": bench_cli,
            "outputs": bench_outputs, "frequency": bench_frequency, "batch": bench_batch, "match": bench_match, "streampng": bench_streampng,
            "layer": bench_layer}

if __name__ == "__main__":
    print(f"# imfilt benchmarks — {os.cpu_count()} cores, numpy {np.__version__}")
    # CLI calls as an installed imfilt runs: from bytecode (an editable install with
    # PYTHONDONTWRITEBYTECODE set compiles imfilt's modules in every call, ~0.06 s)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(imfilt.__file__).parent)], check=True)
    # One command prints three tables of docs/performance.md; the others on request.
    for name in sys.argv[1:] or ["inprocess", "cli", "batch"]:
        SECTIONS[name]()
