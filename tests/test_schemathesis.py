"""Property-based fuzzing of the app's own OpenAPI schema: no input may produce a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from service.app import create_app
from service.settings import Settings
from tests.live import fresh_state_url, live_server


@pytest.fixture(scope="module")
def api_schema(published_root: Path) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(
        Settings(
            root=published_root,
            reload_interval_s=0,
            max_body_bytes=64 << 10,
            admin_token="fuzzing-admin-token-0123",
            state_url=fresh_state_url(),  # fuzzed events stay out of the shared root
        )
    )
    with live_server(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.mark.slow
def test_no_input_produces_a_server_error(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 13
    paths = {operation.path for operation in operations}
    assert {"/v1/events", "/v1/users/vectors", "/v1/recall/batch", "/v1/items/{id}"} <= paths
    methods = {(operation.method.upper(), operation.path) for operation in operations}
    assert ("POST", "/v1/items/{item_id}/similar") in methods
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        call()
