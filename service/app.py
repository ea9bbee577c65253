"""The FastAPI app: routes, error handling, request metrics and the load/warm-up/drain lifecycle.

``create_app(settings)`` builds an app whose lifespan loads and verifies the artifact, builds
every domain's compact subnetwork, warms every domain up and only then reports ready. On
shutdown readiness goes 503 first, then queued and in-flight work drains.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any, TypeVar

import torch
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import Tensor

from multidomain.artifact import ArtifactError
from service.engine import InferenceEngine
from service.errors import DeadlineExceeded, NotReady, Overloaded, ServiceError, error_response
from service.inputs import BATCH_FIELD, SINGLE_FIELD, read_batch_images, read_single_image
from service.metrics import ServiceMetrics
from service.model import ServedDomain, ServedModel, load_served_model
from service.schemas import (
    BatchItem,
    BatchPredictResponse,
    DomainDetail,
    ErrorResponse,
    Health,
    ModelSummary,
    Prediction,
    PredictResponse,
)
from service.settings import ServiceSettings, load_settings

logger = logging.getLogger("service")
T = TypeVar("T")

#: Operational endpoints, kept out of the per-domain request metrics.
OPS_PATHS = frozenset({"/metrics", "/livez", "/readyz", "/docs", "/redoc", "/openapi.json"})
_DOMAIN_PATH = re.compile(r"^/v1/domains/([^/]+)")


@dataclass
class ServiceState:
    settings: ServiceSettings
    metrics: ServiceMetrics
    model: ServedModel | None = None
    engine: InferenceEngine | None = None
    preprocess_pool: ThreadPoolExecutor | None = None
    ready: bool = False

    def serving(self) -> tuple[ServedModel, InferenceEngine, ThreadPoolExecutor]:
        if self.model is None or self.engine is None or self.preprocess_pool is None:
            raise NotReady("the model is not loaded yet; retry when /readyz answers 200")
        return self.model, self.engine, self.preprocess_pool

    def domain_label(self, path: str) -> str:
        match = _DOMAIN_PATH.match(path)
        return self.metrics.domain_label(match[1] if match else None)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    settings = state.settings
    torch.set_num_threads(settings.torch_threads)
    try:
        model, networks = await asyncio.to_thread(load_served_model, settings)
    except ArtifactError as exc:
        logger.error("cannot load the model: %s", exc)
        raise
    engine = InferenceEngine(
        networks,
        state.metrics,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        torch_threads=settings.torch_threads,
    )
    pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="mdp-preprocess")
    try:
        await engine.start()
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # collector, whose full passes over it paused every request for ~200 ms.
        gc.collect()
        gc.freeze()
        state.metrics.set_model(
            model.name,
            model.version,
            "unknown" if model.budget is None else str(model.budget),
            model.sharing or "unknown",
            model.domains,
        )
        state.model, state.engine, state.preprocess_pool = model, engine, pool
        state.ready = True
        logger.info(
            "ready: model %s version %s from %s, domains %s",
            model.name,
            model.version,
            model.artifact_path,
            ", ".join(model.domains),
        )
        yield
    finally:
        state.ready = False
        logger.info("shutting down: draining queued requests")
        await engine.stop(settings.shutdown_grace_s)
        pool.shutdown(wait=False, cancel_futures=True)
        gc.unfreeze()
        logger.info("stopped")


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
async def predict(domain: str, request: Request, state: State, top_k: TopK = 5) -> Response:
    model, _, _ = state.serving()
    served = model.domain(domain)
    deadline = asyncio.get_running_loop().time() + state.settings.request_timeout_s
    data = await _within(deadline, read_single_image(request, state.settings.max_body_bytes))
    (probabilities,) = await _infer(state, served, [data], deadline)
    answer = PredictResponse(
        model=model.name,
        version=model.version,
        domain=domain,
        predictions=_top_k(served, probabilities, top_k),
    )
    return _json(answer)


@router.post(
    "/v1/domains/{domain}/predict/batch",
    response_model=BatchPredictResponse,
    responses=_ERRORS,
    openapi_extra=_BATCH_BODY,
    summary="Classify several images of one domain",
)
async def predict_batch(domain: str, request: Request, state: State, top_k: TopK = 5) -> Response:
    model, _, _ = state.serving()
    served = model.domain(domain)
    settings = state.settings
    deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
    images = await _within(
        deadline,
        read_batch_images(request, settings.max_body_bytes, settings.max_batch_images),
    )
    rows = await _infer(state, served, images, deadline)
    answer = BatchPredictResponse(
        model=model.name,
        version=model.version,
        domain=domain,
        results=[BatchItem(predictions=_top_k(served, row, top_k)) for row in rows],
    )
    return _json(answer)


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


async def _infer(
    state: ServiceState, served: ServedDomain, images: Sequence[bytes], deadline: float
) -> list[Tensor]:
    """Decode and preprocess on the preprocessing threads, then queue on the engine."""
    _, engine, pool = state.serving()
    name = served.entry.name
    max_pixels = state.settings.max_image_pixels
    timer = state.metrics.preprocess.labels(domain=name)

    def preprocess(data: bytes) -> Tensor:
        started = time.perf_counter()
        tensor = served.preprocess(data, max_pixels)
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


def _top_k(served: ServedDomain, probabilities: Tensor, k: int) -> list[Prediction]:
    labels = served.entry.labels
    values, indices = torch.topk(probabilities, min(k, len(labels)))
    return [
        Prediction(label=labels[i], index=i, probability=p)
        for p, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


# -- errors -------------------------------------------------------------------------------------

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed"}


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


class ObservabilityMiddleware:
    """Counts and times every response (except the operational endpoints) by domain and status,
    and turns any unexpected exception into a generic 500 whose details only go to the log."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPS_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def observed_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        domain = self.state.domain_label(scope["path"])
        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            status = 500
            self.state.metrics.rejections.labels(domain=domain, reason="internal").inc()
            if response_started:
                raise
            await error_response(500, "internal", "internal error")(scope, receive, send)
        finally:
            metrics = self.state.metrics
            metrics.requests.labels(domain=domain, status=str(status)).inc()
            metrics.request_latency.labels(domain=domain).observe(time.perf_counter() - started)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service app; settings default to the environment (``MDP_*``)."""
    settings = settings or load_settings()
    state = ServiceState(settings, ServiceMetrics())
    app = FastAPI(
        title="Multi-domain pruned model service",
        summary="One budget-pruned network serving several image domains.",
        lifespan=_lifespan,
    )
    app.state.service = state
    app.include_router(router)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(ObservabilityMiddleware, state=state)
    app.openapi = _openapi_with_domains(app, state)  # type: ignore[method-assign]
    return app


def _openapi_with_domains(app: FastAPI, state: ServiceState) -> Callable[[], dict[str, Any]]:
    """Once the model is loaded, the schema lists its domains as the values of ``{domain}``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        if state.model is not None:
            for path in schema["paths"].values():
                for operation in path.values():
                    for parameter in operation.get("parameters", []):
                        if parameter["in"] == "path" and parameter["name"] == "domain":
                            parameter["schema"]["enum"] = list(state.model.domains)
        return schema

    return openapi
