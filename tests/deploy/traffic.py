"""Recall traffic through a load balancer while a new bundle is published, and a watch of
when each replica switches to it: the harness both deployment tests (a local bundle root
in test_deploy.py, an S3 root in test_s3_deploy.py) drive a retrain with."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import numpy as np

from recall.client import Query, RecallClient, RecallError

CLIENT_THREADS = 2
MAX_TRAFFIC_S = 300.0  # request loops stop by themselves after this, whatever happens
SETTLE_S = 1.0  # traffic on the old bundle before the publish, and on the new one after


def ready_id(url: str) -> str | None:
    """The bundle id ``url``'s /readyz names, or None while it is not ready."""
    response = httpx.get(f"{url}/readyz", timeout=2)
    return str(response.json()["bundle_id"]) if response.status_code == 200 else None


@dataclass
class Traffic:
    """What the client threads saw: (send time, bundle id or None) and the failures."""

    sent: list[tuple[float, str | None]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def drive(self, url: str, user_ids: list[int], item_ids: list[int], seed: int) -> None:
        """Recalls of 50 (80% by user id, else by a 5-item history) until ``stop``."""
        rng = np.random.default_rng(seed)
        deadline = time.monotonic() + MAX_TRAFFIC_S
        with RecallClient(url, timeout=30) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                sent = time.time()
                try:
                    if rng.random() < 0.8:
                        user = int(rng.choice(user_ids))
                        result = client.recall(user_id=user, k=50, fallback="popular")
                    else:
                        history = [int(i) for i in rng.choice(item_ids, 5)]
                        result = client.recall_query(Query(history=history, k=50))
                    bundle_id: str | None = result.bundle_id
                    if len(result.items) != 50:
                        raise AssertionError(f"{len(result.items)} items instead of 50")
                except (RecallError, AssertionError) as e:
                    bundle_id = None
                    with self.lock:
                        self.failures.append(f"{type(e).__name__}: {e}")
                with self.lock:
                    self.sent.append((sent, bundle_id))


@contextmanager
def recall_traffic(url: str, user_ids: list[int], item_ids: list[int]) -> Iterator[Traffic]:
    """CLIENT_THREADS threads driving recalls at ``url``: SETTLE_S of them before the body
    runs and SETTLE_S after it (not after a failure); stopped and joined on the way out."""
    seen = Traffic()
    threads = [
        threading.Thread(target=seen.drive, args=(url, user_ids, item_ids, seed), daemon=True)
        for seed in range(CLIENT_THREADS)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(SETTLE_S)
        yield seen
        time.sleep(SETTLE_S)
    finally:
        seen.stop.set()
        for thread in threads:
            thread.join(timeout=60)


@contextmanager
def switch_watch(replicas: list[str], old_id: str) -> Iterator[dict[str, float]]:
    """A thread polling each replica's /readyz every 20 ms while the body runs (and up to
    120 s after it): yields {replica URL: wall time (s) it first served another bundle than
    ``old_id``}, filled as they switch."""
    switched: dict[str, float] = {}

    def watch() -> None:
        deadline = time.monotonic() + MAX_TRAFFIC_S
        while len(switched) < len(replicas) and time.monotonic() < deadline:
            for url in replicas:
                if url not in switched:
                    try:
                        if ready_id(url) not in (None, old_id):
                            switched[url] = time.time()
                    except httpx.HTTPError:
                        pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield switched
    watcher.join(timeout=120)
