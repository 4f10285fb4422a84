"""Shared fixtures: a small planted synthetic data set, its bundle written without torch
(tests/index_data.py: what the service tests serve), and one model trained on it (only
for the tests of training and export: torch is imported when a test asks for it)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from recall.index.build import BuildOptions, build_index
from recall.index.publish import publish as publish_bundle
from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset, load_dataset
from recall.trainer.synth import SynthConfig, write_synthetic
from tests.browser import READ_ONLY_POST, TIMEOUT_MS, Browser, Tab, open_browser
from tests.index_data import write_dataset_bundle
from tests.live import live_server, settings
from tests.moto_server import MotoServer, moto_server
from tests.redis_cluster import RedisCluster, redis_cluster

if TYPE_CHECKING:
    from recall.trainer.train import Trained

ML100K_ENV = "RECALL_ML100K_DIR"
"""Where MovieLens 100K lies (it may not be redistributed, so the repository has no copy)."""
ML100K_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"

SMALL = TrainConfig(
    item_dim=16,
    genre_dim=4,
    categorical_dim=4,
    hidden=[32, 16],
    epochs=8,
    patience=2,
    batch_size=256,
    lr=1e-2,
    validation_users=300,
)


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One real Redis Cluster (six redis-server processes) for the whole run; a test that
    kills a node restarts it (``RedisCluster.restart``) before it ends."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A real moto_server (S3), shared by the tests of one module."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The MovieLens 100K directory: ``$RECALL_ML100K_DIR``, else ``../shared/data/ml-100k``
    beside the repository. Skips when the default is absent; fails when the variable is set
    and wrong (CI sets it, so a moved data set fails there instead of skipping)."""
    configured = os.environ.get(ML100K_ENV)
    path = Path(configured) if configured else ML100K_DEFAULT
    if not path.is_dir():
        message = f"MovieLens 100K not found at {path}: set {ML100K_ENV} to its directory"
        if configured:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(
        out,
        SynthConfig(
            n_users=400,
            n_items=300,
            n_clusters=15,
            p_popular=0.05,
            popularity_exponent=0.7,
            seed=7,
        ),
    )
    return out


@pytest.fixture(scope="session")
def synthetic(synthetic_dir: Path) -> Dataset:
    return load_dataset(synthetic_dir)


@pytest.fixture(scope="session")
def small_config() -> TrainConfig:
    return SMALL


@pytest.fixture(scope="session")
def trained(synthetic: Dataset) -> Trained:
    """The model trained on ``synthetic`` (torch, a few seconds): for the training and
    export tests only; the service tests serve :func:`make_bundle`'s bundles."""
    from recall.trainer.train import train  # imports torch: only tests of training need it

    return train(synthetic, SMALL, progress=False)


BundleFactory = Callable[..., str]


@pytest.fixture(scope="session")
def make_bundle(synthetic: Dataset, small_config: TrainConfig) -> BundleFactory:
    """``make_bundle(root, bundle_id, publish=False) -> bundle_id``: write ``synthetic``'s
    bundle without torch (:func:`tests.index_data.write_dataset_bundle`: a random tower,
    no training), build its exact index, and optionally publish it."""

    def make(root: Path, bundle_id: str, publish: bool = False) -> str:
        bundle = write_dataset_bundle(root, synthetic, small_config, bundle_id)
        build_index(bundle, BuildOptions(kind="flat", sample_queries=50, latency_queries=5))
        if publish:
            publish_bundle(bundle)
        return bundle_id

    return make


PUBLISHED_ID = "20260101T000000Z-aaaaaa"
"""The id of :func:`published_root`'s bundle."""


@pytest.fixture(scope="session")
def published_root(make_bundle: BundleFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle root whose CURRENT names ``synthetic``'s bundle, :data:`PUBLISHED_ID`
    (read only!)."""
    root = tmp_path_factory.mktemp("published")
    make_bundle(root, PUBLISHED_ID, publish=True)
    return root


@pytest.fixture(scope="session")
def trained_root(
    trained: Trained,
    synthetic: Dataset,
    small_config: TrainConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A bundle root whose CURRENT names the trained model's export (read only!): for the
    tests of what the trainer writes into a bundle."""
    from recall.trainer.export import export_bundle  # imports torch, as ``trained`` does

    root = tmp_path_factory.mktemp("trained")
    bundle = export_bundle(trained, synthetic, small_config, root, "20260101T000000Z-bbbbbb")
    build_index(bundle, BuildOptions(kind="flat", sample_queries=50, latency_queries=5))
    publish_bundle(bundle)
    return root


@pytest.fixture(scope="module")
def served(published_root: Path) -> Iterator[tuple[httpx.Client, ServingBundle]]:
    """A live server on ``published_root`` (:func:`tests.live.settings`), a client of it,
    and the bundle it serves (loaded here too, for expected values); one per test module."""
    bundle = ServingBundle.load(published_root / (published_root / "CURRENT").read_text().strip())
    with (
        live_server(create_app(settings(published_root))) as url,
        httpx.Client(base_url=url) as client,
    ):
        yield client, bundle


@pytest.fixture(scope="module")
def server(published_root: Path) -> Iterator[tuple[str, httpx.Client, ServingBundle]]:
    """(base URL, a client of it, its bundle) of a live server on ``published_root``, for
    the browser tests (the page needs the URL); one per test module."""
    bundle = ServingBundle.load(published_root / (published_root / "CURRENT").read_text().strip())
    with (
        live_server(create_app(settings(published_root))) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield url, client, bundle


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium (tests/browser.py) per test module."""
    with open_browser() as opened:
        yield opened


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    """A fresh console page; the test fails if it logged an error, reached beyond
    127.0.0.1, made no request or sent anything but a read (GET, or a POST of a question)."""
    with browser.tab() as opened:
        opened.page.set_default_timeout(TIMEOUT_MS)
        yield opened
    assert opened.problems() == []
    assert opened.requests, "the page made no request"
    writes = [(m, u) for m, u in opened.requests if m != "GET" and not READ_ONLY_POST.search(u)]
    assert writes == [], "the console is read-only"
