"""Reading image bytes out of a request: a raw ``image/*`` body or ``multipart/form-data``,
never more than ``max_body_bytes`` in memory (the declared Content-Length is checked first,
then the bytes actually received are counted). A multipart body must end with its closing
boundary: a truncated one is malformed (400), not a body without the file (415)."""

from __future__ import annotations

import re

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
        return await read_body(request, max_body_bytes)
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


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (``BodyTooLarge`` beyond)."""
    _check_declared_length(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
    return bytes(body)


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


class _MultipartReceive:
    """``receive`` that counts the body's bytes against ``limit`` and watches for the closing
    delimiter ``--<boundary>--`` (across chunks)."""

    def __init__(self, receive: Receive, limit: int, boundary: bytes) -> None:
        self._receive = receive
        self._limit = limit
        self._closing = b"--" + boundary + b"--"
        self._tail = b""
        self.received = 0
        self.closed = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            self.received += len(body)
            if self.received > self._limit:
                raise BodyTooLarge(
                    f"the request body is larger than the limit of {self._limit} bytes"
                )
            if not self.closed and body:
                window = self._tail + body
                self.closed = self._closing in window
                self._tail = window[-(len(self._closing) - 1) :]
        return message


async def _read_files(request: Request, field: str, limit: int) -> list[bytes]:
    _check_declared_length(request, limit)
    boundary = _BOUNDARY.search(request.headers.get("content-type", ""))
    if boundary is None:
        raise MalformedRequest("malformed multipart body: the Content-Type names no boundary")
    receive = _MultipartReceive(request.receive, limit, boundary[1].encode("latin-1"))
    try:
        form: FormData = await Request(request.scope, receive).form()
    except HTTPException as exc:  # Starlette's answer to a malformed multipart body
        raise MalformedRequest(f"malformed multipart body: {exc.detail}") from None
    if not receive.closed:
        await form.close()
        raise MalformedRequest(
            "malformed multipart body: it ends before its closing boundary (truncated upload?)"
        )
    try:
        files = []
        for value in form.getlist(field):
            if not isinstance(value, UploadFile):
                raise UnsupportedMediaType(f"the field '{field}' must hold file uploads, not text")
            files.append(await value.read())
        return files
    finally:
        await form.close()
