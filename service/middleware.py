"""The front of every request, as pure ASGI middleware: request id, authentication, admission,
metrics, the access log and the last line of error handling.

In order, for each HTTP request:

1. the request id: the client's ``X-Request-ID`` if it is safe, else a new one; it is set in
   the logging context and returned on every response;
2. the probes (``/livez``, ``/readyz``) go straight to the app: no key, no metrics, no access
   log;
3. the request is pinned to the model version served now (``ServiceState.pin``), which every
   response names in ``X-Model-Version`` and which is counted per version;
4. with API keys configured, a protected path without an accepted key is answered 401;
5. a prediction request of a served domain (``/v1`` predict, ``/v2`` infer) is admitted against
   the in-flight bounds (:class:`service.state.Admission`) before its body is read, or answered
   429 at once (in the Open Inference Protocol's error shape under ``/v2``);
6. the response is counted and timed by domain and status (except the operational endpoints),
   an access line is logged (successes sampled, errors always), and any unexpected exception
   becomes a generic 500 whose traceback goes to the log only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import presented_key
from service.errors import ServiceError, Unauthorized, error_response
from service.exception_handlers import service_error_response
from service.logs import ACCESS_LOGGER, REQUEST_ID, request_id_from
from service.metrics import UNKNOWN_DOMAIN
from service.oip import OIP_PREFIX
from service.state import ServiceState

__all__ = [
    "DOCS_ASSETS",
    "DOCS_PATHS",
    "MODEL_VERSION_HEADER",
    "OPS_PATHS",
    "PROBE_PATHS",
    "ServiceMiddleware",
]

logger = logging.getLogger("service")

#: Health probes: always open, never counted or access-logged.
PROBE_PATHS = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})
#: The API documentation, protectable with ``auth_docs``.
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
#: Where the documentation pages' scripts and styles are served (treated as documentation).
DOCS_ASSETS = "/docs/assets"
#: The response header naming the model version that computed the response.
MODEL_VERSION_HEADER = "X-Model-Version"
#: Operational endpoints, kept out of the per-domain request metrics.
OPS_PATHS = PROBE_PATHS | DOCS_PATHS | {"/metrics"}
_NOT_LOGGED = PROBE_PATHS | {"/metrics"}
_DOMAIN_ROUTE = re.compile(r"^/v1/domains/([^/]+)(/predict(?:/batch)?/?)?$")
_OIP_ROUTE = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?(/infer/?)?$")


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        self._protected_ops = (DOCS_PATHS if settings.auth_docs else frozenset()) | (
            {"/metrics"} if settings.auth_metrics else frozenset()
        )
        self._protect_docs = settings.auth_docs
        self._access = logging.getLogger(ACCESS_LOGGER)
        self._sample = settings.access_log_sample

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = self.state
        request_id = request_id_from(scope["headers"])
        REQUEST_ID.set(request_id)
        id_header = (b"x-request-id", request_id.encode())
        status = 0  # none sent yet
        version_header: tuple[bytes, bytes] | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), id_header]
                if version_header is not None:
                    headers.append(version_header)
                if state.draining:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        path: str = scope["path"]
        if path in PROBE_PATHS:
            await self.app(scope, receive, send_with_headers)
            return
        pin = state.pin()
        if pin is not None:
            version_header = (b"x-model-version", pin[0].version.encode())
        route = _DOMAIN_ROUTE.match(path) or _OIP_ROUTE.match(path)
        domain = state.metrics.domain_label(route[1] if route else None)
        docs = path.startswith(DOCS_ASSETS)
        ops = path in OPS_PATHS or docs
        admitted = False
        try:
            keys = state.api_keys
            if (
                keys is not None
                and (not ops or path in self._protected_ops or (docs and self._protect_docs))
                and not keys.accepts(presented_key(scope["headers"]))
            ):
                raise Unauthorized(
                    "a valid API key is required: send it as 'Authorization: Bearer <key>' "
                    "or 'X-API-Key: <key>'"
                )
            if route and route[2] and domain != UNKNOWN_DOMAIN and scope["method"] == "POST":
                state.admission.enter(domain)
                admitted = True
            await self.app(scope, receive, send_with_headers)
        except ServiceError as exc:  # refused here, before the app saw the request
            state.metrics.reject(domain, exc.reason)
            response = service_error_response(exc, state.settings, oip=path.startswith(OIP_PREFIX))
            await response(scope, receive, send_with_headers)
        except asyncio.CancelledError:  # the server gave up on it (shutdown grace exceeded)
            status = status or 503
            raise
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], path)
            state.metrics.reject(domain, "internal")
            if status:
                raise
            await error_response(500, "internal", "internal error")(
                scope, receive, send_with_headers
            )
        finally:
            if admitted:
                state.admission.leave(domain)
            if pin is not None:
                state.unpin(pin)
            seconds = time.perf_counter() - started
            if not ops:
                state.metrics.observe_request(domain, status or 500, seconds)
                if pin is not None:
                    state.metrics.observe_version(pin[0].version)
            if path not in _NOT_LOGGED:
                self._log_access(scope, domain, status or 500, seconds)

    def _log_access(self, scope: Scope, domain: str, status: int, seconds: float) -> None:
        if status < 400 and self._sample < 1.0 and random.random() >= self._sample:
            return
        level = logging.INFO if status < 500 else logging.ERROR
        access = self._access
        if not access.isEnabledFor(level):
            return
        client = scope.get("client")
        fields = {
            "method": scope["method"],
            "path": scope["path"],
            "domain": domain,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
            "client": client[0] if client else None,
        }
        # makeRecord + handle: what Logger.log does, less looking up the caller's frame
        access.handle(
            access.makeRecord(
                access.name,
                level,
                __file__,
                0,
                "%s %r %d",
                (scope["method"], scope["path"], status),
                None,
                extra={"fields": fields},
            )
        )
