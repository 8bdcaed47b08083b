"""Background execution of the loaders: a pool of worker threads or processes and a prefetching iterator.

DATALOADER.NUM_WORKERS threads (default) or processes load samples in the background while a feeder
thread collates finished batches, in order, into a bounded queue; ``num_workers=0`` does the same
work synchronously in the caller (`SyncIterator`, the reference the data benchmark compares with).
The work is a function of its arguments only, so every mode gives the same batches.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["PrefetchIterator", "SyncIterator", "make_iterator"]


class _WorkerPool:
    """Threads or processes that run one sample function; processes get the function once at start."""

    def __init__(self, fn: Callable[[Any], Any], num_workers: int, use_processes: bool) -> None:
        self.fn = fn
        if use_processes:
            context = multiprocessing.get_context("forkserver" if "forkserver" in
                                                  multiprocessing.get_all_start_methods() else "spawn")
            self.executor: cf.Executor = cf.ProcessPoolExecutor(num_workers, mp_context=context,
                                                                initializer=_set_process_fn, initargs=(fn,))
            self.call: Callable[[Any], Any] = _call_process_fn
        else:
            self.executor = cf.ThreadPoolExecutor(num_workers, thread_name_prefix="jaxseg-data")
            self.call = fn

    def submit(self, arg: Any) -> cf.Future:
        return self.executor.submit(self.call, arg)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


_PROCESS_FN: Callable[[Any], Any] | None = None


def _set_process_fn(fn: Callable[[Any], Any]) -> None:
    """Worker-process initializer: keep the sample function (and its records) for every task."""
    global _PROCESS_FN
    _PROCESS_FN = fn


def _call_process_fn(arg: Any) -> Any:
    assert _PROCESS_FN is not None
    return _PROCESS_FN(arg)


_END = object()


class _Failure:
    """An exception raised in the background, re-raised in the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class PrefetchIterator:
    """Iterator over batches made in the background; ``close()`` (or leaving a ``with``) stops the workers.

    ``jobs`` yields ``(meta, [sample args])``; every sample goes to the pool as soon as fewer than
    ``depth`` batches are in flight, and a feeder thread collates finished batches, in order, into a
    queue of ``prefetch`` batches. An iterator dropped without ``close()`` stops when collected.
    """

    def __init__(self, jobs: Iterator[tuple[Any, list]], pool: _WorkerPool,
                 collate: Callable[[Any, list], Any], prefetch: int = 2, depth: int | None = None) -> None:
        self._pool = pool
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._done = False
        depth = max(1, depth if depth is not None else prefetch)
        # The feeder gets no reference to self, so an abandoned iterator can be collected (and closed).
        self._thread = threading.Thread(target=_feed, args=(jobs, pool, collate, depth, self._queue, self._stop),
                                        name="jaxseg-data-feeder", daemon=True)
        self._thread.start()

    def __iter__(self) -> PrefetchIterator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the feeder and the workers; pending work is cancelled. Safe to call twice."""
        if self._done:
            return
        self._done = True
        self._stop.set()
        self._thread.join()
        self._pool.shutdown()

    def __enter__(self) -> PrefetchIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def _feed(jobs: Iterator[tuple[Any, list]], pool: _WorkerPool, collate: Callable[[Any, list], Any], depth: int,
          out: queue.Queue, stop: threading.Event) -> None:
    """Feeder thread: keep ``depth`` batches of samples in the pool, collate them in order into ``out``."""
    inflight: deque = deque()
    exhausted = False
    try:
        while not stop.is_set():
            while not exhausted and len(inflight) < depth:
                try:
                    meta, args = next(jobs)
                except StopIteration:
                    exhausted = True
                    break
                inflight.append((meta, [pool.submit(a) for a in args]))
            if not inflight:
                _put(out, _END, stop)
                return
            meta, futures = inflight.popleft()
            _put(out, collate(meta, [f.result() for f in futures]), stop)
    except BaseException as error:  # handed to the consumer
        _put(out, _Failure(error), stop)


def _put(out: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Put ``item`` into ``out``, giving up when ``stop`` is set."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


class SyncIterator:
    """The same batches computed in the caller's thread (num_workers=0): no prefetch."""

    def __init__(self, jobs: Iterator[tuple[Any, list]], fn: Callable[[Any], Any],
                 collate: Callable[[Any, list], Any]) -> None:
        self._jobs, self._fn, self._collate = jobs, fn, collate

    def __iter__(self) -> SyncIterator:
        return self

    def __next__(self) -> Any:
        meta, args = next(self._jobs)
        return self._collate(meta, [self._fn(a) for a in args])

    def close(self) -> None:
        """Nothing runs in the background."""

    def __enter__(self) -> SyncIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_iterator(jobs: Iterator[tuple[Any, list]], fn: Callable[[Any], Any], collate: Callable[[Any, list], Any],
                  num_workers: int, use_processes: bool, prefetch: int) -> PrefetchIterator | SyncIterator:
    """Background iterator with a fresh pool, or the synchronous one when ``num_workers`` is 0."""
    if num_workers <= 0:
        return SyncIterator(jobs, fn, collate)
    pool = _WorkerPool(fn, num_workers, use_processes)
    return PrefetchIterator(jobs, pool, collate, prefetch=prefetch, depth=max(prefetch, 2))
