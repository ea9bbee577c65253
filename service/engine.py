"""Per-domain dynamic micro-batching, per budget level.

Every domain has a bounded queue (one per requested budget level of a nested artifact; the
bound counts all of a domain's images) and one worker task per queue. When images are queued,
the worker waits for more only while other images of its domain are still on their way
(announced with ``arriving`` while they are preprocessed), and at most until ``max_batch_size``
images are queued or ``max_wait_ms`` have passed since the oldest one arrived; a lone request
is computed at once.
Then it waits for the compute slot and takes up to ``max_batch_size`` images, including those
that queued while another batch computed. Forward passes run one at a time on a single compute
thread, each using ``torch_threads`` intra-op threads, so the event loop never blocks and the
cores are not oversubscribed by concurrent domains.

Deadline-aware admission (``shed_late``): the engine keeps a moving average of the compute time
per image of recent batches (all domains share the one compute thread); a request whose images,
behind every live queued image, would at that rate finish after its deadline is refused at once
(``WouldMissDeadline``, 429) instead of being queued to time out (504). Until the first batch
after start has run there is no estimate and only the queue bound applies.

Queue depth counts live images only: an image whose request has gone (deadline, client
disconnect) leaves the count at once and is dropped unseen when the worker reaches it. A worker
that dies of a bug fails its queued requests and is reported by ``failed_domains`` (``/livez``).

A batch runs at its queue's level or, with graceful degradation on, the cheaper level the
:class:`~service.degrade.DegradePolicy` allows for the queue delay of its oldest image; each
answer carries the level that computed it. Every level's network is built when the model
loads, so switching levels loads and allocates nothing.
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
from typing import NamedTuple

import torch
from prometheus_client import Counter
from torch import Tensor, nn

from multidomain.serving import class_probabilities, level_label
from service.degrade import DegradePolicy
from service.errors import DeadlineExceeded, NotReady, Overloaded, WouldMissDeadline
from service.metrics import DomainMetrics, ServiceMetrics

__all__ = ["Answer", "DomainModel", "InferenceEngine"]

logger = logging.getLogger("service")

#: weight of the newest batch in the moving average of the compute time per image
SPEED_WEIGHT = 0.2


@dataclass(frozen=True)
class DomainModel:
    """A domain's compact subnetwork (eval mode), the shape and dtype of one input image, and
    the networks of its cheaper budget levels (a nested artifact's), largest first."""

    network: nn.Module
    input_shape: tuple[int, int, int]
    input_dtype: torch.dtype = torch.float32
    lower_levels: tuple[nn.Module, ...] = ()

    @property
    def networks(self) -> tuple[nn.Module, ...]:
        return (self.network, *self.lower_levels)


class Answer(NamedTuple):
    """One image's class probabilities and the level (index, 0 the largest) that computed
    them."""

    probabilities: Tensor
    level: int


@dataclass
class _Item:
    image: Tensor
    future: asyncio.Future[Answer]
    enqueued: float
    deadline: float
    live: bool = True  # in the queue and its request still waiting


@dataclass
class _Domain:
    """What a domain's level queues share: its model, series, live count and failure."""

    name: str
    model: DomainModel
    series: DomainMetrics
    level_images: list[Counter]  # images answered per level
    live: int = 0  # queued images (all levels) whose request still waits
    failure: str | None = None  # why a worker died


@dataclass
class _DomainQueue:
    domain: _Domain
    level: int  # the level its requests asked for (a batch may run cheaper)
    items: deque[_Item] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # items to take, or stopping
    filled: asyncio.Event = field(default_factory=asyncio.Event)  # stop waiting for more
    arriving: int = 0  # images announced and not yet queued
    worker: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.domain.name


def _forward(network: nn.Module, inputs: Tensor) -> Tensor:
    return class_probabilities(network, inputs)


def _level_labels(budgets: Sequence[float], count: int) -> list[str]:
    """The ``level`` label values of a domain's ``count`` levels."""
    if len(budgets) >= count:
        return [level_label(b) for b in budgets[:count]]
    return [str(level) for level in range(count)] if count > 1 else ["1"]


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
        policy: DegradePolicy | None = None,
        budgets: Sequence[float] = (),
        shed_late: bool = True,
    ) -> None:
        """``budgets``: the levels' budgets, largest first, for the metrics' ``level`` label
        (default: ``1`` for a model of one level); ``policy``: graceful degradation (off when
        ``None``); ``shed_late``: deadline-aware admission (module docstring)."""
        self._domains = {
            name: _Domain(
                name,
                model,
                metrics.domain(name),
                metrics.level_counters(name, _level_labels(budgets, len(model.networks))),
            )
            for name, model in models.items()
        }
        self._levels = {
            name: [_DomainQueue(domain, level) for level in range(len(domain.model.networks))]
            for name, domain in self._domains.items()
        }
        self._queues = [queue for levels in self._levels.values() for queue in levels]
        self.policy = policy
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
        self._shed_late = shed_late
        self._seconds_per_image: float | None = None  # moving average over recent batches
        self._accepting = False
        self._stopping = False

    async def start(self) -> None:
        """Run a batch of 1 and of ``max_batch_size`` through every domain, then start serving."""
        loop = asyncio.get_running_loop()
        for domain in self._domains.values():
            model = domain.model
            for network in model.networks:
                for size in sorted({1, self._max_batch_size}):
                    inputs = torch.zeros(size, *model.input_shape, dtype=model.input_dtype)
                    await loop.run_in_executor(self._executor, _forward, network, inputs)
        for queue in self._queues:
            queue.worker = asyncio.create_task(
                self._serve(queue), name=f"mdp-worker-{queue.name}-{queue.level}"
            )
            queue.worker.add_done_callback(functools.partial(self._worker_done, queue))
        self._accepting = True

    def failed_domains(self) -> dict[str, str]:
        """Domains whose worker died, and why (empty while every worker runs)."""
        return {d.name: d.failure for d in self._domains.values() if d.failure is not None}

    @contextlib.contextmanager
    def arriving(self, domain: str, count: int, level: int = 0) -> Iterator[None]:
        """Announce ``count`` images of ``domain`` (asking for ``level``) that are on their way
        (being preprocessed); queue them with ``predict`` right after the block. A batch waits
        for announced images only."""
        queue = self._levels[domain][level]
        queue.arriving += count
        try:
            yield
        finally:
            queue.arriving -= count
            if queue.arriving == 0:
                queue.filled.set()

    async def predict(self, domain: str, images: Sequence[Tensor], deadline: float) -> list[Tensor]:
        """Class probabilities of each image at the largest level (``answer`` without the
        levels)."""
        return [answer.probabilities for answer in await self.answer(domain, images, deadline)]

    async def answer(
        self, domain: str, images: Sequence[Tensor], deadline: float, level: int = 0
    ) -> list[Answer]:
        """Class probabilities of each image (a known domain's preprocessed [3, S, S] tensors)
        at ``level`` (an index of the domain's levels, 0 the largest) or a cheaper one, with
        the level that computed them.

        ``deadline`` is on the event loop's clock. Raises ``Overloaded`` at once when the
        domain's queue has no room for all images, ``DeadlineExceeded`` when the deadline passes
        first and ``NotReady`` when the engine is not serving.
        """
        if not self._accepting:
            raise NotReady("the service is not accepting requests (starting or shutting down)")
        queue = self._levels[domain][level]
        state = queue.domain
        if state.failure is not None:
            raise NotReady(f"domain {domain!r} cannot be served: {state.failure}")
        if state.live + len(images) > self._queue_size:
            raise Overloaded(
                f"the queue of domain {domain!r} is full ({self._queue_size} images); retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._shed_late and self._seconds_per_image is not None:
            self._admit_by_deadline(domain, len(images), deadline - now)
        items = [_Item(image, loop.create_future(), now, deadline) for image in images]
        queue.items.extend(items)
        state.live += len(items)
        state.series.queue_depth.set(state.live)
        queue.arrived.set()
        if state.live >= self._max_batch_size or queue.arriving == 0:
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
                state.live -= gone
                state.series.queue_depth.set(state.live)

    def _admit_by_deadline(self, domain: str, count: int, left_s: float) -> None:
        """Raise ``WouldMissDeadline`` if ``count`` more images, behind every live queued one,
        would be computed later than ``left_s`` from now at the recent time per image."""
        assert self._seconds_per_image is not None
        ahead = sum(state.live for state in self._domains.values())
        expected_s = (ahead + count) * self._seconds_per_image
        if expected_s > left_s:
            raise WouldMissDeadline(
                f"{ahead} images are queued ahead; at the recent "
                f"{self._seconds_per_image * 1000:.2f} ms per image this request of domain "
                f"{domain!r} would finish in about {expected_s * 1000:.0f} ms, after its "
                f"deadline ({max(left_s, 0.0) * 1000:.0f} ms left); retry later"
            )

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, let the workers finish what is queued (at most ``grace_s``), then
        fail whatever is left with ``NotReady``."""
        self._accepting = False
        self._stopping = True
        workers = [q.worker for q in self._queues if q.worker is not None]
        for queue in self._queues:
            queue.arrived.set()
            queue.filled.set()
        if workers:
            _, pending = await asyncio.wait(workers, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for queue in self._queues:
            self._fail_queued(queue, NotReady("the service shut down before answering"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _fail_queued(self, queue: _DomainQueue, error: Exception) -> None:
        state = queue.domain
        while queue.items:
            item = queue.items.popleft()
            if item.live:
                item.live = False
                state.live -= 1
            if not item.future.done():
                item.future.set_exception(error)
        state.series.queue_depth.set(state.live)

    def _worker_done(self, queue: _DomainQueue, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return  # stopped by ``stop``
        error = task.exception()
        state = queue.domain
        state.failure = f"its worker stopped ({type(error).__name__}: {error})"
        logger.error("the worker of domain %r stopped", queue.name, exc_info=error)
        failure = NotReady(f"domain {queue.name!r} cannot be served: {state.failure}")
        for level in self._levels[queue.name]:
            self._fail_queued(level, failure)

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
                and len(items) < self._max_batch_size
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
                queue.domain.live -= len(batch)
                queue.domain.series.queue_depth.set(queue.domain.live)
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
        state = queue.domain
        level = queue.level
        if self.policy is not None and self.policy.enabled:
            cap = self.policy.observe(now - batch[0].enqueued, now)
            self._metrics.degradation_level.set(cap)
            level = max(level, min(cap, len(state.model.networks) - 1))
        live: list[_Item] = []
        for item in batch:
            if item.future.done():  # the caller gave up already
                continue
            if item.deadline <= now:
                item.future.set_exception(
                    DeadlineExceeded("the request's deadline passed while it waited in the queue")
                )
                continue
            state.series.queue_wait.observe(now - item.enqueued)
            live.append(item)
        if not live:
            return
        inputs = torch.stack([item.image for item in live])
        started = time.perf_counter()
        try:
            probabilities = await loop.run_in_executor(
                self._executor, _forward, state.model.networks[level], inputs
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
        elapsed = time.perf_counter() - started
        state.series.batch_compute.observe(elapsed)
        per_image = elapsed / len(live)
        previous = self._seconds_per_image
        self._seconds_per_image = (
            per_image if previous is None else previous + SPEED_WEIGHT * (per_image - previous)
        )
        state.series.batch_size.observe(len(live))
        state.level_images[level].inc(len(live))
        for item, row in zip(live, probabilities, strict=True):
            if not item.future.done():
                item.future.set_result(Answer(row, level))
