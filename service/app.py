"""The FastAPI app and its load/warm-up/drain lifecycle.

``create_app(settings)`` builds an app whose lifespan starts loading in the background and
returns at once, so that the server listens before the model is loaded: ``/livez`` answers 200,
``/readyz`` and the prediction routes 503 until the artifact is loaded and verified, every
domain's compact subnetwork built and warmed up. A load that fails is logged in one line and
reported to ``ServiceState.on_load_failure`` (the server then exits with status 3). On shutdown
readiness goes 503 first, then queued and in-flight work drains. Routes are in
:mod:`service.routes`, error handling in :mod:`service.exception_handlers`, the request front
(request id, auth, admission, metrics, access log) in :mod:`service.middleware`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI

from multidomain.artifact import ArtifactError
from service.engine import InferenceEngine
from service.exception_handlers import add_exception_handlers
from service.metrics import ServiceMetrics
from service.middleware import ServiceMiddleware
from service.model import load_served_model
from service.routes import router
from service.settings import ServiceSettings, load_settings
from service.state import ServiceState

__all__ = ["create_app"]

logger = logging.getLogger("service")


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service app; settings default to the environment (``MDP_*``)."""
    settings = settings or load_settings()
    state = ServiceState(settings, ServiceMetrics(settings.request_timeout_s))
    app = FastAPI(
        title="Multi-domain pruned model service",
        summary="One budget-pruned network serving several image domains.",
        lifespan=_lifespan,
    )
    app.state.service = state
    app.include_router(router)
    add_exception_handlers(app)
    app.add_middleware(ServiceMiddleware, state=state)
    app.openapi = _openapi_with_domains(app, state)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    state.draining, state.load_error = False, None
    torch.set_num_threads(state.settings.torch_threads)
    loading = asyncio.create_task(_load(state), name="mdp-load")
    try:
        yield
    finally:
        state.begin_shutdown()
        if not loading.done():
            loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        engine, pool = state.engine, state.preprocess_pool
        if engine is not None:
            logger.info("shutting down: draining queued requests")
            await engine.stop(state.settings.shutdown_grace_s)
        # a stopped app answers 503 (and a restarted lifespan loads anew)
        state.model = state.engine = state.preprocess_pool = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        gc.unfreeze()
        logger.info("stopped")


async def _load(state: ServiceState) -> None:
    """Load, verify and warm up the model, then turn ready; on failure one log line and
    ``state.fail_loading``."""
    settings = state.settings
    logger.info(
        "loading model %s version %s from %s",
        settings.model_name,
        settings.model_version,
        settings.model_store,
    )
    try:
        model, networks = await asyncio.to_thread(load_served_model, settings)
        engine = InferenceEngine(
            networks,
            state.metrics,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_size=settings.queue_size,
            torch_threads=settings.torch_threads,
        )
        state.engine = engine
        await engine.start()
    except ArtifactError as exc:
        logger.error("cannot load the model: %s", exc)
        state.fail_loading(str(exc))
        return
    except Exception as exc:  # a bug or a broken environment: the traceback is the clue
        logger.exception("cannot load the model: %s: %s", type(exc).__name__, exc)
        state.fail_loading(f"{type(exc).__name__}: {exc}")
        return
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
    state.preprocess_pool = ThreadPoolExecutor(
        settings.preprocess_threads, thread_name_prefix="mdp-preprocess"
    )
    state.model = model
    state.ready = not state.draining
    state.metrics.ready.set(int(state.ready))
    logger.info(
        "ready: model %s version %s from %s, domains %s",
        model.name,
        model.version,
        model.path,
        ", ".join(model.domains),
    )


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
