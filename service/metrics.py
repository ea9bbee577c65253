"""Prometheus metrics of one app, on its own registry (never the process-global one).

Label values of ``domain`` come only from the served artifact's domains; any other value (an
unknown domain, a request that names none) is recorded as ``_unknown``, so the number of series
stays bounded whatever clients send.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.errors import REJECTION_REASONS

UNKNOWN_DOMAIN = "_unknown"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._domains: frozenset[str] = frozenset()
        registry = self.registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["domain"], buckets=buckets, registry=registry)

        self.request_latency = histogram(
            "mdp_request_latency_seconds",
            "End-to-end request latency, from the first byte of the request to the response.",
            LATENCY_BUCKETS,
        )
        self.queue_wait = histogram(
            "mdp_queue_wait_seconds",
            "Time an image waited in its domain's queue before its micro-batch started.",
            LATENCY_BUCKETS,
        )
        self.preprocess = histogram(
            "mdp_preprocess_seconds", "Decoding and preprocessing of one image.", LATENCY_BUCKETS
        )
        self.batch_compute = histogram(
            "mdp_batch_compute_seconds",
            "Forward pass of one micro-batch through the domain's compact subnetwork.",
            LATENCY_BUCKETS,
        )
        self.batch_size = histogram("mdp_batch_size", "Images per micro-batch.", BATCH_SIZE_BUCKETS)
        self.queue_depth = Gauge(
            "mdp_queue_depth", "Images queued for the domain.", ["domain"], registry=registry
        )
        self.requests = Counter(
            "mdp_requests_total",
            "Responses by domain and HTTP status code.",
            ["domain", "status"],
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
        )
        self._create_series([UNKNOWN_DOMAIN])

    def set_model(
        self, model: str, version: str, budget: str, sharing: str, domains: Iterable[str]
    ) -> None:
        """Record the served model and create every domain's series, so that they all exist
        from the first scrape."""
        self.model_info.labels(model=model, version=version, budget=budget, sharing=sharing).set(1)
        self._domains = frozenset(domains)
        self._create_series(sorted(self._domains))

    def domain_label(self, domain: str | None) -> str:
        return domain if domain is not None and domain in self._domains else UNKNOWN_DOMAIN

    def _create_series(self, domains: Iterable[str]) -> None:
        for domain in domains:
            for metric in (
                self.request_latency,
                self.queue_wait,
                self.preprocess,
                self.batch_compute,
                self.batch_size,
            ):
                metric.labels(domain=domain)
            self.queue_depth.labels(domain=domain).set(0)
            self.requests.labels(domain=domain, status="200")
            for reason in REJECTION_REASONS:
                self.rejections.labels(domain=domain, reason=reason)
