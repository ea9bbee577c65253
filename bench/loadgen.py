"""Closed-loop mixed-domain load against a server on 127.0.0.1, shared by the serving benchmarks.

``C`` clients each send a request, wait for its answer and send the next, until ``total``
answers have arrived (after ``warmup`` unmeasured ones). Requests cycle through every domain in a
fixed shuffled order, each a PNG of the domain's input size.

The client shares the machine's cores with the server, so it is lean: one keep-alive HTTP/1.1
connection per client on raw asyncio streams (uvloop when installed), requests serialised once
up front, and only the status line and body length parsed from each answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from devtools import http_load
from devtools.torchserve_local import free_port
from multidomain.artifact import load_artifact

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Request:
    domain: str
    body: bytes


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    make: Callable[[Request], tuple[str, dict[str, str]]]  # -> (path, headers)


def make_requests(
    artifact_path: Path, per_domain: int, seed: int, domains: Sequence[str] | None = None
) -> list[Request]:
    """``per_domain`` random PNGs of every domain (or of ``domains``) at its input size, in a
    shuffled order."""
    artifact = load_artifact(artifact_path)
    rng = np.random.default_rng(seed)
    requests = []
    for entry in artifact.domains:
        if domains is not None and entry.name not in domains:
            continue
        side = entry.image_size
        for _ in range(per_domain):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
            requests.append(Request(entry.name, buffer.getvalue()))
    random.Random(seed).shuffle(requests)
    return requests


@dataclass(frozen=True)
class Run:
    """One closed-loop measurement: every measured answer's domain and latency (s)."""

    concurrency: int
    wall_s: float
    statuses: dict[int, int]
    samples: list[tuple[str, float]]


async def closed_loop(
    target: Target, requests: Sequence[Request], concurrency: int, total: int, warmup: int
) -> Run:
    """``concurrency`` clients send ``warmup`` unmeasured requests, then ``total`` measured."""
    url = urllib.parse.urlsplit(target.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    wire = [_serialise(host, port, target, request) for request in requests]
    await http_load.closed_loop(host, port, wire, concurrency, warmup)
    started = time.perf_counter()
    shots = await http_load.closed_loop(host, port, wire, concurrency, total)
    wall = time.perf_counter() - started
    statuses: dict[int, int] = {}
    for shot in shots:
        statuses[shot.status] = statuses.get(shot.status, 0) + 1
    samples = [(requests[shot.index].domain, shot.latency_s) for shot in shots]
    return Run(concurrency, wall, statuses, samples)


def summarise(runs: Sequence[Run]) -> dict[str, Any]:
    """Throughput (answers over wall time) and latency percentiles, overall and per domain, of
    one or more runs at the same concurrency pooled together."""
    samples = [sample for run in runs for sample in run.samples]
    wall = sum(run.wall_s for run in runs)
    statuses: dict[int, int] = {}
    for run in runs:
        for code, count in run.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
    ms = np.asarray([latency for _, latency in samples]) * 1000
    per_domain = {}
    for name in sorted({domain for domain, _ in samples}):
        own = np.asarray([latency for domain, latency in samples if domain == name]) * 1000
        per_domain[name] = {
            "requests": int(own.size),
            **{f"p{q}_ms": round(float(np.percentile(own, q)), 2) for q in (50, 90, 95, 99)},
        }
    return {
        "concurrency": runs[0].concurrency,
        "rounds": len(runs),
        "requests": len(samples),
        "errors": sum(n for code, n in statuses.items() if code != 200),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(samples) / wall, 2),
        "round_throughputs_rps": [round(len(run.samples) / run.wall_s, 2) for run in runs],
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "per_domain": per_domain,
    }


def run_closed_loop(
    target: Target,
    requests: Sequence[Request],
    concurrency: int,
    total: int,
    warmup: int,
    timeout_s: float | None = None,
) -> Run:
    """``closed_loop`` on a fresh event loop (uvloop when installed); ``TimeoutError`` when it
    has not finished within ``timeout_s``."""
    run = asyncio.wait_for(closed_loop(target, requests, concurrency, total, warmup), timeout_s)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run)
    return uvloop.run(run)


def _serialise(host: str, port: int, target: Target, request: Request) -> bytes:
    path, headers = target.make(request)
    return http_load.raw_request(host, port, "POST", path, request.body, headers)


def export_revision(revision: str, folder: Path) -> Path:
    """The code of a git revision of this repository, extracted into ``folder`` (to run a
    server from, beside the working tree's)."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return int(reply.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def _stop_group(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def server_process(
    name: str,
    command: Sequence[str],
    ready_url: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    startup_timeout_s: float = 120.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in a new session, output to ``log_path``, until the block ends: yields the
    process once ``ready_url`` answers 200; then stops its whole process group (SIGTERM, SIGKILL
    after a grace period), also on error."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not _get_ok(ready_url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start; see {log_path}")
                time.sleep(0.25)
            yield process
        finally:
            _stop_group(process)


@contextlib.contextmanager
def fastapi_process(
    artifact_path: Path,
    settings: dict[str, str],
    log_path: Path,
    command_prefix: Sequence[str] = (),
    source_tree: Path = ROOT,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m service`` on a free port until the block ends; yields its base URL and
    process. ``command_prefix`` runs it through a wrapper that execs it (e.g. ``prlimit``);
    ``source_tree`` is the checkout whose code it runs."""
    port = free_port()
    env = {**settings, "MDP_HOST": "127.0.0.1", "MDP_PORT": str(port)}
    command = [
        *command_prefix,
        sys.executable,
        "-m",
        "service",
        "--model-store",
        str(artifact_path.parents[1]),
        "--model-name",
        artifact_path.parent.name,
        "--model-version",
        artifact_path.name,
    ]
    url = f"http://127.0.0.1:{port}"
    with server_process(
        "the FastAPI service", command, f"{url}/readyz", log_path, env, source_tree
    ) as process:
        yield url, process


@contextlib.contextmanager
def fastapi_server(
    artifact_path: Path,
    settings: dict[str, str],
    log_path: Path,
    root: Path = ROOT,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Iterator[str]:
    """``python -m service`` (the code under ``root``) on a free port until the block ends;
    yields its base URL (and hands the process to ``started`` once it is ready)."""
    with fastapi_process(artifact_path, settings, log_path, source_tree=root) as (url, process):
        if started is not None:
            started(process)
        yield url
