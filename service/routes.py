"""The HTTP API: the router, its dependencies (``State``, ``TopK``) and the route handlers.

A prediction runs the three steps of :mod:`service.model` and :mod:`service.engine`: decode
(``ServedModel.preprocess``, on the preprocessing threads), predict (``InferenceEngine.predict``,
micro-batched per domain) and encode (``ServedModel.encode``). The routes themselves only read
the request, hold it to its deadline and gather the images.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel
from torch import Tensor

from multidomain.serving import DEFAULTS, ServedDomain
from service.errors import DeadlineExceeded, error_response
from service.inputs import BATCH_FIELD, SINGLE_FIELD, read_batch_images, read_single_image
from service.model import ServedModel
from service.schemas import (
    BatchPredictResponse,
    DomainDetail,
    ErrorResponse,
    Health,
    ModelSummary,
    PredictResponse,
)
from service.state import ServiceState

__all__ = ["State", "TopK", "router"]

T = TypeVar("T")


async def _state(request: Request) -> ServiceState:
    # async: FastAPI would run a plain function on its thread pool, a thread hop per request
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(_state)]
TopK = Annotated[
    int,
    Query(ge=1, description="Number of classes to return; larger values return every class."),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed request body.",
        404: "Unknown domain (the message lists the known ones).",
        413: "Request body or number of images over the limit.",
        415: "Unsupported media type.",
        422: "Undecodable image, too many pixels, or invalid parameters.",
        429: "The domain's queue is full; retry after Retry-After seconds.",
        503: "Not ready (loading or shutting down), or overloaded when so configured.",
        504: "The request's deadline passed.",
    }.items()
}
_BINARY = {"type": "string", "format": "binary"}
_SINGLE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": _BINARY},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {SINGLE_FIELD: _BINARY},
                    "required": [SINGLE_FIELD],
                }
            },
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {BATCH_FIELD: {"type": "array", "items": _BINARY, "minItems": 1}},
                    "required": [BATCH_FIELD],
                }
            }
        },
    }
}

router = APIRouter()


@router.post(
    "/v1/domains/{domain}/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_SINGLE_BODY,
    summary="Classify one image of a domain",
)
async def predict(
    domain: str, request: Request, state: State, top_k: TopK = DEFAULTS.default_top_k
) -> Response:
    model, served, deadline = _begin(state, domain)
    data = await _within(deadline, read_single_image(request, state.settings.max_body_bytes))
    (probabilities,) = await _infer(state, served, [data], deadline)
    return _json(model.encode(served, probabilities, top_k))


@router.post(
    "/v1/domains/{domain}/predict/batch",
    response_model=BatchPredictResponse,
    responses=_ERRORS,
    openapi_extra=_BATCH_BODY,
    summary="Classify several images of one domain",
)
async def predict_batch(
    domain: str, request: Request, state: State, top_k: TopK = DEFAULTS.default_top_k
) -> Response:
    model, served, deadline = _begin(state, domain)
    settings = state.settings
    images = await _within(
        deadline,
        read_batch_images(request, settings.max_body_bytes, settings.max_batch_images),
    )
    rows = await _infer(state, served, images, deadline)
    return _json(model.encode_batch(served, rows, top_k))


@router.get("/v1/domains", response_model=ModelSummary, responses=_ERRORS, summary="The model")
async def list_domains(state: State) -> ModelSummary:
    model, _, _ = state.serving()
    return model.summary()


@router.get(
    "/v1/domains/{domain}", response_model=DomainDetail, responses=_ERRORS, summary="One domain"
)
async def describe_domain(domain: str, state: State) -> DomainDetail:
    model, _, _ = state.serving()
    return model.detail(domain)


@router.get("/livez", response_model=Health, summary="Liveness")
async def livez() -> Health:
    return Health(status="alive")


@router.get("/readyz", response_model=Health, responses=_ERRORS, summary="Readiness")
async def readyz(state: State) -> Response:
    if not state.ready:
        return error_response(503, "not_ready", "the model is loading or the service is stopping")
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    summary="Prometheus metrics",
)
async def metrics(request: Request, state: State) -> Response:
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(state.metrics.registry), headers={"Content-Type": content_type})


def _begin(state: ServiceState, domain: str) -> tuple[ServedModel, ServedDomain, float]:
    """The model, the domain (``UnknownDomain`` before the body is read) and the request's
    deadline on the event loop's clock."""
    model, _, _ = state.serving()
    deadline = asyncio.get_running_loop().time() + state.settings.request_timeout_s
    return model, model.domain(domain), deadline


async def _infer(
    state: ServiceState, served: ServedDomain, images: Sequence[bytes], deadline: float
) -> list[Tensor]:
    """Decode and preprocess on the preprocessing threads, then queue on the engine."""
    model, engine, pool = state.serving()
    name = served.name
    max_pixels = state.settings.max_image_pixels
    timer = state.metrics.preprocess.labels(domain=name)

    def preprocess(data: bytes) -> Tensor:
        started = time.perf_counter()
        tensor = model.preprocess(served, data, max_pixels)
        timer.observe(time.perf_counter() - started)
        return tensor

    loop = asyncio.get_running_loop()
    with engine.arriving(name, len(images)):
        jobs = [loop.run_in_executor(pool, preprocess, data) for data in images]
        tensors = await _within(deadline, asyncio.gather(*jobs))
    return await engine.predict(name, tensors, deadline)


async def _within(deadline: float, work: Awaitable[T]) -> T:
    """``work``, or ``DeadlineExceeded`` once the request's deadline (loop clock) has passed;
    a slow upload or slow preprocessing cannot hold a request beyond it."""
    try:
        return await asyncio.wait_for(work, timeout=deadline - asyncio.get_running_loop().time())
    except asyncio.TimeoutError:
        raise DeadlineExceeded("the request did not finish within its deadline") from None


def _json(answer: BaseModel) -> Response:
    """The answer, already validated on construction, serialised once: FastAPI would dump,
    re-validate and dump it again for ``response_model`` (which still documents it)."""
    return Response(answer.model_dump_json(), media_type="application/json")
