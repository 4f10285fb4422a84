"""Property-based fuzzing of the app's own OpenAPI schema: no input may produce a 500, and
every answer is one the document describes (status code, content type, body schema,
headers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from recall.index.current import CURRENT
from recall.index.experiment import Arm, Experiment
from recall.index.roots import LocalRoot
from recall.service.app import create_app
from recall.service.settings import Settings
from tests.index.test_verify import copy_bundle
from tests.live import fresh_state_url, live_server

MAX_K = 500
ARM_ID = "20260102T000000Z-cccccc"


@pytest.fixture(scope="module")
def url(published_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The published bundle with an experiment running: half the users in an arm."""
    root = tmp_path_factory.mktemp("fuzzed-root")
    control = copy_bundle(published_root, root)
    copy_bundle(published_root, root, ARM_ID)
    (root / CURRENT).write_text(f"{control.name}\n")
    arm = Arm(name="canary", bundle_id=ARM_ID, share=0.5)
    LocalRoot(root).start_experiment(
        Experiment(id="exp-fuzz", salt="s", started_at=0.0, arms=(arm,))
    )
    app = create_app(
        Settings(
            root=root,
            reload_interval_s=0,
            max_body_bytes=64 << 10,
            max_k=MAX_K,
            admin_token="fuzzing-admin-token-0123",
            state_url=fresh_state_url(),  # fuzzed events stay out of the shared root
        )
    )
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_the_document_describes_what_the_service_answers(url: str) -> None:
    """JSON 200 answers carry their models' schemas (not ``type: string``); every ``k``
    has the bounds the service enforces (1..RECALL_MAX_K); a body that is not UTF-8 is a
    400 bad_request, documented on every route with a JSON body; a 405 on a path served by
    two routes allows both methods."""
    document = httpx.get(f"{url}/openapi.json").json()
    paths = document["paths"]

    def ok_schema(path: str, method: str) -> dict[str, object]:
        schema: dict[str, object] = paths[path][method]["responses"]["200"]["content"][
            "application/json"
        ]["schema"]
        return schema

    assert ok_schema("/v1/recall", "post") == {"$ref": "#/components/schemas/RecallResponse"}
    assert ok_schema("/healthz", "get")["type"] == "object"
    for path, operations in paths.items():
        for method, operation in operations.items():
            content = operation["responses"].get("200", {}).get("content", {})
            assert content.get("application/json", {}).get("schema") != {"type": "string"}, (
                method,
                path,
            )
            if "requestBody" in operation:
                assert "400" in operation["responses"], (method, path)
    schemas = document["components"]["schemas"]
    for model in ("RecallRequest", "SimilarRequest"):
        bounds = schemas[model]["properties"]["k"]
        assert (bounds["minimum"], bounds["maximum"]) == (1, MAX_K)
    (k,) = [
        p for p in paths["/v1/items/{item_id}/similar"]["get"]["parameters"] if p["name"] == "k"
    ]
    assert k["schema"]["maximum"] == MAX_K
    too_wide = httpx.post(f"{url}/v1/recall", json={"user_id": 1, "k": MAX_K + 1})
    assert too_wide.status_code == 422
    unreadable = httpx.post(
        f"{url}/v1/recall", content=b"\xff\xfe{", headers={"Content-Type": "application/json"}
    )
    assert unreadable.status_code == 400
    assert unreadable.json()["error"]["code"] == "bad_request"
    wrong = httpx.delete(f"{url}/v1/items/1/similar")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.mark.slow
def test_every_answer_is_documented_and_none_is_a_server_error(
    api_schema: schemathesis.BaseSchema,
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 13
    paths = {operation.path for operation in operations}
    assert {"/v1/events", "/v1/users/vectors", "/v1/recall/batch", "/v1/items/{id}"} <= paths
    assert "/v1/experiment" in paths
    methods = {(operation.method.upper(), operation.path) for operation in operations}
    assert ("POST", "/v1/items/{item_id}/similar") in methods
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        call()
