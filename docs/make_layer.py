"""A small convolutional layer made with numpy, saved as PyTorch saves one: (N, C, kh, kw) + bias.

    python docs/make_layer.py layer.safetensors

Four Gabor-like edge kernels over the luminance of the three channels, at 0°, 45°, 90° and 135°
(the direction of the edges they answer, counter-clockwise, y up) and two colour-opponent blobs
(red against green, blue against yellow), as a trained net's first layer has them.
"""

import sys

import numpy as np
from safetensors.numpy import save_file

y, x = np.mgrid[-4:5, -4:5]  # 9x9 taps; y counts rows down
envelope = np.exp(-(x**2 + y**2) / 8.0)


def gabor(degrees: float, wavelength: float = 4.0) -> np.ndarray:
    t = np.radians(degrees)
    across = -np.sin(t) * x - np.cos(t) * y  # the distance across edges at `degrees`, y up
    kernel = envelope * np.cos(2 * np.pi * across / wavelength)
    return kernel - kernel.mean()  # zero sum: flat areas give 0


luma = np.array([0.299, 0.587, 0.114])[:, None, None]
blob = 3 * envelope / envelope.sum()  # 3x the local mean: colour differences show
weight = np.array([2 * luma * gabor(d) for d in (0, 45, 90, 135)]
                  + [np.stack([blob, -blob, 0 * blob]), np.stack([-blob / 2, -blob / 2, blob])], dtype=np.float32)
save_file({"conv1.weight": weight, "conv1.bias": np.zeros(len(weight), np.float32)},
          sys.argv[1] if len(sys.argv) > 1 else "layer.safetensors")
