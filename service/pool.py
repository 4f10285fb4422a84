"""The search thread pool: everything that touches vectors or FAISS runs here, not on the
event loop (FAISS releases the GIL, so the threads search in parallel).

With ``threads=0`` there is no pool: each call runs on the caller's event loop, so the
search and the loop never contend for the GIL (a search thread that releases it in FAISS,
SQLite or numpy waits to get it back while the loop runs Python: bench/gil_contention.py),
at the price of a worker that does one thing at a time.

One hand-off per call, kept lean on purpose: a job is a tuple on a ``queue.SimpleQueue``
and its answer comes back through one ``loop.call_soon_threadsafe``. ``run_in_executor``
on a ``ThreadPoolExecutor`` did the same with a ``concurrent.futures.Future`` (a
``Condition`` and its ``RLock`` per call), two locks in ``submit``, and futures chained
both ways: ~15% of the GIL's time under a saturated recall load (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

import faiss

T = TypeVar("T")

#: (the caller's loop, the future it awaits, the function, its arguments)
Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class SearchPool:
    """``threads`` search threads (started by the first call), each with one OpenMP
    thread: concurrency comes from requests, not from inside one search. ``threads=0``:
    calls run on the calling thread (the event loop), one OpenMP thread there too."""

    def __init__(self, threads: int) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, not {threads}")
        self.threads = threads
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a search thread (or here, with no threads); its exception is
        raised here. A cancelled caller's call is skipped when it has not started yet."""
        if self._closed:
            raise RuntimeError("the search pool is shut down")
        if not self.threads:
            faiss.omp_set_num_threads(1)  # per calling thread (libgomp); ~0.1 µs a call
            return fn(*args)
        if not self._workers:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return await future

    def shutdown(self) -> None:
        """Stop taking work; calls not started are cancelled, the threads exit after the
        ones running."""
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _reply(job[0], job[1].cancel)
        for _ in self._workers:
            self._jobs.put(None)

    def _start(self) -> None:
        for i in range(self.threads):
            worker = threading.Thread(target=self._work, name=f"recall-search-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def _work(self) -> None:
        # omp_set_num_threads is per calling thread (libgomp): each search thread sets its
        # own, the call in the lifespan alone leaves the pool on the default (one per core)
        faiss.omp_set_num_threads(1)
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            if future.cancelled():  # the caller is gone (a read of a flag: no loop call)
                continue
            try:
                result = fn(*args)
            except BaseException as e:  # as ThreadPoolExecutor: the caller gets it
                _reply(loop, _set_exception, future, e)
            else:
                _reply(loop, _set_result, future, result)
            del job, future, fn, args  # drop references while waiting for the next job


def _reply(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    with suppress(RuntimeError):  # the loop closed meanwhile: nobody waits for this answer
        loop.call_soon_threadsafe(callback, *args)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
