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
from typing import Callable, Iterable, Iterator, TypeVar

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
            self.worker.join()
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
