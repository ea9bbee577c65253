"""FastAPI service vs TorchServe serving the same artifact, under the same mixed-domain load.

One run starts the FastAPI service (``python -m service``), measures it, stops it, then exports
the artifact to a ``.mar``, starts TorchServe with it, measures it and stops it; both on
127.0.0.1, both started and stopped by this script (by process group). The load is closed-loop:
``C`` clients each send a request, wait for its answer, and send the next, until ``--requests``
answers have arrived at that concurrency (after ``--warmup`` unmeasured ones). Requests cycle
through every domain in a fixed shuffled order, each a PNG of the domain's input size. The load
generator (bench/loadgen.py: raw keep-alive HTTP/1.1 on asyncio streams) runs in this process,
on the same CPUs as the server under test.

Reported per server and concurrency: throughput (answers/s), p50 and p99 latency, errors, and
the FastAPI/TorchServe ratios. Writes ``<out>.json`` and ``<out>.md`` (default
``bench/results/serve_compare``) with the exact command and both servers' settings.

    python bench/serve_compare.py model_store/default/<version> [--concurrency 1 8 32]
        [--requests 600] [--threads 1] [--batch-size 32] [--max-wait-ms 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import ts
from _results import RESULTS, command, write_results
from loadgen import Request, Target, fastapi_server, make_requests, run_closed_loop, summarise

from devtools.torchserve_local import LocalTorchServe
from multidomain.artifact import load_artifact
from torchserving.export import TorchServeModelConfig, export_mar

ROOT = Path(__file__).resolve().parents[1]


def measure(
    target: Target, requests: Sequence[Request], args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    for concurrency in args.concurrency:
        run = run_closed_loop(target, requests, concurrency, args.requests, args.warmup)
        row = {"server": target.name, **summarise([run])}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(r["server"], r["concurrency"]): r for r in rows}
    out = []
    for concurrency in sorted({r["concurrency"] for r in rows}):
        fast, ts = by_key.get(("fastapi", concurrency)), by_key.get(("torchserve", concurrency))
        if fast is None or ts is None:
            continue
        out.append(
            {
                "concurrency": concurrency,
                "throughput_ratio": round(fast["throughput_rps"] / ts["throughput_rps"], 3),
                "p50_ratio": round(fast["p50_ms"] / ts["p50_ms"], 3),
                "p99_ratio": round(fast["p99_ms"] / ts["p99_ms"], 3),
            }
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    fast, ts = result["settings"]["fastapi"], result["settings"]["torchserve"]
    lines = [
        "# FastAPI service vs TorchServe: same artifact, same mixed-domain closed-loop load",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Artifact: `{result['artifact']}` ({result['model']} {result['version']}, domains "
        f"{', '.join(result['domains'])}); {result['requests_per_level']} measured requests per "
        f"concurrency level after {result['warmup']} warm-up ones; client in the bench process "
        "(bench/loadgen.py, raw HTTP/1.1 on asyncio streams) on the same machine: "
        f"{result['machine']}.",
        "",
        "Settings:",
        f"- FastAPI: 1 uvicorn process, torch threads {fast['MDP_TORCH_THREADS']}, "
        f"preprocess threads {fast['MDP_PREPROCESS_THREADS']}, max batch "
        f"{fast['MDP_MAX_BATCH_SIZE']} per domain, max wait {fast['MDP_MAX_WAIT_MS']} ms.",
        f"- TorchServe {ts['version']}: {ts['workers']} worker(s), torch threads "
        f"{ts['torch_threads']} per worker, batchSize {ts['batch_size']} (mixed domains, "
        f"grouped per domain in the handler), maxBatchDelay {ts['max_batch_delay_ms']} ms, "
        f"logging: {ts['logging']}.",
        "",
        "| server | concurrency | throughput (req/s) | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['server']} | {r['concurrency']} | {r['throughput_rps']} | {r['p50_ms']} "
        f"| {r['p99_ms']} | {r['errors']} |"
        for r in result["rows"]
    ]
    lines += [
        "",
        "Ratios FastAPI / TorchServe (throughput > 1: FastAPI serves more; latency < 1: "
        "FastAPI answers faster):",
        "",
        "| concurrency | throughput | p50 | p99 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['concurrency']} | {r['throughput_ratio']} | {r['p50_ratio']} | {r['p99_ratio']} |"
        for r in result["ratios"]
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="artifact folder <store>/<name>/<version>")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=600, help="measured, per level")
    parser.add_argument("--warmup", type=int, default=60, help="unmeasured, per level")
    parser.add_argument("--images-per-domain", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    parser.add_argument("--batch-size", type=int, default=32, help="both servers' max batch")
    parser.add_argument("--max-wait-ms", type=int, default=5, help="both servers' batch wait")
    parser.add_argument("--workers", type=int, default=1, help="TorchServe worker processes")
    parser.add_argument("--servers", nargs="+", default=["fastapi", "torchserve"])
    parser.add_argument(
        "--torchserve-default-logging",
        action="store_true",
        help="keep TorchServe's per-request logging (default: warnings only, like the service)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_compare")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.requests < 1 or args.warmup < 0:
        parser.error("concurrency and requests must be >= 1, warmup >= 0")
    if not set(args.servers) <= {"fastapi", "torchserve"}:
        parser.error("--servers: fastapi and/or torchserve")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    artifact_path = args.artifact.resolve()
    artifact = load_artifact(artifact_path)
    requests = make_requests(artifact_path, args.images_per_domain, args.seed)
    fastapi_settings = {
        "MDP_TORCH_THREADS": str(args.threads),
        "MDP_PREPROCESS_THREADS": str(args.threads),
        "MDP_MAX_BATCH_SIZE": str(args.batch_size),
        "MDP_MAX_WAIT_MS": str(args.max_wait_ms),
        "MDP_LOG_LEVEL": "warning",  # no access log either
    }
    ts_config = TorchServeModelConfig(
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_wait_ms,
        workers=args.workers,
        torch_threads=args.threads,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="serve-compare-") as tmp:
        work = Path(tmp)
        if "fastapi" in args.servers:
            with fastapi_server(artifact_path, fastapi_settings, work / "fastapi.log") as url:
                target = Target(
                    "fastapi",
                    url,
                    lambda r: (f"/v1/domains/{r.domain}/predict", {"Content-Type": "image/png"}),
                )
                rows += measure(target, requests, args)
        if "torchserve" in args.servers:
            mar = export_mar(artifact_path, work / "mars", "bench", ts_config)
            server = LocalTorchServe(
                mar.parent,
                {"bench": mar.name},
                work / "torchserve",
                quiet_logs=not args.torchserve_default_logging,
            )
            with server:
                target = Target(
                    "torchserve",
                    server.inference_url,
                    lambda r: (
                        "/predictions/bench",
                        {"Content-Type": "image/png", "X-Domain": r.domain},
                    ),
                )
                rows += measure(target, requests, args)
    result = {
        "command": command(),
        "artifact": str(args.artifact),
        "model": artifact.name,
        "version": artifact.version,
        "domains": [d.name for d in artifact.domains],
        "requests_per_level": args.requests,
        "warmup": args.warmup,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "settings": {
            "fastapi": fastapi_settings,
            "torchserve": {
                "version": ts.__version__,
                "workers": ts_config.workers,
                "torch_threads": ts_config.torch_threads,
                "batch_size": ts_config.batch_size,
                "max_batch_delay_ms": ts_config.max_batch_delay_ms,
                "logging": "default" if args.torchserve_default_logging else "warnings only",
            },
        },
        "rows": rows,
        "ratios": compare(rows),
    }
    write_results(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
