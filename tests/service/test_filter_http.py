"""Filtered recall, item attributes and POST similar over a real uvicorn server.

The bundle is the synthetic data's, written without torch (tests/index_data.py), with item
attributes of our own
(``genres`` from the synthetic data, plus ``year`` numeric with gaps, ``language``
categorical with gaps, ``title`` unique per item), published, and served with a flat
(exact) index; every answer is checked against a numpy oracle: the exact inner-product
top-k among the items the filter matches, as read back from the attributes themselves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from recall.client import InvalidInput, Item, NotFound, Query, RecallClient
from recall.client import RecallResult as ClientResult
from recall.index.build import build_index
from recall.index.filters import compile_filter
from recall.index.publish import publish
from recall.index.search import STRATEGIES
from recall.service import recaller
from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from tests.index_data import FAST_FLAT, write_dataset_bundle
from tests.live import TOKEN, live_server, settings

Served = tuple[httpx.Client, ServingBundle]
Attrs = dict[str, Any]

LANGUAGES = ("en", "fr", "de", "ja", "")  # "" = missing


def _attributes(dataset: Dataset) -> dict[str, np.ndarray]:
    """The data's own attributes (genres, and title, year, language in the synthetic
    generator's order), with year, language and title replaced by known values."""
    rows = np.arange(dataset.n_items)
    year = (1950 + rows % 70).astype(np.float64)
    year[rows % 17 == 0] = math.nan  # missing
    return {
        **dataset.item_attributes,
        "year": year,
        "language": np.array([LANGUAGES[r % len(LANGUAGES)] for r in rows.tolist()]),
        "title": np.array([f"Item {i}" for i in dataset.item_ids.tolist()]),
    }


def _serve(
    root: Path, dataset: Dataset, config: TrainConfig, search_threads: int = 4
) -> Iterator[Served]:
    bundle_path = write_dataset_bundle(root, dataset, config, "20260102T000000Z-ffffff")
    build_index(bundle_path, FAST_FLAT)
    publish(bundle_path)
    bundle = ServingBundle.load(bundle_path)
    app = create_app(settings(root, search_threads=search_threads))
    with live_server(app) as url, httpx.Client(base_url=url) as client:
        yield client, bundle


@pytest.fixture(scope="module", params=[4, 0], ids=["search-pool", "on-the-loop"])
def served(
    synthetic: Dataset,
    small_config: TrainConfig,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Served]:
    """A server on a bundle with item attributes (genres, year, language, title), its
    searches in a pool of 4 threads or on its event loop (``search_threads=0``)."""
    data = replace(synthetic, item_attributes=_attributes(synthetic))
    yield from _serve(tmp_path_factory.mktemp("attrs"), data, small_config, request.param)


@pytest.fixture(scope="module")
def bare(
    synthetic: Dataset,
    small_config: TrainConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """A server on a bundle without item attributes."""
    data = replace(synthetic, item_attributes={})
    yield from _serve(tmp_path_factory.mktemp("bare"), data, small_config)


def _all(bundle: ServingBundle) -> list[Attrs]:
    assert bundle.attributes is not None
    return bundle.attributes.rows_as_dicts(np.arange(len(bundle.item_ids)))


def _mask(bundle: ServingBundle, keep: Callable[[Attrs], bool]) -> np.ndarray:
    return np.array([keep(a) for a in _all(bundle)], dtype=bool)


def _oracle(
    bundle: ServingBundle, q: np.ndarray, k: int, allowed: np.ndarray, excluded: Any = ()
) -> tuple[list[Any], np.ndarray]:
    """Exact top-k item ids and scores among allowed, non-excluded rows (ties: lower row)."""
    scores = np.asarray(bundle.item_vectors) @ np.asarray(q, dtype=np.float32)
    ok = allowed.copy()
    ok[np.asarray(excluded, dtype=np.int64)] = False
    rows = np.flatnonzero(ok)
    order = np.lexsort((rows, -scores[rows]))[:k]
    return bundle.item_ids.ids[rows[order]].tolist(), scores[rows[order]]


def _check(body: dict[str, Any], expected: tuple[list[Any], np.ndarray]) -> None:
    ids, scores = expected
    assert [i["item_id"] for i in body["items"]] == ids
    np.testing.assert_allclose([i["score"] for i in body["items"]], scores, rtol=1e-5, atol=1e-6)


def _genres(bundle: ServingBundle) -> list[str]:
    """Two genres of the data (the most frequent first)."""
    counts: dict[str, int] = {}
    for a in _all(bundle):
        for g in a.get("genres", []):
            counts[g] = counts.get(g, 0) + 1
    return sorted(counts, key=lambda g: -counts[g])[:2]


def _the_issue_filter(bundle: ServingBundle) -> tuple[dict[str, Any], np.ndarray]:
    """The issue's example shape: multi any, numeric range, categorical none."""
    genres = _genres(bundle)
    spec = {
        "genres": {"any": genres},
        "year": {"gte": 1960, "lt": 2000},
        "language": {"none": ["fr"]},
    }

    def keep(a: Attrs) -> bool:
        return (
            bool(set(a.get("genres", [])) & set(genres))
            and "year" in a
            and 1960 <= a["year"] < 2000
            and a.get("language") != "fr"
        )

    allowed = _mask(bundle, keep)
    assert 20 < allowed.sum() < len(allowed) // 2  # a real filter
    return spec, allowed


def test_filtered_recall_by_user_is_the_exact_top_k_among_matches(served: Served) -> None:
    client, bundle = served
    spec, allowed = _the_issue_filter(bundle)
    row = 5
    user_id = bundle.user_ids.ids[row].item()
    q = np.asarray(bundle.user_vectors[row])
    body = client.post("/v1/recall", json={"user_id": user_id, "k": 15, "filter": spec}).json()
    assert body["source"] == "user"
    _check(body, _oracle(bundle, q, 15, allowed, bundle.seen(row)))
    # with exclude on top of exclude_seen, and with exclude_seen off
    drop = [i["item_id"] for i in body["items"][:3]]
    drop_rows = bundle.item_ids.rows(drop)
    body = client.post(
        "/v1/recall", json={"user_id": user_id, "k": 15, "filter": spec, "exclude": drop}
    ).json()
    _check(body, _oracle(bundle, q, 15, allowed, np.concatenate([bundle.seen(row), drop_rows])))
    body = client.post(
        "/v1/recall",
        json={"user_id": user_id, "k": 15, "filter": spec, "exclude_seen": False},
    ).json()
    _check(body, _oracle(bundle, q, 15, allowed))


def test_filtered_recall_by_history_and_vector(served: Served) -> None:
    client, bundle = served
    spec, allowed = _the_issue_filter(bundle)
    history = bundle.item_ids.ids[[3, 30, 60]].tolist()
    rows = bundle.item_ids.rows(history)
    q = bundle.tower.encode([rows])[0]
    body = client.post("/v1/recall", json={"history": history, "k": 12, "filter": spec}).json()
    assert body["source"] == "history"
    _check(body, _oracle(bundle, q, 12, allowed, rows))
    vector = np.linspace(-1, 1, bundle.dim).astype(np.float32)
    body = client.post(
        "/v1/recall", json={"vector": vector.tolist(), "k": 12, "filter": spec}
    ).json()
    _check(body, _oracle(bundle, vector, 12, allowed))


def test_filters_matching_nothing_one_fewer_than_k_and_all(served: Served) -> None:
    client, bundle = served
    vector = np.linspace(1, -1, bundle.dim).astype(np.float32)
    everything = np.ones(len(bundle.item_ids), dtype=bool)
    one_id = bundle.item_ids.ids[7].item()
    late = _mask(bundle, lambda a: a.get("year", 0) >= 2018)
    assert 1 < late.sum() < 10
    cases: list[tuple[dict[str, Any], np.ndarray]] = [
        ({"year": {"gt": 5000}}, ~everything),
        ({"genres": {"any": ["no such genre"]}}, ~everything),
        ({"title": {"any": [f"Item {one_id}"]}}, bundle.item_ids.ids == one_id),
        ({"year": {"gte": 2018}}, late),
        ({"language": {"none": ["xx"]}}, everything),
    ]
    for spec, allowed in cases:
        response = client.post(
            "/v1/recall", json={"vector": vector.tolist(), "k": 10, "filter": spec}
        )
        assert response.status_code == 200, (spec, response.text)
        body = response.json()
        assert len(body["items"]) == min(10, int(allowed.sum())), spec
        _check(body, _oracle(bundle, vector, 10, allowed))
    unfiltered = client.post("/v1/recall", json={"vector": vector.tolist(), "k": 10}).json()
    assert unfiltered["items"] == body["items"]  # the filter matching all changes nothing


def test_missing_values_match_none_only(served: Served) -> None:
    client, bundle = served
    vector = np.linspace(-1, 1, bundle.dim).astype(np.float32)
    assert _mask(bundle, lambda a: "year" not in a).sum() >= 10
    cases = [
        (
            {"year": {"none": list(range(1950, 1990))}},
            lambda a: not 1950 <= a.get("year", 0) < 1990,
        ),
        ({"year": {"gte": 1990}}, lambda a: a.get("year", 0) >= 1990),
        ({"year": {"any": [1999.0, 2000]}}, lambda a: a.get("year") in (1999, 2000)),
        ({"language": {"none": ["en", "fr", "de"]}}, lambda a: a.get("language") in (None, "ja")),
    ]
    for spec, keep in cases:
        allowed = _mask(bundle, keep)
        body = client.post(
            "/v1/recall", json={"vector": vector.tolist(), "k": 200, "filter": spec}
        ).json()
        assert len(body["items"]) == min(200, int(allowed.sum())) < 200, spec
        _check(body, _oracle(bundle, vector, 200, allowed))


def test_batch_applies_each_entry_filter_and_reports_bad_ones_inline(served: Served) -> None:
    client, bundle = served
    spec, allowed = _the_issue_filter(bundle)
    user_id = bundle.user_ids.ids[9].item()
    vector = np.linspace(-1, 1, bundle.dim).astype(np.float32)
    response = client.post(
        "/v1/recall/batch",
        json={
            "requests": [
                {"user_id": user_id, "k": 8, "filter": spec},
                {"vector": vector.tolist(), "k": 8, "filter": spec, "with_attributes": True},
                {"vector": vector.tolist(), "k": 8},
                {"vector": vector.tolist(), "filter": {"colour": {"any": ["red"]}}},
                {"vector": vector.tolist(), "filter": {"year": {"between": [1, 2]}}},
                {"user_id": "nobody", "fallback": "popular", "k": 5, "filter": spec},
            ]
        },
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 200, 422, 422, 200]
    _check(results[0], _oracle(bundle, bundle.user_vectors[9], 8, allowed, bundle.seen(9)))
    _check(results[1], _oracle(bundle, vector, 8, allowed))
    _check(results[2], _oracle(bundle, vector, 8, np.ones(len(allowed), dtype=bool)))
    assert all("attributes" in i for i in results[1]["items"])
    assert not any("attributes" in i for i in results[0]["items"])
    assert "colour" in results[3]["error"]["message"]
    assert "between" in results[4]["error"]["message"]
    popular = [r for r in bundle.popular_rows.tolist() if allowed[r]][:5]
    assert results[5]["source"] == "popular"
    assert [i["item_id"] for i in results[5]["items"]] == bundle.item_ids.ids[popular].tolist()


def test_post_similar_with_filter_exclude_and_attributes(served: Served) -> None:
    client, bundle = served
    spec, allowed = _the_issue_filter(bundle)
    row = int(np.flatnonzero(allowed)[0])  # the item matches its own filter: still dropped
    item_id = bundle.item_ids.ids[row].item()
    q = np.array(bundle.item_vectors[row])
    q[-1] = 0.0
    response = client.post(f"/v1/items/{item_id}/similar", json={"k": 10, "filter": spec})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "item"
    _check(body, _oracle(bundle, q, 10, allowed, [row]))
    drop = [i["item_id"] for i in body["items"][:2]]
    body = client.post(
        f"/v1/items/{item_id}/similar",
        json={"k": 10, "filter": spec, "exclude": drop, "with_attributes": True},
    ).json()
    _check(body, _oracle(bundle, q, 10, allowed, [row, *bundle.item_ids.rows(drop).tolist()]))
    everything = _all(bundle)
    for item in body["items"]:
        assert item["attributes"] == everything[bundle.item_ids.row(item["item_id"])]
    # no body fields: the GET form's answer
    get = client.get(f"/v1/items/{item_id}/similar", params={"k": 7}).json()
    assert client.post(f"/v1/items/{item_id}/similar", json={"k": 7}).json() == get
    missing = client.post("/v1/items/no-such-item/similar", json={"k": 3})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"colour": {"any": ["red"]}}, "colour"),  # unknown attribute
        ({"year": {"any": ["1990"]}}, "year"),  # strings for a numeric attribute
        ({"genres": {"gte": 3}}, "genres"),  # a range on a multi attribute
        ({"language": {"any": [3]}}, "language"),  # numbers for a categorical one
        ({"year": {}}, "empty"),  # empty condition
        ({}, "empty"),  # empty filter
        ({"year": {"between": [1, 2]}}, "between"),  # unknown op
        ({"year": {"any": []}}, "year"),  # empty list
        ({"year": {"gte": True}}, "number"),  # a bool is not a number
        ({"year": 1990}, "year"),  # not a condition object
    ],
)
def test_bad_filters_are_422_naming_the_problem(
    served: Served, spec: dict[str, Any], needle: str
) -> None:
    client, bundle = served
    for path, body in (
        ("/v1/recall", {"user_id": bundle.user_ids.ids[0].item(), "filter": spec}),
        (f"/v1/items/{bundle.item_ids.ids[0].item()}/similar", {"filter": spec}),
    ):
        response = client.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_input"
        assert needle in error["message"], error["message"]


def test_with_attributes_and_get_item(served: Served) -> None:
    client, bundle = served
    everything = _all(bundle)
    body = client.post(
        "/v1/recall", json={"user_id": bundle.user_ids.ids[2].item(), "with_attributes": True}
    ).json()
    assert len(body["items"]) == 100
    for item in body["items"]:
        assert item["attributes"] == everything[bundle.item_ids.row(item["item_id"])]
    plain = client.post("/v1/recall", json={"user_id": bundle.user_ids.ids[2].item()}).json()
    assert [i["item_id"] for i in plain["items"]] == [i["item_id"] for i in body["items"]]
    assert not any("attributes" in i for i in plain["items"])
    row = 17  # year missing (row % 17 == 0): left out
    item_id = bundle.item_ids.ids[row].item()
    got = client.get(f"/v1/items/{item_id}")
    assert got.status_code == 200 and got.headers["x-bundle-id"] == bundle.id
    assert got.json() == {"bundle_id": bundle.id, "id": item_id, "attributes": everything[row]}
    assert "year" not in everything[row] and everything[row]["title"] == f"Item {item_id}"
    assert isinstance(everything[row]["genres"], list)
    missing = client.get("/v1/items/999999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_a_bundle_without_attributes(bare: Served) -> None:
    client, bundle = bare
    assert bundle.attributes is None
    user_id = bundle.user_ids.ids[0].item()
    response = client.post("/v1/recall", json={"user_id": user_id, "filter": {"x": {"any": ["y"]}}})
    assert response.status_code == 422
    assert "no item attributes" in response.json()["error"]["message"]
    body = client.post("/v1/recall", json={"user_id": user_id, "with_attributes": True}).json()
    assert len(body["items"]) == 100 and not any("attributes" in i for i in body["items"])
    item_id = bundle.item_ids.ids[0].item()
    got = client.get(f"/v1/items/{item_id}").json()
    assert got == {"bundle_id": bundle.id, "id": item_id, "attributes": {}}
    assert client.get("/v1/model").json()["item_attributes"] is None


def test_the_python_client_filters_and_reads_attributes(served: Served) -> None:
    http, bundle = served
    spec, allowed = _the_issue_filter(bundle)
    everything = _all(bundle)
    with RecallClient(client=http) as client:
        result = client.recall(user_id=bundle.user_ids.ids[4].item(), k=6, filter=spec)
        expected = _oracle(bundle, bundle.user_vectors[4], 6, allowed, bundle.seen(4))
        assert result.item_ids == expected[0]
        assert all(i.attributes is None for i in result.items)
        batch = client.recall_batch(
            [Query(vector=np.ones(bundle.dim), k=4, filter=spec, with_attributes=True)]
        )
        (answer,) = batch.results
        assert isinstance(answer, ClientResult)
        assert answer.item_ids == _oracle(bundle, np.ones(bundle.dim), 4, allowed)[0]
        for item in answer.items:
            assert item.attributes == everything[bundle.item_ids.row(item.item_id)]
        item_id = bundle.item_ids.ids[0].item()
        similar = client.similar(item_id, 5, filter=spec, with_attributes=True)
        q = np.array(bundle.item_vectors[0])
        q[-1] = 0.0
        assert similar.item_ids == _oracle(bundle, q, 5, allowed, [0])[0]
        assert all(i.attributes is not None for i in similar.items)
        assert client.item(item_id) == Item(bundle.id, item_id, everything[0])
        assert client.model().item_attributes == [
            {"name": "genres", "kind": "multi"},
            {"name": "title", "kind": "categorical"},
            {"name": "year", "kind": "numeric"},
            {"name": "language", "kind": "categorical"},
        ]
        with pytest.raises(InvalidInput, match="colour"):
            client.recall(vector=np.ones(bundle.dim), filter={"colour": {"any": ["red"]}})
        with pytest.raises(NotFound):
            client.item("no such item")


def test_filters_combine_with_disabled_items(served: Served) -> None:
    """A filter, exclude_seen, exclude and disabled items together: the exact top-k among
    the matching, enabled, non-excluded items (by user, vector, batch, similar, popular)."""
    client, bundle = served
    spec, allowed = _the_issue_filter(bundle)
    row = 11
    user_id = bundle.user_ids.ids[row].item()
    q = np.asarray(bundle.user_vectors[row])
    first = client.post("/v1/recall", json={"user_id": user_id, "k": 10, "filter": spec}).json()
    disabled = [i["item_id"] for i in first["items"][::2]]  # every other of the answer
    popular = [r for r in bundle.popular_rows.tolist() if allowed[r]]
    disabled.append(bundle.item_ids.ids[popular[0]].item())  # the most popular match
    admin = {"Authorization": f"Bearer {TOKEN}"}
    path = "/v1/admin/items/availability"
    changed = client.post(path, json={"disable": disabled}, headers=admin)
    assert changed.status_code == 200, changed.text
    try:
        enabled = allowed.copy()
        enabled[bundle.item_ids.rows(disabled)] = False
        drop = [first["items"][1]["item_id"]]
        body = client.post(
            "/v1/recall", json={"user_id": user_id, "k": 10, "filter": spec, "exclude": drop}
        ).json()
        dropped = np.concatenate([bundle.seen(row), bundle.item_ids.rows(drop)])
        _check(body, _oracle(bundle, q, 10, enabled, dropped))
        assert not {i["item_id"] for i in body["items"]} & set(disabled)
        vector = np.linspace(-1, 1, bundle.dim).astype(np.float32)
        batch = client.post(
            "/v1/recall/batch",
            json={
                "requests": [
                    {"vector": vector.tolist(), "k": 10, "filter": spec},
                    {"user_id": "nobody", "fallback": "popular", "k": 3, "filter": spec},
                ]
            },
        ).json()["results"]
        _check(batch[0], _oracle(bundle, vector, 10, enabled))
        expected_popular = [r for r in popular if enabled[r]][:3]
        assert [i["item_id"] for i in batch[1]["items"]] == bundle.item_ids.ids[
            expected_popular
        ].tolist()
        item_row = int(np.flatnonzero(enabled)[0])
        iq = np.array(bundle.item_vectors[item_row])
        iq[-1] = 0.0
        similar = client.post(
            f"/v1/items/{bundle.item_ids.ids[item_row].item()}/similar",
            json={"k": 10, "filter": spec},
        ).json()
        _check(similar, _oracle(bundle, iq, 10, enabled, [item_row]))
    finally:
        client.post(path, json={"enable": disabled}, headers=admin)
    again = client.post("/v1/recall", json={"user_id": user_id, "k": 10, "filter": spec}).json()
    assert again["items"] == first["items"]


def _searches(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    found = re.findall(r'^recall_searches_total\{strategy="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {strategy: float(value) for strategy, value in found}


def test_search_strategies_are_counted(served: Served) -> None:
    client, bundle = served
    vector = np.linspace(-1, 1, bundle.dim).tolist()
    before = _searches(client)
    assert set(before) == set(STRATEGIES)
    one = f"Item {bundle.item_ids.ids[3].item()}"
    for spec in (None, {"title": {"any": [one]}}, {"year": {"gt": 5000}}):
        body: dict[str, Any] = {"vector": vector, "k": 5}
        if spec is not None:
            body["filter"] = spec
        assert client.post("/v1/recall", json=body).status_code == 200
    client.post("/v1/recall", json={"user_id": "nobody", "fallback": "popular"})  # no search
    after = _searches(client)
    grown = {s: after[s] - before[s] for s in after if after[s] != before[s]}
    assert grown == {"index": 1.0, "scan": 1.0, "empty": 1.0}


def test_model_shows_the_filtered_measurements(served: Served) -> None:
    client, bundle = served
    index = client.get("/v1/model").json()["index"]
    assert bundle.manifest.index is not None
    assert index["filtered"] == bundle.manifest.index["filtered"]
    assert len(index["filtered"]) >= 3  # 300 items: 0.1% would be under one item
    for row in index["filtered"]:
        assert 0 < row["selectivity"] <= 1 and 0 <= row["recall_at_10"] <= 1
        assert row["p50_ms"] >= 0 and row["strategy"]


def test_each_distinct_filter_is_compiled_once(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spy around the real compile_filter: the entries of a batch sharing a filter (in
    any key order) and later requests with it use one compiled mask, and the answers are
    still each entry's exact top-k."""
    client, bundle = served
    calls: list[object] = []

    def counting(spec: Any, attributes: Any) -> np.ndarray:
        calls.append(spec)
        return compile_filter(spec, attributes)

    monkeypatch.setattr(recaller, "compile_filter", counting)
    issue, allowed = _the_issue_filter(bundle)
    unseen = {"title": {"none": ["not a title: this filter is new to the server"]}}
    spec = {**issue, **unseen}  # the same items, a filter no earlier test sent
    shuffled = dict(reversed(list(spec.items())))
    users = [bundle.user_ids.ids[r].item() for r in range(6)]
    requests: list[dict[str, Any]] = [
        {"user_id": u, "k": 5, "filter": spec if i % 2 else shuffled} for i, u in enumerate(users)
    ]
    early_spec = {"year": {"lt": 1970}, **unseen}
    requests.append({"vector": [0.1] * bundle.dim, "k": 5, "filter": early_spec})
    results = client.post("/v1/recall/batch", json={"requests": requests}).json()["results"]
    assert len(calls) == 2
    for row, result in enumerate(results[:6]):
        _check(result, _oracle(bundle, bundle.user_vectors[row], 5, allowed, bundle.seen(row)))
    early = _mask(bundle, lambda a: a.get("year", 9999) < 1970)
    _check(results[6], _oracle(bundle, np.full(bundle.dim, 0.1, np.float32), 5, early))
    vector = np.linspace(-1, 1, bundle.dim).astype(np.float32)
    body = client.post("/v1/recall", json={"vector": vector.tolist(), "filter": shuffled}).json()
    _check(body, _oracle(bundle, vector, 100, allowed))
    assert len(calls) == 2  # a later request: the bundle's cached mask
