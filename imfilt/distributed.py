"""Jobs on a running Dask cluster (the `distributed` extra).

Workers read their inputs and write their outputs themselves, so the client sends only the
job descriptions (paths and options): the inputs and outputs must be on storage that the
workers share with the client. A job on a worker can spread its own parts over the cluster
(``map_on_cluster``), as a tiled job does with stripes of its image. Dask itself is imported only
when --scheduler is given (or on a worker, where it already is).
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from .errors import UsageError

# What dask.distributed accepts as a scheduler address: [tcp|tls|ucx|inproc|ws|wss://]host:port
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(\[[0-9A-Fa-f:]+\]|[^\s/:\[\]]+):(\d{1,5})$")


def check_address(address: str) -> None:
    """A malformed address is a usage error at once, not a connection attempt that times out."""
    match = _ADDRESS.match(address)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UsageError(f"--scheduler {address!r}: not a Dask scheduler address; expected tcp://HOST:PORT")


@contextmanager
def futures_on_dask(address: str, fn: Callable, items: list) -> Iterator[tuple]:
    """(futures, an iterator over them as they complete) for fn over items on the cluster."""
    check_address(address)
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed: pip install 'imfilt[distributed]'") from None
    try:
        client = Client(address, timeout="5s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        futures = client.map(fn, items, pure=False)
        yield futures, as_completed(futures, loop=client.loop)  # our client, not a global one


def on_dask_worker() -> bool:
    """Whether this code runs in a task on a Dask worker (a local run never imports Dask)."""
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def stripes(length: int, unit: int, count: int = 8) -> list[slice]:
    """About ``count`` parts of range(length), each a whole number of ``unit``s (chunks, tile rows)
    but the last: the tasks that split a tiled image, no two sharing a chunk."""
    step = unit * max(1, length // unit // count)
    return [slice(start, min(start + step, length)) for start in range(0, length, step)]


def map_on_cluster(fn: Callable, parts: list, **kwargs) -> list:
    """fn(part, **kwargs) for each part as tasks on the cluster that runs this task; their results.

    Every task has ended when this returns or raises: none still writes into a scratch that the
    caller removes on failure.
    """
    from distributed import wait, worker_client

    with worker_client() as client:
        futures = client.map(fn, parts, pure=False, **kwargs)
        try:
            return client.gather(futures)
        finally:
            wait(futures)
