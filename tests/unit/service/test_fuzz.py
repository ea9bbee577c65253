"""Schemathesis fuzzes every operation of the app's own OpenAPI schema with valid and invalid
data: no input may cause a 5xx. The app runs its real lifespan on a tiny artifact, so
predictions really run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from service.app import create_app
from service.settings import ServiceSettings
from tests.artifacts import write_tiny_artifact


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    store = tmp_path_factory.mktemp("model_store")
    write_tiny_artifact(store)
    app = create_app(
        ServiceSettings(model_store=store, model_name="tiny", max_wait_ms=1, torch_threads=1)
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
    asgi.shutdown_lifespans()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_causes_a_server_error(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    @given(case=api_schema.as_strategy(mode))
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    fuzz()
