"""Schemathesis fuzzes every operation of the app's own OpenAPI schema with valid and invalid
data: no input may cause a 5xx, with API keys off and on (then with the key, so requests get
past authentication). The app runs its real lifespan on a tiny artifact, so predictions really
run; the schema is read once the model is loaded, so it lists the served domains."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from service.app import create_app
from service.settings import ServiceSettings
from tests.apps import READY_TIMEOUT_S
from tests.artifacts import write_tiny_artifact

KEY = "fuzzing-key"


@pytest.fixture(params=["open", "api_key"])
def api(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[schemathesis.BaseSchema, dict[str, str]]]:
    # one app per test: schemathesis' pytest plugin ends every ASGI lifespan after each test
    store = tmp_path / "model_store"
    write_tiny_artifact(store)
    keys = [hashlib.sha256(KEY.encode()).hexdigest()] if request.param == "api_key" else []
    headers = {"X-API-Key": KEY} if keys else {}
    app = create_app(
        ServiceSettings(
            model_store=store, model_name="tiny", max_wait_ms=1, torch_threads=1, api_keys=keys
        )
    )
    schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)  # starts the lifespan
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not app.state.service.ready:
        assert time.monotonic() < deadline, "the app did not become ready"
        time.sleep(0.05)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)
    assert "enum" in str(schema.raw_schema), "the schema does not list the domains"
    yield schema, headers
    asgi.shutdown_lifespans()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_causes_a_server_error(
    api: tuple[schemathesis.BaseSchema, dict[str, str]], mode: GenerationMode
) -> None:
    schema, headers = api

    @given(case=schema.as_strategy(mode))
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=[not_a_server_error])

    fuzz()
    if mode == GenerationMode.POSITIVE:  # past authentication, predictions were answered
        registry = schema.app.state.service.metrics.registry
        answered = sum(
            sample.value
            for family in registry.collect()
            if family.name == "mdp_requests"
            for sample in family.samples
            if sample.name == "mdp_requests_total" and sample.labels["status"] == "200"
        )
        assert answered > 0
