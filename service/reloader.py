"""Hot reload: load, verify and warm up the bundle CURRENT names, then swap one reference.

Requests take :attr:`BundleHolder.current` once and use that bundle to the end, so a
request in flight finishes on the bundle it started with and no response mixes two. A
failed load keeps the old bundle serving, logs why and counts a failure; the same
bad bundle id is not retried by the poller until CURRENT changes (an admin reload
retries at once).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from pathlib import Path

from index.bundle import BundleError
from index.publish import read_current
from service.errors import NotReady, ReloadFailed
from service.metrics import Metrics
from service.recaller import ServingBundle

logger = logging.getLogger(__name__)


class BundleHolder:
    """The bundle being served, and the one way to replace it."""

    def __init__(self, root: Path, metrics: Metrics) -> None:
        self.root = root
        self.metrics = metrics
        self._current: ServingBundle | None = None
        self._failed_id: str | None = None
        self._lock = asyncio.Lock()

    @property
    def current(self) -> ServingBundle | None:
        return self._current

    def require(self) -> ServingBundle:
        bundle = self._current
        if bundle is None:
            raise NotReady("no bundle loaded yet")
        return bundle

    async def reload(self, *, retry_failed: bool = True) -> tuple[ServingBundle, bool]:
        """Load the bundle CURRENT names unless it is already served.

        Returns ``(bundle served now, whether it changed)``; raises :class:`ReloadFailed`
        (old bundle still served) or :class:`NotReady` (nothing published yet).
        """
        async with self._lock:
            try:
                target = read_current(self.root)
            except (BundleError, OSError) as e:
                raise self._failure(None, f"cannot read CURRENT: {e}") from None
            if target is None:
                raise NotReady(f"nothing published under {self.root} yet")
            current = self._current
            if current is not None and current.id == target:
                return current, False
            if target == self._failed_id and not retry_failed:
                raise ReloadFailed(f"bundle {target} failed to load before; not retrying")
            try:
                bundle = await asyncio.to_thread(ServingBundle.load, self.root / target)
            except (BundleError, OSError, ValueError) as e:
                raise self._failure(target, str(e)) from None
            self._current = bundle
            self._failed_id = None
            self.metrics.reloads.labels("success").inc()
            self.metrics.bundle.info({"bundle_id": bundle.id})
            self.metrics.items.set(len(bundle.item_ids))
            self.metrics.users.set(len(bundle.user_ids))
            logger.info("serving bundle %s", bundle.id)
            return bundle, True

    def _failure(self, target: str | None, why: str) -> ReloadFailed:
        self._failed_id = target
        self.metrics.reloads.labels("failure").inc()
        serving = self._current.id if self._current else "nothing"
        logger.error("reload of %s failed (still serving %s): %s", target, serving, why)
        return ReloadFailed(f"bundle {target} refused: {why}")

    async def poll_forever(self, interval_s: float) -> None:
        """Check CURRENT every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            with suppress(ReloadFailed, NotReady):
                await self.reload(retry_failed=False)
