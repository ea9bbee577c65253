"""Exception handlers: every error the app answers with gets the one error body
(:func:`service.errors.error_response`) and is counted as a rejection by domain and reason."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import NotReady, Overloaded, ServiceError, error_response
from service.settings import ServiceSettings
from service.state import ServiceState

__all__ = ["add_exception_handlers"]

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed"}


def add_exception_handlers(app: FastAPI) -> None:
    """Answer service errors, unknown routes and methods, and invalid parameters."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


def _reject(
    request: Request,
    status: int,
    type_: str,
    reason: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    state: ServiceState = request.app.state.service
    domain = state.domain_label(request.url.path)
    state.metrics.rejections.labels(domain=domain, reason=reason).inc()
    return error_response(status, type_, message, headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    settings: ServiceSettings = request.app.state.service.settings
    status = settings.overload_status if isinstance(exc, Overloaded) else exc.status
    headers = {}
    if isinstance(exc, Overloaded | NotReady):
        headers["Retry-After"] = str(settings.retry_after_s)
    return _reject(request, status, exc.type, exc.reason, exc.message, headers)


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
    return _reject(request, status, type_, type_, message, dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
        for error in exc.errors()
    ]
    message = "invalid request: " + "; ".join(problems)
    return _reject(request, 422, "invalid_request", "invalid_request", message)
