"""Rebuild the README's pictures with the real CLI (run from the repository root).

Each picture is a row of panels: the imfilt outputs themselves, pasted side by side with a label.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
OUT = ROOT / "docs"


def imfilt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "imfilt", *args, "--overwrite", "-q"], check=True)


def imfilt_json(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "imfilt", *args, "--overwrite", "--json"], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[0])


def boxed(path: Path, matches: list[dict], size: tuple[int, int]) -> Image.Image:
    """The photo with a frame where each match's template lies (from `imfilt match --json`)."""
    image = Image.open(path).convert("RGB")
    for i, match in enumerate(matches):
        top, left = match["row"], match["col"]
        ImageDraw.Draw(image).rectangle((left, top, left + size[0] - 1, top + size[1] - 1),
                                        outline=(255, 40, 40) if i == 0 else (255, 220, 0), width=2)
    return image


def zoomed(path: Path, size: int = 64) -> Image.Image:
    """The centre of a spectrum, blown up with square pixels so single-pixel peaks show."""
    image = Image.open(path).convert("RGB")
    cx, cy = image.width // 2, image.height // 2
    return image.crop((cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)).resize((256, 256), Image.NEAREST)


def row(panels: list[tuple[str, Path]], target: Path, height: int = 220) -> None:
    images = []
    for label, path in panels:
        image = path if isinstance(path, Image.Image) else Image.open(path).convert("RGB")
        image = image.resize((round(image.width * height / image.height), height))
        ImageDraw.Draw(image).rectangle((0, 0, 8 + 7 * len(label), 16), fill=(0, 0, 0))
        ImageDraw.Draw(image).text((4, 2), label, fill=(255, 255, 255))
        images.append(image)
    canvas = Image.new("RGB", (sum(i.width for i in images) + 4 * (len(images) - 1), height), (255, 255, 255))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + 4
    canvas.save(target, optimize=True)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    cat = SAMPLES / "chelsea.png"
    for kernel in ("box:size=5", "sobel", "sharpen", "gaussian:sigma=3"):
        imfilt("apply", str(cat), "-k", kernel, "--out-dir", str(tmp))
    row([("chelsea.png", cat), ("-k box:size=5", tmp / "chelsea.box-size5.png"), ("-k sobel", tmp / "chelsea.sobel.png"),
         ("-k sharpen", tmp / "chelsea.sharpen.png"), ("-k gaussian:sigma=3", tmp / "chelsea.gaussian-sigma3.png")],
        OUT / "tour-apply.png")

    for name in ("astronaut", "stripes-mixed", "stripes", "stripes-rotated"):
        imfilt("spectrum", str(SAMPLES / f"{name}.png"), "--gray", "--window", "hann" if "stripes" in name else "none",
               "--out-dir", str(tmp))
    imfilt("spectrum", str(SAMPLES / "astronaut.png"), "--gray", "--window", "hann", "--out-dir", str(tmp),
           "--name", "{stem}.hann{ext}")
    row([("astronaut.png", SAMPLES / "astronaut.png"), ("spectrum --gray", tmp / "astronaut.spectrum.png"),
         ("--window hann", tmp / "astronaut.hann.png"), ("stripes-mixed.png", SAMPLES / "stripes-mixed.png"),
         ("its spectrum (centre, 4x)", zoomed(tmp / "stripes-mixed.spectrum.png"))], OUT / "tour-spectrum.png", height=256)
    row([("stripes.png", SAMPLES / "stripes.png"), ("spectrum (centre, 4x)", zoomed(tmp / "stripes.spectrum.png")),
         ("stripes-rotated.png", SAMPLES / "stripes-rotated.png"),
         ("spectrum (centre, 4x)", zoomed(tmp / "stripes-rotated.spectrum.png"))], OUT / "tour-rotation.png", height=256)

    astronaut = str(SAMPLES / "astronaut.png")
    for radius in ("60", "20"):
        imfilt("lowpass", astronaut, "--radius", radius, "--mask-out", str(tmp / f"mask{radius}.png"), "--out-dir", str(tmp))
    imfilt("lowpass", astronaut, "--radius", "20", "--highpass", "--out-dir", str(tmp))
    row([("mask R=60", tmp / "mask60.png"), ("lowpass --radius 60", tmp / "astronaut.lowpass60.png"),
         ("mask R=20", tmp / "mask20.png"), ("lowpass --radius 20", tmp / "astronaut.lowpass20.png"),
         ("--radius 20 --highpass", tmp / "astronaut.highpass20.png")], OUT / "tour-lowpass.png")

    cat, eye = SAMPLES / "chelsea.png", SAMPLES / "chelsea-eye.png"
    record = imfilt_json("match", str(cat), "-t", str(eye), "--top", "3", "--size", "same", "-o", str(tmp / "match.png"))
    template = Image.open(eye)
    row([("chelsea-eye.png (template)", template.resize((template.width * 3, template.height * 3), Image.NEAREST)),
         ("the 3 best matches", boxed(cat, record["matches"], template.size)),
         ("score map (--size same)", tmp / "match.png")], OUT / "tour-match.png")

    imfilt("kernels", "show", "3x3: 0,1,0,1,2,1,0,1,0", "-o", str(tmp / "scores.png"))
    imfilt("kernels", "show", str(ROOT / "kernels" / "diffusion.txt"), "-o", str(tmp / "diffusion.png"))
    imfilt("kernels", "show", "sobel", "-o", str(tmp / "sobel.png"))
    row([("the scores", tmp / "scores.png"), ("kernels/diffusion.txt: their softmax", tmp / "diffusion.png"),
         ("sobel: its two kernels", tmp / "sobel.png")], OUT / "tour-kernels.png", height=200)
    layer_and_orientation(tmp)


def layer_and_orientation(tmp: Path) -> None:
    """The tour's convolutional layer (docs/make_layer.py) and the orientation of a turned photo."""
    import numpy as np
    import scipy.ndimage as ndi

    layer = tmp / "layer.safetensors"
    subprocess.run([sys.executable, str(ROOT / "docs" / "make_layer.py"), str(layer)], check=True)
    imfilt("apply", str(SAMPLES / "chelsea.png"), "-k", f"{layer}:conv1.weight", "--correlate", "--out-dir", str(tmp),
           "--montage", str(tmp / "montage.png"))
    imfilt("kernels", "show", f"{layer}:conv1.weight", "-o", str(tmp / "layer.png"))
    row([("kernels show: 6 x 3 channels", tmp / "layer.png"),
         ("--montage: the 6 feature maps of chelsea.png", tmp / "montage.png")], OUT / "tour-layer.png", height=320)

    brick = np.asarray(Image.open(SAMPLES / "brick.png").convert("L"))
    side = int(min(brick.shape) / 2**0.5) - 4  # the centre square: no corners filled in by the turn
    top = (brick.shape[0] - side) // 2
    panels = []
    for degrees in (0, 30):
        turned = ndi.rotate(brick.astype(float), degrees, reshape=False, order=3, mode="reflect") if degrees else brick
        path = tmp / f"brick{degrees}.png"
        Image.fromarray(np.clip(np.rint(turned[top : top + side, top : top + side]), 0, 255).astype(np.uint8)).save(path)
        found = imfilt_json("spectrum", str(path), "--window", "hann", "--orientation", "-o", str(tmp / f"s{degrees}.png"))
        angle = found["orientation"][0]["angle"]
        panels += [(f"brick, turned {degrees}°" if degrees else "brick.png (centre)", path),
                   (f"--orientation: {angle:.1f}°", tmp / f"s{degrees}.png")]
    row(panels, OUT / "tour-orientation.png", height=256)

    # learn the kernel behind a sharpen we pretend not to know; deconvolve a blurred photo
    cat = str(SAMPLES / "chelsea.png")
    imfilt("apply", cat, "-k", "3x3: 0,-0.5,0,-1,3.5,-0.5,0,-0.5,0", "-o", str(tmp / "sharpened.png"))
    imfilt("learn", cat, str(tmp / "sharpened.png"), "--size", "3", "-o", str(tmp / "learned.txt"))
    imfilt("kernels", "show", str(tmp / "learned.txt"), "-o", str(tmp / "learned.png"))
    imfilt("apply", cat, "-k", "gaussian:sigma=2", "-o", str(tmp / "blurred.png"))
    for method in ("wiener", "richardson-lucy"):
        imfilt("deconvolve", str(tmp / "blurred.png"), "-k", "gaussian:sigma=2", "--method", method, "-o",
               str(tmp / f"{method}.png"))
    row([("sharpened (kernel unknown)", tmp / "sharpened.png"), ("learn --size 3, kernels show", tmp / "learned.png"),
         ("blurred: gaussian:sigma=2", tmp / "blurred.png"), ("deconvolve (wiener)", tmp / "wiener.png"),
         ("--method richardson-lucy", tmp / "richardson-lucy.png")], OUT / "tour-learn.png")


if __name__ == "__main__":
    main()
