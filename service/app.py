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
import importlib.resources
import logging
import signal
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from multidomain.artifact import ArtifactError
from multidomain.store import resolve_artifact
from service.exception_handlers import add_exception_handlers
from service.metrics import ServiceMetrics
from service.middleware import DOCS_ASSETS, ServiceMiddleware
from service.model import load_served_model
from service.oip import oip_router
from service.rollout import Rollout, warm_up
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
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    app.include_router(router)
    app.include_router(oip_router)
    _add_offline_docs(app)
    add_exception_handlers(app)
    app.add_middleware(ServiceMiddleware, state=state)
    app.openapi = _openapi_with_domains(app, state)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    state.draining, state.load_error = False, None
    torch.set_num_threads(state.settings.torch_threads)
    rollout = app.state.rollout = Rollout(state)
    loading = asyncio.create_task(_load(state, rollout), name="mdp-load")
    loop = asyncio.get_running_loop()
    # SIGHUP: check the store for a new version at once (only where the loop owns signals)
    hangup = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, rollout.check_now)
        hangup = True
    try:
        yield
    finally:
        state.begin_shutdown()
        if hangup:
            loop.remove_signal_handler(signal.SIGHUP)
        if not loading.done():
            loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await rollout.close()
        engine, pool = state.engine, state.preprocess_pool
        if engine is not None:
            logger.info("shutting down: draining queued requests")
            await engine.stop(state.settings.shutdown_grace_s)
        # a stopped app answers 503 (and a restarted lifespan loads anew)
        state.set_current(None)
        state.preprocess_pool = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        gc.unfreeze()
        logger.info("stopped")


async def _load(state: ServiceState, rollout: Rollout) -> None:
    """Load, verify and warm up the model, then turn ready and start watching the store for
    new versions; on failure one log line and ``state.fail_loading``."""
    settings = state.settings
    logger.info(
        "loading model %s version %s from %s",
        settings.model_name,
        settings.model_version,
        settings.model_store,
    )
    try:
        path = resolve_artifact(settings.model_store, settings.model_name, settings.model_version)
        model, networks = await asyncio.to_thread(load_served_model, settings, path)
        version = await warm_up(state, model, networks)
    except ArtifactError as exc:
        logger.error("cannot load the model: %s", exc)
        state.fail_loading(str(exc))
        return
    except Exception as exc:  # a bug or a broken environment: the traceback is the clue
        logger.exception("cannot load the model: %s: %s", type(exc).__name__, exc)
        state.fail_loading(f"{type(exc).__name__}: {exc}")
        return
    state.preprocess_pool = ThreadPoolExecutor(
        settings.preprocess_threads, thread_name_prefix="mdp-preprocess"
    )
    rollout.activate(version)
    state.ready = not state.draining
    state.metrics.ready.set(int(state.ready))
    logger.info(
        "ready: model %s version %s from %s, domains %s",
        model.name,
        model.version,
        model.path,
        ", ".join(model.domains),
    )
    rollout.start()


def _add_offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their scripts, styles and icon served from the
    pinned ``fastapi-offline`` package under ``/docs/assets``: no CDN, the pages work offline."""
    assets = importlib.resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
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
