"""``serve``: the FastAPI service (``service.server``), its options parsed by the server."""

from __future__ import annotations

import typer


def run_server(argv: list[str]) -> None:
    from service.server import main as serve_main

    serve_main(argv, prog="mdprune serve")


def serve(ctx: typer.Context) -> None:
    """Serve an artifact with FastAPI + uvicorn.

    Options: see 'mdprune serve -h'."""
    run_server(list(ctx.args))
