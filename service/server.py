"""Run the service with uvicorn: ``python -m service`` or ``mdprune serve``.

Command-line options override the ``MDP_*`` environment variables. The port opens at once; the
model loads in the background (``/livez`` 200, ``/readyz`` 503 meanwhile); a model that cannot
be loaded ends the process with one log line and exit status 3. On SIGTERM readiness turns 503
at once; the service keeps serving for ``drain_delay_s`` (load balancers stop sending), then
uvicorn stops listening, lets in-flight requests finish (at most ``shutdown_grace_s``), and the
app drains its engine before the process exits. SIGINT skips the drain delay. With
``workers`` > 1 this process supervises that many worker processes on the port
(:mod:`service.workers`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Generator, Sequence
from types import FrameType

import uvicorn

from multidomain import __version__
from multidomain.artifact import ArtifactError
from multidomain.store import resolve_artifact
from service.app import create_app
from service.logs import flush_log_buffers, log_config
from service.protocol import http_protocol
from service.settings import ServiceSettings, SettingsError, load_settings
from service.state import ServiceState
from service.workers import STARTUP_FAILURE, exec_supervisor

logger = logging.getLogger("service")


class _Server(uvicorn.Server):
    """uvicorn server that turns readiness off as soon as a shutdown signal arrives, serves on
    for the drain delay after SIGTERM, and stops when the model cannot be loaded."""

    def __init__(
        self, config: uvicorn.Config, state: ServiceState, supervisor_pid: int | None = None
    ) -> None:
        super().__init__(config)
        self._state = state
        self._supervisor_pid = supervisor_pid
        self._drain_until: float | None = None
        self._drain_logged = False
        state.on_load_failure.append(self._stop_after_load_failure)

    def _stop_after_load_failure(self, message: str) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # a signal handler: no logging here (the handler may interrupt a log call)
        self._state.begin_shutdown()
        delay = self._state.settings.drain_delay_s
        if (
            sig == signal.SIGTERM
            and delay > 0
            and self._drain_until is None
            and not self.should_exit
            and self._state.model is not None
        ):
            self._drain_until = time.monotonic() + delay
            return
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises a captured SIGTERM when this block ends: write the logs out first
        with super().capture_signals():
            try:
                yield
            finally:
                flush_log_buffers()

    async def on_tick(self, counter: int) -> bool:
        if self._supervisor_pid is not None and os.getppid() != self._supervisor_pid:
            self._supervisor_pid = None
            logger.error("the supervisor has gone: shutting down")
            self.handle_exit(signal.SIGTERM, None)
        if self._drain_until is not None and not self.should_exit:
            if not self._drain_logged:
                self._drain_logged = True
                logger.info(
                    "SIGTERM: readiness is 503; serving for %g s before closing the listener",
                    self._state.settings.drain_delay_s,
                )
            if time.monotonic() >= self._drain_until:
                super().handle_exit(signal.SIGTERM, None)
        flush_log_buffers()
        return await super().on_tick(counter)


def run(
    settings: ServiceSettings,
    sockets: list[socket.socket] | None = None,
    supervisor_pid: int | None = None,
) -> None:
    """Serve (on ``sockets`` when given, else on the settings' address) until a shutdown
    signal; exits with status 3 when the model cannot be loaded. A worker of
    :mod:`service.workers` also stops when its supervisor has gone."""
    app = create_app(settings)
    state: ServiceState = app.state.service
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol(settings, state.metrics),
        log_level=settings.log_level,
        log_config=log_config(settings.log_level, settings.log_format),
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        access_log=False,
    )
    server = _Server(config, state, supervisor_pid)
    try:
        server.run(sockets)
    finally:
        flush_log_buffers()
    if not server.started or state.load_error is not None:
        sys.exit(STARTUP_FAILURE)


def parse_args(
    argv: Sequence[str] | None = None, prog: str = "python -m service"
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve an exported multi-domain model over HTTP. Every option (and more, "
        "see docs/api.md) can also be set with an MDP_* environment variable.",
    )
    parser.add_argument("--model-store", help="folder of exported models (MDP_MODEL_STORE)")
    parser.add_argument("--model-name", help="model to serve (MDP_MODEL_NAME)")
    parser.add_argument("--model-version", help="version folder or 'latest' (MDP_MODEL_VERSION)")
    parser.add_argument("--host", help="interface to bind (MDP_HOST)")
    parser.add_argument("--port", type=int, help="TCP port (MDP_PORT)")
    parser.add_argument("--workers", type=int, help="worker processes on the port (MDP_WORKERS)")
    parser.add_argument("--log-level", help="critical, error, warning, info, debug (MDP_LOG_LEVEL)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str = "python -m service") -> None:
    args = parse_args(argv, prog)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = load_settings(**overrides)
        resolve_artifact(settings.model_store, settings.model_name, settings.model_version)
    except (SettingsError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if settings.workers > 1:
        exec_supervisor(settings, overrides)
    else:
        run(settings)
