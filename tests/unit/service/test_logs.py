"""Request ids and structured logs: an id accepted or generated, returned on every response and
in every log line logged while serving its request; one JSON access line per request, successes
sampled, errors always."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from torch import Tensor

from service.app import create_app
from service.engine import InferenceEngine
from service.logs import ACCESS_LOGGER, JsonFormatter, TextFormatter
from tests.apps import ready_client
from tests.unit.service.test_app import PNG, predict, settings_for


class Capture(logging.Handler):
    """Formats each record when it is logged (in the request's context), as the server does."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture(JsonFormatter())
    logger = logging.getLogger("service")  # the access logger's records propagate to it
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_request_ids_are_accepted_validated_or_generated(store: Path) -> None:
    with ready_client(create_app(settings_for(store))) as client:
        for given in ("abc-123", "trace:1/2@x.y=z+", "a" * 128):
            response = client.post(
                "/v1/domains/shapes/predict",
                content=PNG,
                headers={"content-type": "image/png", "x-request-id": given},
            )
            assert response.status_code == 200 and response.headers["x-request-id"] == given
        generated = set()
        for bad in ("a" * 129, "has space", 'quote"', "semi;colon", "", None):
            headers = {"content-type": "image/png"} | ({} if bad is None else {"x-request-id": bad})
            response = client.post("/v1/domains/shapes/predict", content=PNG, headers=headers)
            rid = response.headers["x-request-id"]
            assert rid != bad and len(rid) == 16 and int(rid, 16) >= 0
            generated.add(rid)
        assert len(generated) == 6
        for response in (
            client.get("/livez"),
            client.get("/readyz"),
            client.get("/metrics"),
            client.get("/nowhere"),
            predict(client, "shapes", b"text", "text/plain"),
        ):
            assert len(response.headers["x-request-id"]) == 16


def test_every_line_of_a_request_carries_its_id(
    store: Path, captured: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*args: Any, **kwargs: Any) -> list[Tensor]:
        raise RuntimeError("boom")

    with ready_client(create_app(settings_for(store))) as client:
        ok = client.post(
            "/v1/domains/digits/predict?top_k=2",
            content=PNG,
            headers={"content-type": "image/png", "x-request-id": "req-ok"},
        )
        assert ok.status_code == 200
        monkeypatch.setattr(InferenceEngine, "answer", explode)
        failed = client.post(
            "/v1/domains/digits/predict",
            content=PNG,
            headers={"content-type": "image/png", "x-request-id": "req-500"},
        )
        assert failed.status_code == 500 and failed.headers["x-request-id"] == "req-500"
    entries = [json.loads(line) for line in captured.lines]  # every line is one JSON object
    assert all("\n" not in line for line in captured.lines)
    ok_lines = [e for e in entries if e.get("request_id") == "req-ok"]
    (access,) = ok_lines
    assert access["logger"] == ACCESS_LOGGER and access["level"] == "info"
    assert {k: access[k] for k in ("method", "path", "domain", "status")} == {
        "method": "POST",
        "path": "/v1/domains/digits/predict",
        "domain": "digits",
        "status": 200,
    }
    assert access["latency_ms"] > 0 and access["time"].endswith("Z")
    failed_lines = [e for e in entries if e.get("request_id") == "req-500"]
    assert [(e["logger"], e["level"]) for e in failed_lines] == [
        ("service", "error"),
        (ACCESS_LOGGER, "error"),
    ]
    assert "RuntimeError: boom" in failed_lines[0]["exception"]
    assert failed_lines[1]["status"] == 500
    assert not [e for e in entries if "request_id" not in e and e["logger"] == ACCESS_LOGGER]


def test_successes_are_sampled_errors_always_logged(store: Path, captured: Capture) -> None:
    with ready_client(create_app(settings_for(store, access_log_sample=0.0))) as client:
        for _ in range(5):
            assert predict(client, "shapes", PNG).status_code == 200
        assert predict(client, "nowhere", PNG).status_code == 404
        assert predict(client, "shapes", b"x", "text/plain").status_code == 415
        client.get("/livez")
        client.get("/metrics")
    statuses = [json.loads(line)["status"] for line in captured.lines if "status" in line]
    assert statuses == [404, 415]


def test_text_logs_quote_what_clients_send() -> None:
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "%r", ("/a\nb",), None)
    record.fields = {"path": '/a\nfake line "x"', "status": 200}
    line = TextFormatter().format(record)
    assert "\n" not in line and 'path="/a\\nfake line \\"x\\""' in line and "status=200" in line
