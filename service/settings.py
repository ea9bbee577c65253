"""Service settings: environment variables with the ``MDP_`` prefix, validated at start-up.

The settings the TorchServe handler reads too (``torch_threads``, ``max_image_pixels``) take
their names and defaults from :class:`multidomain.serving.ServingSettings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from multidomain.serving import DEFAULTS, ENV_PREFIX, MAX_BODY_BYTES, env_name

__all__ = [
    "ServiceSettings",
    "SettingsError",
    "describe_validation_error",
    "load_settings",
]


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
    max_body_bytes: int = Field(
        default=MAX_BODY_BYTES, ge=1024, description="Largest request body."
    )
    max_image_pixels: int = Field(
        default=DEFAULTS.max_image_pixels,
        ge=1,
        description="Largest width*height, checked before decoding.",
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
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Log level of the service and uvicorn."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("overload_status")
    @classmethod
    def _overload_status(cls, value: int) -> int:
        if value not in (429, 503):
            raise ValueError("must be 429 or 503")
        return value

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> ServiceSettings:
        if self.max_batch_images > self.queue_size:
            raise ValueError(
                f"max_batch_images ({self.max_batch_images}) must not exceed queue_size "
                f"({self.queue_size}): a larger batch request could never be queued"
            )
        return self


def load_settings(**overrides: Any) -> ServiceSettings:
    """Settings from the environment, ``overrides`` taking precedence; ``SettingsError`` lists
    every invalid variable by its environment name."""
    try:
        return ServiceSettings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        where = env_name(field) if field else "settings"
        value = f" (got {error['input']!r})" if field and "input" in error else ""
        lines.append(f"  {where}: {error['msg']}{value}")
    return "invalid service settings:\n" + "\n".join(lines)
