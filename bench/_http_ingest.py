"""Events/s through the service's HTTP API: ``POST /v1/events`` on one ``recall serve``
replica (a real process on 127.0.0.1), batches of 100, ``concurrency`` requests in flight.

The bodies are serialized before the clock starts (the client measures the server, not
its own JSON); every answer is checked (200, all 100 accepted). The client is one Python
process with asyncio: on a small machine it shares the cores with the server, so the
result is a floor of what the replica can take, and the table says how many cores.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench._server import serve

logger = logging.getLogger("bench.http_ingest")

BATCH = 100
BODIES = 500


def make_bodies(users: int, item_ids: list[int], seed: int) -> list[bytes]:
    """``BODIES`` JSON bodies of ``BATCH`` interactions each: random users of ``0..users-1``,
    random known items, timestamps within the last hour."""
    rng = random.Random(seed)
    now = time.time()
    return [
        json.dumps(
            {
                "events": [
                    {
                        "user_id": rng.randrange(users),
                        "item_id": rng.choice(item_ids),
                        "timestamp": round(now - rng.random() * 3600, 3),
                    }
                    for _ in range(BATCH)
                ]
            }
        ).encode()
        for _ in range(BODIES)
    ]


async def _drive(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    events = 0
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(worker: int, until: float) -> None:
            nonlocal events
            i = worker
            while time.perf_counter() < until:
                sent = time.perf_counter()
                r = await client.post(
                    "/v1/events", content=bodies[i % len(bodies)], headers=headers
                )
                latencies.append(time.perf_counter() - sent)
                i += concurrency
                if r.status_code != 200 or r.json()["accepted"] != BATCH:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                    continue
                events += BATCH

        warm = time.perf_counter() + 0.5  # connections open, the store file created
        await asyncio.gather(*(one(w, warm) for w in range(concurrency)))
        latencies.clear()
        events = 0
        started = time.perf_counter()
        await asyncio.gather(*(one(w, started + seconds) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} failed batches, e.g. {errors[:3]}")
    lat = sorted(latencies)
    return {
        "events_per_s": round(events / elapsed),
        "requests_per_s": round(len(lat) / elapsed, 1),
        "batch_p50_ms": round(1000 * statistics.median(lat), 2),
        "batch_p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
        "seconds": round(elapsed, 2),
    }


def http_ingest(
    root: Path,
    state_url: str,
    *,
    workers: int,
    seconds: float,
    concurrency: int,
    users: int,
    item_ids: list[int],
    repeats: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Serve the bundle root ``root`` with ``RECALL_STATE_URL=state_url`` and ``workers``
    uvicorn workers; drive ``POST /v1/events`` for ``seconds``, ``repeats`` times: the
    median run's events/s and batch latency, and every run's events/s."""
    bodies = make_bodies(users, item_ids, seed)
    env = {"RECALL_STATE_URL": state_url, "RECALL_WORKERS": str(workers)}
    runs = []
    with serve(root, workers=workers, env=env) as server:
        for _ in range(repeats):
            cpu, wall = server.cpu_seconds(), time.perf_counter()
            run = asyncio.run(_drive(server.url, bodies, seconds, concurrency))
            # cores the replica's processes used (warm-up included; not redis-server's)
            run["server_cores"] = round(
                (server.cpu_seconds() - cpu) / (time.perf_counter() - wall), 2
            )
            runs.append(run)
    runs.sort(key=lambda r: r["events_per_s"])
    result = dict(runs[len(runs) // 2])
    result.update(
        {
            "workers": workers,
            "concurrency": concurrency,
            "batch": BATCH,
            "runs": sorted(r["events_per_s"] for r in runs),
        }
    )
    return result
