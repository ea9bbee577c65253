"""uvicorn's httptools HTTP/1.1 protocol with what it lacks for a service on an open port:

* a header timeout: a connection whose request headers are not complete ``header_timeout_s``
  after it opened (or after the request's first byte, on a kept-alive connection) is closed,
  with a 408 when part of a request had arrived; slow clients cannot hold connections;
* a connection limit: a connection beyond ``max_connections`` is answered 503 and closed;
* the one JSON error body for requests the HTTP parser refuses (uvicorn answers those in plain
  text): a non-numeric Content-Length, an invalid header, ...

Everything is counted in the app's metrics under the domain ``_unknown``. Bind the settings and
metrics with :func:`http_protocol` and pass the class as ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from multidomain.serving import error_body
from service.logs import ACCESS_LOGGER, request_id_from
from service.metrics import UNKNOWN_DOMAIN, ServiceMetrics
from service.settings import ServiceSettings

__all__ = ["ServiceHttpProtocol", "http_protocol"]

_access = logging.getLogger(ACCESS_LOGGER)


class ServiceHttpProtocol(HttpToolsProtocol):
    header_timeout_s: ClassVar[float] = 5.0
    max_connections: ClassVar[int] = 1024
    retry_after_s: ClassVar[int] = 1
    metrics: ClassVar[ServiceMetrics]

    _header_timer: asyncio.TimerHandle | None = None
    _receiving_headers = False
    _opened = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.metrics.connections.set(len(self.connections))
        self._opened = time.perf_counter()
        if len(self.connections) > self.max_connections:
            self.metrics.reject(UNKNOWN_DOMAIN, "too_many_connections")
            self._answer_and_close(
                503,
                "overloaded",
                f"the service has {self.max_connections} open connections, its limit; retry later",
                [(b"retry-after", str(self.retry_after_s).encode())],
            )
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)
        self.metrics.connections.set(len(self.connections))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving_headers = True
        self._opened = time.perf_counter()
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._receiving_headers = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # called from uvicorn's ``except httptools.HttpParserError``: the parser says what is wrong
        error = sys.exc_info()[1]
        detail = str(error) if error is not None and str(error) else msg
        self.metrics.reject(UNKNOWN_DOMAIN, "bad_request")
        self._answer_and_close(400, "malformed_request", f"invalid HTTP request: {detail}")

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        self.metrics.reject(UNKNOWN_DOMAIN, "header_timeout")
        if not self._receiving_headers:  # not a byte of a request: nobody to answer
            self.transport.close()
            return
        self._answer_and_close(
            408,
            "request_timeout",
            f"the request headers did not arrive within {self.header_timeout_s:g} s",
        )

    def _answer_and_close(
        self,
        status: int,
        type_: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer with the JSON error body (the request never reaches the app) and close."""
        request_id = request_id_from(self.headers or [])
        body = json.dumps(error_body(status, type_, message)).encode()
        content = [STATUS_LINE[status]]
        for name, value in [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-request-id", request_id.encode()),
            *(headers or []),
        ]:
            content += [name, b": ", value, b"\r\n"]
        content += [b"\r\n", body]
        self.transport.write(b"".join(content))
        self.transport.close()
        seconds = time.perf_counter() - self._opened
        self.metrics.observe_request(UNKNOWN_DOMAIN, status, seconds)
        _access.info(
            "%d %s",
            status,
            type_,
            extra={
                "fields": {
                    "request_id": request_id,
                    "status": status,
                    "domain": UNKNOWN_DOMAIN,
                    "latency_ms": round(seconds * 1000, 3),
                    "client": self.client[0] if self.client else None,
                    "error": message,
                }
            },
        )


def http_protocol(settings: ServiceSettings, metrics: ServiceMetrics) -> type[ServiceHttpProtocol]:
    """:class:`ServiceHttpProtocol` bound to the settings and the app's metrics."""
    return type(
        "BoundServiceHttpProtocol",
        (ServiceHttpProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_connections": settings.max_connections,
            "retry_after_s": settings.retry_after_s,
            "metrics": metrics,
        },
    )
