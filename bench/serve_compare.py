"""FastAPI service vs TorchServe vs LitServe: the same artifact, the same load, side by side.

All servers run at once on 127.0.0.1, started and stopped (by process group) by this script:
the FastAPI service (``python -m service``), TorchServe 0.12 with the artifact exported to a
``.mar`` (``devtools/torchserve_local.py``, token auth off, warnings-only logs) and LitServe
serving it through the same ``multidomain.serving`` code (``devtools/litserve_peer.py``). Same
settings for all: torch threads per process, max batch, max batch wait, worker processes (per
server, recorded), queue bound where the server has one.

Load, closed-loop on keep-alive connections, PNGs of each domain's input size:

* clients: ``wrk`` with a generated Lua script rotating through pre-built requests
  (``bench/wrkload.py``), and the Python client ``bench/loadgen.py`` (asyncio streams);
* kinds: ``single`` (every request to one domain, ``--domain``) and ``mixed`` (requests cycle
  through every domain's images in a fixed shuffled order);
* at each concurrency, ``--rounds`` rounds, each measuring every server in turn (A, B, C, A, B,
  C, ...) while the others idle, so that drifts of the machine's speed hit all alike; with wrk
  each measured run of ``--duration-s`` follows an unmeasured one of ``--warmup-s``.

Request bodies: raw ``image/png`` for the service and TorchServe (``--body multipart`` sends
them the multipart form instead); LitServe parses only JSON or forms, so it always gets a
multipart form (fields ``domain`` and ``file``).

Reported per client, load kind, concurrency and server: throughput (2xx answers/s over all
rounds), p50/p90/p99 latency (median over rounds of each round's percentile), non-2xx answers,
socket errors and timeouts, the peak RSS summed over the server's process tree (psutil) during
the runs, the ratios to TorchServe, and the throughput over the compute-only limit: images/s of
batch-32 forward passes of the served subnetwork(s) at the server's total torch threads
(``bench/subnet_compute.py``'s timing), measured in this process in every round after the
servers, so that it drifts with them.
Writes ``<out>.json`` and ``<out>.md`` (default ``bench/results/serve_compare``) with the exact
command, machine, versions and settings.

    python bench/serve_compare.py model_store/default/<version>
        [--servers fastapi torchserve litserve] [--clients wrk python] [--loads single mixed]
        [--concurrency 1 8 32 128] [--rounds 3] [--duration-s 8] [--threads 1] [--workers 1]
    python bench/serve_compare.py ARTIFACT --quick   # smoke run: a few seconds of load
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch
from _results import RESULTS, command, write_results
from loadgen import (
    Request,
    Target,
    fastapi_process,
    make_requests,
    run_closed_loop,
    server_process,
)
from subnet_compute import served_forward_ms
from wrkload import WireRequest, WrkRun, run_wrk, write_script, wrk_version

from devtools.litserve_peer import API_PATH as LITSERVE_PATH
from devtools.litserve_peer import DOMAIN_FIELD, IMAGE_FIELD
from devtools.torchserve_local import LocalTorchServe, free_port
from multidomain.artifact import Artifact, ArtifactError, load_artifact
from torchserving.export import TorchServeModelConfig, export_mar
from torchserving.handler import DOMAIN_HEADER

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("fastapi", "torchserve", "litserve")
CLIENTS = ("wrk", "python")
LOADS = ("single", "mixed")
REFERENCE = "torchserve"
#: Fixed multipart boundary: every request of a domain has the same headers.
BOUNDARY = "mdp-bench-5f0c2a7e91"
MIB = 1 << 20

#: Defaults of a full run and of ``--quick``; options given on the command line win.
FULL = {
    "concurrency": [1, 8, 32, 128],
    "rounds": 3,
    "duration_s": 8,
    "warmup_s": 1,
    "python_requests": 1000,
    "python_warmup": 100,
    "images_per_domain": 16,
    "compute_repeats": 10,
}
QUICK = {
    "concurrency": [1, 8],
    "rounds": 1,
    "duration_s": 1,
    "warmup_s": 0,
    "python_requests": 40,
    "python_warmup": 8,
    "images_per_domain": 4,
    "compute_repeats": 3,
}


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Peer:
    """A running server: its base URL, the root of its process tree and its settings."""

    name: str
    url: str
    pid: int
    workers: int
    settings: dict[str, Any]
    alive: bool = True

    def running(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


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


@contextlib.contextmanager
def fastapi_peer(artifact: Path, args: argparse.Namespace, work: Path) -> Iterator[Peer]:
    settings = {
        "MDP_TORCH_THREADS": str(args.threads),
        "MDP_PREPROCESS_THREADS": str(args.threads),
        "MDP_MAX_BATCH_SIZE": str(args.batch_size),
        "MDP_MAX_WAIT_MS": str(args.max_wait_ms),
        "MDP_QUEUE_SIZE": str(args.queue_size),
        "MDP_LOG_LEVEL": "warning",  # no access log either
        "MDP_WORKERS": str(args.workers_of["fastapi"]),
        **dict(args.fastapi_env),
    }
    with fastapi_process(artifact, settings, work / "fastapi.log") as (url, process):
        yield Peer(
            "fastapi",
            url,
            process.pid,
            args.workers_of["fastapi"],
            {
                "server": f"python -m service (uvicorn, {args.workers_of['fastapi']} worker "
                "processes; more than 1: plus a supervisor)",
                "env": settings,
                "request_body": "raw image/png"
                if args.body == "raw"
                else "multipart/form-data, field file",
            },
        )


@contextlib.contextmanager
def torchserve_peer(artifact: Path, args: argparse.Namespace, work: Path) -> Iterator[Peer]:
    import ts

    workers = args.workers_of["torchserve"]
    config = TorchServeModelConfig(
        batch_size=args.batch_size,
        max_batch_delay_ms=round(args.max_wait_ms),
        workers=workers,
        torch_threads=args.threads,
    )
    mar = export_mar(artifact, work / "mars", "bench", config)
    server = LocalTorchServe(
        mar.parent,
        {"bench": mar.name},
        work / "torchserve",
        config={"job_queue_size": str(args.queue_size)},
        quiet_logs=not args.torchserve_default_logging,
    )
    with server:
        assert server.process is not None
        yield Peer(
            "torchserve",
            server.inference_url,
            server.process.pid,
            workers,
            {
                "version": ts.__version__,
                "workers": workers,
                "torch_threads": args.threads,
                "batch_size": config.batch_size,
                "max_batch_delay_ms": config.max_batch_delay_ms,
                "job_queue_size": args.queue_size,
                "netty_threads": "default (number of cores)",
                "jvm": "default options",
                "logging": "default" if args.torchserve_default_logging else "warnings only",
                "batching": "mixed domains per batch, grouped per domain in the handler",
                "request_body": "raw image/png + X-Domain"
                if args.body == "raw"
                else "multipart/form-data field file + X-Domain",
            },
        )


@contextlib.contextmanager
def litserve_peer(artifact: Path, args: argparse.Namespace, work: Path) -> Iterator[Peer]:
    workers = args.workers_of["litserve"]
    port = free_port()
    command = [
        sys.executable, "-m", "devtools.litserve_peer", str(artifact),
        "--port", str(port),
        "--workers", str(workers),
        "--max-batch-size", str(args.batch_size),
        "--batch-timeout-ms", str(args.max_wait_ms),
        "--log-level", "warning",
    ]  # fmt: skip
    if args.litserve_mp_queue:
        command.append("--no-fast-queue")
    url = f"http://127.0.0.1:{port}"
    env = {"MDP_TORCH_THREADS": str(args.threads)}
    with server_process("LitServe", command, f"{url}/health", work / "litserve.log", env) as proc:
        yield Peer(
            "litserve",
            url,
            proc.pid,
            workers,
            {
                "version": importlib.metadata.version("litserve"),
                "workers_per_device": workers,
                "api_servers": f"LitServe default ({workers}, one per inference worker)",
                "torch_threads": args.threads,
                "max_batch_size": args.batch_size,
                "batch_timeout_ms": args.max_wait_ms,
                "queue": "multiprocessing" if args.litserve_mp_queue else "ZeroMQ (fast_queue)",
                "batching": "mixed domains per batch, grouped per domain in predict",
                "request_body": "multipart/form-data, fields domain and file",
            },
        )


STARTERS: dict[str, Callable[[Path, argparse.Namespace, Path], AbstractContextManager[Peer]]] = {
    "fastapi": fastapi_peer,
    "torchserve": torchserve_peer,
    "litserve": litserve_peer,
}


def start_peers(
    stack: ExitStack, artifact: Path, args: argparse.Namespace, work: Path
) -> dict[str, Peer]:
    """Every server of ``args.servers`` started at once (their start-ups overlap); the stop of
    each one that came up pushed on ``stack``. ``RuntimeError`` naming those that failed."""
    managers = {name: STARTERS[name](artifact, args, work) for name in args.servers}
    pool = ThreadPoolExecutor(len(managers))
    futures = {name: pool.submit(manager.__enter__) for name, manager in managers.items()}
    try:
        failures = [f"{name}: {f.exception()}" for name, f in futures.items() if f.exception()]
    finally:  # also when interrupted: whatever has started is stopped with the stack
        pool.shutdown(wait=True)
        for name, future in futures.items():
            if future.exception() is None:
                stack.push(managers[name].__exit__)
    if failures:
        raise RuntimeError("; ".join(failures))
    return {name: futures[name].result() for name in args.servers}


# -- memory -----------------------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_memory(pid: int, with_pss: bool = False) -> dict[str, Any]:
    """RSS (and PSS: shared pages divided among their users) summed over a process tree."""
    rss = pss = 0
    names = []
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            if with_pss:
                info = proc.memory_full_info()
                pss += info.pss
            else:
                info = proc.memory_info()
            rss += info.rss
            names.append(f"{proc.name()}:{info.rss // MIB}MiB")
    out: dict[str, Any] = {"processes": len(names), "rss_mib": round(rss / MIB, 1)}
    if with_pss:
        out["pss_mib"] = round(pss / MIB, 1)
        out["members"] = names
    return out


class PeakRss:
    """Samples a process tree's summed RSS every ``interval_s`` while the block runs."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_mib = max(self.peak_mib, tree_memory(self.pid)["rss_mib"])
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's throughput and p99 over TorchServe's at the same point."""
    reference = {
        (r["client"], r["load"], r["concurrency"]): r for r in rows if r["server"] == REFERENCE
    }
    for row in rows:
        ref = reference.get((row["client"], row["load"], row["concurrency"]))
        if row["server"] == REFERENCE or not (ref and ref.get("throughput_rps")):
            continue
        if row.get("throughput_rps") is not None:
            row["throughput_vs_torchserve"] = round(
                row["throughput_rps"] / ref["throughput_rps"], 3
            )
            row["p99_vs_torchserve"] = round(row["p99_ms"] / ref["p99_ms"], 3)


# -- report -----------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _java_version() -> str:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    return (done.stderr or done.stdout).splitlines()[0].strip()


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
    }


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{
            name: _version(name)
            for name in ("fastapi", "starlette", "uvicorn", "torchserve", "litserve", "pyzmq")
        },
        "wrk": wrk_version(),
        "java": _java_version(),
    }


def _fmt(value: Any) -> str:
    return "–" if value is None else str(value)


def markdown(result: dict[str, Any]) -> str:
    method = result["method"]
    lines = [
        "# Serving side by side: FastAPI service, TorchServe, LitServe",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Started {result['started_at']}, {result['wall_s']:.0f} s. Machine: "
        f"{result['machine']['cpu']}, {result['machine']['cpus']} CPUs "
        f"({result['machine']['cpu_capability']}), {result['machine']['memory_gib']} GiB; "
        f"load average {result['load_average']['start']} at the start, "
        f"{result['load_average']['end']} at the end. Versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        "",
        f"Artifact `{result['artifact']['path']}` ({result['artifact']['name']} "
        f"{result['artifact']['version']}; domains "
        + ", ".join(f"{d} {s}px" for d, s in result["artifact"]["domains"].items())
        + f"). Single-domain load: `{method['domain']}`; mixed: every domain in turn, "
        f"{method['images_per_domain']} random PNGs each.",
        "",
        f"Method: all servers up at once; at each point {method['rounds']} round(s), each "
        f"measuring the servers in turn ({', '.join(result['servers'])}) while the others "
        f"idle. wrk ({method['wrk_threads']} thread(s)): {method['warmup_s']} s unmeasured, then "
        f"{method['duration_s']} s measured per round; Python client (bench/loadgen.py): "
        f"{method['python_warmup']} unmeasured, then {method['python_requests']} measured "
        "answers per round. Throughput: 2xx answers/s over all rounds; p50/p90/p99: median "
        "over rounds of each round's percentile; RSS: peak sum over the server's process tree "
        "during the runs (PSS, idle only: each shared page divided among its processes).",
        "",
        "Settings (same for all where the server has it):",
    ]
    lines += [f"- {name}: `{json.dumps(s)}`" for name, s in result["settings"].items()]
    lines += [
        "",
        f"## Compute-only limit (batch {result['common']['batch_size']} forward of the served "
        "subnetwork, images/s)",
        "",
        "Median forward time of each domain's served network (as bench/subnet_compute.py times "
        "it) at the server's total torch threads (threads x workers), in this process while the "
        "servers idle, in every round after the servers; here the mean over all rounds, in the "
        "load tables the mean over that point's rounds (the last column divides throughput by "
        "it). Mixed: every domain in equal shares.",
        "",
        "| torch threads | " + " | ".join(result["artifact"]["domains"]) + " | mixed |",
        "|---|" + "---|" * (len(result["artifact"]["domains"]) + 1),
    ]
    for threads, limit in result["compute_limit"].items():
        lines.append(
            f"| {threads} | "
            + " | ".join(
                f"{limit['images_per_s'][d]} ({limit['forward_ms'][d]} ms)"
                for d in result["artifact"]["domains"]
            )
            + f" | {limit['mixed_images_per_s']} |"
        )
    lines += [
        "",
        "## Memory (sum over each server's processes, MiB)",
        "",
        "| server | processes | RSS idle after start | PSS idle after start | RSS idle at end "
        "| PSS idle at end | peak RSS under load | members at end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, memory in result["memory"].items():
        start, end = memory["start"], memory.get("end", {})
        lines.append(
            f"| {name} | {start['processes']} | {start['rss_mib']} | {start['pss_mib']} "
            f"| {_fmt(end.get('rss_mib'))} | {_fmt(end.get('pss_mib'))} "
            f"| {_fmt(memory.get('peak_rss_mib'))} | {', '.join(end.get('members', []))} |"
        )
    for client in method["clients"]:
        for load in method["loads"]:
            rows = [r for r in result["rows"] if r["client"] == client and r["load"] == load]
            if not rows:
                continue
            lines += [
                "",
                f"## {client}, {load}-domain load",
                "",
                "| concurrency | server | 2xx req/s | per round | p50 ms | p90 ms | p99 ms "
                "| non-2xx | errors | peak RSS MiB | req/s vs TorchServe | p99 vs TorchServe "
                "| req/s / compute limit |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                if "throughput_rps" not in r:
                    lines.append(
                        f"| {r['concurrency']} | {r['server']} | failed: "
                        f"{'; '.join(r['failed_rounds'])} |" + " |" * 10
                    )
                    continue
                lines.append(
                    f"| {r['concurrency']} | {r['server']} | {r['throughput_rps']} "
                    f"| {', '.join(str(t) for t in r['round_throughputs_rps'])} "
                    f"| {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['non_2xx']} "
                    f"| {r['errors']} | {r['rss_peak_mib']} "
                    f"| {_fmt(r.get('throughput_vs_torchserve'))} "
                    f"| {_fmt(r.get('p99_vs_torchserve'))} | {r['over_compute_limit']} |"
                )
    return "\n".join(lines) + "\n"


# -- command line -----------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Defaults of a full run / of --quick: "
        + ", ".join(f"{k} {FULL[k]} / {QUICK[k]}" for k in FULL),
    )
    parser.add_argument("artifact", type=Path, help="artifact folder <store>/<name>/<version>")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few seconds of load")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument("--loads", nargs="+", choices=LOADS, default=list(LOADS))
    parser.add_argument("--concurrency", type=int, nargs="+")
    parser.add_argument("--rounds", type=int, help="alternating rounds per point")
    parser.add_argument("--duration-s", type=int, help="wrk: measured seconds per round")
    parser.add_argument("--warmup-s", type=int, help="wrk: unmeasured seconds before each run")
    parser.add_argument("--python-requests", type=int, help="Python client: measured answers")
    parser.add_argument("--python-warmup", type=int, help="Python client: unmeasured answers")
    parser.add_argument("--images-per-domain", type=int)
    parser.add_argument(
        "--compute-repeats", type=int, help="timed forward passes per domain and round"
    )
    parser.add_argument("--domain", help="domain of the single-domain load (default: the first)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--batch-size", type=int, default=32, help="max batch of every server")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="max batch wait")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per server")
    parser.add_argument(
        "--workers-of",
        type=_key_value,
        action="append",
        default=[],
        metavar="SERVER=N",
        help="worker processes of one server (overrides --workers)",
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=256,
        help="queue bound: the service's MDP_QUEUE_SIZE, TorchServe's job_queue_size",
    )
    parser.add_argument(
        "--body",
        choices=["raw", "multipart"],
        default="raw",
        help="request body for the service and TorchServe (LitServe: always multipart)",
    )
    parser.add_argument(
        "--fastapi-env",
        type=_key_value,
        action="append",
        default=[],
        metavar="MDP_X=V",
        help="extra environment of the service",
    )
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=10.0, help="client request timeout")
    parser.add_argument(
        "--litserve-mp-queue",
        action="store_true",
        help="LitServe with multiprocessing queues instead of ZeroMQ (fast_queue)",
    )
    parser.add_argument(
        "--torchserve-default-logging",
        action="store_true",
        help="keep TorchServe's per-request logging (default: warnings only, like the service)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        help="output path without suffix (default: bench/results/serve_compare; with --quick "
        "a temporary folder)",
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="serve-compare-quick-")) / "serve_compare"
            if args.quick
            else RESULTS / "serve_compare"
        )
    positive = ("rounds", "duration_s", "python_requests", "images_per_domain",
                "compute_repeats", "threads", "batch_size", "workers", "queue_size",
                "wrk_threads")  # fmt: skip
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.concurrency) < 1 or args.warmup_s < 0 or args.python_warmup < 0:
        parser.error("--concurrency must be >= 1, --warmup-s and --python-warmup >= 0")
    if args.max_wait_ms < 0 or args.timeout_s <= 0:
        parser.error("--max-wait-ms must be >= 0 and --timeout-s > 0")
    workers = dict.fromkeys(SERVERS, args.workers)
    for server, count in args.workers_of:
        if server not in SERVERS or not count.isdigit() or int(count) < 1:
            parser.error(f"--workers-of: expected SERVER=N with SERVER in {', '.join(SERVERS)} "
                         f"and N >= 1, got {server}={count}")  # fmt: skip
        workers[server] = int(count)
    args.workers_of = workers
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the servers' context managers: every one stops


def _progress(step: int, total: int, label: str, result: dict[str, Any]) -> None:
    if "error" in result:
        text = f"failed: {result['error']}"
    else:
        text = (
            f"{result['throughput_rps']} req/s, p50 {result['p50_ms']} ms, p99 "
            f"{result['p99_ms']} ms, non-2xx {result['non_2xx']}, errors {result['errors']}, "
            f"RSS {result['rss_peak_mib']} MiB"
        )
    print(f"[{step}/{total}] {label}: {text}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        artifact_path = args.artifact.resolve(strict=True)
        artifact = load_artifact(artifact_path)
    except (ArtifactError, OSError) as exc:
        print(f"error: cannot load the artifact {args.artifact}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    domains = {entry.name: entry.image_size for entry in artifact.domains}
    domain = args.domain or next(iter(domains))
    if domain not in domains:
        print(f"error: --domain {domain!r} is not one of {', '.join(domains)}", file=sys.stderr)
        raise SystemExit(2)
    if "wrk" in args.clients and shutil.which("wrk") is None:
        print(
            "error: wrk is not installed (Debian package 'wrk'; make system-deps)", file=sys.stderr
        )
        raise SystemExit(2)
    started, load_start = time.time(), os.getloadavg()
    images = {
        "single": make_requests(artifact_path, args.images_per_domain, args.seed, [domain]),
        "mixed": make_requests(artifact_path, args.images_per_domain, args.seed),
    }
    compute_threads = sorted({args.threads * args.workers_of[name] for name in args.servers})
    forward: dict[int, list[dict[str, float]]] = {threads: [] for threads in compute_threads}
    rows: list[dict[str, Any]] = []
    settings: dict[str, dict[str, Any]] = {}
    memory: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="serve-compare-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        print(f"starting {', '.join(args.servers)} ...", flush=True)
        try:
            peers = start_peers(stack, artifact_path, args, work)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        for name, peer in peers.items():
            settings[name] = {"workers": peer.workers, **peer.settings}
            memory[name] = {"start": tree_memory(peer.pid, with_pss=True)}
        sent: dict[tuple[str, str], list[Request]] = {}
        scripts: dict[tuple[str, str], Path] = {}
        for name in peers:
            for load in args.loads:
                wires = [wire(name, r.domain, r.body, args.body) for r in images[load]]
                sent[(name, load)] = [
                    Request(r.domain, w.body) for r, w in zip(images[load], wires, strict=True)
                ]
                if "wrk" in args.clients:
                    scripts[(name, load)] = write_script(wires, work / f"wrk-{name}-{load}")

        def measure(peer: Peer, client: str, load: str, concurrency: int) -> dict[str, Any]:
            if not peer.alive:
                return {"error": "the server had stopped"}
            result: dict[str, Any]
            try:
                if client == "wrk":
                    result = wrk_round(peer, scripts[(peer.name, load)], concurrency, args)
                else:
                    result = python_round(peer, sent[(peer.name, load)], concurrency, args)
            except Exception as exc:  # reported; the other runs go on
                result = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
            if not peer.running():
                peer.alive = False
                result.setdefault("error", "the server process exited")
            return result

        points = [
            (client, load, concurrency)
            for client in args.clients
            for load in args.loads
            for concurrency in args.concurrency
        ]
        total, step = len(points) * args.rounds * len(peers), 0
        for client, load, concurrency in points:
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in peers}
            point_forward: dict[int, list[dict[str, float]]] = {t: [] for t in compute_threads}
            for round_ in range(args.rounds):
                for name, peer in peers.items():
                    step += 1
                    rounds[name].append(measure(peer, client, load, concurrency))
                    label = f"{client} {load} c={concurrency} round {round_ + 1} {name}"
                    _progress(step, total, label, rounds[name][-1])
                for threads in compute_threads:  # the compute-only limit, in the same rotation
                    times = forward_times(artifact, threads, args.batch_size, args.compute_repeats)
                    point_forward[threads].append(times)
                    forward[threads].append(times)
                    per_domain = ", ".join(f"{n} {ms} ms" for n, ms in times.items())
                    print(f"  compute-only, {threads} thread(s), batch {args.batch_size}: "
                          f"{per_domain}", flush=True)  # fmt: skip
            for name, peer in peers.items():
                threads = args.threads * peer.workers
                limit = compute_limit(point_forward[threads], args.batch_size)
                bound = limit["mixed_images_per_s"]
                if load == "single":
                    bound = limit["images_per_s"][domain]
                row = {
                    "client": client,
                    "load": load,
                    "concurrency": concurrency,
                    "server": name,
                    "workers": peer.workers,
                    "compute_threads": threads,
                    **pool_rounds(rounds[name]),
                    "compute_limit_rps": bound,
                    "round_details": rounds[name],
                }
                if row.get("throughput_rps") is not None:
                    row["over_compute_limit"] = round(row["throughput_rps"] / bound, 3)
                rows.append(row)
        for name, peer in peers.items():
            memory[name]["end"] = tree_memory(peer.pid, with_pss=True)
    limits = {threads: compute_limit(m, args.batch_size) for threads, m in forward.items()}
    add_ratios(rows)
    for name in memory:
        peaks = [r["rss_peak_mib"] for r in rows if r["server"] == name and "rss_peak_mib" in r]
        memory[name]["peak_rss_mib"] = max(peaks, default=None)
    result = {
        "command": command()
        if argv is None
        else shlex.join(["python", "bench/serve_compare.py", *argv]),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 1),
        "quick": args.quick,
        "machine": machine(),
        "load_average": {
            "start": [round(x, 2) for x in load_start],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions(),
        "artifact": {
            "path": str(args.artifact),
            "name": artifact.name,
            "version": artifact.version,
            "domains": domains,
        },
        "servers": list(args.servers),
        "common": {
            "torch_threads_per_process": args.threads,
            "batch_size": args.batch_size,
            "max_wait_ms": args.max_wait_ms,
            "queue_size": args.queue_size,
            "workers": args.workers_of,
        },
        "settings": settings,
        "method": {
            "clients": list(args.clients),
            "loads": list(args.loads),
            "concurrency": list(args.concurrency),
            "rounds": args.rounds,
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "wrk_threads": args.wrk_threads,
            "client_timeout_s": args.timeout_s,
            "python_requests": args.python_requests,
            "python_warmup": args.python_warmup,
            "images_per_domain": args.images_per_domain,
            "domain": domain,
            "body": args.body,
            "compute_repeats": args.compute_repeats,
            "seed": args.seed,
        },
        "compute_limit": {str(t): limit for t, limit in limits.items()},
        "forward_ms_per_round": {str(t): m for t, m in forward.items()},
        "memory": memory,
        "rows": rows,
    }
    write_results(args.out, result, markdown(result))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
