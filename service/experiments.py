"""The experiment a replica serves: EXPERIMENT polled beside CURRENT, each arm's bundle
loaded, verified and hot-swapped on its own, and which bundle answers a request.

:class:`Arms` reads EXPERIMENT from the root's source (a local root, or an ``s3://`` root
through the download cache) at the reload interval. An arm whose bundle is control's
shares control's loaded bundle (no second copy); any other arm gets a
:class:`~recall.service.reloader.BundleHolder` of its own over an :class:`ArmSource`, so
its bundle is verified, warmed and (in Redis mode) checked for its users in the store as
CURRENT's is. A new experiment is served only once each of its arms loaded or was
refused, in one swap of one :class:`Serving` reference: a request takes it once and
never sees half an experiment. A refused or not yet loaded arm leaves its users on
control (``arm: "control"``), logged once and counted per request in
``recall_experiment_fallbacks_total{arm}``. A removed EXPERIMENT is served as no
experiment: the arms' bundles are dropped once the requests that hold them end. An
EXPERIMENT that is not a valid one is logged once (per change) and the experiment served
before goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from recall.index.current import CurrentState, Key
from recall.index.experiment import CONTROL, Arm, Experiment, ExperimentState, arm_of
from recall.index.ids import ExternalId
from recall.index.roots import ObjectStoreUnavailable
from recall.service.domain_errors import BundleNotReady, InvalidRequest, ReloadRefused
from recall.service.metrics import Metrics
from recall.service.recaller import ServingBundle
from recall.service.reloader import JITTER, BundleHolder, BundleSource

logger = logging.getLogger(__name__)

__all__ = ["ArmSource", "Arms", "Route", "Serving"]


class ArmSource:
    """The :class:`~recall.service.reloader.BundleSource` of one arm: its CURRENT is the
    arm's bundle id for as long as the experiment runs; bundles come from the root's
    ``source`` (whose own CURRENT, and the download cache's, stay control's)."""

    def __init__(self, source: BundleSource, experiment: Experiment, arm: Arm) -> None:
        self.source = source
        self.arm = arm
        self.where = f"{source.where} (experiment {experiment.id}, arm {arm.name})"
        self._state = CurrentState(("arm", experiment.id, arm.name), bundle_id=arm.bundle_id)

    def inspect(self) -> CurrentState:
        return self._state

    def fetch(self, bundle_id: str) -> Path:
        return self.source.fetch(bundle_id)

    def loaded(self, bundle_id: str) -> None:
        pass  # the source's CURRENT (the cache's) is control's

    def refused(self, bundle_id: str) -> None:
        self.source.refused(bundle_id)

    def fallback(self) -> CurrentState | None:
        return None

    def experiment(self) -> ExperimentState:
        return ExperimentState(None)

    def pin(self, bundle_ids: set[str]) -> None:
        pass


@dataclass(frozen=True)
class Serving:
    """One experiment as this replica serves it: ``experiment`` (None: none running) and
    the bundle of each arm that has one here (an arm missing: its users get control)."""

    experiment: Experiment | None = None
    bundles: Mapping[str, ServingBundle] = field(default_factory=dict)
    #: Why an arm has no bundle (bundle ids only): "loading", or its refusal.
    missing: Mapping[str, str] = field(default_factory=dict)


class Route(NamedTuple):
    """Which bundle answers a request: the experiment ``arm`` (``control`` included), its
    ``bundle``, and the id of the experiment that arm is of (``""``: none runs), all from
    one read of the :class:`Serving`: a list served in an arm is filed under an experiment
    that has the arm, whatever swap happens meanwhile."""

    arm: str
    bundle: ServingBundle
    experiment_id: str


class Arms:
    """The experiment served beside ``control`` (the holder of CURRENT), and the one
    place that picks which bundle answers a request."""

    def __init__(self, control: BundleHolder, metrics: Metrics) -> None:
        self.control = control
        self.metrics = metrics
        self.serving = Serving()
        #: (experiment id, arm, bundle id) -> the holder of an arm's own copy; a refused
        #: arm is retried (with a new holder) when the experiment changes
        self._holders: dict[tuple[str, str, str], BundleHolder] = {}
        self._key: Key | None = None  # the state of EXPERIMENT served (or refused)
        self._lock = asyncio.Lock()
        control.loaded_elsewhere = self.loaded_bundle

    @property
    def experiment(self) -> Experiment | None:
        """The verified experiment being served now."""
        return self.serving.experiment

    def loaded_bundle(self, bundle_id: str) -> ServingBundle | None:
        """An arm's loaded bundle with this id (CURRENT moving to it, e.g. a promote,
        shares it instead of loading a second copy)."""
        return next((b for b in self.serving.bundles.values() if b.id == bundle_id), None)

    def route(
        self, control: ServingBundle, user_id: ExternalId | None, asked: str | None = None
    ) -> Route:
        """The :class:`Route` of a request on ``control`` (CURRENT's bundle, taken once by
        the request): a user's arm by :func:`~recall.index.experiment.arm_of` (``user_id``
        canonical, as control types it), else the arm ``asked`` for (None: control);
        :class:`InvalidRequest` for an arm the experiment does not have."""
        serving = self.serving  # read once: the arm and the experiment id agree
        experiment = serving.experiment
        experiment_id = "" if experiment is None else experiment.id
        if user_id is not None:
            name = arm_of(experiment, user_id)
        elif asked is None or asked == CONTROL:
            return Route(CONTROL, control, experiment_id)
        elif experiment is None or experiment.arm(asked) is None:
            names = [CONTROL] + ([a.name for a in experiment.arms] if experiment else [])
            raise InvalidRequest(f"no arm {asked!r} is served; arms: {', '.join(names)}")
        else:
            name = asked
        if name == CONTROL or experiment is None:
            return Route(CONTROL, control, experiment_id)
        bundle = serving.bundles.get(name)
        if bundle is not None:
            return Route(name, bundle, experiment_id)
        arm = experiment.arm(name)
        if arm is not None and arm.bundle_id == control.id:  # CURRENT moved to the arm's
            return Route(name, control, experiment_id)
        self.metrics.experiment_fallbacks.labels(name).inc()
        return Route(CONTROL, control, experiment_id)

    def describe(self) -> dict[str, Any] | None:
        """The experiment and each arm's state here, for ``GET /v1/replica``."""
        serving = self.serving
        if serving.experiment is None:
            return None
        control = self.control.current
        arms = []
        for arm in serving.experiment.arms:
            bundle = serving.bundles.get(arm.name)
            if bundle is not None:
                shared = control is not None and bundle is control
                state, reason = ("shared" if shared else "loaded"), None
            else:
                state, reason = "fallback", serving.missing.get(arm.name)
            entry = {**arm.model_dump(), "state": state}
            if reason is not None:
                entry["reason"] = reason
            arms.append(entry)
        return {
            "id": serving.experiment.id,
            "started_at": serving.experiment.started_at,
            "arms": arms,
        }

    async def refresh(self) -> None:
        """Read EXPERIMENT and serve what it holds: load the arms that need loading (a
        refused one is retried only when the experiment changes; one the state store
        could not check, at every refresh), then swap. Never raises for what the file,
        the bundles or the stores hold."""
        async with self._lock:
            try:
                state = await asyncio.to_thread(self.control.source.experiment)
            except ObjectStoreUnavailable as e:  # the holder of CURRENT logs the outage
                logger.debug("EXPERIMENT of %s not read: %s", self.control.source.where, e)
                return
            if state.problem is not None:
                if state.key != self._key:
                    self._key = state.key
                    logger.error(
                        "EXPERIMENT refused (still serving %s): %s",
                        self.experiment.id if self.experiment else "no experiment",
                        state.problem,
                    )
                return
            self._key = state.key
            await self._serve(state.experiment)

    async def _serve(self, experiment: Experiment | None) -> None:
        control = self.control.current
        if experiment is None:
            if self.serving.experiment is not None:
                logger.info(
                    "experiment %s stopped: everyone on control", self.serving.experiment.id
                )
            self.serving, self._holders = Serving(), {}
            self.control.source.pin(set())
            return
        holders: dict[tuple[str, str, str], BundleHolder] = {}
        bundles: dict[str, ServingBundle] = {}
        missing: dict[str, str] = {}
        self.control.source.pin({arm.bundle_id for arm in experiment.arms})
        for arm in experiment.arms:
            if control is not None and arm.bundle_id == control.id:
                bundles[arm.name] = control
                continue
            key = (experiment.id, arm.name, arm.bundle_id)
            holder = self._holders.get(key)
            if holder is None:  # new to this experiment: loaded here already?
                loaded = self.loaded_bundle(arm.bundle_id)  # e.g. control's, before CURRENT moved
                if loaded is not None:
                    bundles[arm.name] = loaded
                    continue
                holder = self._holder(experiment, arm)
            holders[key] = holder
            try:
                bundle, _ = await holder.reload(retry_failed=False)
            except (ReloadRefused, BundleNotReady) as e:
                missing[arm.name] = str(e)
                continue
            bundles[arm.name] = bundle
        previous = self.serving
        self.serving, self._holders = Serving(experiment, bundles, missing), holders
        if previous.experiment != experiment:
            logger.info(
                "serving experiment %s: %s",
                experiment.id,
                ", ".join(
                    f"{a.name}={a.bundle_id} ({a.share:g}"
                    f"{', on control: ' + missing[a.name] if a.name in missing else ''})"
                    for a in experiment.arms
                ),
            )

    def _holder(self, experiment: Experiment, arm: Arm) -> BundleHolder:
        holder = BundleHolder(
            ArmSource(self.control.source, experiment, arm), self.metrics, primary=False
        )
        holder.users = self.control.users
        return holder

    async def poll_forever(self, interval_s: float) -> None:
        """:meth:`refresh` every ``interval_s`` seconds (jittered) until cancelled."""
        while True:
            await asyncio.sleep(interval_s * random.uniform(1 - JITTER, 1 + JITTER))
            try:
                await self.refresh()
            except Exception:
                logger.exception("EXPERIMENT poll failed unexpectedly; polling goes on")
