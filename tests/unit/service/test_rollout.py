"""Rollout of model versions in-process: a newer version in the store is loaded, warmed up and
switched to; requests admitted before the switch finish on the old version, which is then
freed; a version that fails to load leaves the old one serving (counted, one log line); hiding
the newest version rolls back; a pinned version never changes."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.rollout import Rollout
from tests.artifacts import TINY_DOMAINS, offline_reference, write_tiny_artifact
from tests.unit.service.test_app import PNG, assert_matches, serving, settings_for

DOMAINS = list(TINY_DOMAINS)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    write_tiny_artifact(tmp_path, version="v1", seed=0, created_at="2026-01-01T00:00:00+00:00")
    return tmp_path


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_version(store: Path, version: str, seed: int, day: int) -> Path:
    """A newer version (created on January ``day``), written atomically as training does."""
    return write_tiny_artifact(
        store, version=version, seed=seed, created_at=f"2026-01-{day:02d}T00:00:00+00:00"
    )


async def predict(client: httpx.AsyncClient, domain: str, data: bytes = PNG) -> httpx.Response:
    return await client.post(
        f"/v1/domains/{domain}/predict",
        content=data,
        headers={"content-type": "image/png"},
        params={"top_k": 100},
    )


def assert_computed_by(
    response: httpx.Response, version: str, references: dict[str, Callable[..., torch.Tensor]]
) -> None:
    """The response names ``version`` (body and header) and its probabilities are those of
    that version's offline evaluation."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == version
    assert response.headers["x-model-version"] == version
    assert_matches(body["predictions"], references[version](body["domain"], PNG), body["domain"])


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def rollout_of(app: FastAPI) -> Rollout:
    rollout: Rollout = app.state.rollout
    return rollout


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def run(test: Callable[[], Any]) -> Any:
    return asyncio.run(test())


def test_a_newer_version_is_switched_to_and_the_old_one_is_freed(store: Path) -> None:
    app = create_app(settings_for(store, model_poll_s=0.05))
    state = app.state.service
    references = {"v1": offline_reference(store / "tiny" / "v1")}

    async def scenario() -> None:
        async with serving(app) as client:
            for domain in DOMAINS:
                assert_computed_by(await predict(client, domain), "v1", references)
            old_model = weakref.ref(state.current.model)
            old_networks = [weakref.ref(d.network) for d in state.current.model.domains.values()]
            references["v2"] = offline_reference(write_version(store, "v2", seed=1, day=2))
            await until(lambda: state.current.version == "v2")
            for domain in DOMAINS:
                assert_computed_by(await predict(client, domain), "v2", references)
            assert (await client.get("/v1/domains")).json()["version"] == "v2"
            await until(lambda: old_model() is None)  # drained, stopped and collected
            assert all(network() is None for network in old_networks)
            text = (await client.get("/metrics")).text
            assert metric(text, "mdp_model_versions_resident") == 1
            assert metric(text, "mdp_model_reloads_total") == 1
            assert metric(text, "mdp_model_info", version="v2") == 1
            assert metric(text, "mdp_model_info", version="v1") is None
            assert metric(text, "mdp_model_version_requests_total", version="v1") == 3
            assert metric(text, "mdp_model_version_requests_total", version="v2") >= 3

    run(scenario)


def test_requests_admitted_before_a_switch_finish_on_the_old_version(store: Path) -> None:
    app = create_app(settings_for(store))
    state = app.state.service
    references = {"v1": offline_reference(store / "tiny" / "v1")}

    async def scenario() -> None:
        async with serving(app) as client:
            release = asyncio.Event()

            async def slow_body() -> AsyncIterator[bytes]:
                await release.wait()
                yield PNG

            slow = [
                asyncio.create_task(
                    client.post(
                        f"/v1/domains/{domain}/predict",
                        content=slow_body(),
                        headers={"content-type": "image/png"},
                        params={"top_k": 100},
                    )
                )
                for domain in DOMAINS
            ]
            await until(lambda: state.current.users == len(DOMAINS))  # admitted, body pending
            references["v2"] = offline_reference(write_version(store, "v2", seed=1, day=2))
            assert await rollout_of(app).check()
            for domain in DOMAINS:  # new requests: the new version
                assert_computed_by(await predict(client, domain), "v2", references)
            release.set()
            for response in await asyncio.gather(*slow):  # admitted before: the old one
                assert_computed_by(response, "v1", references)

    run(scenario)


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(store))
    state = app.state.service
    references = {"v1": offline_reference(store / "tiny" / "v1")}

    async def serve() -> None:
        async with serving(app) as client:
            broken = write_version(store, "v2", seed=1, day=2)  # published while serving
            weights = broken / "weights.safetensors"
            weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
            rollout = rollout_of(app)
            with caplog.at_level(logging.INFO, logger="service"):
                assert not await rollout.check()
                assert not await rollout.check()  # refused once, not retried unchanged
            for domain in DOMAINS:
                assert_computed_by(await predict(client, domain), "v1", references)
            assert (await client.get("/readyz")).status_code == 200
            text = (await client.get("/metrics")).text
            assert metric(text, "mdp_model_reload_failures_total") == 1
            assert metric(text, "mdp_model_reloads_total") == 0
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and errors[0].exc_info is None
            assert "refused model version v2" in errors[0].getMessage()
            assert "sha256" in errors[0].getMessage()
            # a good newer version after the broken one is switched to
            references["v3"] = offline_reference(write_version(store, "v3", seed=2, day=3))
            assert await rollout.check()
            assert_computed_by(await predict(client, "digits"), "v3", references)
            assert state.current.version == "v3"

    run(serve)


def test_hiding_the_newest_version_rolls_back(store: Path) -> None:
    app = create_app(settings_for(store))
    state = app.state.service
    references = {"v1": offline_reference(store / "tiny" / "v1")}

    async def scenario() -> None:
        async with serving(app) as client:
            rollout = rollout_of(app)
            v2 = write_version(store, "v2", seed=1, day=2)
            references["v2"] = offline_reference(v2)
            assert await rollout.check()
            assert_computed_by(await predict(client, "shapes"), "v2", references)
            v2.rename(v2.with_name(".v2-withdrawn"))  # roll back: v1 is the newest again
            assert await rollout.check()
            assert state.current.version == "v1"
            for domain in DOMAINS:
                assert_computed_by(await predict(client, domain), "v1", references)

    run(scenario)


def test_a_pinned_version_is_never_switched(store: Path) -> None:
    app = create_app(settings_for(store, model_version="v1", model_poll_s=0.05))
    state = app.state.service

    async def scenario() -> None:
        async with serving(app):
            assert not rollout_of(app).watching
            write_version(store, "v2", seed=1, day=2)
            await asyncio.sleep(0.5)
            assert state.current.version == "v1"

    run(scenario)


def test_the_old_version_is_freed_after_several_switches(store: Path) -> None:
    """Only the serving version stays resident, however many switches."""
    app = create_app(settings_for(store))
    state = app.state.service

    async def scenario() -> None:
        async with serving(app):
            rollout = rollout_of(app)
            models = [weakref.ref(state.current.model)]
            for number in range(2, 5):
                write_version(store, f"v{number}", seed=number, day=number)
                assert await rollout.check()
                models.append(weakref.ref(state.current.model))
            await until(lambda: sum(model() is not None for model in models) == 1)
            gc.collect()
            assert models[-1]() is state.current.model

    run(scenario)
