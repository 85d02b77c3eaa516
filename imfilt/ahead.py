"""Run the steps of a streamed job at once: each step pulls from the one before it on a thread.

``Ahead(items)`` walks an iterable on a thread of its own, at most ``depth`` items ahead of
the reader, so decoding band i+1, filtering band i and encoding band i-1 overlap (libvips,
OpenCV, numpy and zlib release the GIL). The items arrive in order; an exception raised while
making one is raised to the reader at that item. Use it in a ``with``: when the reader leaves
(done, an error, a signal), the thread is told to stop and is waited for, so nothing keeps
running on a source after it is closed, and nothing is left for the interpreter's exit.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()
_POLL = 0.1  # seconds between looks at the stop flag while the reader is slow


class Ahead(Iterator[T]):
    """``items``, made on a thread up to ``depth`` items before they are read."""

    def __init__(self, items: Iterable[T], depth: int = 1):
        self.items = iter(items)
        self.box: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.ended = threading.Event()  # the thread has left ``items`` (_wait's, not join's, word on it)
        self.finished = False
        self.worker = threading.Thread(target=self._produce, name="imfilt-ahead", daemon=True)
        self.worker.start()

    def _put(self, entry) -> bool:
        while not self.stop.is_set():
            try:
                self.box.put(entry, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self.items:
                if not self._put((item, None)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, who raises it
            self._put((None, exc))
            return
        finally:
            self.ended.set()
        self._put((_DONE, None))

    def __next__(self) -> T:
        if self.finished:
            raise StopIteration
        item, error = self.box.get()
        if error is not None:
            self.close()
            raise error
        if item is _DONE:
            self.close()
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the thread and wait for it (it ends at its next item); then close ``items``."""
        if self.finished:
            return
        self.finished = True
        self.stop.set()
        if threading.current_thread() is not self.worker:
            _wait([self.ended])
            close = getattr(self.items, "close", None)
            if close is not None:  # a generator's finally blocks run now, on the reader's thread
                close()

    def __enter__(self) -> Ahead[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # forgotten without close(): at least the thread stops
        self.stop.set()


def in_parallel(work: Callable[[T], R], items: Iterable[T], threads: int = 2, depth: int = 4) -> Iterator[R]:
    """``work(item)`` for each item, in order, on ``threads`` threads, at most ``depth`` items in
    flight (Executor.map would take every item at once: a whole image of tiles)."""
    with ThreadPoolExecutor(threads, thread_name_prefix="imfilt-work") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(work, item))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class _Abandoned(BaseException):
    """Raised in a consumer's iterator when the items it was fed stopped (an error, a signal)."""


def fan_out(items: Iterable[Sequence[T]], consumers: Sequence[Callable[[Iterator[T]], None]]) -> None:
    """Part k of each item to ``consumers[k]``, which pulls its parts from an iterator (a writer
    such as tiles.write_tiles), all at once: one consumer runs on this thread, several on a
    thread each, fed at most one part ahead; several outputs of one input so share one decode.

    A consumer's error stops the items and is raised here once every consumer has ended. An
    error of the items, or Ctrl-C, ends every consumer (its iterator raises) before it is
    raised, so a writer has removed its temporary file, or renamed a finished one, by then.
    """
    if len(consumers) == 1:
        consumers[0](item[0] for item in items)
        return
    boxes = [queue.Queue(maxsize=1) for _ in consumers]
    ended = [threading.Event() for _ in consumers]  # set as each consumer returns
    abandon, errors = threading.Event(), [None] * len(consumers)

    def parts(box: queue.Queue) -> Iterator[T]:
        while True:
            try:
                part = box.get(timeout=_POLL)
            except queue.Empty:
                if abandon.is_set():
                    raise _Abandoned from None
                continue
            if part is _DONE:
                return
            yield part

    def consume(k: int) -> None:
        try:
            consumers[k](parts(boxes[k]))
        except _Abandoned:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised by the caller's thread, below
            errors[k] = exc
            abandon.set()
        finally:
            ended[k].set()

    def put(k: int, part) -> None:
        while not ended[k].is_set():  # one that stopped asking (a TIFF writer after its last tile) is given nothing more
            if abandon.is_set():
                raise _Abandoned
            try:
                boxes[k].put(part, timeout=_POLL)
                return
            except queue.Full:
                continue

    started: list[threading.Event] = []  # what to wait for: a Ctrl-C may come before every writer started
    try:
        for k in range(len(consumers)):
            threading.Thread(target=consume, args=(k,), name="imfilt-sink", daemon=True).start()
            started.append(ended[k])
        for item in items:
            for k, part in enumerate(item):
                put(k, part)
        for k in range(len(consumers)):
            put(k, _DONE)
        _wait(started)
    except BaseException as exc:
        abandon.set()
        _wait(started)
        if not isinstance(exc, _Abandoned):
            raise
    error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise error


def _wait(events: list[threading.Event]) -> None:
    """Wait until every event is set, even when a signal interrupts the wait (its exception comes
    after). Not Thread.join: on Python 3.11 a Ctrl-C inside join() makes is_alive() say False of a
    thread that still runs, and a writer would be cut off in the middle of its file."""
    interrupted = None
    for event in events:
        while not event.is_set():
            try:
                event.wait()
            except BaseException as exc:  # noqa: BLE001 - Ctrl-C: the writers finish or clean up first
                interrupted = exc
    if interrupted is not None:
        raise interrupted
