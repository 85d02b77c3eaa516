"""The operations: kernels, convolution, the Fourier domain, matching, orientation, learning and deconvolution, and the
per-image operations the runners apply (operations.py)."""
