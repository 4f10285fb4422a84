"""Item availability at run time (service/availability.py and the admin routes), over real
uvicorn servers, a real SQLite state store and a real redis-server.

The test bundle's index is Flat (exact), so "the answer without the disabled item" is
checked against brute force over the item vectors.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from recall.client import Forbidden, RecallClient, Unauthorized
from recall.index.current import CURRENT
from recall.index.publish import publish
from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from recall.service.settings import STATE_FILE
from recall.service.state import open_store, sqlite_url
from tests.index.test_verify import copy_bundle
from tests.live import TOKEN, fresh_state_url, live_server, settings
from tests.redis_server import load_users, redis_server
from tests.service.test_metrics_workers import recall_serve
from tests.service.test_reload import serving_root

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PATH = "/v1/admin/items/availability"
K = 150  # half the test bundle's 300 items: the disabled item is in every answer before


@pytest.fixture(scope="module")
def bundle(published_root: Path) -> ServingBundle:
    return ServingBundle.load(published_root / (published_root / CURRENT).read_text().strip())


@pytest.fixture
def client(published_root: Path) -> Iterator[httpx.Client]:
    """A server with an empty SQLite store of its own (each test starts with nothing
    disabled)."""
    app = create_app(settings(published_root, max_availability_ids=20))
    with live_server(app) as url, httpx.Client(base_url=url, headers=ADMIN) as c:
        yield c


def change(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post(PATH, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def ids_of(body: dict[str, Any]) -> list[Any]:
    return [item["item_id"] for item in body["items"]]


def answers(
    client: httpx.Client, bundle: ServingBundle, probe: int, by_user: bool = True
) -> dict[str, list[Any]]:
    """Every kind of answer, k = K, as lists of item ids: recall by user_id (unless not
    ``by_user``), history and vector, the popular fallback, each of them in a batch, and
    similar (GET) to ``probe``."""
    user = bundle.user_ids.ids[0].item()
    queries: dict[str, dict[str, Any]] = {
        **({"user_id": {"user_id": user, "exclude_seen": False}} if by_user else {}),
        "history": {"history": bundle.item_ids.ids[[3, 4, 5]].tolist(), "exclude_seen": False},
        "vector": {"vector": np.asarray(bundle.user_vectors[1]).tolist()},
        "popular": {"user_id": "nobody-at-all", "fallback": "popular"},
    }
    out: dict[str, list[Any]] = {}
    for name, query in queries.items():
        response = client.post("/v1/recall", json={**query, "k": K})
        assert response.status_code == 200, response.text
        out[name] = ids_of(response.json())
    batch = client.post(
        "/v1/recall/batch", json={"requests": [{**q, "k": K} for q in queries.values()]}
    )
    assert batch.status_code == 200, batch.text
    for name, result in zip(queries, batch.json()["results"], strict=True):
        assert result["status"] == 200, result
        out[f"batch {name}"] = ids_of(result)
    similar = client.get(f"/v1/items/{probe}/similar", params={"k": K})
    assert similar.status_code == 200, similar.text
    out["similar"] = ids_of(similar.json())
    return out


def target_item(bundle: ServingBundle) -> tuple[int, int]:
    """(an item in every answer of :func:`answers` at k = K: the most popular one, a
    similar-probe item other than it)."""
    item: int = bundle.item_ids.ids[bundle.popular_rows[0]].item()
    probe: int = bundle.item_ids.ids[bundle.popular_rows[1]].item()
    return item, probe


def exact_top(bundle: ServingBundle, vector: np.ndarray, banned: list[int], k: int) -> list[Any]:
    scores = np.asarray(bundle.item_vectors, dtype=np.float64) @ vector.astype(np.float64)
    scores[bundle.item_ids.rows(banned)] = -np.inf
    top: list[Any] = bundle.item_ids.ids[np.argsort(-scores, kind="stable")[:k]].tolist()
    return top


def test_a_disabled_item_is_in_no_answer_until_enabled(
    client: httpx.Client, bundle: ServingBundle
) -> None:
    item, probe = target_item(bundle)
    before = answers(client, bundle, probe)
    for name, ids in before.items():
        assert item in ids, name  # the test can fail: the item is there to begin with
        assert len(ids) == K

    assert change(client, disable=[item]) == {"version": 1, "disabled": 1, "unknown": []}
    during = answers(client, bundle, probe)
    for name, ids in during.items():
        assert item not in ids, name
        assert len(ids) == K, name  # still k wide: the next item moves up
        assert [i for i in before[name] if i != item] == ids[: K - 1], name
    vector = np.asarray(bundle.user_vectors[1])
    assert during["vector"] == exact_top(bundle, vector, [item], K)  # exact, not just absent

    assert change(client, enable=[item]) == {"version": 2, "disabled": 0, "unknown": []}
    after = answers(client, bundle, probe)
    for name in before:
        assert after[name][:20] == before[name][:20], name  # ties far down may swap
        assert item in after[name], name


def test_list_unknown_ids_and_typing(client: httpx.Client, bundle: ServingBundle) -> None:
    assert client.get(PATH).json() == {"version": 0, "disabled": []}
    known = bundle.item_ids.ids[7].item()
    answer = change(client, disable=[str(known), 999999, "no-such-item"])
    # "7" is typed as the bundle types its ids; unknown ids are stored and reported
    assert answer == {"version": 1, "disabled": 3, "unknown": [999999, "no-such-item"]}
    assert client.get(PATH).json() == {
        "version": 1,
        "disabled": [known, 999999, "no-such-item"],
    }
    answer = change(client, enable=[known, 999999], disable=[])
    assert answer == {"version": 2, "disabled": 1, "unknown": [999999]}
    assert client.get(PATH).json() == {"version": 2, "disabled": ["no-such-item"]}
    assert change(client) == {"version": 2, "disabled": 1, "unknown": []}  # nothing to do


def test_bad_requests(client: httpx.Client) -> None:
    cases: list[tuple[Any, int]] = [
        ({"disable": list(range(15)), "enable": list(range(100, 106))}, 413),  # 21 > 20
        ({"disable": [1], "enable": [1]}, 422),
        ({"disable": ["1"], "enable": [1]}, 422),  # the same item once typed
        ({"disable": [True]}, 422),
        ({"disable": [1.5]}, 422),
        ({"disable": 1}, 422),
        ({"disable": [2**63]}, 422),
        ({"items": [1]}, 422),
    ]
    for body, status in cases:
        response = client.post(PATH, json=body)
        assert response.status_code == status, (body, response.text)
        assert set(response.json()["error"]) == {"code", "message"}
    assert client.get(PATH).json() == {"version": 0, "disabled": []}  # nothing stored


def test_admin_token_is_required(published_root: Path) -> None:
    with live_server(create_app(settings(published_root))) as url:
        for method in ("GET", "POST"):
            plain = httpx.request(method, url + PATH, json={"disable": [1]})
            assert plain.status_code == 401 and plain.json()["error"]["code"] == "unauthorized"
            wrong = httpx.request(
                method,
                url + PATH,
                json={"disable": [1]},
                headers={"Authorization": "Bearer not-the-admin-token-at-all"},
            )
            assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
        with RecallClient(url) as no_token:
            with pytest.raises(Unauthorized):
                no_token.availability()
            with pytest.raises(Forbidden):
                no_token.set_availability(disable=[1], admin_token="not-the-admin-token-at-all")
            assert no_token.availability(TOKEN) == (0, [])  # nothing was stored
    with live_server(create_app(settings(published_root, admin_token=None))) as url:
        off = httpx.post(url + PATH, json={"disable": [1]}, headers=ADMIN)
        assert off.status_code == 403


def test_a_new_bundle_keeps_the_disabled_items(
    published_root: Path, bundle: ServingBundle, tmp_path: Path
) -> None:
    """Keyed by external id: a bundle published after the change still honours it."""
    root = serving_root(tmp_path, published_root)
    item, probe = target_item(bundle)
    with (
        live_server(create_app(settings(root))) as url,
        httpx.Client(base_url=url, headers=ADMIN) as c,
    ):
        change(c, disable=[item])
        publish(copy_bundle(published_root, root, "20270101T000000Z-bbbbbb"))
        reloaded = c.post("/v1/admin/reload")
        assert reloaded.json() == {"bundle_id": "20270101T000000Z-bbbbbb", "changed": True}
        for name, ids in answers(c, bundle, probe).items():
            assert item not in ids and len(ids) == K, name


def test_every_server_on_the_store_applies_a_change_within_a_poll(
    published_root: Path, bundle: ServingBundle
) -> None:
    """Two apps on one SQLite file (two workers or replicas): a change made through one
    reaches the other's answers within its poll period (0.25 s) plus a read."""
    url = fresh_state_url()
    item, _ = target_item(bundle)
    query = {"user_id": "nobody-at-all", "fallback": "popular", "k": 5}
    with (
        live_server(create_app(settings(published_root, state_url=url))) as a,
        live_server(create_app(settings(published_root, state_url=url))) as b,
    ):
        assert item in ids_of(httpx.post(b + "/v1/recall", json=query).json())
        for action, present in (("disable", False), ("enable", True)):
            started = time.monotonic()
            assert httpx.post(a + PATH, json={action: [item]}, headers=ADMIN).status_code == 200
            while (item in ids_of(httpx.post(b + "/v1/recall", json=query).json())) != present:
                assert time.monotonic() - started < 1.0, f"{action} did not reach b in 1 s"
                time.sleep(0.01)
            print(f"{action} reached the other server in {time.monotonic() - started:.3f} s")


def test_store_down_keeps_the_last_known_set(
    published_root: Path, bundle: ServingBundle, tmp_path: Path
) -> None:
    """Redis killed: a change gets 503 state_unavailable, recall keeps the disabled items
    out (the last set read), the failed polls are counted; back up: changes work again."""
    item, probe = target_item(bundle)
    with redis_server(tmp_path / "redis", appendonly=True) as server:
        load_users(server.url(), bundle.path)
        app = create_app(settings(published_root, state_url=server.url()))
        with live_server(app) as url, httpx.Client(base_url=url, headers=ADMIN) as c:
            change(c, disable=[item])
            server.kill()
            refused = c.post(PATH, json={"enable": [item]})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "state_unavailable"
            assert c.get(PATH).status_code == 503
            time.sleep(0.6)  # a few polls fail
            # (recall by user id needs the users, who live in the store: 503 meanwhile)
            for name, ids in answers(c, bundle, probe, by_user=False).items():
                assert item not in ids, name
            failures = re.search(
                r'^recall_state_errors_total\{op="availability"\} (\S+)$',
                c.get("/metrics").text,
                re.MULTILINE,
            )
            assert failures is not None and float(failures.group(1)) >= 3  # 2 calls + polls
            server.start()
            with RecallClient(url, admin_token=TOKEN) as rc:
                assert rc.availability() == (1, [item])
                assert rc.set_availability(enable=[item]).version == 2
            for name, ids in answers(c, bundle, probe).items():
                assert item in ids, name


@pytest.mark.slow
def test_every_worker_of_a_replica_applies_a_change_written_to_the_store(
    published_root: Path, bundle: ServingBundle, tmp_path: Path
) -> None:
    """``recall serve --workers 2`` on the default SQLite store: a change written to the
    store by another process (no worker took a POST) reaches whichever worker answers,
    each by its own poll, within 1 s."""
    root = serving_root(tmp_path, published_root)
    item, _ = target_item(bundle)
    query = {"user_id": "nobody-at-all", "fallback": "popular", "k": 5}

    def change(**body: list[int]) -> None:
        async def write() -> None:
            store = open_store(sqlite_url(root / STATE_FILE))
            try:
                await store.set_availability(body.get("disable", []), body.get("enable", []))
            finally:
                await store.close()

        asyncio.run(write())

    def follows(wanted: bool) -> bool:  # a fresh connection: either worker answers
        answer = httpx.post(f"{url}/v1/recall", json=query, timeout=10).json()
        return (item in ids_of(answer)) == wanted

    with recall_serve(root, tmp_path, workers=2) as (url, _):
        assert all(follows(True) for _ in range(20))
        for action, wanted in (("disable", False), ("enable", True)):
            started = time.monotonic()
            change(**{action: [item]})
            # Every request sent 1 s or more after the write must follow it; the bound is
            # on when a request was sent, so a slow machine cannot fail a correct service.
            late: list[bool] = []
            while len(late) < 40:
                sent = time.monotonic() - started
                followed = follows(wanted)
                if sent >= 1.0:
                    late.append(followed)
            assert all(late), f"{action}: {late.count(False)} of 40 answers lag after 1 s"
