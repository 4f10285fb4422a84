"""recall.client.RecallClient against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recall.client import (
    Forbidden,
    InvalidInput,
    NotFound,
    NotReady,
    PayloadTooLarge,
    Query,
    RecallClient,
    RecallError,
    RecallResult,
    TransportError,
    Unauthorized,
)
from recall.service.app import create_app
from recall.service.core import RecallCore
from recall.service.recaller import RecallQuery, ServingBundle
from recall.service.recaller import RecallResult as ServerResult
from recall.service.settings import Settings
from tests.live import live_server

TOKEN = "client-test-admin-token-0123"
# Prints every module loaded after its imports, one a line.
LOADED = "import sys; {imports}; print('\\n'.join(sorted(sys.modules)))"


def recall(bundle: ServingBundle, query: RecallQuery, max_k: int) -> ServerResult:
    """The recall production runs (:meth:`RecallCore.recall`; a user with no stored events)."""
    return RecallCore(max_k).recall(bundle, query).result


def _settings(root: Path) -> Settings:
    return Settings.model_validate(
        {"root": root, "max_k": 200, "max_batch": 4, "reload_interval_s": 0, "admin_token": TOKEN}
    )


@pytest.fixture(scope="module")
def served(published_root: Path) -> Iterator[tuple[RecallClient, ServingBundle]]:
    bundle = ServingBundle.load(published_root / (published_root / "CURRENT").read_text().strip())
    with live_server(create_app(_settings(published_root))) as url, RecallClient(url) as client:
        yield client, bundle


def test_health_ready_and_model(served: tuple[RecallClient, ServingBundle]) -> None:
    client, bundle = served
    assert client.health()
    assert client.ready() == bundle.id
    model = client.model()
    assert model.bundle_id == bundle.id and model.dim == bundle.dim
    assert model.counts["items"] == len(bundle.item_ids)
    assert model.created_at == bundle.manifest.created_at
    assert model.index is not None and model.index["kind"] == "flat"


def test_recall_by_user_history_and_vector(served: tuple[RecallClient, ServingBundle]) -> None:
    client, bundle = served
    user_id = bundle.user_ids.ids[5].item()
    result = client.recall(user_id=user_id, k=20)
    expected = recall(bundle, RecallQuery(user_id=user_id, k=20), 200)
    assert (result.bundle_id, result.source) == (bundle.id, "user")
    assert result.item_ids == expected.item_ids
    np.testing.assert_allclose(result.scores, expected.scores, rtol=1e-6)

    unseen = client.recall(user_id=user_id, k=20, exclude_seen=False, exclude=result.item_ids[:3])
    assert not set(result.item_ids[:3]) & set(unseen.item_ids)

    history = [bundle.item_ids.ids[i].item() for i in (1, 2, 3)]
    by_history = client.recall(history=history, features={"age": 30.0}, k=10)
    assert by_history.source == "history" and len(by_history.items) == 10
    assert not set(history) & set(by_history.item_ids)

    by_vector = client.recall(vector=np.asarray(bundle.user_vectors[5]), k=20, exclude_seen=False)
    assert by_vector.source == "vector"
    expected = recall(bundle, RecallQuery(vector=bundle.user_vectors[5].tolist(), k=20), 200)
    assert by_vector.item_ids == expected.item_ids

    popular = client.recall(user_id="nobody", fallback="popular", k=5)
    assert popular.source == "popular" and len(popular.items) == 5


def test_batch_answers_in_order_without_raising(
    served: tuple[RecallClient, ServingBundle],
) -> None:
    client, bundle = served
    user_id = bundle.user_ids.ids[1].item()
    batch = client.recall_batch(
        [Query(user_id=user_id, k=3), Query(user_id="nobody"), Query(vector=[1.0], k=2)]
    )
    assert batch.bundle_id == bundle.id
    first, missing, invalid = batch.results
    assert isinstance(first, RecallResult) and len(first.items) == 3
    assert first.bundle_id == bundle.id
    assert isinstance(missing, NotFound) and missing.code == "not_found"
    assert isinstance(invalid, InvalidInput) and invalid.status == 422
    with pytest.raises(PayloadTooLarge):
        client.recall_batch([Query(user_id=user_id)] * 5)


def test_similar_and_vectors(served: tuple[RecallClient, ServingBundle]) -> None:
    client, bundle = served
    item_id = bundle.item_ids.ids[2].item()
    similar = client.similar(item_id, k=5)
    assert similar.source == "item" and len(similar.items) == 5
    assert item_id not in similar.item_ids
    np.testing.assert_array_equal(client.item_vector(item_id), bundle.item_vectors[2])
    user_id = bundle.user_ids.ids[3].item()
    np.testing.assert_array_equal(client.user_vector(user_id), bundle.user_vectors[3])

    ids = [bundle.user_ids.ids[i].item() for i in (4, 0)]
    vectors, missing = client.user_vectors([ids[0], "ghost", ids[1], ids[0]])
    assert vectors.dtype == np.float32 and vectors.shape == (4, bundle.dim)
    assert missing == ["ghost"]
    np.testing.assert_array_equal(vectors[[0, 2, 3]], bundle.user_vectors[[4, 0, 4]])
    items, none_missing = client.item_vectors([item_id])
    assert none_missing == []
    np.testing.assert_array_equal(items[0], bundle.item_vectors[2])


def test_errors_map_to_the_exception_tree(served: tuple[RecallClient, ServingBundle]) -> None:
    client, bundle = served
    with pytest.raises(NotFound) as not_found:
        client.recall(user_id="nobody")
    assert not_found.value.status == 404 and "nobody" in not_found.value.message
    with pytest.raises(InvalidInput):
        client.recall(user_id=bundle.user_ids.ids[0].item(), k=0)
    with pytest.raises(InvalidInput):
        client.recall(k=5)  # neither user_id, history nor vector
    with pytest.raises(NotFound):
        client.similar("no/such item")
    assert issubclass(NotFound, RecallError) and issubclass(TransportError, RecallError)


def test_admin_reload_needs_the_token(served: tuple[RecallClient, ServingBundle]) -> None:
    client, bundle = served
    with pytest.raises(Unauthorized):
        client.reload()
    with pytest.raises(Forbidden) as forbidden:
        client.reload("a-wrong-token-of-enough-length")
    assert forbidden.value.code == "forbidden"
    result = client.reload(TOKEN)
    assert (result.bundle_id, result.changed) == (bundle.id, False)


def test_not_ready_and_transport_errors(tmp_path: Path) -> None:
    with live_server(create_app(_settings(tmp_path))) as url, RecallClient(url) as client:
        assert client.health()
        assert client.ready() is None
        with pytest.raises(NotReady) as not_ready:
            client.recall(user_id=1)
        assert not_ready.value.code == "not_ready"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with RecallClient(f"http://127.0.0.1:{port}", timeout=2) as client:
            assert not client.health()
            with pytest.raises(TransportError) as refused:
                client.model()
    assert refused.value.status is None and refused.value.code == "transport"


def _loaded_by(imports: str) -> set[str]:
    """The modules a fresh interpreter holds after ``imports`` (a statement)."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED.format(imports=imports)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(done.stdout.split())


def test_the_client_imports_only_httpx_and_numpy() -> None:
    """recall.client ships apart from the server: beyond what httpx and numpy load
    themselves (and the standard library), it loads only itself."""
    baseline = _loaded_by("import httpx, numpy")
    assert _loaded_by("import recall.client") - baseline == {"recall", "recall.client"}
