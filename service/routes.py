"""The HTTP API: the router, its dependencies (``State``, ``TopK``) and the route handlers.

A prediction runs the three steps of :mod:`service.model` and :mod:`service.engine`: decode
(``ServedModel.preprocess``, on the preprocessing threads), predict (``InferenceEngine.predict``,
micro-batched per domain) and encode (``ServedModel.encode``). The routes themselves only read
the request, hold it to its deadline (and its body to the body timeout), gather the images, and
give up on a request whose client has gone (its queued work is dropped, 499 is recorded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.types import Receive
from torch import Tensor

from multidomain.serving import ServedDomain, level_label
from service.engine import Answer, InferenceEngine
from service.errors import (
    BadImage,
    BodyTimeout,
    ClientClosedRequest,
    DeadlineExceeded,
    ImageTooLarge,
    error_response,
)
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


async def _state(request: Request) -> ServiceState:
    # async: FastAPI would run a plain function on its thread pool, a thread hop per request
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(_state)]
TopK = Annotated[
    int | None,
    Query(
        ge=1,
        description="Number of classes to return; larger values return every class. "
        "Default: the service's MDP_DEFAULT_TOP_K.",
    ),
]
Budget = Annotated[
    str | None,
    Query(
        description="The budget level to answer at (a nested artifact's, e.g. 0.5; also the "
        "X-Budget header; both given must name the same level). Default: the largest. Graceful "
        "degradation may answer at a cheaper level; the response's budget field and X-Budget "
        "header name the one that answered.",
    ),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed request or request body.",
        401: "API key missing or not accepted (when the service requires keys).",
        404: "Unknown domain (the message lists the known ones).",
        408: "The request body did not arrive within the body timeout.",
        413: "Request body or number of images over the limit.",
        415: "Unsupported media type.",
        422: "Undecodable image, too many pixels, an unknown budget level (the message lists "
        "the levels), or invalid parameters.",
        429: "Overloaded (in-flight, decoding or queue bound); retry after Retry-After seconds.",
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

_Endpoint = Callable[..., Coroutine[Any, Any, Response]]
_TOP_K = TypeAdapter(Annotated[int, Field(ge=1)])


class _PredictRoute(APIRoute):
    """A prediction route without FastAPI's per-request dependency solving and parameter
    validation (a fifth of the event loop's time per request): its handler passes the path's
    ``domain``, the app's state and a validated ``top_k`` (when given) to the endpoint itself.
    The endpoint's signature still documents the parameters in the OpenAPI schema."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            options: dict[str, Any] = {}
            top_k = request.query_params.get("top_k")
            if top_k is not None:
                try:
                    options["top_k"] = _TOP_K.validate_python(top_k)
                except ValidationError as exc:
                    raise RequestValidationError(
                        [{**error, "loc": ("query", "top_k")} for error in exc.errors()]
                    ) from None
            budget = request.query_params.get("budget")
            if budget is not None:
                options["budget"] = budget
            response: Response = await endpoint(
                request.path_params["domain"], request, request.app.state.service, **options
            )
            return response

        return handle


router = APIRouter()


def _predict_route(path: str, **options: Any) -> Callable[[_Endpoint], _Endpoint]:
    """``router.post`` with the lean ``_PredictRoute``."""

    def register(endpoint: _Endpoint) -> _Endpoint:
        router.add_api_route(
            path, endpoint, methods=["POST"], route_class_override=_PredictRoute, **options
        )
        return endpoint

    return register


@_predict_route(
    "/v1/domains/{domain}/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_SINGLE_BODY,
    summary="Classify one image of a domain",
)
async def predict(
    domain: str, request: Request, state: State, top_k: TopK = None, budget: Budget = None
) -> Response:
    model, served, deadline, body_deadline = _begin(state, domain)
    level = _requested_level(model, served, request, budget)
    reading = True
    try:
        async with asyncio.timeout_at(min(body_deadline, deadline)) as timeout:
            data = await read_single_image(request, state.settings.max_body_bytes)
            reading = False
            timeout.reschedule(deadline)
            (answer,) = await _infer(
                state, served, [data], deadline, request.receive, level, batch=False
            )
    except TimeoutError:
        raise _timed_out(reading, body_deadline, deadline) from None
    top = top_k or state.settings.default_top_k
    return _json(
        model.encode(served, answer.probabilities, top, answer.level),
        served.budgets[answer.level],
    )


@_predict_route(
    "/v1/domains/{domain}/predict/batch",
    response_model=BatchPredictResponse,
    responses=_ERRORS,
    openapi_extra=_BATCH_BODY,
    summary="Classify several images of one domain",
)
async def predict_batch(
    domain: str, request: Request, state: State, top_k: TopK = None, budget: Budget = None
) -> Response:
    model, served, deadline, body_deadline = _begin(state, domain)
    level = _requested_level(model, served, request, budget)
    settings = state.settings
    reading = True
    try:
        async with asyncio.timeout_at(min(body_deadline, deadline)) as timeout:
            images = await read_batch_images(
                request, settings.max_body_bytes, settings.max_batch_images
            )
            reading = False
            timeout.reschedule(deadline)
            rows = await _infer(state, served, images, deadline, request.receive, level, batch=True)
    except TimeoutError:
        raise _timed_out(reading, body_deadline, deadline) from None
    answered = served.budgets[max(row.level for row in rows)]  # the cheapest that answered
    return _json(model.encode_batch(served, rows, top_k or settings.default_top_k), answered)


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


@router.get("/livez", response_model=Health, responses=_ERRORS, summary="Liveness")
async def livez(state: State) -> Response:
    """200 while the process can serve (also while the model loads); 503 once a domain's worker
    has died: restart the process."""
    failed = state.engine.failed_domains() if state.engine is not None else {}
    if failed:
        problems = "; ".join(f"domain {name!r}: {why}" for name, why in sorted(failed.items()))
        return error_response(503, "not_alive", f"restart the service: {problems}")
    return JSONResponse({"status": "alive"})


@router.get("/readyz", response_model=Health, responses=_ERRORS, summary="Readiness")
async def readyz(state: State) -> Response:
    """200 once the model is loaded and warmed up (with several worker processes: in every
    one); 503 while loading, when shutting down and when a domain cannot be served."""
    if state.draining:
        message = "the service is shutting down"
    elif state.load_error is not None:
        message = f"the model could not be loaded: {state.load_error}"
    elif not state.ready:
        message = "the model is loading"
    elif state.engine is not None and state.engine.failed_domains():
        message = "a domain's worker has died (see /livez)"
    elif state.settings.workers > 1 and (ready := state.metrics.ready_workers()) < (
        state.settings.workers
    ):
        message = f"{ready} of {state.settings.workers} worker processes are ready"
    else:
        return JSONResponse({"status": "ready"})
    return error_response(503, "not_ready", message)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    summary="Prometheus metrics",
)
async def metrics(request: Request, state: State) -> Response:
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(state.metrics.exposition), headers={"Content-Type": content_type})


def _begin(state: ServiceState, domain: str) -> tuple[ServedModel, ServedDomain, float, float]:
    """The model, the domain (``UnknownDomain`` before the body is read), the request's
    deadline and its body's deadline, on the event loop's clock."""
    model, _, _ = state.serving()
    now = asyncio.get_running_loop().time()
    settings = state.settings
    deadline = now + settings.request_timeout_s
    return model, model.domain(domain), deadline, now + settings.body_timeout_s


def _requested_level(
    model: ServedModel, served: ServedDomain, request: Request, budget: str | None
) -> int:
    """The level ``?budget=`` or the ``X-Budget`` header names (both: the same one)."""
    return model.requested_level(
        served, {"query budget": budget, "header X-Budget": request.headers.get("x-budget")}
    )


def _timed_out(reading: bool, body_deadline: float, deadline: float) -> Exception:
    """What a request that ran out of time gets: 408 when its body was late (and the body
    timeout comes before the deadline), else 504."""
    if reading and body_deadline < deadline:
        return BodyTimeout(
            "the request body did not arrive in time; send it faster or in a smaller request"
        )
    return DeadlineExceeded("the request did not finish within its deadline")


async def _infer(
    state: ServiceState,
    served: ServedDomain,
    images: Sequence[bytes],
    deadline: float,
    receive: Receive,
    level: int,
    *,
    batch: bool,
) -> list[Answer]:
    """Decode and preprocess (small images at once on the event loop, larger ones on the
    preprocessing threads), then queue on the engine, until the answer or the client's
    disconnect (then the work is dropped: ``ClientClosedRequest``)."""
    model, engine, pool = state.serving()
    name = served.name
    max_pixels = state.settings.max_image_pixels
    timer = state.metrics.domain(name).preprocess

    def preprocess(index: int, data: bytes) -> Tensor:
        started = time.perf_counter()
        try:
            tensor = model.preprocess(served, data, max_pixels)
        except (BadImage, ImageTooLarge) as exc:
            if batch:  # name the image
                raise type(exc)(f"files[{index}]: {exc.message}") from None
            raise
        timer.observe(time.perf_counter() - started)
        return tensor

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # small images: decoding here, at once, costs less than the hop to a thread and back
    tensors = (
        [preprocess(index, data) for index, data in enumerate(images)]
        if sum(map(len, images)) <= state.settings.inline_decode_bytes
        else None
    )
    gone = finished = False

    def on_disconnect(watcher: asyncio.Task[None]) -> None:
        nonlocal gone
        # ``finished``: a callback already scheduled when the work ended must not cancel the
        # answer's encoding
        if not finished and not watcher.cancelled() and watcher.exception() is None:
            gone = True
            task.cancel()

    watcher = loop.create_task(_disconnected(receive))
    watcher.add_done_callback(on_disconnect)
    try:
        if tensors is None:
            tensors = await _decode_on_threads(state, pool, engine, name, level, images, preprocess)
        return await engine.answer(name, tensors, deadline, level)
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientClosedRequest(
            "the client closed the connection before its answer; its work was dropped"
        ) from None
    finally:
        finished = True
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()


async def _decode_on_threads(
    state: ServiceState,
    pool: Executor,
    engine: InferenceEngine,
    name: str,
    level: int,
    images: Sequence[bytes],
    preprocess: Callable[[int, bytes], Tensor],
) -> list[Tensor]:
    """Every image through ``preprocess`` on the preprocessing threads, announced to the
    engine meanwhile, within the admission bound of images at the threads."""
    loop = asyncio.get_running_loop()
    admission = state.admission
    admission.start_decoding(len(images))
    jobs: list[asyncio.Future[Tensor]] = []
    try:
        with engine.arriving(name, len(images), level):
            jobs = [
                loop.run_in_executor(pool, preprocess, index, data)
                for index, data in enumerate(images)
            ]
            return list(await asyncio.gather(*jobs))
    finally:
        for job in jobs:  # not started yet: never decoded
            job.cancel()
        admission.end_decoding(len(images))


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has disconnected (once the body has been read, ``receive``
    has nothing else to say until then)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _json(answer: BaseModel, budget: float) -> Response:
    """The answer, already validated on construction, serialised once: FastAPI would dump,
    re-validate and dump it again for ``response_model`` (which still documents it); the
    ``X-Budget`` header names the level that answered (a batch's cheapest)."""
    return Response(
        answer.model_dump_json(),
        media_type="application/json",
        headers={"X-Budget": level_label(budget)},
    )
