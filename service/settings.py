"""Service settings: environment variables with the ``MDP_`` prefix, validated at start-up.

The settings the TorchServe handler reads too (``torch_threads``, ``max_image_pixels``,
``default_top_k``, ``materialized_domains``) take their names and defaults from
:class:`multidomain.serving.ServingSettings`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from multidomain.serving import ALL_DOMAINS, DEFAULTS, ENV_PREFIX, MAX_BODY_BYTES, env_name

__all__ = [
    "ServiceSettings",
    "SettingsError",
    "describe_validation_error",
    "load_settings",
    "unknown_variables",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SettingsError(ValueError):
    """Invalid settings; the message names every bad variable, one per line."""


class ServiceSettings(BaseSettings):
    """Every knob of the inference service. Each field ``x`` is read from ``MDP_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", protected_namespaces=(), validate_default=True
    )

    model_store: Path = Field(
        default=Path("model_store"), description="Folder holding exported models."
    )
    model_name: str = Field(default="default", min_length=1, description="Model folder to serve.")
    model_version: str = Field(
        default="latest", min_length=1, description="Version folder or 'latest'."
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="Interface to bind.")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to bind.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes serving the port, each with its own event loop, engine "
        "and threads (more than 1: a supervisor process starts them, see service.workers).",
    )
    torch_threads: int = Field(
        default=DEFAULTS.torch_threads,
        ge=1,
        le=256,
        description="torch intra-op threads of the compute thread; 1 leaves the other cores to "
        "the event loop and preprocessing.",
    )
    preprocess_threads: int = Field(
        default=2, ge=1, le=64, description="Threads that decode and preprocess images."
    )
    max_batch_size: int = Field(
        default=32, ge=1, le=256, description="Largest micro-batch per domain."
    )
    inline_decode_bytes: int = Field(
        default=16384,
        ge=0,
        description="A request whose image bytes total at most this is decoded on the event "
        "loop, skipping the hop to the preprocessing threads (cheaper for small images); 0 "
        "sends every image to the threads.",
    )
    max_wait_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="Longest wait of a micro-batch, from its oldest image on, for images of its "
        "domain that are still being preprocessed.",
    )
    queue_size: int = Field(
        default=256, ge=1, description="Images queued per domain before shedding."
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, description="Per-request deadline."
    )
    shed_late: bool = Field(
        default=True,
        description="Deadline-aware admission (on/off): refuse at once (429) a request whose "
        "images, behind those already queued, would at the recent compute time per image "
        "finish after its deadline, instead of queueing it to time out (504).",
    )
    degrade: bool = Field(
        default=False,
        description="Graceful degradation (on/off): under load, batches run at a cheaper "
        "budget level of a nested artifact before any request is shed (service.degrade).",
    )
    degrade_high: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Queue delay, as a fraction of the request deadline, above which "
        "degradation moves one level down.",
    )
    degrade_low: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Queue delay, as a fraction of the request deadline, below which "
        "degradation moves one level back up.",
    )
    degrade_hold_ms: float = Field(
        default=500.0,
        ge=0,
        le=600000,
        description="Least time between two level changes of graceful degradation.",
    )
    max_body_bytes: int = Field(
        default=MAX_BODY_BYTES, ge=1024, description="Largest request body."
    )
    max_image_pixels: int = Field(
        default=DEFAULTS.max_image_pixels,
        ge=1,
        description="Largest width*height, checked before decoding.",
    )
    materialized_domains: int = Field(
        default=DEFAULTS.materialized_domains,
        ge=0,
        description="Domains whose folded network is kept between batches (most recently used; "
        "'all' keeps every domain's). 0 folds each batch's domain from the one shared weight "
        "set: least memory.",
    )
    max_batch_images: int = Field(default=64, ge=1, description="Most images in one batch request.")
    overload_status: int = Field(
        default=429, description="Status when a queue is full: 429 or 503."
    )
    retry_after_s: int = Field(
        default=1, ge=0, le=3600, description="Retry-After on overload responses."
    )
    shutdown_grace_s: int = Field(
        default=10,
        ge=0,
        le=3600,
        description="Seconds in-flight requests get to finish on shutdown.",
    )
    drain_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Seconds between SIGTERM (readiness 503 at once) and closing the listener, "
        "while still serving, so that load balancers stop sending new requests first.",
    )
    max_in_flight: int = Field(
        default=256,
        ge=1,
        description="Prediction requests in progress in this process (all domains), from their "
        "first byte to their answer; more are refused with 429 before the body is read.",
    )
    max_in_flight_per_domain: int = Field(
        default=128,
        ge=1,
        description="Prediction requests of one domain in progress in this process.",
    )
    preprocess_queue_size: int = Field(
        default=128,
        ge=1,
        description="Images waiting for or in decoding on the preprocessing threads; a request "
        "whose images do not fit is refused with 429.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="Open TCP connections; a connection beyond it is answered 503 and closed.",
    )
    header_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="A connection whose request headers are not complete this long after the "
        "request's first byte (or after the connection opened) is closed.",
    )
    body_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="A request body not received in full this long after the request started "
        "is answered 408.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Log level of the service and uvicorn."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="One JSON object per log line, or plain text."
    )
    access_log_sample: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of successful (< 400) requests that get an access log line; "
        "every other request is always logged.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="sha256 hex digests of the accepted API keys, comma-separated; empty with "
        "no api_keys_file: no authentication.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File of sha256 hex digests of accepted API keys, one per line ('#' "
        "comments), added to api_keys.",
    )
    auth_metrics: bool = Field(
        default=False, description="With API keys: /metrics needs a key too."
    )
    auth_docs: bool = Field(
        default=True, description="With API keys: /docs, /redoc and /openapi.json need a key."
    )
    model_poll_s: float = Field(
        default=0.0,
        ge=0,
        le=86400,
        description="With model_version 'latest': seconds between checks of the store for a "
        "newer complete version, which is then loaded, warmed up and switched to without "
        "downtime; 0: only SIGHUP makes the service check.",
    )
    default_top_k: int = Field(
        default=DEFAULTS.default_top_k,
        ge=1,
        description="Classes answered when a request names no top_k (the TorchServe handler "
        "reads the same variable).",
    )
    model_digest: str | None = Field(
        default=None,
        description="sha256 of the weights file the service must serve (the manifest's "
        "weights_sha256); any other artifact is refused.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("materialized_domains", mode="before")
    @classmethod
    def _all_domains(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "all":
            return ALL_DOMAINS
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in re.split(r"[\s,]+", value) if part]
        return value

    @field_validator("api_keys")
    @classmethod
    def _api_keys_are_digests(cls, value: list[str]) -> list[str]:
        return [_sha256_digest(key, "each API key") for key in value]

    @field_validator("model_digest")
    @classmethod
    def _model_digest(cls, value: str | None) -> str | None:
        return None if value in (None, "") else _sha256_digest(value, "the model digest")

    @field_validator("overload_status")
    @classmethod
    def _overload_status(cls, value: int) -> int:
        if value not in (429, 503):
            raise ValueError("must be 429 or 503")
        return value

    @model_validator(mode="after")
    def _degrade_band(self) -> ServiceSettings:
        if self.degrade_low >= self.degrade_high:
            raise ValueError(
                f"MDP_DEGRADE_LOW ({self.degrade_low}) must be below MDP_DEGRADE_HIGH "
                f"({self.degrade_high})"
            )
        return self

    @model_validator(mode="after")
    def _batch_fits_queues(self) -> ServiceSettings:
        for name in ("queue_size", "preprocess_queue_size"):
            if self.max_batch_images > getattr(self, name):
                raise ValueError(
                    f"max_batch_images ({self.max_batch_images}) must not exceed {name} "
                    f"({getattr(self, name)}): a larger batch request could never be queued"
                )
        if self.max_in_flight_per_domain > self.max_in_flight:
            raise ValueError(
                f"max_in_flight_per_domain ({self.max_in_flight_per_domain}) must not exceed "
                f"max_in_flight ({self.max_in_flight})"
            )
        return self

    @model_validator(mode="after")
    def _read_api_keys_file(self) -> ServiceSettings:
        if self.api_keys_file is None:
            return self
        try:
            text = self.api_keys_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read api_keys_file {self.api_keys_file}: {exc}") from None
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        where = f"each line of {self.api_keys_file}"
        keys = [_sha256_digest(line, where) for line in lines if line]
        if not keys:
            raise ValueError(f"api_keys_file {self.api_keys_file} holds no key digest")
        self.api_keys = [*self.api_keys, *keys]
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)


def _sha256_digest(value: str, what: str) -> str:
    digest = value.strip().lower()
    if not _SHA256.match(digest):
        raise ValueError(
            f"{what} must be a sha256 hex digest (64 hex digits), not {len(value)} characters; "
            "store digests, never the keys themselves (sha256sum)"
        )
    return digest


def load_settings(**overrides: Any) -> ServiceSettings:
    """Settings from the environment, ``overrides`` taking precedence; ``SettingsError`` lists
    every invalid variable by its environment name, and every ``MDP_*`` variable that is no
    setting (with the closest known name)."""
    problems = unknown_variables(os.environ)
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        problems += describe_validation_error(exc).splitlines()[1:]
    if problems:
        raise SettingsError("invalid service settings:\n" + "\n".join(problems))
    return settings


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``MDP_*`` variable that names no setting, with the closest known name."""
    known = [env_name(name) for name in ServiceSettings.model_fields]
    lines = []
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see docs/operations.md"
        lines.append(f"  {variable}: unknown setting{hint}")
    return lines


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        where = env_name(field) if field else "settings"
        value = f" (got {error['input']!r})" if field and "input" in error else ""
        lines.append(f"  {where}: {error['msg']}{value}")
    return "invalid service settings:\n" + "\n".join(lines)
