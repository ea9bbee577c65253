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
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _compare_load import compute_limit, forward_times, pool_rounds, python_round, wire, wrk_round
from _compare_peers import Peer, start_peers, tree_memory
from _compare_report import add_ratios, machine, markdown, versions
from _results import RESULTS, command, write_results
from loadgen import Request, make_requests
from wrkload import write_script

from multidomain.artifact import ArtifactError, load_artifact

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("fastapi", "torchserve", "litserve")
CLIENTS = ("wrk", "python")
LOADS = ("single", "mixed")

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
