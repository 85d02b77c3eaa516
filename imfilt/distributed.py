"""Jobs on a running Dask cluster (the `distributed` extra).

Workers read their inputs and write their outputs themselves, so the client sends only the
job descriptions (paths and options): the inputs and outputs must be on storage that the
workers share with the client. Imported only when --scheduler is given.
"""

from __future__ import annotations

import re
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
