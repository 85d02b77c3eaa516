"""Jobs on a running Dask cluster (the `distributed` extra).

Workers read their inputs and write their outputs themselves, so the client sends only the
job descriptions (paths and options): the inputs and outputs must be on storage that the
workers share with the client. A job on a worker can spread its own parts over the cluster
(``map_on_cluster``), as a tiled job does with stripes of its image. Dask itself is imported only
when --scheduler is given (or on a worker, where it already is).
"""

from __future__ import annotations

import contextvars
import re
import sys
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

from ..errors import LostCluster, Stopped, UsageError

# What dask.distributed accepts as a scheduler address: [tcp|tls|ucx|inproc|ws|wss://]host:port
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(\[[0-9A-Fa-f:]+\]|[^\s/:\[\]]+):(\d{1,5})$")


def check_address(address: str) -> None:
    """A malformed address is a usage error at once, not a connection attempt that times out."""
    match = _ADDRESS.match(address)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UsageError(f"--scheduler {address!r}: not a Dask scheduler address; expected tcp://HOST:PORT")


# The name of the run's stop Event (a distributed.Event) in the task that runs now: the client
# sets it when it is interrupted, and tasks check it between windows (``check_stop``), since a
# running task cannot be cancelled from outside and would otherwise write its output later.
_STOP = contextvars.ContextVar("imfilt_stop", default=None)
_CHECKED: dict[str, float] = {}  # stop name -> when it was last asked (at most twice a second)
STOP_WAIT = 120  # seconds an interrupted client waits for its running jobs to stop and clean up
# seconds a run waits with jobs to do and no worker in the cluster (a nanny restarts a killed worker
# in a few seconds) before it ends in one line; distributed itself would wait forever
NO_WORKERS_WAIT = 15


def _task(item, fn: Callable, stop: str | None, kwargs: dict):
    token = _STOP.set(stop)
    try:
        return fn(item, **kwargs)
    finally:
        _STOP.reset(token)


def _keys(fn: Callable, items: list) -> list[str]:
    """Unique task keys named after the function each task runs (as Dask names them, in its dashboard)."""
    run = uuid.uuid4().hex
    return [f"{fn.__name__}-{run}-{i}" for i in range(len(items))]


def check_stop() -> None:
    """In a task of an interrupted run: raise Stopped (its scratch and partial files then go)."""
    name = _STOP.get()
    if name is None or time.monotonic() - _CHECKED.get(name, 0.0) < 0.5:
        return
    from distributed import Event

    _CHECKED[name] = time.monotonic()
    if Event(name).is_set():
        raise Stopped("stopped: the run was interrupted")


@contextmanager
def futures_on_dask(address: str, fn: Callable, items: list) -> Iterator[tuple]:
    """(futures, an iterator over them as they complete, stop, result) for fn over items on the cluster.

    ``stop()`` asks the running jobs to end unwritten and waits until they have; ``result(future)``
    is the future's result, or a LostCluster when the cluster has lost its workers.
    """
    check_address(address)
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed: pip install 'imfilt[distributed]'") from None
    _quiet_distributed()
    try:
        client = Client(address, timeout="5s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    from distributed import Event, KilledWorker
    from distributed.client import FutureCancelledError

    with client:
        name = f"imfilt-stop-{uuid.uuid4().hex}"
        event = Event(name, client=client)
        futures = client.map(_task, items, fn=fn, stop=name, kwargs={}, key=_keys(fn, items))

        def stop() -> None:
            event.set()
            deadline = time.monotonic() + STOP_WAIT
            for future in futures:  # (distributed.wait would look for a default client)
                try:
                    future.result(timeout=max(0.1, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - stopped, failed or late: each is reported by the caller
                    pass

        try:
            # our client, not a global one
            workers = _Workers(client, address)
            yield futures, _while_workers(workers, as_completed(futures, loop=client.loop)), stop, workers.result
        except BrokenPipeError:
            raise  # standard output's reader went away: not the cluster
        except (OSError, TimeoutError, FutureCancelledError):  # a job's own errors come back as results
            # the connection closed (CommClosedError is an OSError), or the scheduler cancelled the futures
            raise LostCluster(f"lost the connection to the Dask scheduler at {address}") from None
        except KilledWorker:  # distributed gave a job up after the workers running it died, 3 times
            raise LostCluster(f"lost the Dask workers at {address}: each worker that ran one job died") from None


class _Workers:
    """Raises LostCluster once the cluster has had no worker for NO_WORKERS_WAIT seconds."""

    def __init__(self, client, address: str):
        self.client, self.address, self.last_seen = client, address, time.monotonic()

    def check(self) -> None:
        if self.client.nthreads():
            self.last_seen = time.monotonic()
        elif time.monotonic() - self.last_seen > NO_WORKERS_WAIT:
            raise LostCluster(f"lost the Dask workers at {self.address}: none left for {NO_WORKERS_WAIT} s")

    def result(self, future):
        """future's result: a done future whose worker died before its result was fetched waits
        for its job to run again, which without workers would be for ever."""
        while True:
            try:
                return future.result(timeout=1)
            except TimeoutError:
                self.check()


def _while_workers(workers: _Workers, completed) -> Iterator:
    """The futures as they complete, while the cluster has workers (its last one was killed, say)."""
    while not completed.is_empty():
        if completed.has_ready():
            for future in completed.next_batch(block=False):
                if future.done():
                    yield future
                else:  # its worker died, and it waits for another: it comes back when it is done
                    completed.add(future)
            continue
        workers.check()
        time.sleep(0.2)


def _quiet_distributed() -> None:
    """distributed's own log lines stay off stderr (a lost connection logs a traceback as an ERROR):
    what goes wrong is the run's one line. Its loggers (each with a handler of its own, from
    dask's config) keep their levels, but their lines go up to a top logger that drops them."""
    import logging

    tops = ("distributed", "tornado", "bokeh")
    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] in tops]:
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            log.removeHandler(handler)
        log.propagate = True
    for name in tops:
        log = logging.getLogger(name)
        log.addHandler(logging.NullHandler())
        log.propagate = False


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
        futures = client.map(_task, parts, fn=fn, stop=_STOP.get(), kwargs=kwargs, key=_keys(fn, parts))
        try:
            return client.gather(futures)
        finally:
            wait(futures)
