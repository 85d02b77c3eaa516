"""The image layer: reading and writing images (io, png, omezarr), decoded rows, tiled sources and sinks. It imports no operation."""
