"""Exception handlers: every error the app answers with gets the one error body
(:func:`service.errors.error_response`) and is counted as a rejection by domain and reason."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.auth import WWW_AUTHENTICATE
from service.errors import (
    BodyTimeout,
    ClientClosedRequest,
    NotReady,
    Overloaded,
    ServiceError,
    Unauthorized,
    error_response,
)
from service.oip import OIP_PREFIX, oip_status
from service.settings import ServiceSettings
from service.state import ServiceState

__all__ = ["add_exception_handlers", "service_error_response"]

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed"}


def add_exception_handlers(app: FastAPI) -> None:
    """Answer service errors, unknown routes and methods, invalid parameters, and clients that
    went away while their body was read (499, which uvicorn does not send: nobody listens)."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)


def service_error_response(
    exc: ServiceError, settings: ServiceSettings, *, oip: bool = False
) -> JSONResponse:
    """The answer to a service error: its status (the configured one for overload), error body
    (the Open Inference Protocol's with ``oip``) and headers (``Retry-After``,
    ``WWW-Authenticate``, ``Connection: close``)."""
    status = settings.overload_status if isinstance(exc, Overloaded) else exc.status
    headers = {}
    if isinstance(exc, Overloaded | NotReady):
        headers["Retry-After"] = str(settings.retry_after_s)
    elif isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    elif isinstance(exc, BodyTimeout):
        headers["Connection"] = "close"  # the rest of a slow body is not worth waiting for
    return _respond(oip, status, exc.type, exc.message, headers)


def _respond(
    oip: bool, status: int, type_: str, message: str, headers: dict[str, str]
) -> JSONResponse:
    """The one error body, or under ``/v2`` the Open Inference Protocol's ``{"error": ...}``."""
    if oip:
        return JSONResponse({"error": message}, status_code=oip_status(status), headers=headers)
    return error_response(status, type_, message, headers)


def _is_oip(request: Request) -> bool:
    return request.url.path.startswith(OIP_PREFIX)


def _count(request: Request, reason: str) -> None:
    state: ServiceState = request.app.state.service
    state.metrics.reject(state.domain_label(request.url.path), reason)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    _count(request, exc.reason)
    return service_error_response(exc, request.app.state.service.settings, oip=_is_oip(request))


async def _client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    return await _service_error(
        request, ClientClosedRequest("the client closed the connection while sending the body")
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no route {request.method} {request.url.path}; see /docs for the API"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail) if exc.detail else HTTPStatus(status).phrase
    type_ = _HTTP_TYPES.get(status, "http_error")
    _count(request, type_)
    return _respond(_is_oip(request), status, type_, message, dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
        for error in exc.errors()
    ]
    _count(request, "invalid_request")
    message = "invalid request: " + "; ".join(problems)
    return _respond(_is_oip(request), 422, "invalid_request", message, {})
