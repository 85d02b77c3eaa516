"""The run: planning a job (dry_run), running it whole, in bands or tiles (pipeline, tiled, tiled_fft) or on Dask (distributed)."""
