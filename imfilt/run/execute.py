"""Many jobs: one after another here, on threads, in worker processes or on Dask (execute), each
failure costing only its input (_safe_run), and the count that owns the exit code (Report).
"""

from __future__ import annotations

import functools
import os
import signal
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from . import tiled
from ..errors import InputError, Stopped, UsageError, shown
from .pipeline import ENDING_SIGNALS, run_job
from .planning import Job, quiet_decoders


@dataclass
class Report:
    """Counts outputs written and skipped, and inputs failed; owns the exit code (as black's Report)."""

    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        parts = [f"{self.done} written"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (exist)")
        if self.failed:
            names = ", ".join(map(shown, self.failed))
            parts.append(f"{len(self.failed)} input{'s' if len(self.failed) > 1 else ''} failed: {names}")
        return ", ".join(parts)


def _worker_init(parent: int) -> None:
    """Ending signals are the parent's to handle: a worker finishes the output it is writing.

    `timeout` and a terminal send theirs to the whole process group; the parent then cancels
    the jobs not started and waits for the running ones, so no output is cut short. A worker
    ends with its parent, even when that is killed with SIGKILL (which it cannot wait for).
    """
    _die_with(parent)
    for sig in ENDING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ENDING_SIGNALS)  # blocked from the start (below)


def _die_with(parent: int) -> None:
    """Linux: the kernel kills this process when its parent ends (prctl PR_SET_PDEATHSIG), so a
    worker never outlives a run killed with kill -9; a parent gone already ends it now. Elsewhere
    nothing (the workers then end when they next talk to the pool)."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return
    if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0 and os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was asked for


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_resource_tracker() -> None:
    """multiprocessing's resource tracker (a process the pool starts) ends when the last process
    that talks to it has: after the workers, wait for it too, so nothing of the run outlives it."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)  # noqa: SLF001 - no public way
    if stop is not None:
        try:
            stop()
        except Exception:  # noqa: BLE001 - it may have ended already
            pass


def _safe_run(job: Job, records: list[dict] | None = None,
              progress: tiled.Progress | None = None) -> tuple[Job, list[dict] | None, str | None]:
    """A failure costs only this job: its one-line message goes back with it."""
    quiet_decoders()
    try:
        return job, run_job(job, records, progress), None
    except InputError as exc:
        return job, None, str(exc)
    except UsageError as exc:  # e.g. a kernel larger than this image with --size valid
        return job, None, f"{shown(job.source)}: {exc}"
    except (BrokenPipeError, Stopped):
        raise  # standard output's reader went away (exit 141), or the run was interrupted: not this job
    except MemoryError:
        return job, None, f"{shown(job.source)}: not enough memory for this image"
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop a batch; this is a bug
        return job, None, f"{shown(job.source)}: internal error: {type(exc).__name__}: {exc}"


def execute(jobs: list[Job], *, workers: int = 1, scheduler: str | None = None, fail_fast: bool = False,
            progress: Callable[[Job, float], None] | None = None, processes: bool = False) -> Iterator[tuple]:
    """Yield (job, records, error) as jobs finish: here (one at a time, or ``workers`` threads),
    in ``workers`` worker processes (``processes``), or on Dask.

    With ``fail_fast`` no job starts after the first failure. ``progress(job, fraction)`` is
    told how far a job running alone in this process is (threads, worker processes and Dask
    report whole jobs only, as they finish).
    """
    if scheduler:
        from .distributed import futures_on_dask

        with futures_on_dask(scheduler, _safe_run, jobs) as (futures, completed, stop, result):
            yield from as_finished(futures, completed, fail_fast, stop, result)
    elif workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            done: list[dict] = []
            part = None if progress is None else functools.partial(progress, job)
            result = None
            try:
                result = _safe_run(job, done, part)
                yield result
            except KeyboardInterrupt:
                # Ctrl-C or a signal mid-job (what it wrote is whole, and counted), or as the
                # caller took its result: given again, the caller knows whether it counted it
                if result is not None:
                    yield result
                elif done:
                    yield job, done, None
                raise
            if fail_fast and result[2]:
                return
    elif processes:
        yield from _run_in_processes(jobs, workers, fail_fast)
    else:
        yield from _run_in_threads(jobs, workers, fail_fast)


def as_finished(futures: list, completed: Iterable, fail_fast: bool,
                stop: Callable[[], None] | None = None, result: Callable = lambda future: future.result()
                ) -> Iterator[tuple]:
    """Results of futures (a thread or process pool's, or Dask's) in the order ``completed`` gives them.

    After the first failure with ``fail_fast``, or on Ctrl-C, the jobs not started are
    cancelled and those already running finish: their outputs are whole, so they are reported.
    On Ctrl-C, ``stop()`` (Dask's) first asks running jobs to end unwritten, and waits for them.
    """
    given, interrupted = {}, None  # future -> its result, as given to the caller
    try:
        for future in completed:
            outcome = result(future)
            given[future] = outcome
            yield outcome
            if fail_fast and outcome[2]:
                break
    except KeyboardInterrupt as exc:
        interrupted = exc
        if given:  # the caller may have been interrupted as it took the last one: it knows
            yield next(reversed(given.values()))
        if stop is not None:
            stop()
    finally:
        for future in futures:
            future.cancel()
    left = (f for f in futures if f not in given and not f.cancelled())
    yield from (outcome for outcome in (_finished(f, result) for f in left) if outcome)
    if interrupted:
        raise interrupted


def _finished(future, result: Callable) -> tuple | None:
    """A job's result, or None for one that stopped unwritten when the run was interrupted."""
    try:
        return result(future)
    except Stopped:
        return None


def _run_in_threads(jobs: list[Job], workers: int, fail_fast: bool) -> Iterator[tuple]:
    """Jobs on threads of this process (no start-up to pay; decoding, filtering and deflate release
    the GIL), their results in the inputs' order. An ending signal is raised in the main thread,
    here: the running jobs finish (WHILE_WRITING holds signals for the main thread only)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix="imfilt-job") as pool:
        futures = [pool.submit(_safe_run, job) for job in jobs]
        # in the inputs' order, as one at a time: messages and --json lines do not depend on timing
        yield from as_finished(futures, iter(futures), fail_fast)


def _run_in_processes(jobs: list[Job], workers: int, fail_fast: bool) -> Iterator[tuple]:
    import multiprocessing

    # One BLAS/FFT thread per worker (jobs carry threads=1 too), so N workers do not fight
    # over the cores; spawned workers read these limits as they start.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    context = multiprocessing.get_context("spawn")
    try:
        yield from _pool_results(jobs, workers, fail_fast, context)
    finally:  # the workers have ended (the pool waits for them), even after a signal
        _stop_resource_tracker()


def _pool_results(jobs: list[Job], workers: int, fail_fast: bool, context) -> Iterator[tuple]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_worker_init,
                             initargs=(os.getpid(),)) as pool:
        # Workers start (in submit) with the ending signals blocked, until their initializer
        # ignores them: one sent to the group while a worker was still importing killed it.
        futures = []
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, ENDING_SIGNALS)
        try:
            futures += [pool.submit(_safe_run, job) for job in jobs]
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a signal held meanwhile arrives here
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        yield from as_finished(futures, as_completed(futures), fail_fast)
