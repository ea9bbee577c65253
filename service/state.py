"""What the app holds while it runs: settings, metrics and, once loaded, the model, the engine
and the preprocessing threads."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from service.engine import InferenceEngine
from service.errors import NotReady
from service.metrics import ServiceMetrics
from service.model import ServedModel
from service.settings import ServiceSettings

__all__ = ["ServiceState"]

_DOMAIN_PATH = re.compile(r"^/v1/domains/([^/]+)")


@dataclass
class ServiceState:
    settings: ServiceSettings
    metrics: ServiceMetrics
    model: ServedModel | None = None
    engine: InferenceEngine | None = None
    preprocess_pool: ThreadPoolExecutor | None = None
    ready: bool = False

    def serving(self) -> tuple[ServedModel, InferenceEngine, ThreadPoolExecutor]:
        if self.model is None or self.engine is None or self.preprocess_pool is None:
            raise NotReady("the model is not loaded yet; retry when /readyz answers 200")
        return self.model, self.engine, self.preprocess_pool

    def domain_label(self, path: str) -> str:
        """The metrics label of a request path's domain (a bounded set: unknown names share
        one label)."""
        match = _DOMAIN_PATH.match(path)
        return self.metrics.domain_label(match[1] if match else None)
