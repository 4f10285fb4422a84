"""Hot reload: load, verify and warm up the bundle CURRENT names, then swap one reference.

Requests take :attr:`BundleHolder.current` once and use that bundle to the end, so a
request in flight finishes on the bundle it started with and no response mixes two.

Nothing CURRENT holds can stop the service: a CURRENT that cannot be read or names no
bundle id (undecodable bytes, a directory, a symlink, no permission), a missing or
unservable bundle (:func:`recall.index.verify.verify_bundle`, the rules publish applies), or any
unexpected exception while loading, is logged, counted once in
``recall_reloads_total{result="failure"}`` and leaves the old bundle serving. The poller
remembers the refused state of CURRENT (:attr:`recall.index.current.CurrentState.key`: its
inode, mtime and raw bytes) and does not retry until CURRENT changes; an admin reload
retries at once. A missing CURRENT (nothing published yet) is logged once, not counted.

What a client sees (:class:`ReloadRefused`, :class:`BundleNotReady`) names bundle ids only;
paths and what CURRENT holds go to the server log. :attr:`BundleHolder.reloads` keeps
this replica's last :data:`KEPT_RELOADS` attempts that loaded or refused a bundle (and
explicit reloads that found it already served), by bundle id (``GET /v1/replica``).

Nothing here waits without a bound: bundle files are regular files read up to their
manifest size (:func:`recall.index.bundle.verify_file`), a poll finding a load in progress skips
its turn, and an admin reload waits at most :data:`ADMIN_WAIT_S` for one in progress
before it answers :class:`ReloadRefused`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

from recall.index.bundle import BundleError
from recall.index.current import CURRENT, CurrentState, Key, inspect_current
from recall.service.domain_errors import BundleNotReady, ReloadRefused
from recall.service.metrics import Metrics
from recall.service.recaller import ServingBundle
from recall.service.state import StoreUnavailable
from recall.service.state.users import StoreUsers

logger = logging.getLogger(__name__)

KEPT_RELOADS = 50
#: Seconds an admin reload waits for a reload in progress before it answers 409.
ADMIN_WAIT_S = 30.0


class BundleHolder:
    """The bundle being served, and the one way to replace it."""

    def __init__(self, root: Path, metrics: Metrics) -> None:
        self.root = root
        self.metrics = metrics
        self._current: ServingBundle | None = None
        self._failed_key: Key | None = None  # the state of CURRENT whose load failed
        self._said_missing = False
        self._lock = asyncio.Lock()
        #: Where the bundles' users are (Redis mode: the state store; None: their files).
        self.users: StoreUsers | None = None
        self.started_at = time.time()  # unix seconds
        self.reloads: deque[dict[str, Any]] = deque(maxlen=KEPT_RELOADS)

    def _record(self, bundle_id: str | None, result: str, reason: str | None = None) -> None:
        """Keep one attempt: ``{"at" (unix s), "bundle_id", "result", "reason"?}``."""
        entry: dict[str, Any] = {"at": time.time(), "bundle_id": bundle_id, "result": result}
        if reason is not None:
            entry["reason"] = reason
        self.reloads.append(entry)

    @property
    def current(self) -> ServingBundle | None:
        return self._current

    def require(self) -> ServingBundle:
        bundle = self._current
        if bundle is None:
            raise BundleNotReady("no bundle loaded yet")
        return bundle

    async def reload(self, *, retry_failed: bool = True) -> tuple[ServingBundle, bool]:
        """Load the bundle CURRENT names unless it is already served.

        Returns ``(bundle served now, whether it changed)``; raises :class:`ReloadRefused`
        (old bundle still served) or :class:`BundleNotReady` (nothing published yet), nothing
        else. ``retry_failed=False`` (the poller): a state of CURRENT that failed before
        raises :class:`ReloadRefused` again without loading, logging or counting. Waits at
        most :data:`ADMIN_WAIT_S` for a reload in progress (then :class:`ReloadRefused`).
        """
        try:
            # not wait_for: in Python 3.11 it can swallow a cancel that lands just after
            # the lock was acquired, and a cancelled poller would then poll on
            async with asyncio.timeout(ADMIN_WAIT_S):
                await self._lock.acquire()
        except TimeoutError:
            serving = f"still serving {self._current.id}" if self._current else "no bundle loaded"
            raise ReloadRefused(f"a reload is in progress; {serving}; try again") from None
        try:
            return await self._reload_locked(retry_failed)
        finally:
            self._lock.release()

    async def _reload_locked(self, retry_failed: bool) -> tuple[ServingBundle, bool]:
        """:meth:`reload`'s work, under the lock."""
        try:
            state = await asyncio.to_thread(inspect_current, self.root)
        except Exception as e:  # inspect_current reports problems, it should not raise
            logger.exception("reading %s failed", self.root / CURRENT)
            state = CurrentState(("error", repr(e)), problem=f"unexpected error: {e!r}")
        if state.key is None:
            self._say_missing()
            raise BundleNotReady("nothing published yet")
        self._said_missing = False
        current = self._current
        if current is not None and current.id == state.bundle_id:
            self._failed_key = None
            if retry_failed:
                self._record(current.id, "unchanged")
            return current, False
        if state.key == self._failed_key and not retry_failed:
            raise ReloadRefused(self._refusal(state.bundle_id))
        if state.bundle_id is None:
            raise self._failure(state, state.problem or "names no bundle")
        users = None
        if self.users is not None:  # the bundle's users are in the state store
            try:
                meta = await self.users.meta(state.bundle_id)
            except StoreUnavailable as e:  # retried at the next poll
                raise self._failure(state, f"the state store: {e}", remember=False) from None
            except LookupError as e:
                raise self._failure(state, str(e)) from None
            users = (meta.elsewhere, meta.shape)
        try:
            path = self.root / state.bundle_id
            bundle = await asyncio.to_thread(ServingBundle.load, path, users)
        except (BundleError, OSError) as e:
            raise self._failure(state, str(e)) from None
        except Exception as e:
            raise self._failure(state, f"unexpected error: {e!r}", trace=True) from None
        self._current = bundle
        self._failed_key = None
        self.metrics.reloads.labels("success").inc()
        self._record(bundle.id, "success")
        self.metrics.bundle_loaded(bundle.id, len(bundle.item_ids), bundle.manifest.counts.users)
        logger.info("serving bundle %s", bundle.id)
        return bundle, True

    def _say_missing(self) -> None:
        if not self._said_missing:
            serving = self._current.id if self._current else "nothing"
            logger.warning(
                "no %s (still serving %s): not ready until a bundle is published",
                self.root / CURRENT,
                serving,
            )
            self._said_missing = True

    def _refusal(self, bundle_id: str | None) -> str:
        """The client's message: bundle ids only, no paths, nothing CURRENT holds."""
        serving = f"still serving {self._current.id}" if self._current else "no bundle loaded"
        what = f"bundle {bundle_id}" if bundle_id else "CURRENT (it names no bundle id)"
        return f"{what} was refused; {serving}; the server log says why"

    def _failure(
        self, state: CurrentState, why: str, *, trace: bool = False, remember: bool = True
    ) -> ReloadRefused:
        """Count and log a refused load; ``remember``: the poller skips this state of
        CURRENT until it changes (False: the cause may pass, the next poll retries)."""
        self._failed_key = state.key if remember else None
        self.metrics.reloads.labels("failure").inc()
        self._record(state.bundle_id, "failure", self._refusal(state.bundle_id))
        serving = self._current.id if self._current else "nothing"
        target = state.bundle_id or CURRENT
        logger.error(
            "reload of %s failed (still serving %s): %s", target, serving, why, exc_info=trace
        )
        return ReloadRefused(self._refusal(state.bundle_id))

    async def poll_forever(self, interval_s: float) -> None:
        """Check CURRENT every ``interval_s`` seconds until cancelled; survives anything."""
        while True:
            await asyncio.sleep(interval_s)
            if self._lock.locked():  # an admin reload is loading: this turn is its
                continue
            try:
                await self.reload(retry_failed=False)
            except (ReloadRefused, BundleNotReady):
                pass  # logged and counted by reload, once per state of CURRENT
            except Exception:
                logger.exception("reload poll failed unexpectedly; polling goes on")
