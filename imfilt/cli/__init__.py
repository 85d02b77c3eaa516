"""The command line: the entry point (main.py), the Typer commands, batches of jobs. Imports stay lazy: see main.py."""
