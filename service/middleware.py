"""Request metrics and the last line of error handling, as pure ASGI middleware."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.state import ServiceState

__all__ = ["OPS_PATHS", "ObservabilityMiddleware"]

logger = logging.getLogger("service")

#: Operational endpoints, kept out of the per-domain request metrics.
OPS_PATHS = frozenset({"/metrics", "/livez", "/readyz", "/docs", "/redoc", "/openapi.json"})


class ObservabilityMiddleware:
    """Counts and times every response (except the operational endpoints) by domain and status,
    and turns any unexpected exception into a generic 500 whose details only go to the log."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPS_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def observed_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        domain = self.state.domain_label(scope["path"])
        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            status = 500
            self.state.metrics.rejections.labels(domain=domain, reason="internal").inc()
            if response_started:
                raise
            await error_response(500, "internal", "internal error")(scope, receive, send)
        finally:
            metrics = self.state.metrics
            metrics.requests.labels(domain=domain, status=str(status)).inc()
            metrics.request_latency.labels(domain=domain).observe(time.perf_counter() - started)
