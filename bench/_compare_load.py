"""What ``serve_compare.py`` sends and measures: each server's request for a PNG (``wire``),
one round of wrk or of the Python client against a server, the rounds of a point pooled, and
the compute-only limit (batch forward passes of the served subnetworks)."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from _compare_peers import PeakRss, Peer
from loadgen import Request, Target, run_closed_loop
from subnet_compute import served_forward_ms
from wrkload import WireRequest, WrkRun, run_wrk

from devtools.litserve_peer import API_PATH as LITSERVE_PATH
from devtools.litserve_peer import DOMAIN_FIELD, IMAGE_FIELD
from multidomain.artifact import Artifact
from torchserving.handler import DOMAIN_HEADER

#: Fixed multipart boundary: every request of a domain has the same headers.
BOUNDARY = "mdp-bench-5f0c2a7e91"


def _multipart(fields: dict[str, str], png: bytes) -> tuple[dict[str, str], bytes]:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    request = httpx.Request(
        "POST",
        "http://127.0.0.1/",
        headers=headers,
        data=fields,
        files={IMAGE_FIELD: ("image.png", png, "image/png")},
    )
    return headers, request.read()


def wire(server: str, domain: str, png: bytes, body: str) -> WireRequest:
    """The request a server gets for one PNG of a domain (``body``: raw or multipart)."""
    if server == "litserve":
        headers, data = _multipart({DOMAIN_FIELD: domain}, png)
        return WireRequest(LITSERVE_PATH, headers, data)
    if body == "multipart":
        headers, data = _multipart({}, png)
    else:
        headers, data = {"Content-Type": "image/png"}, png
    if server == "fastapi":
        return WireRequest(f"/v1/domains/{domain}/predict", headers, data)
    return WireRequest("/predictions/bench", {**headers, DOMAIN_HEADER: domain}, data)


# -- compute-only limit -----------------------------------------------------------------------


def forward_times(artifact: Artifact, threads: int, batch: int, repeats: int) -> dict[str, float]:
    """Median ms of a batch-``batch`` forward pass of each domain's served network at
    ``threads`` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {
            name: round(ms, 3) for name, ms in served_forward_ms(artifact, batch, repeats).items()
        }
    finally:
        torch.set_num_threads(previous)


def compute_limit(measured: Sequence[dict[str, float]], batch: int) -> dict[str, Any]:
    """Images/s of each domain's forward passes (the mean of the measured times) and of the
    mixed load (every domain in equal shares)."""
    forward_ms = {name: statistics.mean(m[name] for m in measured) for name in measured[0]}
    return {
        "forward_ms": {name: round(ms, 3) for name, ms in forward_ms.items()},
        "images_per_s": {name: round(batch * 1000 / ms, 1) for name, ms in forward_ms.items()},
        "mixed_images_per_s": round(batch * 1000 / statistics.mean(forward_ms.values()), 1),
    }


# -- measurement ------------------------------------------------------------------------------


def wrk_round(peer: Peer, script: Path, concurrency: int, args: argparse.Namespace) -> dict:
    if args.warmup_s > 0:
        run_wrk(peer.url, script, concurrency, args.warmup_s, args.wrk_threads, args.timeout_s)
    with PeakRss(peer.pid) as rss:
        run: WrkRun = run_wrk(
            peer.url, script, concurrency, args.duration_s, args.wrk_threads, args.timeout_s
        )
    return {
        "requests": run.requests,
        "ok": run.ok,
        "non_2xx": run.non_2xx,
        "errors": run.errors,
        "socket_errors": run.socket_errors,
        "duration_s": round(run.duration_s, 3),
        "throughput_rps": round(run.ok / run.duration_s, 1),
        **{f"p{p}_ms": round(ms, 2) for p, ms in run.percentiles_ms.items()},
        "mean_ms": round(run.mean_ms, 2),
        "max_ms": round(run.max_ms, 2),
        "rss_peak_mib": rss.peak_mib,
    }


def python_round(
    peer: Peer, requests: Sequence[Request], concurrency: int, args: argparse.Namespace
) -> dict:
    routes: dict[str, WireRequest] = {}
    for request in requests:
        routes.setdefault(request.domain, wire(peer.name, request.domain, b"", args.body))

    def route(request: Request) -> tuple[str, dict[str, str]]:
        spec = routes[request.domain]
        return spec.path, spec.headers

    target = Target(peer.name, peer.url, route)
    with PeakRss(peer.pid) as rss:
        run = run_closed_loop(
            target,
            requests,
            concurrency,
            args.python_requests,
            args.python_warmup,
            timeout_s=max(120.0, 30 * args.timeout_s),
        )
    ms = np.asarray([latency for _, latency in run.samples]) * 1000
    ok = sum(n for code, n in run.statuses.items() if 200 <= code < 300)
    return {
        "requests": len(run.samples),
        "ok": ok,
        "non_2xx": len(run.samples) - ok,
        "errors": 0,
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "duration_s": round(run.wall_s, 3),
        "throughput_rps": round(ok / run.wall_s, 1),
        **{f"p{p}_ms": round(float(np.percentile(ms, p)), 2) for p in (50, 90, 99)},
        "mean_ms": round(float(ms.mean()), 2),
        "max_ms": round(float(ms.max()), 2),
        "rss_peak_mib": rss.peak_mib,
    }


def pool_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Throughput over all rounds; latency percentiles: the median of the rounds' ones."""
    done = [r for r in rounds if "error" not in r]
    out: dict[str, Any] = {
        "rounds": len(rounds),
        "failed_rounds": [r["error"] for r in rounds if "error" in r],
    }
    if not done:
        return out
    duration = sum(r["duration_s"] for r in done)
    out |= {
        "requests": sum(r["requests"] for r in done),
        "ok": sum(r["ok"] for r in done),
        "non_2xx": sum(r["non_2xx"] for r in done),
        "errors": sum(r["errors"] for r in done),
        "duration_s": round(duration, 3),
        "throughput_rps": round(sum(r["ok"] for r in done) / duration, 1),
        "round_throughputs_rps": [r["throughput_rps"] for r in done],
        **{
            f"p{p}_ms": round(statistics.median(r[f"p{p}_ms"] for r in done), 2)
            for p in (50, 90, 99)
        },
        "round_p99_ms": [r["p99_ms"] for r in done],
        "rss_peak_mib": max(r["rss_peak_mib"] for r in done),
    }
    return out
