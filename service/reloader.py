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

Where bundles come from is a :class:`BundleSource`: :class:`LocalSource` (a local root,
read in place) or :class:`recall.service.bundle_cache.S3CachedSource` (an S3 root, through
a download cache). A store that does not answer
(:class:`~recall.index.roots.ObjectStoreUnavailable`: down, or gone mid-download) is logged and
counted once until it answers again, and retried at every poll; a replica with nothing
loaded yet then serves the last bundle its source verified before (the cache's
``CURRENT``) and says so (:attr:`BundleHolder.store_reachable`, ``GET /v1/replica``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

from recall.index.bundle import BundleError
from recall.index.current import CURRENT, CurrentState, Key, inspect_current
from recall.index.experiment import ExperimentState, inspect_experiment
from recall.index.roots import ObjectStoreUnavailable
from recall.service.domain_errors import BundleNotReady, ReloadRefused
from recall.service.metrics import Metrics
from recall.service.recaller import ServingBundle
from recall.service.state import StoreUnavailable
from recall.service.state.users import StoreUsers

logger = logging.getLogger(__name__)

KEPT_RELOADS = 50
#: Seconds an admin reload waits for a reload in progress before it answers 409.
ADMIN_WAIT_S = 30.0


#: Each poll waits ``interval * uniform(1 - JITTER, 1 + JITTER)``: replicas drift apart
#: instead of polling the store in lockstep.
JITTER = 0.2


class SourceBusy(Exception):
    """The source is fetching this bundle for another process (a worker of the replica)."""


class BundleSource(Protocol):
    """Where the bundles come from. Blocking calls (the holder runs them in a thread);
    ``inspect`` and ``fetch`` may raise :class:`~recall.index.roots.ObjectStoreUnavailable`,
    ``fetch`` also :class:`SourceBusy`."""

    where: str  # for the server log

    def inspect(self) -> CurrentState:
        """What CURRENT holds now (its ``key`` changes whenever it does)."""
        ...

    def fetch(self, bundle_id: str) -> Path:
        """The local directory of ``bundle_id`` (downloaded first, if need be)."""
        ...

    def loaded(self, bundle_id: str) -> None:
        """``bundle_id`` verified, loaded and is served now."""
        ...

    def refused(self, bundle_id: str) -> None:
        """``bundle_id`` failed verification."""
        ...

    def fallback(self) -> CurrentState | None:
        """What to serve while the store is down and nothing is served (None: nothing)."""
        ...

    def experiment(self) -> ExperimentState:
        """What EXPERIMENT holds now (its ``key`` changes whenever it does)."""
        ...

    def pin(self, bundle_ids: set[str]) -> None:
        """Keep these bundles (the experiment's arms) wherever the source caches bundles."""
        ...


class LocalSource:
    """A local bundle root, read in place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def inspect(self) -> CurrentState:
        return inspect_current(self.root)

    def fetch(self, bundle_id: str) -> Path:
        return self.root / bundle_id

    def loaded(self, bundle_id: str) -> None:
        pass

    def refused(self, bundle_id: str) -> None:
        pass

    def fallback(self) -> CurrentState | None:
        return None

    def experiment(self) -> ExperimentState:
        return inspect_experiment(self.root)

    def pin(self, bundle_ids: set[str]) -> None:
        pass  # read in place: nothing is cached


class BundleHolder:
    """The bundle being served, and the one way to replace it. ``primary``: the holder of
    CURRENT, counted in ``recall_reloads_total`` and ``recall_bundle_info``; False: an
    experiment arm's (:mod:`recall.service.experiments`), logged and kept in
    :attr:`reloads` only."""

    def __init__(self, source: BundleSource, metrics: Metrics, *, primary: bool = True) -> None:
        self.source = source
        self.metrics = metrics
        self.primary = primary
        #: A bundle already loaded here under another holder (an experiment arm's), by
        #: id: served as it is instead of loading a second copy.
        self.loaded_elsewhere: Callable[[str], ServingBundle | None] | None = None
        self._current: ServingBundle | None = None
        self._failed_key: Key | None = None  # the state of CURRENT whose load failed
        self._said_missing = False
        #: False while the bundle store does not answer (then the bundle served may be
        #: the cache's); the store of a local root always answers.
        self.store_reachable = True
        self.serving_from_cache = False
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
            state = await asyncio.to_thread(self.source.inspect)
        except ObjectStoreUnavailable as e:
            self._store_down(e)
            return await self._from_cache(e)
        except Exception as e:  # inspect_current reports problems, it should not raise
            logger.exception("reading %s of %s failed", CURRENT, self.source.where)
            state = CurrentState(("error", repr(e)), problem=f"unexpected error: {e!r}")
        self._store_back()
        if state.key is None:
            self._say_missing()
            raise BundleNotReady("nothing published yet")
        self._said_missing = False
        current = self._current
        if current is not None and current.id == state.bundle_id:
            self._failed_key = None
            self.serving_from_cache = False  # the store names it: following CURRENT again
            if retry_failed:
                self._record(current.id, "unchanged")
            return current, False
        if state.key == self._failed_key and not retry_failed:
            raise ReloadRefused(self._refusal(state.bundle_id))
        if state.bundle_id is None:
            raise self._failure(state, state.problem or "names no bundle")
        shared = self.loaded_elsewhere(state.bundle_id) if self.loaded_elsewhere else None
        if shared is not None:
            return await self._serve(shared, from_cache=False), True
        try:
            path = await asyncio.to_thread(self.source.fetch, state.bundle_id)
        except ObjectStoreUnavailable as e:  # retried at the next poll, counted once
            self._store_down(e)
            return await self._from_cache(e)
        except SourceBusy:
            raise ReloadRefused(
                f"bundle {state.bundle_id} is being downloaded; try again"
            ) from None
        except (BundleError, OSError) as e:
            raise await self._refuse(state, str(e)) from None
        except Exception as e:
            raise await self._refuse(state, f"unexpected error: {e!r}", trace=True) from None
        try:
            bundle = await self._load(path, state.bundle_id)
        except StoreUnavailable as e:  # the users' state store: retried at the next poll
            raise self._failure(state, f"the state store: {e}", remember=False) from None
        except LookupError as e:  # its users are not (all) in the store: not the bundle's fault
            raise await self._refuse(state, str(e)) from None
        except (BundleError, OSError) as e:
            await asyncio.to_thread(self.source.refused, state.bundle_id)
            raise await self._refuse(state, str(e)) from None
        except Exception as e:
            await asyncio.to_thread(self.source.refused, state.bundle_id)
            raise await self._refuse(state, f"unexpected error: {e!r}", trace=True) from None
        return await self._serve(bundle, from_cache=False), True

    async def _load(self, path: Path, bundle_id: str) -> ServingBundle:
        """:meth:`ServingBundle.load`; in Redis mode with the users' meta read from the
        state store first (:class:`StoreUnavailable` when it does not answer, LookupError
        when the bundle's users are not all loaded there): the user files stay closed."""
        users = None
        if self.users is not None:
            meta = await self.users.meta(bundle_id)
            users = (meta.elsewhere, meta.shape)
        return await asyncio.to_thread(ServingBundle.load, path, users)

    async def _serve(self, bundle: ServingBundle, *, from_cache: bool) -> ServingBundle:
        await asyncio.to_thread(self.source.loaded, bundle.id)
        self._current = bundle
        self._failed_key = None
        self.serving_from_cache = from_cache
        self._record(bundle.id, "success")
        if self.primary:
            self.metrics.reloads.labels("success").inc()
            self.metrics.bundle_loaded(
                bundle.id, len(bundle.item_ids), bundle.manifest.counts.users
            )
        cached = " from the cache (the bundle store is unreachable)" if from_cache else ""
        logger.info(
            "serving bundle %s%s%s",
            bundle.id,
            cached,
            "" if self.primary else f" for {self.source.where}",
        )
        return bundle

    async def _refuse(self, state: CurrentState, why: str, *, trace: bool = False) -> Exception:
        """The failure of ``state``'s bundle; with nothing served yet, the cache's bundle
        is served instead when there is one (the error is still raised)."""
        failure = self._failure(state, why, trace=trace)
        if self._current is None:
            with suppress(ReloadRefused, BundleNotReady):
                await self._from_cache(None)
            self._failed_key = state.key  # retried when CURRENT changes, not at each poll
        return failure

    async def _from_cache(self, error: ObjectStoreUnavailable | None) -> tuple[ServingBundle, bool]:
        """With nothing served yet, load the source's fallback (the last bundle verified
        here); else keep serving. Raises ReloadRefused or BundleNotReady when it cannot."""
        current = self._current
        if current is not None:
            raise ReloadRefused(f"the bundle store is unreachable; still serving {current.id}")
        state = await asyncio.to_thread(self.source.fallback)
        if state is None or state.bundle_id is None:
            raise BundleNotReady("the bundle store is unreachable and no bundle is cached")
        try:
            path = await asyncio.to_thread(self.source.fetch, state.bundle_id)
            bundle = await self._load(path, state.bundle_id)
        except (BundleError, OSError, ObjectStoreUnavailable, StoreUnavailable, LookupError) as e:
            logger.error("the cached bundle %s cannot be served: %s", state.bundle_id, e)
            raise BundleNotReady("no verified bundle is cached") from None
        if error is not None:
            logger.warning("serving the cached bundle %s: %s", bundle.id, error)
        return await self._serve(bundle, from_cache=True), True

    def _store_down(self, error: ObjectStoreUnavailable) -> None:
        """Log and count the first failure of an outage; the next ones are only retried."""
        if self.store_reachable:
            self.store_reachable = False
            if self.primary:
                self.metrics.reloads.labels("failure").inc()
            serving = self._current.id if self._current else "nothing"
            self._record(None, "failure", "the bundle store is unreachable")
            logger.error(
                "the bundle store %s is unreachable (still serving %s; retried at every poll): %s",
                self.source.where,
                serving,
                error,
            )

    def _store_back(self) -> None:
        if not self.store_reachable:
            self.store_reachable = True
            logger.info("the bundle store %s answers again", self.source.where)

    def _say_missing(self) -> None:
        if not self._said_missing:
            serving = self._current.id if self._current else "nothing"
            logger.warning(
                "no %s in %s (still serving %s): not ready until a bundle is published",
                CURRENT,
                self.source.where,
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
        if self.primary:
            self.metrics.reloads.labels("failure").inc()
        self._record(state.bundle_id, "failure", self._refusal(state.bundle_id))
        serving = self._current.id if self._current else "nothing"
        target = state.bundle_id or CURRENT
        logger.error(
            "reload of %s failed (still serving %s): %s", target, serving, why, exc_info=trace
        )
        return ReloadRefused(self._refusal(state.bundle_id))

    async def poll_forever(self, interval_s: float) -> None:
        """Check CURRENT every ``interval_s`` seconds (jittered by :data:`JITTER`) until
        cancelled; survives anything."""
        while True:
            await asyncio.sleep(interval_s * random.uniform(1 - JITTER, 1 + JITTER))
            if self._lock.locked():  # an admin reload is loading: this turn is its
                continue
            try:
                await self.reload(retry_failed=False)
            except (ReloadRefused, BundleNotReady):
                pass  # logged and counted by reload, once per state of CURRENT
            except Exception:
                logger.exception("reload poll failed unexpectedly; polling goes on")
