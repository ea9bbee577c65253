"""Per-domain dynamic micro-batching.

Every domain has a bounded queue and one worker task. When images are queued, the worker waits
for more only while other images of its domain are still on their way (announced with
``arriving`` while they are preprocessed), and at most until ``max_batch_size`` images are queued
or ``max_wait_ms`` have passed since the oldest one arrived; a lone request is computed at once.
Then it waits for the compute slot and takes up to ``max_batch_size`` images, including those
that queued while another batch computed. Forward passes run one at a time on a single compute
thread, each using ``torch_threads`` intra-op threads, so the event loop never blocks and the
cores are not oversubscribed by concurrent domains.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from multidomain.serving import class_probabilities
from service.errors import DeadlineExceeded, NotReady, Overloaded
from service.metrics import ServiceMetrics

__all__ = ["DomainModel", "InferenceEngine"]


@dataclass(frozen=True)
class DomainModel:
    """A domain's compact subnetwork (eval mode), the shape and dtype of one input image."""

    network: nn.Module
    input_shape: tuple[int, int, int]
    input_dtype: torch.dtype = torch.float32


@dataclass
class _Item:
    image: Tensor
    future: asyncio.Future[Tensor]
    enqueued: float
    deadline: float


@dataclass
class _DomainQueue:
    name: str
    model: DomainModel
    items: deque[_Item] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # items to take, or stopping
    filled: asyncio.Event = field(default_factory=asyncio.Event)  # stop waiting for more
    arriving: int = 0  # images announced and not yet queued
    worker: asyncio.Task[None] | None = None


def _forward(network: nn.Module, inputs: Tensor) -> Tensor:
    return class_probabilities(network, inputs)


class InferenceEngine:
    """Create inside the running event loop; ``start`` warms up and starts the workers,
    ``predict`` queues images, ``stop`` drains and ends the workers."""

    def __init__(
        self,
        models: Mapping[str, DomainModel],
        metrics: ServiceMetrics,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        torch_threads: int,
    ) -> None:
        self._queues = {name: _DomainQueue(name, model) for name, model in models.items()}
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._queue_size = queue_size
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="mdp-compute",
            initializer=torch.set_num_threads,
            initargs=(torch_threads,),
        )
        self._compute_slot = asyncio.Lock()
        self._accepting = False
        self._stopping = False

    async def start(self) -> None:
        """Run a batch of 1 and of ``max_batch_size`` through every domain, then start serving."""
        loop = asyncio.get_running_loop()
        for queue in self._queues.values():
            for size in sorted({1, self._max_batch_size}):
                inputs = torch.zeros(size, *queue.model.input_shape, dtype=queue.model.input_dtype)
                await loop.run_in_executor(self._executor, _forward, queue.model.network, inputs)
        for queue in self._queues.values():
            queue.worker = asyncio.create_task(self._serve(queue), name=f"mdp-worker-{queue.name}")
        self._accepting = True

    @contextlib.contextmanager
    def arriving(self, domain: str, count: int) -> Iterator[None]:
        """Announce ``count`` images of ``domain`` that are on their way (being preprocessed);
        queue them with ``predict`` right after the block. A batch waits for announced images
        only."""
        queue = self._queues[domain]
        queue.arriving += count
        try:
            yield
        finally:
            queue.arriving -= count
            if queue.arriving == 0:
                queue.filled.set()

    async def predict(self, domain: str, images: Sequence[Tensor], deadline: float) -> list[Tensor]:
        """Class probabilities of each image (a known domain's preprocessed [3, S, S] tensors).

        ``deadline`` is on the event loop's clock. Raises ``Overloaded`` at once when the
        domain's queue has no room for all images, ``DeadlineExceeded`` when the deadline passes
        first and ``NotReady`` when the engine is not serving.
        """
        if not self._accepting:
            raise NotReady("the service is not accepting requests (starting or shutting down)")
        queue = self._queues[domain]
        if len(queue.items) + len(images) > self._queue_size:
            raise Overloaded(
                f"the queue of domain {domain!r} is full ({self._queue_size} images); retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures: list[asyncio.Future[Tensor]] = []
        for image in images:
            future: asyncio.Future[Tensor] = loop.create_future()
            queue.items.append(_Item(image, future, now, deadline))
            futures.append(future)
        self._metrics.queue_depth.labels(domain=domain).set(len(queue.items))
        queue.arrived.set()
        if len(queue.items) >= self._max_batch_size or queue.arriving == 0:
            queue.filled.set()
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), timeout=deadline - now)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"the request did not finish within its deadline (domain {domain!r})"
            ) from None
        finally:
            for future in futures:  # a failed or timed-out request leaves nothing to compute
                future.cancel()

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, let the workers finish what is queued (at most ``grace_s``), then
        fail whatever is left with ``NotReady``."""
        self._accepting = False
        self._stopping = True
        workers = [q.worker for q in self._queues.values() if q.worker is not None]
        for queue in self._queues.values():
            queue.arrived.set()
            queue.filled.set()
        if workers:
            _, pending = await asyncio.wait(workers, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for queue in self._queues.values():
            while queue.items:
                item = queue.items.popleft()
                if not item.future.done():
                    item.future.set_exception(NotReady("the service shut down before answering"))
            self._metrics.queue_depth.labels(domain=queue.name).set(0)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, queue: _DomainQueue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not queue.items:
                if self._stopping:
                    return
                queue.arrived.clear()
                await queue.arrived.wait()
                continue
            wait = queue.items[0].enqueued + self._max_wait_s - loop.time()
            if (
                wait > 0
                and queue.arriving > 0
                and len(queue.items) < self._max_batch_size
                and not self._stopping
            ):
                queue.filled.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(queue.filled.wait(), timeout=wait)
            async with self._compute_slot:
                count = min(len(queue.items), self._max_batch_size)
                batch = [queue.items.popleft() for _ in range(count)]
                self._metrics.queue_depth.labels(domain=queue.name).set(len(queue.items))
                if batch:
                    await self._run_batch(queue, batch)

    async def _run_batch(self, queue: _DomainQueue, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        live: list[_Item] = []
        for item in batch:
            if item.future.done():  # the caller gave up already
                continue
            if item.deadline <= now:
                item.future.set_exception(
                    DeadlineExceeded("the request's deadline passed while it waited in the queue")
                )
                continue
            self._metrics.queue_wait.labels(domain=queue.name).observe(now - item.enqueued)
            live.append(item)
        if not live:
            return
        inputs = torch.stack([item.image for item in live])
        started = time.perf_counter()
        try:
            probabilities = await loop.run_in_executor(
                self._executor, _forward, queue.model.network, inputs
            )
        except asyncio.CancelledError:  # stop() ran out of grace while this batch computed
            for item in live:
                if not item.future.done():
                    item.future.set_exception(NotReady("the service shut down before answering"))
            raise
        except Exception as exc:
            for item in live:
                if not item.future.done():
                    failure = RuntimeError(f"inference failed for domain {queue.name!r}")
                    failure.__cause__ = exc
                    item.future.set_exception(failure)
            return
        self._metrics.batch_compute.labels(domain=queue.name).observe(time.perf_counter() - started)
        self._metrics.batch_size.labels(domain=queue.name).observe(len(live))
        for item, row in zip(live, probabilities, strict=True):
            if not item.future.done():
                item.future.set_result(row)
