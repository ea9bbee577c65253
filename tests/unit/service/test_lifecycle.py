"""The app's life: the model loads in the background (probes answer meanwhile), a model that
cannot be loaded or is not the pinned one is reported in one line, and a domain whose worker
died fails liveness."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from multidomain.artifact import sha256_file
from service import app as app_module
from service.app import create_app
from service.engine import InferenceEngine
from tests.apps import ready_client
from tests.artifacts import write_tiny_artifact
from tests.unit.service.test_app import PNG, assert_error, predict, settings_for


@pytest.fixture
def store(tmp_path: Path) -> Path:
    write_tiny_artifact(tmp_path)
    return tmp_path


def test_probes_answer_while_the_model_loads(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    timer = threading.Timer(20, gate.set)  # never hang, even if loading blocked start-up
    load = app_module.load_served_model

    def gated_load(*args: Any) -> Any:
        assert gate.wait(30)
        return load(*args)

    monkeypatch.setattr(app_module, "load_served_model", gated_load)
    app = create_app(settings_for(store))
    timer.start()
    try:
        with TestClient(app) as client:  # the lifespan has started: the server would listen
            assert client.get("/livez").json() == {"status": "alive"}
            assert "loading" in assert_error(client.get("/readyz"), 503, "not_ready")
            response = predict(client, "shapes", PNG)
            assert_error(response, 503, "not_ready")
            assert response.headers["retry-after"] == "1"
            assert_error(client.get("/v1/domains"), 503, "not_ready")
            assert timer.is_alive(), "start-up waited for the model"
            gate.set()
            for _ in range(500):
                if client.get("/readyz").status_code == 200:
                    break
                threading.Event().wait(0.02)
            assert predict(client, "shapes", PNG).status_code == 200
    finally:
        gate.set()
        timer.cancel()


def test_a_model_that_cannot_be_loaded_is_reported_in_one_line(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = store / "tiny" / "v1" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    app = create_app(settings_for(store))
    failures: list[str] = []
    app.state.service.on_load_failure.append(failures.append)
    with caplog.at_level(logging.INFO, logger="service"), TestClient(app) as client:
        for _ in range(500):
            if failures:
                break
            threading.Event().wait(0.02)
        message = assert_error(client.get("/readyz"), 503, "not_ready")
        assert client.get("/livez").status_code == 200
    assert len(failures) == 1 and "sha256" in failures[0] and "sha256" in message
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert errors[0].getMessage().startswith("cannot load the model: ")


def test_a_pinned_digest_refuses_any_other_artifact(store: Path) -> None:
    weights = store / "tiny" / "v1" / "weights.safetensors"
    digest = sha256_file(weights)
    with ready_client(create_app(settings_for(store, model_digest=digest))) as client:
        assert predict(client, "shapes", PNG).status_code == 200
    other = write_tiny_artifact(store, version="v2", seed=1, created_at="2026-02-01T00:00:00Z")
    app = create_app(settings_for(store, model_digest=digest))  # latest is now v2
    failures: list[str] = []
    app.state.service.on_load_failure.append(failures.append)
    with TestClient(app) as client:
        for _ in range(500):
            if failures:
                break
            threading.Event().wait(0.02)
        assert_error(client.get("/readyz"), 503, "not_ready")
    assert len(failures) == 1
    assert str(other) in failures[0] and "MDP_MODEL_DIGEST pins" in failures[0]


def test_a_dead_worker_fails_liveness_and_its_domain(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(self: InferenceEngine, queue: Any, batch: Any) -> None:
        raise RuntimeError("bug in the batch loop")

    with ready_client(create_app(settings_for(store))) as client:
        assert client.get("/livez").status_code == 200
        monkeypatch.setattr(InferenceEngine, "_run_batch", broken)
        with caplog.at_level(logging.ERROR, logger="service"):
            assert_error(predict(client, "colours", PNG), 503, "not_ready")
        monkeypatch.undo()
        message = assert_error(client.get("/livez"), 503, "not_alive")
        assert "'colours'" in message and "bug in the batch loop" in message
        assert_error(client.get("/readyz"), 503, "not_ready")
        assert "cannot be served" in assert_error(predict(client, "colours", PNG), 503, "not_ready")
        assert predict(client, "shapes", PNG).status_code == 200  # the other domains serve on
    assert any("worker of domain 'colours' stopped" in r.getMessage() for r in caplog.records)


def test_a_stopped_app_answers_503_and_a_restarted_one_loads_anew(store: Path) -> None:
    app = create_app(settings_for(store))
    with ready_client(app) as client:
        assert predict(client, "shapes", PNG).status_code == 200
    stopped = TestClient(app)  # no lifespan: as after shutdown
    assert_error(predict(stopped, "shapes", PNG), 503, "not_ready")
    assert "shutting down" in assert_error(stopped.get("/readyz"), 503, "not_ready")
    with ready_client(app) as client:  # its lifespan again: a new engine and threads
        assert predict(client, "shapes", PNG).status_code == 200
