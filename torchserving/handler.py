"""TorchServe custom handler: the same multi-domain artifact the FastAPI service serves.

Packaged by :func:`torchserving.export.export_mar` into ``<name>.mar`` (as
``torchserve_handler.py``) together with the artifact (``weights.safetensors`` +
``manifest.json``) and a copy of the ``multidomain`` package, so the worker needs no project
install: only torch, safetensors, numpy and Pillow. For the same reason this module imports
only ``multidomain`` (its serving core, :mod:`multidomain.serving`, is shared with the FastAPI
service): nothing from FastAPI, pydantic, ``service`` or the rest of ``torchserving``.

Requests (``POST /predictions/<model>``), the domain taken from the request:

* raw image body (``Content-Type: image/*`` or ``application/octet-stream``) with the header
  ``X-Domain: <domain>`` (the main path); optional header ``X-Top-K`` (default 5);
* JSON body (``Content-Type: application/json``):
  ``{"domain": "<domain>", "image": "<base64>", "top_k": 3}``; the header ``X-Domain`` may
  name the domain instead (if both are given they must agree);
* multipart form with the image in the field ``file`` (or ``data``); the domain in the header
  ``X-Domain`` or the form field ``domain``, optional form field ``top_k``.

TorchServe 0.12 does not hand query parameters of a POST to the handler: ``?domain=`` is ignored.

Response: the FastAPI service's ``PredictResponse``,
``{"model", "version", "domain", "predictions": [{"label", "index", "probability"}, ...]}``.
Bad input answers with its own 4xx status and the service's error body
``{"error": {"code", "type", "message"}}``, per request: one bad request in a TorchServe batch
does not fail the others. Codes: no domain 400, unknown domain 404, unsupported media type 415,
undecodable image or too many pixels 422, invalid ``top_k`` 422.

TorchServe batches requests of every domain together; :meth:`MultiDomainHandler.handle` decodes
each request (``preprocess``), groups the batch by domain, runs each domain's compact subnetwork
once on its group (``predict``) and answers each request (``encode``): the FastAPI service's
three steps under the same names.

Settings (:class:`multidomain.serving.ServingSettings`, with the FastAPI service's names and
defaults): the ``handler:`` section of the archive's model config (written at export time), each
overridden by its ``MDP_*`` environment variable: ``torch_threads`` (``MDP_TORCH_THREADS``,
default 1) and ``max_image_pixels`` (``MDP_MAX_IMAGE_PIXELS``, default 4096*4096), which the
FastAPI service reads too, ``default_top_k`` (``MDP_DEFAULT_TOP_K``, default 5) and
``materialized_domains`` (``MDP_MATERIALIZED_DOMAINS``, default 0: every domain folded from the
one shared weight set per batch; ``all`` keeps every domain's folded network).
"""

from __future__ import annotations

import base64
import binascii
import gc
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

import multidomain
from multidomain.artifact import load_artifact
from multidomain.preprocess import ImageDecodeError, ImageTooLargeError
from multidomain.serving import (
    ServedArtifact,
    ServedDomain,
    ServingSettings,
    UnknownDomainError,
    class_probabilities,
    error_body,
)

__all__ = [
    "DOMAIN_HEADER",
    "TOP_K_HEADER",
    "HandlerConfig",
    "MultiDomainHandler",
    "RequestError",
    "TorchServeContext",
    "handle",
]

logger = logging.getLogger(__name__)

DOMAIN_HEADER = "x-domain"
TOP_K_HEADER = "x-top-k"
#: Parameter names TorchServe gives the image: the raw body, or a multipart field.
IMAGE_FIELDS = ("body", "file", "data")
#: Raw-body media types read as an image (besides ``image/*``).
RAW_TYPES = frozenset({"", "application/octet-stream"})
JSON_TYPE = "application/json"
_JSON_SEPARATORS = (",", ":")


class TorchServeContext(Protocol):
    """The part of ``ts.context.Context`` the handler uses."""

    @property
    def system_properties(self) -> dict[str, Any]: ...

    model_yaml_config: dict[str, Any] | None

    def get_all_request_header(self, idx: int) -> dict[str, Any]: ...

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None: ...

    def set_response_content_type(self, idx: int, value: str) -> None: ...


class RequestError(Exception):
    """Bad input of one request: its HTTP status, error type and message."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.type, self.message)


_INTERNAL = RequestError(500, "internal", "internal error")


def _malformed(message: str) -> RequestError:
    return RequestError(400, "malformed_request", message)


class HandlerConfig(ServingSettings):
    """The serving settings from the model config's ``handler:`` section, ``MDP_<NAME>``
    variables overriding it."""

    SECTION: ClassVar[str] = "handler"


@dataclass(frozen=True)
class _Request:
    domain: ServedDomain
    image: bytes
    top_k: int


class MultiDomainHandler:
    """Loads the artifact once (``initialize``), then answers batches (``handle``)."""

    def __init__(self) -> None:
        self.initialized = False
        self.config = HandlerConfig()
        self.model: ServedArtifact | None = None

    @property
    def domains(self) -> Mapping[str, ServedDomain]:
        return {} if self.model is None else self.model.domains

    def initialize(self, context: TorchServeContext) -> None:
        """Verify and load the artifact in the model dir, build every domain's compact
        subnetwork and run one image through each. Raises ``ArtifactError``/``ValueError``."""
        started = time.perf_counter()
        yaml_config = context.model_yaml_config or {}
        section = yaml_config.get("handler") if isinstance(yaml_config, dict) else None
        self.config = HandlerConfig.load(section if isinstance(section, dict) else None)
        torch.set_num_threads(self.config.torch_threads)
        model_dir = Path(str(context.system_properties["model_dir"]))
        model = ServedArtifact.build(load_artifact(model_dir), self.config.materialized_domains)
        for domain in model.domains.values():  # warm-up
            class_probabilities(
                domain.network, torch.zeros(1, *domain.input_shape, dtype=domain.input_dtype)
            )
        self.model = model
        self.initialized = True
        gc.collect()  # the loaded model lives as long as the worker: no full collector passes
        gc.freeze()  # over it (they paused requests for ~200 ms in the FastAPI service)
        logger.info(
            "loaded %s %s from %s: domains %s, torch threads %d, weights resident %.2f MiB "
            "(artifact %.2f MiB), in %.2f s (multidomain from %s)",
            model.name,
            model.version,
            model_dir,
            ", ".join(model.domains),
            torch.get_num_threads(),
            model.resident_weight_bytes() / 2**20,
            model.artifact_weight_bytes / 2**20,
            time.perf_counter() - started,
            Path(multidomain.__file__).parent,
        )

    # -- requests -----------------------------------------------------------------------------

    def handle(self, data: list[dict[str, Any]], context: TorchServeContext) -> list[str]:
        """One JSON response per request, in order; each request's status set on ``context``."""
        responses: list[dict[str, Any] | None] = [None] * len(data)
        tensors: dict[int, Tensor] = {}
        requests: dict[int, _Request] = {}
        for idx, row in enumerate(data):
            try:
                request = self._parse(row, _headers(context, idx))
                tensors[idx] = self.preprocess(request)
                requests[idx] = request
            except RequestError as exc:
                responses[idx] = self._fail(context, idx, exc)
            except Exception:  # never fail the whole batch (TorchServe's 503) for one request
                logger.exception("preprocessing request %d of the batch failed", idx)
                responses[idx] = self._fail(context, idx, _INTERNAL)
        groups: dict[str, list[int]] = {}
        for idx, request in requests.items():
            groups.setdefault(request.domain.name, []).append(idx)
        logger.debug(
            "batch of %d: %s, %d rejected",
            len(data),
            ", ".join(f"{name} x{len(indices)}" for name, indices in groups.items()),
            len(data) - len(requests),
        )
        for name, indices in groups.items():
            domain = self.domains[name]
            try:
                probabilities = self.predict(domain, [tensors[i] for i in indices])
            except Exception:
                logger.exception("forward pass of domain %s failed", name)
                for idx in indices:
                    responses[idx] = self._fail(context, idx, _INTERNAL)
                continue
            for idx, row in zip(indices, probabilities, strict=True):
                responses[idx] = self.encode(context, idx, domain, row, requests[idx].top_k)
        return [json.dumps(r, separators=_JSON_SEPARATORS) for r in responses]

    def preprocess(self, request: _Request) -> Tensor:
        """decode: the request's image -> its domain's uint8 input; ``RequestError`` 422."""
        try:
            return request.domain.preprocess(request.image, self.config.max_image_pixels)
        except ImageTooLargeError as exc:
            raise RequestError(422, "image_too_large", str(exc)) from None
        except ImageDecodeError as exc:
            raise RequestError(422, "bad_image", str(exc)) from None

    @staticmethod
    def predict(domain: ServedDomain, images: Sequence[Tensor]) -> Tensor:
        """predict: class probabilities of one domain's images, one forward pass."""
        return class_probabilities(domain.network, torch.stack(list(images)))

    def encode(
        self,
        context: TorchServeContext,
        idx: int,
        domain: ServedDomain,
        probabilities: Tensor,
        top_k: int,
    ) -> dict[str, Any]:
        """encode: the answer to one request (the FastAPI service's ``PredictResponse``)."""
        assert self.model is not None
        context.set_response_status(200, "OK", idx)
        context.set_response_content_type(idx, JSON_TYPE)
        return self.model.answer(domain, probabilities, top_k)

    def _parse(self, row: Mapping[str, Any], headers: Mapping[str, str]) -> _Request:
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        body: Any = next((row[f] for f in IMAGE_FIELDS if row.get(f) is not None), None)
        is_json = isinstance(body, dict)
        fields: Mapping[str, Any] = body if is_json else {}
        if not is_json and media_type == JSON_TYPE:  # not an object, or not valid JSON
            raise _malformed("the JSON body must be an object with 'domain' and 'image' fields")
        image = bytes(body) if isinstance(body, bytes | bytearray) else None
        top_k = self._top_k(_first(headers.get(TOP_K_HEADER), fields.get("top_k"), row, "top_k"))
        domain = self._domain(headers.get(DOMAIN_HEADER), fields.get("domain"), row)
        if is_json:
            image = _base64_image(fields.get("image"))
        elif image is None or not (
            media_type.startswith("image/")
            or media_type in RAW_TYPES
            or media_type == "multipart/form-data"
        ):
            raise RequestError(
                415,
                "unsupported_media_type",
                f"unsupported media type {media_type or 'none'!r}: send a raw image/* body with "
                "the header X-Domain, or application/json with 'domain' and base64 'image'",
            )
        return _Request(domain, image, top_k)

    def _domain(self, header: str | None, field: Any, row: Mapping[str, Any]) -> ServedDomain:
        if field is not None and not isinstance(field, str):
            raise _malformed("the JSON field 'domain' must be a string")
        if header is not None and field is not None and header.strip() != field:
            raise _malformed(
                f"the header X-Domain ({header.strip()!r}) and the JSON field 'domain' "
                f"({field!r}) disagree"
            )
        name = _first(header, field, row, "domain")
        if name is None or not str(name).strip():
            raise _malformed(
                "no domain: send the header X-Domain (or the JSON or form field 'domain')"
            )
        if self.model is None:
            raise RuntimeError("the handler is not initialised")
        try:
            return self.model.domain(str(name).strip())
        except UnknownDomainError as exc:
            raise RequestError(404, "unknown_domain", str(exc)) from None

    def _top_k(self, raw: Any) -> int:
        if raw is None:
            return self.config.default_top_k
        text = str(raw).strip()
        if isinstance(raw, bool) or not text.isdigit() or int(text) < 1:
            raise RequestError(
                422,
                "invalid_request",
                f"invalid request: top_k must be an integer >= 1, got {raw!r}",
            )
        return int(text)

    @staticmethod
    def _fail(context: TorchServeContext, idx: int, error: RequestError) -> dict[str, Any]:
        context.set_response_status(error.status, HTTPStatus(error.status).phrase, idx)
        context.set_response_content_type(idx, JSON_TYPE)
        return error.body()


def _headers(context: TorchServeContext, idx: int) -> dict[str, str]:
    """The request's HTTP headers, names lower-cased (TorchServe also lists each parameter's
    content type under the parameter's name, as a dict: those entries are skipped)."""
    return {
        str(k).lower(): v
        for k, v in context.get_all_request_header(idx).items()
        if isinstance(v, str)
    }


def _first(header: Any, field: Any, row: Mapping[str, Any], form_field: str) -> Any:
    """Header, else JSON field, else multipart form field (TorchServe gives form fields as
    request parameters, their values as bytes)."""
    for value in (header, field, row.get(form_field)):
        if value is not None:
            if isinstance(value, bytes | bytearray):
                return bytes(value).decode("utf-8", "replace")
            return value
    return None


def _base64_image(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise _malformed("the JSON field 'image' must hold the image as a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed("the JSON field 'image' is not valid base64") from None


_HANDLER = MultiDomainHandler()


def handle(data: list[dict[str, Any]] | None, context: TorchServeContext) -> list[str] | None:
    """TorchServe's entry point: ``handle(None, context)`` initialises, then batches follow."""
    if not _HANDLER.initialized:
        _HANDLER.initialize(context)
    if data is None:
        return None
    return _HANDLER.handle(data, context)
