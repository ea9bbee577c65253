"""Prometheus metrics of one app, on its own registry (never the process-global one).

Label values of ``domain`` come only from the served artifact's domains; any other value (an
unknown domain, a request that names none) is recorded as ``_unknown``, so the number of series
stays bounded whatever clients send.

With several worker processes (:mod:`service.workers`, ``PROMETHEUS_MULTIPROC_DIR`` set) every
worker writes its values to the shared folder and ``exposition`` (what ``/metrics`` answers)
merges all workers': counters and histograms summed (a dead worker's counts included), the
live-work gauges summed over live workers, ``mdp_model_info`` their maximum, and the process
metrics (``process_*``) once per live worker with a ``pid`` label.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.errors import REJECTION_REASONS

UNKNOWN_DOMAIN = "_unknown"
#: Latency buckets, cut at the request deadline (which becomes the last finite bucket).
BASE_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Rejections that happen before a request reaches the app (in the HTTP protocol), so only
#: under ``_unknown``.
CONNECTION_REASONS = ("header_timeout", "too_many_connections")


def latency_buckets(deadline_s: float) -> tuple[float, ...]:
    """The base buckets below the deadline, then the deadline itself."""
    return (*(bucket for bucket in BASE_LATENCY_BUCKETS if bucket < deadline_s), deadline_s)


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ``5xx``, ...: the ``class`` label of a status code."""
    return f"{status // 100}xx"


@dataclass(frozen=True)
class DomainMetrics:
    """One domain's series (the children of the labelled metrics): the request path updates
    these without going through ``labels()`` each time."""

    request_latency: Histogram
    queue_wait: Histogram
    preprocess: Histogram
    batch_compute: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    in_flight: Gauge


class ServiceMetrics:
    def __init__(self, request_timeout_s: float = 10.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._domains: frozenset[str] = frozenset()
        registry = self.registry
        buckets = latency_buckets(request_timeout_s)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["domain"], buckets=buckets, registry=registry)

        self.request_latency = histogram(
            "mdp_request_latency_seconds",
            "End-to-end request latency, from the first byte of the request to the response.",
            buckets,
        )
        self.queue_wait = histogram(
            "mdp_queue_wait_seconds",
            "Time an image waited in its domain's queue before its micro-batch started.",
            buckets,
        )
        self.preprocess = histogram(
            "mdp_preprocess_seconds", "Decoding and preprocessing of one image.", buckets
        )
        self.batch_compute = histogram(
            "mdp_batch_compute_seconds",
            "Forward pass of one micro-batch through the domain's compact subnetwork.",
            buckets,
        )
        self.batch_size = histogram("mdp_batch_size", "Images per micro-batch.", BATCH_SIZE_BUCKETS)
        self.queue_depth = Gauge(
            "mdp_queue_depth",
            "Images queued for the domain whose request is still waiting.",
            ["domain"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "mdp_in_flight_requests",
            "Prediction requests in progress (admitted, not yet answered).",
            ["domain"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.preprocess_pending = Gauge(
            "mdp_preprocess_pending_images",
            "Images waiting for or in decoding on the preprocessing threads.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connections = Gauge(
            "mdp_open_connections",
            "Open client TCP connections.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.requests = Counter(
            "mdp_requests_total",
            "Responses by domain, HTTP status code and status class (2xx, 4xx, 5xx); 499 is a "
            "client that went away before its answer.",
            ["domain", "status", "class"],
            registry=registry,
        )
        self.rejections = Counter(
            "mdp_rejections_total",
            "Requests refused or failed without a prediction, by reason.",
            ["domain", "reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            "mdp_model_info",
            "The served model (value 1).",
            ["model", "version", "budget", "sharing"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge(
            "mdp_ready_workers",
            "Worker processes ready to serve (1 per ready process).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.version_requests = Counter(
            "mdp_model_version_requests_total",
            "Responses by the model version that computed them (the versions served now and "
            "just before only).",
            ["version"],
            registry=registry,
        )
        self.reloads = Counter(
            "mdp_model_reloads_total",
            "Switches to another model version without a restart.",
            registry=registry,
        )
        self.reload_failures = Counter(
            "mdp_model_reload_failures_total",
            "Model versions refused because they failed to load, verify or warm up (the "
            "serving version stayed).",
            registry=registry,
        )
        self.model_resident = Gauge(
            "mdp_model_versions_resident",
            "Model versions in memory: 1, and 2 while a switch drains the old version.",
            registry=registry,
        )
        self.level_images = Counter(
            "mdp_level_images_total",
            "Images answered by domain and budget level (the level that computed them: a "
            "nested artifact's levels, '1' otherwise); the level mix over time.",
            ["domain", "level"],
            registry=registry,
        )
        self.degradation_level = Gauge(
            "mdp_degradation_level",
            "Levels below the largest that graceful degradation allows now (0: none; with "
            "several worker processes the most degraded worker's).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        ProcessCollector(registry=registry)
        self._shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        #: what /metrics answers: this registry, or every worker's values when there are several
        self.exposition = registry
        if self._shared:
            self.exposition = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self.exposition, self._shared)
            self.exposition.register(WorkerProcessCollector(Path(self._shared)))
        # children by label values: the request path skips labels()'s argument handling
        self._request_counts: dict[tuple[str, int], Counter] = {}
        self._per_domain: dict[str, DomainMetrics] = {}
        self._version_counts: dict[tuple[str], Counter] = {}
        self._create_series([UNKNOWN_DOMAIN])
        for reason in CONNECTION_REASONS:
            self.rejections.labels(domain=UNKNOWN_DOMAIN, reason=reason)

    def set_model(
        self, model: str, version: str, budget: str, sharing: str, domains: Iterable[str]
    ) -> None:
        """Record the served model (only: a previous version's info goes) and create every
        domain's series, so that they all exist from the first scrape."""
        self.model_info.clear()
        self.model_info.labels(model=model, version=version, budget=budget, sharing=sharing).set(1)
        self._domains = frozenset(domains)
        self._create_series(sorted(self._domains))

    def ready_workers(self) -> int:
        """Ready worker processes: all live workers' ``mdp_ready_workers`` together (0
        without multiprocess mode)."""
        if not self._shared:
            return 0
        return int(
            sum(
                sample.value
                for family in MultiProcessCollector(None, self._shared).collect()
                if family.name == "mdp_ready_workers"
                for sample in family.samples
            )
        )

    def keep_versions(self, versions: Iterable[str]) -> None:
        """Keep the per-version series of ``versions`` only (bounded: current and previous)."""
        keep = set(versions)
        for (version,) in list(self._version_counts):
            if version not in keep:
                self.version_requests.remove(version)
                del self._version_counts[(version,)]
        for version in keep - {key for (key,) in self._version_counts}:
            self._version_counts[(version,)] = self.version_requests.labels(version)

    def observe_version(self, version: str) -> None:
        """Count a response computed by model version ``version`` (one that is kept)."""
        counter = self._version_counts.get((version,))
        if counter is not None:
            counter.inc()

    def domain_label(self, domain: str | None) -> str:
        return domain if domain is not None and domain in self._domains else UNKNOWN_DOMAIN

    def observe_request(self, domain: str, status: int, seconds: float) -> None:
        """Count a response and time it (``domain`` is a label value: ``domain_label``)."""
        counter = self._request_counts.get((domain, status))
        if counter is None:
            counter = self.requests.labels(
                domain=domain, status=str(status), **{"class": status_class(status)}
            )
            self._request_counts[(domain, status)] = counter
        counter.inc()
        self.domain(domain).request_latency.observe(seconds)

    def domain(self, domain: str) -> DomainMetrics:
        """The series of one domain label value."""
        series = self._per_domain.get(domain)
        if series is None:
            series = self._per_domain[domain] = DomainMetrics(
                request_latency=self.request_latency.labels(domain=domain),
                queue_wait=self.queue_wait.labels(domain=domain),
                preprocess=self.preprocess.labels(domain=domain),
                batch_compute=self.batch_compute.labels(domain=domain),
                batch_size=self.batch_size.labels(domain=domain),
                queue_depth=self.queue_depth.labels(domain=domain),
                in_flight=self.in_flight.labels(domain=domain),
            )
        return series

    def level_counters(self, domain: str, levels: Iterable[str]) -> list[Counter]:
        """The ``mdp_level_images_total`` series of a domain's levels, in order (label values:
        the served artifact's levels only, so the series stay bounded)."""
        return [self.level_images.labels(domain=domain, level=level) for level in levels]

    def reject(self, domain: str, reason: str) -> None:
        self.rejections.labels(domain=domain, reason=reason).inc()

    def _create_series(self, domains: Iterable[str]) -> None:
        for domain in domains:
            self.domain(domain)
            self.requests.labels(domain=domain, status="200", **{"class": "2xx"})
            for reason in REJECTION_REASONS:
                self.rejections.labels(domain=domain, reason=reason)


class WorkerProcessCollector(Collector):
    """The process metrics (CPU, memory, file descriptors, start time) of every live worker
    that writes to a multiprocess metrics folder, each with a ``pid`` label."""

    _PID = re.compile(r"_(\d+)\.db$")

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def collect(self) -> Iterator[Metric]:
        pids = sorted(
            {
                int(match[1])
                for path in self._folder.iterdir()
                if (match := self._PID.search(path.name))
            }
        )
        families: dict[str, Metric] = {}
        for pid in pids:
            if not Path(f"/proc/{pid}").exists():
                continue
            for family in ProcessCollector(
                pid=functools.partial(str, pid), registry=None
            ).collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()
