"""Graceful degradation: the policy's hysteresis on its own; the engine moving to a cheaper
level under a synthetic slow compute and back when it ends; shedding (429 with Retry-After)
once even the cheapest level cannot keep up."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from torch import Tensor, nn

from service.app import create_app
from service.degrade import DegradePolicy
from service.engine import DomainModel, InferenceEngine
from service.errors import Overloaded
from service.metrics import ServiceMetrics
from tests.artifacts import NESTED_BUDGETS, write_tiny_nested_artifact
from tests.unit.service.test_app import PNG, GatedForward, assert_error, serving, settings_for

SHAPE = (3, 4, 4)


def test_the_policy_moves_down_above_high_up_below_low_and_holds_between() -> None:
    policy = DegradePolicy(3, deadline_s=1.0, high=0.5, low=0.1, hold_s=1.0, enabled=True)
    assert policy.observe(0.6, now=0.0) == 1  # above high: one level down
    assert policy.observe(0.9, now=0.5) == 1  # held
    assert policy.observe(0.9, now=1.0) == 2
    assert policy.observe(0.9, now=5.0) == 2  # the cheapest already
    assert policy.observe(0.3, now=10.0) == 2  # in the band: stays
    assert policy.observe(0.05, now=11.0) == 1  # below low: one level up
    assert policy.observe(0.05, now=11.5) == 1  # held
    assert policy.observe(0.05, now=12.0) == 0
    off = DegradePolicy(3, deadline_s=1.0)
    assert off.observe(10.0, now=100.0) == 0
    with pytest.raises(ValueError, match="low < high"):
        DegradePolicy(3, deadline_s=1.0, high=0.2, low=0.3)


class Slow(nn.Module):
    """Class 0 logits = per-image sums; sleeps ``delay_s`` per batch while ``slow`` is set."""

    def __init__(self, slow: threading.Event, delay_s: float) -> None:
        super().__init__()
        self.slow, self.delay_s = slow, delay_s

    def forward(self, x: Tensor) -> Tensor:
        if self.slow.is_set():
            time.sleep(self.delay_s)
        return torch.stack([x.sum(dim=(1, 2, 3)), torch.zeros(x.shape[0])], dim=1)


def test_the_engine_degrades_under_slow_compute_and_recovers_after_it() -> None:
    slow = threading.Event()
    # the largest level is slow while ``slow`` is set; the cheaper ones never are
    levels = (Slow(slow, 0.05), Slow(threading.Event(), 0), Slow(threading.Event(), 0))

    async def scenario() -> None:
        metrics = ServiceMetrics()
        metrics.set_model("m", "v", "1", "none", ["a"])
        policy = DegradePolicy(3, deadline_s=1.0, high=0.1, low=0.02, hold_s=0.0, enabled=True)
        engine = InferenceEngine(
            {"a": DomainModel(levels[0], SHAPE, torch.float32, levels[1:])},
            metrics,
            max_batch_size=1,
            max_wait_ms=0,
            queue_size=64,
            torch_threads=1,
            policy=policy,
            budgets=NESTED_BUDGETS,
        )
        await engine.start()
        deadline = asyncio.get_running_loop().time() + 10
        image = torch.ones(SHAPE)
        try:
            slow.set()
            burst = await asyncio.gather(
                *(engine.answer("a", [image], deadline) for _ in range(30))
            )
            served = [answer.level for (answer,) in burst]
            assert served[0] == 0 and max(served) >= 1, served
            assert policy.steps_down >= 1
            slow.clear()
            calm = []
            for _ in range(6):  # one request at a time: no queue delay
                (answer,) = await engine.answer("a", [image], deadline)
                calm.append(answer.level)
            assert calm[-1] == 0 and policy.level == 0 and policy.steps_up >= 1, calm
            text = metrics.exposition
            mix = {
                s.labels["level"]: s.value
                for family in text.collect()
                if family.name == "mdp_level_images"
                for s in family.samples
                if s.name == "mdp_level_images_total"
            }
            assert sum(mix.values()) == 36 and mix["1"] >= 1 and set(mix) == {"1", "0.6", "0.35"}
        finally:
            slow.clear()
            await engine.stop(1)

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_without_degradation_every_batch_runs_at_its_own_level() -> None:
    slow = threading.Event()
    levels = (Slow(slow, 0.02), Slow(threading.Event(), 0))

    async def scenario() -> None:
        metrics = ServiceMetrics()
        policy = DegradePolicy(2, deadline_s=1.0, high=0.01, low=0.005, hold_s=0.0)
        engine = InferenceEngine(
            {"a": DomainModel(levels[0], SHAPE, torch.float32, levels[1:])},
            metrics,
            max_batch_size=1,
            max_wait_ms=0,
            queue_size=64,
            torch_threads=1,
            policy=policy,
        )
        await engine.start()
        deadline = asyncio.get_running_loop().time() + 10
        try:
            slow.set()
            burst = await asyncio.gather(
                *(engine.answer("a", [torch.ones(SHAPE)], deadline) for _ in range(10))
            )
            assert {answer.level for (answer,) in burst} == {0}
        finally:
            slow.clear()
            await engine.stop(1)

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_the_cheapest_level_saturated_sheds_with_429_and_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_nested_artifact(tmp_path)
    settings = settings_for(
        tmp_path,
        model_name="nested",
        degrade=True,
        degrade_hold_ms=0,
        queue_size=2,
        max_batch_images=1,
        retry_after_s=3,
    )
    app = create_app(settings)
    forward = GatedForward(monkeypatch)  # every level's forward pass blocks: none keeps up

    async def scenario() -> list[httpx.Response]:
        async with serving(app) as client:
            forward.install()
            headers = {"content-type": "image/png", "x-budget": f"{NESTED_BUDGETS[-1]:g}"}
            busy = asyncio.create_task(
                client.post("/v1/domains/shapes/predict", content=PNG, headers=headers)
            )
            await asyncio.to_thread(forward.entered.wait, 5)
            burst = [
                asyncio.create_task(
                    client.post("/v1/domains/shapes/predict", content=PNG, headers=headers)
                )
                for _ in range(6)
            ]
            while sum(task.done() for task in burst) < 4:
                await asyncio.sleep(0.01)
            forward.gate.set()
            return [await busy, *(await asyncio.gather(*burst))]

    try:
        responses = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    finally:
        forward.gate.set()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 200, 429, 429, 429, 429], statuses
    for response in responses:
        if response.status_code == 429:
            assert_error(response, 429, "overloaded")
            assert response.headers["retry-after"] == "3"
        else:
            assert response.json()["budget"] == NESTED_BUDGETS[-1]


def test_a_degraded_answer_names_the_level_that_computed_it_on_v1_and_v2(tmp_path: Path) -> None:
    """With the policy one level down (and held there), a request for the largest level is
    answered by the next one, and both APIs say so; a cheaper level asked for stays."""
    write_tiny_nested_artifact(tmp_path)
    settings = settings_for(tmp_path, model_name="nested", degrade=True, degrade_hold_ms=600_000)
    app = create_app(settings)
    image = base64.b64encode(PNG).decode()
    tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [image]}

    async def scenario() -> list[httpx.Response]:
        async with serving(app) as client:
            policy = app.state.service.engine.policy
            # a queue delay of a whole deadline: one level down, held for the hold time
            assert policy.observe(settings.request_timeout_s, asyncio.get_running_loop().time())
            png = {"content-type": "image/png"}
            cheapest = {"budget": NESTED_BUDGETS[-1]}
            return [
                await client.post("/v1/domains/shapes/predict", content=PNG, headers=png),
                await client.post("/v2/models/shapes/infer", json={"inputs": [tensor]}),
                await client.post(
                    "/v2/models/shapes/infer", json={"inputs": [tensor], "parameters": cheapest}
                ),
            ]

    v1, v2, v2_cheapest = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    for response in (v1, v2, v2_cheapest):
        assert response.status_code == 200, response.text
    assert v1.json()["budget"] == v2.json()["parameters"]["budget"] == NESTED_BUDGETS[1]
    assert v1.headers["x-budget"] == v2.headers["x-budget"] == f"{NESTED_BUDGETS[1]:g}"
    assert v2_cheapest.json()["parameters"]["budget"] == NESTED_BUDGETS[-1]
    assert v2_cheapest.headers["x-budget"] == f"{NESTED_BUDGETS[-1]:g}"


def test_the_engine_refuses_a_full_queue_at_the_cheapest_level() -> None:
    gate = threading.Event()

    class Blocked(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            assert gate.wait(10)
            return torch.zeros(x.shape[0], 2)

    async def scenario() -> None:
        policy = DegradePolicy(2, deadline_s=1.0, hold_s=0.0, enabled=True)
        network = (Blocked(), Blocked())
        engine = InferenceEngine(
            {"a": DomainModel(network[0], SHAPE, torch.float32, network[1:])},
            ServiceMetrics(),
            max_batch_size=1,
            max_wait_ms=0,
            queue_size=1,
            torch_threads=1,
            policy=policy,
        )
        gate.set()
        await engine.start()
        gate.clear()
        deadline = asyncio.get_running_loop().time() + 10
        first = asyncio.create_task(engine.answer("a", [torch.ones(SHAPE)], deadline, 1))
        await asyncio.sleep(0.1)  # taken by the worker: computing
        second = asyncio.create_task(engine.answer("a", [torch.ones(SHAPE)], deadline, 1))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await engine.answer("a", [torch.ones(SHAPE)], deadline, 1)
        gate.set()
        await asyncio.gather(first, second)
        await engine.stop(1)

    try:
        asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    finally:
        gate.set()
