"""Errors the service answers with, and the one JSON shape every error response has
(:func:`multidomain.serving.error_body`, the TorchServe handler's too):

``{"error": {"code": <HTTP status>, "type": "<short_snake_case>", "message": "<sentence>"}}``
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse

from multidomain.serving import error_body

__all__ = [
    "REJECTION_REASONS",
    "BadImage",
    "BodyTimeout",
    "BodyTooLarge",
    "ClientClosedRequest",
    "DeadlineExceeded",
    "DecodeQueueFull",
    "ImageTooLarge",
    "InFlightLimit",
    "MalformedRequest",
    "NotReady",
    "Overloaded",
    "ServiceError",
    "TooManyImages",
    "Unauthorized",
    "UnknownDomain",
    "UnknownLevel",
    "UnsupportedMediaType",
    "WouldMissDeadline",
    "error_response",
]


class ServiceError(Exception):
    """An expected failure with its HTTP status, error type and rejection reason (metrics)."""

    status: int = 500
    type: str = "internal"
    reason: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownDomain(ServiceError):
    status = 404
    type = "unknown_domain"
    reason = "unknown_domain"


class UnknownLevel(ServiceError):
    """A request names a budget level the model does not serve (the message lists them)."""

    status = 422
    type = "unknown_level"
    reason = "unknown_level"


class UnsupportedMediaType(ServiceError):
    status = 415
    type = "unsupported_media_type"
    reason = "bad_media_type"


class MalformedRequest(ServiceError):
    status = 400
    type = "malformed_request"
    reason = "bad_request"


class BodyTooLarge(ServiceError):
    status = 413
    type = "body_too_large"
    reason = "too_large"


class TooManyImages(ServiceError):
    status = 413
    type = "too_many_images"
    reason = "too_many_images"


class BadImage(ServiceError):
    status = 422
    type = "bad_image"
    reason = "bad_image"


class ImageTooLarge(ServiceError):
    status = 422
    type = "image_too_large"
    reason = "too_many_pixels"


class Overloaded(ServiceError):
    """A domain's queue is full; the app answers with the configured overload status (and
    ``Retry-After``), as for every subclass."""

    status = 429
    type = "overloaded"
    reason = "queue_full"


class InFlightLimit(Overloaded):
    """Too many prediction requests in progress (all domains, or one domain), refused before
    the body is read."""

    reason = "in_flight"


class WouldMissDeadline(Overloaded):
    """The images queued ahead of a request, at the recent compute time per image, would not
    be computed before its deadline: refused at once instead of timing out (504) later."""

    reason = "would_miss_deadline"


class DecodeQueueFull(Overloaded):
    """The preprocessing threads have more images waiting than ``preprocess_queue_size``."""

    reason = "decode_queue_full"


class Unauthorized(ServiceError):
    """No API key, or not an accepted one (answered with ``WWW-Authenticate``)."""

    status = 401
    type = "unauthorized"
    reason = "unauthorized"


class BodyTimeout(ServiceError):
    """The request body did not arrive within ``body_timeout_s``."""

    status = 408
    type = "request_timeout"
    reason = "body_timeout"


class ClientClosedRequest(ServiceError):
    """The client went away before its answer (nginx's 499: recorded, never sent)."""

    status = 499
    type = "client_closed_request"
    reason = "client_closed"


class DeadlineExceeded(ServiceError):
    status = 504
    type = "deadline_exceeded"
    reason = "deadline"


class NotReady(ServiceError):
    status = 503
    type = "not_ready"
    reason = "not_ready"


def _subclasses(cls: type[ServiceError]) -> list[type[ServiceError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _subclasses(child))]


#: Rejection reasons whose series are created up front for every domain.
REJECTION_REASONS: tuple[str, ...] = tuple(
    sorted({cls.reason for cls in _subclasses(ServiceError)})
)


def error_response(
    status: int, type_: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(status, type_, message), status_code=status, headers=dict(headers or {})
    )
