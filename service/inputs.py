"""Reading image bytes out of a request: a raw ``image/*`` body or ``multipart/form-data``,
never more than ``max_body_bytes`` in memory (the declared Content-Length is checked first,
then the bytes actually received are counted)."""

from __future__ import annotations

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Receive

from service.errors import BodyTooLarge, MalformedRequest, TooManyImages, UnsupportedMediaType

MULTIPART = "multipart/form-data"
SINGLE_FIELD = "file"
BATCH_FIELD = "files"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_single_image(request: Request, max_body_bytes: int) -> bytes:
    """The image of a single-prediction request (raw ``image/*`` body, or field ``file``)."""
    kind = media_type(request)
    if kind.startswith("image/"):
        return await _read_body(request, max_body_bytes)
    if kind == MULTIPART:
        files = await _read_files(request, SINGLE_FIELD, max_body_bytes)
        if len(files) != 1:
            raise UnsupportedMediaType(
                f"the multipart body must hold exactly one file in the field '{SINGLE_FIELD}', "
                f"found {len(files)}"
            )
        return files[0]
    raise UnsupportedMediaType(
        f"unsupported media type {kind or 'none'!r}: send a raw image/* body or "
        f"multipart/form-data with a file field '{SINGLE_FIELD}'"
    )


async def read_batch_images(request: Request, max_body_bytes: int, max_images: int) -> list[bytes]:
    """The images of a batch request: one or more multipart fields ``files``."""
    kind = media_type(request)
    if kind != MULTIPART:
        raise UnsupportedMediaType(
            f"unsupported media type {kind or 'none'!r}: send multipart/form-data with one "
            f"file field '{BATCH_FIELD}' per image"
        )
    files = await _read_files(request, BATCH_FIELD, max_body_bytes)
    if not files:
        raise UnsupportedMediaType(f"the multipart body has no file in the field '{BATCH_FIELD}'")
    if len(files) > max_images:
        raise TooManyImages(f"{len(files)} images in one request; at most {max_images} are allowed")
    return files


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise MalformedRequest(f"invalid Content-Length header {declared!r}")
    if int(declared) > limit:
        raise BodyTooLarge(f"the request body has {declared} bytes; the limit is {limit}")


async def _read_body(request: Request, limit: int) -> bytes:
    _check_declared_length(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
    return bytes(body)


def _limited(receive: Receive, limit: int) -> Receive:
    received = 0

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
        return message

    return limited_receive


async def _read_files(request: Request, field: str, limit: int) -> list[bytes]:
    _check_declared_length(request, limit)
    limited = Request(request.scope, _limited(request.receive, limit))
    try:
        form: FormData = await limited.form()
    except HTTPException as exc:  # Starlette's answer to a malformed multipart body
        raise MalformedRequest(f"malformed multipart body: {exc.detail}") from None
    try:
        files = []
        for value in form.getlist(field):
            if not isinstance(value, UploadFile):
                raise UnsupportedMediaType(f"the field '{field}' must hold file uploads, not text")
            files.append(await value.read())
        return files
    finally:
        await form.close()
