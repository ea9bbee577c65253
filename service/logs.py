"""Logging: one JSON object per line (or plain text), the request id of the request being served
in every line logged while serving it, and the access log.

The request id lives in a context variable set by the middleware at the start of a request, so
every line logged in that request's task (and the tasks it starts) carries it, whichever logger
writes it (the service's, uvicorn's).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

__all__ = [
    "ACCESS_LOGGER",
    "REQUEST_ID",
    "BufferedStreamHandler",
    "JsonFormatter",
    "TextFormatter",
    "flush_log_buffers",
    "log_config",
    "request_id_from",
]

#: The id of the request being served, or None outside requests.
REQUEST_ID: ContextVar[str | None] = ContextVar("mdp_request_id", default=None)
ACCESS_LOGGER = "service.access"
#: An accepted ``X-Request-ID``: 1-128 characters that are safe in logs and headers.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id_from(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it is 1-128 safe characters, else a new random id
    (64 bits: ``random`` reseeds itself in a forked process; ``uuid4`` reads the kernel's
    random source, a system call per request)."""
    for name, value in headers:
        if name == b"x-request-id":
            if _SAFE_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return f"{random.getrandbits(64):016x}"


_JSON = json.JSONEncoder(default=str)  # non-ASCII escaped: one line of ASCII per record
_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the formatted second is reused within a second."""
    global _second
    whole = int(created)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((created - whole) * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The request id and the structured fields (``extra={"fields": {...}}``) of a record."""
    fields: dict[str, Any] = {}
    request_id = REQUEST_ID.get()
    if request_id is not None:
        fields["request_id"] = request_id
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        fields.update(extra)
    return fields


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "pid", "message", "request_id"?, ...fields,
    "exception"?}`` (``pid``: the process, one of several workers)"""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _JSON.encode(entry)


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> key=value ...`` and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: "
        line += record.getMessage()
        fields = _fields(record)
        if fields:  # strings JSON-quoted: a client's path cannot forge a log line
            line += " " + " ".join(
                f"{key}={json.dumps(value) if isinstance(value, str) else value}"
                for key, value in fields.items()
            )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class BufferedStreamHandler(logging.StreamHandler[Any]):
    """A stream handler that writes warnings and errors at once and holds other lines (at most
    256) until the next ``flush`` (the server flushes ten times a second): a system call per
    access line would cost more than the line itself."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING or len(self._pending) >= 256:
                self.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.acquire()
        try:
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self.stream.write(text)
        finally:
            self.release()
        super().flush()


def flush_log_buffers() -> None:
    """Write out what the service's buffered log handlers hold."""
    for name in ("uvicorn", "service", ACCESS_LOGGER):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, BufferedStreamHandler):
                handler.flush()


def log_config(level: str, log_format: str) -> dict[str, Any]:
    """``logging.config.dictConfig`` for uvicorn and the service: everything on stderr except
    the access log (stdout); uvicorn's own access log is off (the service writes its own)."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    level = level.upper()

    def handler(stream: str) -> dict[str, str]:
        return {
            "()": f"{BufferedStreamHandler.__module__}.{BufferedStreamHandler.__name__}",
            "formatter": "service",
            "stream": stream,
        }

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": {"()": f"{formatter.__module__}.{formatter.__name__}"}},
        "handlers": {"default": handler("ext://sys.stderr"), "access": handler("ext://sys.stdout")},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "propagate": False},
            "service": {"handlers": ["default"], "level": level, "propagate": False},
            ACCESS_LOGGER: {"handlers": ["access"], "level": level, "propagate": False},
        },
    }
