"""The run: planning jobs (planning, dry_run), running them (execute), one job in bands or whole (pipeline), in
tiles (tiled, tiled_fft) or on Dask (distributed)."""
