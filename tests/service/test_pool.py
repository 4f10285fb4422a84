"""recall.service.pool.SearchPool: calls run in its threads, in parallel, answers and
errors come back to the caller, a caller that went away is skipped, shutdown cancels."""

from __future__ import annotations

import asyncio
import threading

import pytest

from recall.service.pool import SearchPool


def test_calls_run_in_parallel_search_threads_and_answer() -> None:
    pool = SearchPool(3)
    barrier = threading.Barrier(3, timeout=10)  # passes only with 3 calls running at once

    def meet(i: int) -> tuple[int, str]:
        barrier.wait()
        return i * i, threading.current_thread().name

    async def main() -> list[tuple[int, str]]:
        try:
            return list(await asyncio.gather(*(pool.run(meet, i) for i in range(3))))
        finally:
            pool.shutdown()

    answers = asyncio.run(main())
    assert [a for a, _ in answers] == [0, 1, 4]
    assert len({name for _, name in answers}) == 3
    assert all(name.startswith("recall-search-") for _, name in answers)


def test_an_error_is_raised_to_the_caller_and_the_thread_goes_on() -> None:
    pool = SearchPool(1)

    def fail() -> None:
        raise KeyError("boom")

    async def main() -> int:
        with pytest.raises(KeyError, match="boom"):
            await pool.run(fail)
        answer: int = await pool.run(sum, [1, 2, 3])
        pool.shutdown()
        return answer

    assert asyncio.run(main()) == 6


def test_a_cancelled_caller_is_skipped_and_shutdown_cancels_what_waits() -> None:
    pool = SearchPool(1)
    release = threading.Event()
    ran: list[str] = []

    def block() -> None:
        release.wait(10)
        ran.append("block")

    async def main() -> None:
        first = asyncio.ensure_future(pool.run(block))
        gone = asyncio.ensure_future(pool.run(ran.append, "gone"))
        queued = asyncio.ensure_future(pool.run(ran.append, "queued"))
        await asyncio.sleep(0.05)  # the thread is in block(); the others wait in the queue
        gone.cancel()
        release.set()
        await first
        await queued  # ran after block(); the cancelled call was skipped
        blocked = asyncio.ensure_future(pool.run(release.wait, 10))
        release.clear()
        waiting = asyncio.ensure_future(pool.run(ran.append, "never"))
        await asyncio.sleep(0.05)
        pool.shutdown()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with pytest.raises(RuntimeError, match="shut down"):
            await pool.run(ran.append, "after")
        release.set()
        await blocked

    asyncio.run(main())
    assert ran == ["block", "queued"]


def test_no_threads_runs_calls_on_the_callers_thread() -> None:
    pool = SearchPool(0)

    def where() -> str:
        return threading.current_thread().name

    def fail() -> None:
        raise KeyError("boom")

    async def main() -> str:
        name = await pool.run(where)
        with pytest.raises(KeyError, match="boom"):
            await pool.run(fail)
        pool.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            await pool.run(where)
        return name

    assert asyncio.run(main()) == threading.current_thread().name
