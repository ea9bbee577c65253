"""Run the service with uvicorn: ``python -m service`` or ``mdprune serve``.

Command-line options override the ``MDP_*`` environment variables. On SIGTERM/SIGINT readiness
turns 503 at once; uvicorn stops listening, lets in-flight requests finish (at most
``shutdown_grace_s``), and the app drains its engine before the process exits.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from multidomain.artifact import ArtifactError, resolve_artifact
from service.app import create_app
from service.settings import ServiceSettings, SettingsError, load_settings
from service.state import ServiceState

#: uvicorn's exit status when the app fails to start
STARTUP_FAILURE = 3


class _Server(uvicorn.Server):
    """uvicorn server that marks the app not ready as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.ready = False
        super().handle_exit(sig, frame)


def _log_config(level: str) -> dict[str, Any]:
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["service"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def run(settings: ServiceSettings) -> None:
    """Serve until a shutdown signal; exits with status 3 when the app fails to start."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=_log_config(settings.log_level),
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        access_log=False,
    )
    server = _Server(config, app.state.service)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve an exported multi-domain model over HTTP. Every option (and more, "
        "see docs/api.md) can also be set with an MDP_* environment variable.",
    )
    parser.add_argument("--model-store", help="folder of exported models (MDP_MODEL_STORE)")
    parser.add_argument("--model-name", help="model to serve (MDP_MODEL_NAME)")
    parser.add_argument("--model-version", help="version folder or 'latest' (MDP_MODEL_VERSION)")
    parser.add_argument("--host", help="interface to bind (MDP_HOST)")
    parser.add_argument("--port", type=int, help="TCP port (MDP_PORT)")
    parser.add_argument("--log-level", help="critical, error, warning, info, debug (MDP_LOG_LEVEL)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = load_settings(**overrides)
        resolve_artifact(settings.model_store, settings.model_name, settings.model_version)
    except (SettingsError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    run(settings)
