"""The micro-batching engine on its own, with small recording networks instead of an artifact."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from service.engine import DomainModel, InferenceEngine
from service.errors import DeadlineExceeded, NotReady, Overloaded, WouldMissDeadline
from service.metrics import ServiceMetrics

SHAPE = (3, 4, 4)


class Recorder(nn.Module):
    """Logits = per-image sums in class 0; records the size of every batch it runs. An optional
    gate blocks the forward pass (on the compute thread) until it is set."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.gate = gate
        self.fail = fail

    def forward(self, x: Tensor) -> Tensor:
        self.batches.append(x.shape[0])
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise ValueError("broken network")
        return torch.stack([x.sum(dim=(1, 2, 3)), torch.zeros(x.shape[0])], dim=1)


def make_engine(
    network: nn.Module,
    *,
    max_batch_size: int = 4,
    max_wait_ms: float = 1000,
    queue_size: int = 64,
    shed_late: bool = True,
) -> tuple[InferenceEngine, ServiceMetrics]:
    metrics = ServiceMetrics()
    metrics.set_model("m", "v", "0.5", "union", ["a"])
    engine = InferenceEngine(
        {"a": DomainModel(network, SHAPE)},
        metrics,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        torch_threads=1,
        shed_late=shed_late,
    )
    return engine, metrics


async def start_engine(
    network: Recorder, **settings: Any
) -> tuple[InferenceEngine, ServiceMetrics]:
    """``make_engine``, started: the warm-up passes the recorder's gate, then the gate closes
    and the recorder forgets the warm-up."""
    engine, metrics = make_engine(network, **settings)
    if network.gate is not None:
        network.gate.set()
    await engine.start()
    if network.gate is not None:
        network.gate.clear()
    network.entered.clear()
    network.batches.clear()
    return engine, metrics


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=20))


def image(value: float) -> Tensor:
    return torch.full(SHAPE, value)


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def test_full_batches_are_formed_without_waiting_and_results_keep_their_order() -> None:
    network = Recorder()

    async def scenario() -> None:
        engine, metrics = await start_engine(network, max_batch_size=4, max_wait_ms=5000)
        values = [float(v) for v in range(8)]
        results = await asyncio.gather(
            *(engine.predict("a", [image(v / 100)], deadline()) for v in values)
        )
        await engine.stop(1)
        assert network.batches == [4, 4]  # full batches start at once, not after 5 s
        for v, (probabilities,) in zip(values, results, strict=True):
            expected = torch.softmax(torch.tensor([v / 100 * 48, 0.0]), 0)
            assert torch.allclose(probabilities, expected, atol=1e-6)
        assert metrics.registry.get_sample_value("mdp_batch_size_sum", {"domain": "a"}) == 8

    run(scenario)


def test_a_lone_request_is_computed_at_once() -> None:
    network = Recorder()

    async def scenario() -> None:
        engine, _ = await start_engine(network, max_batch_size=32, max_wait_ms=5000)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await engine.predict("a", [image(1)], deadline())
        assert loop.time() - started < 2  # nothing else was on its way: no 5 s wait
        assert network.batches == [1]
        await engine.stop(1)

    run(scenario)


def test_a_batch_waits_for_announced_images_at_most_max_wait() -> None:
    network = Recorder()

    async def scenario() -> None:
        engine, _ = await start_engine(network, max_batch_size=32, max_wait_ms=5000)
        with engine.arriving("a", 1):  # one image still being preprocessed
            first = asyncio.create_task(engine.predict("a", [image(1)], deadline()))
            await asyncio.sleep(0.05)
            assert not first.done() and network.batches == []  # waits for the announced image
        second = engine.predict("a", [image(2)], deadline())
        assert len(await second) == 1 and len(await first) == 1
        assert network.batches == [2]  # one batch, without waiting the full 5 s

        engine_short, _ = await start_engine(network, max_batch_size=32, max_wait_ms=30)
        loop = asyncio.get_running_loop()
        with engine_short.arriving("a", 1):  # announced, but never queued within max_wait
            started = loop.time()
            await engine_short.predict("a", [image(1)], deadline())
            assert 0.025 <= loop.time() - started < 2
        assert network.batches == [1]
        await engine.stop(1)
        await engine_short.stop(1)

    run(scenario)


def test_images_that_queue_during_a_forward_pass_form_the_next_batch() -> None:
    gate = threading.Event()
    network = Recorder(gate)

    async def scenario() -> None:
        engine, _ = await start_engine(network, max_batch_size=8, max_wait_ms=0)
        busy = asyncio.create_task(engine.predict("a", [image(1)], deadline()))
        await asyncio.to_thread(network.entered.wait, 5)
        waiting = [asyncio.create_task(engine.predict("a", [image(2)], deadline())) for _ in "abc"]
        await asyncio.sleep(0.05)
        gate.set()
        await busy
        assert [len(r) for r in await asyncio.gather(*waiting)] == [1, 1, 1]
        assert network.batches == [1, 3]
        await engine.stop(1)

    run(scenario)


def test_full_queue_is_refused_immediately_and_others_are_answered() -> None:
    gate = threading.Event()
    network = Recorder(gate)

    async def scenario() -> None:
        engine, _ = await start_engine(network, max_batch_size=1, max_wait_ms=0, queue_size=2)
        first = asyncio.create_task(engine.predict("a", [image(1)], deadline()))
        await asyncio.to_thread(network.entered.wait, 5)  # computing, queue empty again
        queued = [asyncio.create_task(engine.predict("a", [image(2)], deadline())) for _ in "ab"]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await engine.predict("a", [image(3)], deadline())
        with pytest.raises(Overloaded):  # room for one more image is not room for two
            await engine.predict("a", [image(3), image(3)], deadline())
        gate.set()
        assert len(await first) == 1
        assert [len(r) for r in await asyncio.gather(*queued)] == [1, 1]
        await engine.stop(1)

    run(scenario)


def test_deadline_and_requests_that_gave_up_are_not_computed() -> None:
    gate = threading.Event()
    network = Recorder(gate)

    async def scenario() -> None:
        engine, _ = await start_engine(network, max_batch_size=8, max_wait_ms=0)
        busy = asyncio.create_task(engine.predict("a", [image(1)], deadline()))
        await asyncio.to_thread(network.entered.wait, 5)
        with pytest.raises(DeadlineExceeded):
            await engine.predict("a", [image(2)], deadline(0.05))
        gate.set()
        await busy
        await engine.predict("a", [image(3)], deadline())
        assert network.batches == [1, 1]  # the expired image was skipped
        await engine.stop(1)

    run(scenario)


def test_stop_drains_queued_work_then_refuses_new_work() -> None:
    gate = threading.Event()
    network = Recorder(gate)

    async def scenario() -> None:
        engine, metrics = await start_engine(network, max_batch_size=2, max_wait_ms=0)
        tasks = [asyncio.create_task(engine.predict("a", [image(i)], deadline())) for i in range(5)]
        await asyncio.to_thread(network.entered.wait, 5)
        stopping = asyncio.create_task(engine.stop(5))
        await asyncio.sleep(0.05)
        with pytest.raises(NotReady):
            await engine.predict("a", [image(9)], deadline())
        gate.set()
        await stopping
        assert [len(r) for r in await asyncio.gather(*tasks)] == [1] * 5
        assert metrics.registry.get_sample_value("mdp_queue_depth", {"domain": "a"}) == 0

    run(scenario)


def test_stop_fails_what_the_grace_period_leaves() -> None:
    gate = threading.Event()
    network = Recorder(gate)

    async def scenario() -> None:
        engine, _ = await start_engine(network, max_batch_size=1, max_wait_ms=0)
        stuck = asyncio.create_task(engine.predict("a", [image(1)], deadline()))
        waiting = asyncio.create_task(engine.predict("a", [image(2)], deadline()))
        await asyncio.to_thread(network.entered.wait, 5)
        await engine.stop(0.05)
        gate.set()
        for task in (stuck, waiting):
            with pytest.raises(NotReady):
                await task

    run(scenario)


def test_a_failing_network_fails_its_batch_and_the_worker_survives() -> None:
    network = Recorder()

    async def scenario() -> None:
        engine, _ = await start_engine(network, max_batch_size=4, max_wait_ms=0)
        network.fail = True
        with pytest.raises(RuntimeError, match="inference failed") as info:
            await engine.predict("a", [image(1)], deadline())
        assert isinstance(info.value.__cause__, ValueError)
        network.fail = False
        assert len(await engine.predict("a", [image(1)], deadline())) == 1
        await engine.stop(1)

    run(scenario)


def test_requests_before_start_are_refused() -> None:
    async def scenario() -> None:
        engine, _ = make_engine(Recorder())
        with pytest.raises(NotReady):
            await engine.predict("a", [image(1)], deadline())
        await engine.stop(1)

    run(scenario)


class Slow(nn.Module):
    """Takes ``seconds`` per forward pass (on the compute thread)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: Tensor) -> Tensor:
        time.sleep(self.seconds)
        return torch.zeros(x.shape[0], 2)


@pytest.mark.parametrize("shed_late", [True, False], ids=["shed-late", "queue-until-full"])
def test_a_request_the_queue_would_push_past_its_deadline_is_refused_at_once(
    shed_late: bool,
) -> None:
    async def scenario() -> None:
        engine, _ = make_engine(Slow(0.1), max_batch_size=1, max_wait_ms=0, shed_late=shed_late)
        await engine.start()
        await engine.predict("a", [image(1)], deadline())  # the first speed: 0.1 s per image
        ahead = [asyncio.create_task(engine.predict("a", [image(2)], deadline())) for _ in "abcd"]
        await asyncio.sleep(0)  # queued: at least 3 images ahead, 0.3 s or more of work
        started = time.perf_counter()
        if shed_late:
            with pytest.raises(WouldMissDeadline, match="images are queued ahead"):
                await engine.predict("a", [image(3)], deadline(0.25))
            assert time.perf_counter() - started < 0.05  # at once, not at the deadline
        else:
            with pytest.raises(DeadlineExceeded):
                await engine.predict("a", [image(3)], deadline(0.25))
        await asyncio.gather(*ahead)  # the accepted requests are all answered
        await engine.predict("a", [image(4)], deadline(0.5))  # nothing ahead: within reach
        await engine.stop(1)

    run(scenario)
