"""What the app holds while it runs: settings, metrics, admission counters and, once loaded, the
served version (model and engine) and the preprocessing threads; and where it is in its life
(loading, ready, draining, failed).

A request is pinned to the version that is current when it arrives (``pin``): every
``serving()`` call while it runs returns that version, also after a rollout
(:mod:`service.rollout`) has switched to a newer one, so that the version a response names is
the one that computed it, and the old version is freed only once its last request is done.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from service.auth import ApiKeys
from service.engine import InferenceEngine
from service.errors import DecodeQueueFull, InFlightLimit, NotReady
from service.metrics import ServiceMetrics
from service.model import ServedModel
from service.settings import ServiceSettings

__all__ = ["Admission", "ServedVersion", "ServiceState"]

_DOMAIN_PATH = re.compile(r"^/v(?:1/domains|2/models)/([^/]+)")


@dataclass(eq=False)
class ServedVersion:
    """One loaded model version and its engine, with the requests pinned to it."""

    model: ServedModel
    engine: InferenceEngine
    users: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def version(self) -> str:
        return self.model.version

    def enter(self) -> None:
        self.users += 1
        self.idle.clear()

    def leave(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.idle.set()


#: The version the running request is pinned to (each request runs in its own task).
_PINNED: ContextVar[ServedVersion | None] = ContextVar("mdp_pinned_version", default=None)
Pin = tuple[ServedVersion, Token[ServedVersion | None]] | None


class Admission:
    """Bounds on live work in this process, checked before the work starts: prediction requests
    in progress (all domains and per domain) and images at the preprocessing threads.

    Counts are per process and per event loop (no locks): with several worker processes every
    process admits up to its own bounds.
    """

    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self._max_in_flight = settings.max_in_flight
        self._max_per_domain = settings.max_in_flight_per_domain
        self._max_decoding = settings.preprocess_queue_size
        self._metrics = metrics
        self.in_flight = 0
        self.per_domain: dict[str, int] = {}
        self.decoding = 0

    def enter(self, domain: str) -> None:
        """Admit one prediction request of a served domain, or raise ``InFlightLimit``."""
        if self.in_flight >= self._max_in_flight:
            raise InFlightLimit(
                f"{self.in_flight} prediction requests are in progress, the limit of this "
                "process; retry later"
            )
        count = self.per_domain.get(domain, 0)
        if count >= self._max_per_domain:
            raise InFlightLimit(
                f"{count} requests of domain {domain!r} are in progress, the limit per domain; "
                "retry later"
            )
        self.in_flight += 1
        self.per_domain[domain] = count + 1
        self._metrics.domain(domain).in_flight.set(count + 1)

    def leave(self, domain: str) -> None:
        self.in_flight -= 1
        count = self.per_domain[domain] - 1
        self.per_domain[domain] = count
        self._metrics.domain(domain).in_flight.set(count)

    def start_decoding(self, images: int) -> None:
        """Reserve room for ``images`` at the preprocessing threads, or raise
        ``DecodeQueueFull``."""
        if self.decoding + images > self._max_decoding:
            raise DecodeQueueFull(
                f"{self.decoding} images are waiting for decoding; {images} more do not fit "
                f"(limit {self._max_decoding}); retry later"
            )
        self.decoding += images
        self._metrics.preprocess_pending.set(self.decoding)

    def end_decoding(self, images: int) -> None:
        self.decoding -= images
        self._metrics.preprocess_pending.set(self.decoding)


@dataclass
class ServiceState:
    settings: ServiceSettings
    metrics: ServiceMetrics
    admission: Admission = field(init=False)
    api_keys: ApiKeys | None = field(init=False)
    #: the version new requests are pinned to; ``model`` and ``engine`` are its parts
    current: ServedVersion | None = None
    model: ServedModel | None = None
    engine: InferenceEngine | None = None
    preprocess_pool: ThreadPoolExecutor | None = None
    ready: bool = False
    draining: bool = False  # shutting down: readiness 503, answers say ``Connection: close``
    load_error: str | None = None
    #: called once when loading the model fails (the server then exits with status 3)
    on_load_failure: list[Callable[[str], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings, self.metrics)
        self.api_keys = ApiKeys(self.settings.api_keys) if self.settings.auth_enabled else None

    def serving(self) -> tuple[ServedModel, InferenceEngine, ThreadPoolExecutor]:
        """The model and engine of the version the running request is pinned to (else the
        current one), and the preprocessing threads; ``NotReady`` before the first load."""
        version = _PINNED.get() or self.current
        if version is None or self.preprocess_pool is None:
            raise NotReady("the model is not loaded yet; retry when /readyz answers 200")
        return version.model, version.engine, self.preprocess_pool

    def set_current(self, version: ServedVersion | None) -> None:
        """Switch new requests to ``version`` (one step on the event loop: atomic for them)."""
        self.current = version
        self.model = version.model if version is not None else None
        self.engine = version.engine if version is not None else None

    def pin(self) -> Pin:
        """Pin the running request to the current version until ``unpin``."""
        version = self.current
        if version is None:
            return None
        version.enter()
        return version, _PINNED.set(version)

    @staticmethod
    def unpin(pin: Pin) -> None:
        if pin is not None:
            version, token = pin
            _PINNED.reset(token)
            version.leave()

    @staticmethod
    def pinned_version() -> str | None:
        """The version name the running request is pinned to, if any."""
        version = _PINNED.get()
        return version.version if version is not None else None

    def begin_shutdown(self) -> None:
        """Readiness 503 from now on; answers ask clients to close their connection."""
        self.ready = False
        self.draining = True
        self.metrics.ready.set(0)

    def fail_loading(self, message: str) -> None:
        self.load_error = message
        for callback in self.on_load_failure:
            callback(message)

    def domain_label(self, path: str) -> str:
        """The metrics label of a request path's domain (a bounded set: unknown names share
        one label)."""
        match = _DOMAIN_PATH.match(path)
        return self.metrics.domain_label(match[1] if match else None)
