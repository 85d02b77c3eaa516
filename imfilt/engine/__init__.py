"""The engine: the CPU (OpenCV, scipy.ndimage) and GPU back ends that the operations compute on."""
