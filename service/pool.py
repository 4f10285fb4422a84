"""The search thread pool: everything that touches vectors or FAISS runs here, never on
the event loop (FAISS releases the GIL, so the threads search in parallel)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import faiss

T = TypeVar("T")


class SearchPool:
    """``threads`` search threads, each with one OpenMP thread: concurrency comes from
    requests, not from inside one search."""

    def __init__(self, threads: int) -> None:
        # omp_set_num_threads is per calling thread (libgomp): each search thread sets its
        # own, the call in the lifespan alone leaves the pool on the default (one per core)
        self._executor = ThreadPoolExecutor(
            threads,
            thread_name_prefix="recall-search",
            initializer=faiss.omp_set_num_threads,
            initargs=(1,),
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a search thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        """Stop taking work; searches not started are cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)
