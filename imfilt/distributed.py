"""The same per-image jobs on a running Dask cluster (the `distributed` extra).

Workers read their inputs and write their outputs themselves, so the client holds only the
job descriptions (paths and options): the inputs and outputs must be on storage that the
workers share with the client. Imported only when --scheduler is given.
"""

from __future__ import annotations

from typing import Iterator

from .errors import UsageError


def run_on_dask(jobs: list, address: str, fail_fast: bool = False) -> Iterator[tuple]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed: pip install 'imfilt[distributed]'") from None
    from .pipeline import _safe_run, as_finished

    try:
        client = Client(address, timeout="5s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        futures = client.map(_safe_run, jobs, pure=False)
        yield from as_finished(futures, as_completed(futures, loop=client.loop), fail_fast)  # our client, not a global one
