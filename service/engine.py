"""Per-domain dynamic micro-batching.

Every domain has a bounded queue and one worker task. When images are queued, the worker waits
for more only while other images of its domain are still on their way (announced with
``arriving`` while they are preprocessed), and at most until ``max_batch_size`` images are queued
or ``max_wait_ms`` have passed since the oldest one arrived; a lone request is computed at once.
Then it waits for the compute slot and takes up to ``max_batch_size`` images, including those
that queued while another batch computed. Forward passes run one at a time on a single compute
thread, each using ``torch_threads`` intra-op threads, so the event loop never blocks and the
cores are not oversubscribed by concurrent domains.

Queue depth counts live images only: an image whose request has gone (deadline, client
disconnect) leaves the count at once and is dropped unseen when the worker reaches it. A worker
that dies of a bug fails its queued requests and is reported by ``failed_domains`` (``/livez``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from multidomain.serving import class_probabilities
from service.errors import DeadlineExceeded, NotReady, Overloaded
from service.metrics import DomainMetrics, ServiceMetrics

__all__ = ["DomainModel", "InferenceEngine"]

logger = logging.getLogger("service")


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
    live: bool = True  # in the queue and its request still waiting


@dataclass
class _DomainQueue:
    name: str
    model: DomainModel
    series: DomainMetrics
    items: deque[_Item] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # items to take, or stopping
    filled: asyncio.Event = field(default_factory=asyncio.Event)  # stop waiting for more
    arriving: int = 0  # images announced and not yet queued
    live: int = 0  # queued images whose request still waits
    worker: asyncio.Task[None] | None = None
    failure: str | None = None  # why the worker died


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
        self._queues = {
            name: _DomainQueue(name, model, metrics.domain(name)) for name, model in models.items()
        }
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
            queue.worker.add_done_callback(functools.partial(self._worker_done, queue))
        self._accepting = True

    def failed_domains(self) -> dict[str, str]:
        """Domains whose worker died, and why (empty while every worker runs)."""
        return {q.name: q.failure for q in self._queues.values() if q.failure is not None}

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
        if queue.failure is not None:
            raise NotReady(f"domain {domain!r} cannot be served: {queue.failure}")
        if queue.live + len(images) > self._queue_size:
            raise Overloaded(
                f"the queue of domain {domain!r} is full ({self._queue_size} images); retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(image, loop.create_future(), now, deadline) for image in images]
        queue.items.extend(items)
        queue.live += len(items)
        queue.series.queue_depth.set(queue.live)
        queue.arrived.set()
        if queue.live >= self._max_batch_size or queue.arriving == 0:
            queue.filled.set()
        try:
            async with asyncio.timeout_at(deadline):
                if len(items) == 1:
                    return [await items[0].future]
                return list(await asyncio.gather(*(item.future for item in items)))
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request did not finish within its deadline (domain {domain!r})"
            ) from None
        finally:
            # a failed, timed-out or abandoned request leaves nothing to compute or count
            gone = 0
            for item in items:
                if not item.future.done():
                    item.future.cancel()
                if item.live:
                    item.live = False
                    gone += 1
            if gone:
                queue.live -= gone
                queue.series.queue_depth.set(queue.live)

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
            self._fail_queued(queue, NotReady("the service shut down before answering"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _fail_queued(self, queue: _DomainQueue, error: Exception) -> None:
        while queue.items:
            item = queue.items.popleft()
            item.live = False
            if not item.future.done():
                item.future.set_exception(error)
        queue.live = 0
        queue.series.queue_depth.set(0)

    def _worker_done(self, queue: _DomainQueue, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return  # stopped by ``stop``
        error = task.exception()
        queue.failure = f"its worker stopped ({type(error).__name__}: {error})"
        logger.error("the worker of domain %r stopped", queue.name, exc_info=error)
        failure = NotReady(f"domain {queue.name!r} cannot be served: {queue.failure}")
        self._fail_queued(queue, failure)

    async def _serve(self, queue: _DomainQueue) -> None:
        loop = asyncio.get_running_loop()
        items = queue.items
        while True:
            while items and not items[0].live:  # requests that have gone
                items.popleft()
            if not items:
                if self._stopping:
                    return
                queue.arrived.clear()
                await queue.arrived.wait()
                continue
            wait = items[0].enqueued + self._max_wait_s - loop.time()
            if (
                wait > 0
                and queue.arriving > 0
                and queue.live < self._max_batch_size
                and not self._stopping
            ):
                queue.filled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.filled.wait(), timeout=wait)
            async with self._compute_slot:
                batch: list[_Item] = []
                while items and len(batch) < self._max_batch_size:
                    item = items.popleft()
                    if item.live:
                        item.live = False
                        batch.append(item)
                queue.live -= len(batch)
                queue.series.queue_depth.set(queue.live)
                if batch:
                    try:
                        await self._run_batch(queue, batch)
                    except Exception as exc:  # a bug: this worker dies (see _worker_done)
                        failure = NotReady(
                            f"domain {queue.name!r} cannot be served: its worker stopped "
                            f"({type(exc).__name__}: {exc})"
                        )
                        for item in batch:
                            if not item.future.done():
                                item.future.set_exception(failure)
                        raise

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
            queue.series.queue_wait.observe(now - item.enqueued)
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
        queue.series.batch_compute.observe(time.perf_counter() - started)
        queue.series.batch_size.observe(len(live))
        for item, row in zip(live, probabilities, strict=True):
            if not item.future.done():
                item.future.set_result(row)
