"""The application state: what one app (one process) holds while it serves."""

from __future__ import annotations

from dataclasses import dataclass, field

from recall.index.allowed import AllowedItems
from recall.index.experiment import Experiment
from recall.service.availability import Availability
from recall.service.core import RecallCore
from recall.service.experiments import Arms
from recall.service.metrics import Metrics
from recall.service.pool import SearchPool
from recall.service.recaller import ServingBundle
from recall.service.reloader import BundleHolder
from recall.service.settings import Settings
from recall.service.state_access import StateAccess


@dataclass
class AppState:
    """One app's settings, metrics, bundle holder and search pool (made by
    :func:`recall.service.app.create_app`), its recall core, the experiment's arms, and its
    state store and item availability (opened by the lifespan, None before it runs)."""

    settings: Settings
    metrics: Metrics
    holder: BundleHolder
    pool: SearchPool
    access: StateAccess | None = None
    availability: Availability | None = None
    core: RecallCore = field(init=False)
    arms: Arms = field(init=False)

    def __post_init__(self) -> None:
        self.core = RecallCore(self.settings.max_k, self.available_items, self._count_search)
        self.arms = Arms(self.holder, self.metrics)

    @property
    def experiment(self) -> Experiment | None:
        """The verified experiment being served now (None: none)."""
        return self.arms.experiment

    def _count_search(self, strategy: str) -> None:
        self.metrics.searches.labels(strategy).inc()

    def state_access(self) -> StateAccess:
        """The state store's bounded access; the lifespan opens it."""
        if self.access is None:
            raise RuntimeError("the state store is opened by the app's lifespan")
        return self.access

    def item_availability(self) -> Availability:
        """The disabled items as this process knows them; the lifespan opens them."""
        if self.availability is None:
            raise RuntimeError("item availability is opened by the app's lifespan")
        return self.availability

    def available_items(self, bundle: ServingBundle) -> AllowedItems | None:
        """The items of ``bundle`` no one disabled, None when none is (or before the
        lifespan ran)."""
        if self.availability is None:
            return None
        return self.availability.available_items(bundle)
