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
    "BodyTooLarge",
    "DeadlineExceeded",
    "ImageTooLarge",
    "MalformedRequest",
    "NotReady",
    "Overloaded",
    "ServiceError",
    "TooManyImages",
    "UnknownDomain",
    "UnsupportedMediaType",
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
    """A domain's queue is full; the app answers with the configured overload status."""

    status = 429
    type = "overloaded"
    reason = "queue_full"


class DeadlineExceeded(ServiceError):
    status = 504
    type = "deadline_exceeded"
    reason = "deadline"


class NotReady(ServiceError):
    status = 503
    type = "not_ready"
    reason = "not_ready"


#: Rejection reasons whose series are created up front for every domain.
REJECTION_REASONS: tuple[str, ...] = tuple(
    sorted({cls.reason for cls in ServiceError.__subclasses__()})
)


def error_response(
    status: int, type_: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(status, type_, message), status_code=status, headers=dict(headers or {})
    )
