"""The service app in-process: its model loads in the background once the lifespan has started,
so tests that predict wait for readiness first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI
from fastapi.testclient import TestClient

READY_TIMEOUT_S = 60


@contextmanager
def ready_client(app: FastAPI) -> Iterator[TestClient]:
    """A ``TestClient`` whose lifespan has started and whose model is loaded and warmed up."""
    with TestClient(app) as client:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while client.get("/readyz").status_code != 200:
            state = app.state.service
            assert state.load_error is None, state.load_error
            assert time.monotonic() < deadline, "the app did not become ready"
            time.sleep(0.01)
        yield client


async def until_ready(app: FastAPI) -> None:
    """Wait (on the app's event loop) until the model is loaded and warmed up."""
    state = app.state.service
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not state.ready:
        assert state.load_error is None, state.load_error
        assert time.monotonic() < deadline, "the app did not become ready"
        await asyncio.sleep(0.01)
