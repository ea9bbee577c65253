"""Overload and slow clients against real ``python -m service`` processes on 127.0.0.1.

1. Overload: a test artifact heavy enough (ResNet-26 width 1.0, 64x64, random weights) that the
   Python load generator can offer several times what the service serves. Capacity is measured
   closed-loop (16 clients), then requests arrive open-loop at ``--multiplier`` x capacity for
   ``--duration`` seconds (mixed domains): the status counts, latency of refusals (429) and of
   accepted answers, and accepted throughput. With ``--baseline REV`` the same load also runs
   against that revision of the code (``git archive``), alternating.
2. Slow clients: ``--slow-clients`` connections send request headers one byte per 100 ms while
   8 normal clients run closed-loop on the tiny test artifact; normal throughput and latency
   with and without the slow clients, and when the server closed the slow connections.

Each part runs ``--rounds`` times per version, alternating. Writes
``bench/results/overload.{json,md}`` with the command.

    python bench/overload.py [--baseline 6d280ae] [--multiplier 4 --duration 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _results import write_results
from loadgen import export_revision, fastapi_server
from PIL import Image

from devtools.http_load import Shot, closed_loop, open_loop, raw_request

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from multidomain.arch import ArchSpec  # noqa: E402
from tests.artifacts import TINY_DOMAINS, write_tiny_artifact  # noqa: E402

#: The service's settings in the overload run: in-flight bound sized to ~1.6 s of work.
OVERLOAD_SETTINGS = {
    "MDP_MAX_IN_FLIGHT": "64",
    "MDP_MAX_IN_FLIGHT_PER_DOMAIN": "64",
    "MDP_LOG_LEVEL": "warning",
}


def _png(seed: int, side: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def _payloads(url: str, side: int, count: int) -> list[bytes]:
    host, port = url.removeprefix("http://").split(":")
    domains = list(TINY_DOMAINS)
    return [
        raw_request(
            host,
            int(port),
            "POST",
            f"/v1/domains/{domains[i % len(domains)]}/predict",
            _png(i, side),
            {"Content-Type": "image/png"},
        )
        for i in range(count)
    ]


def _ms(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if len(values) else None


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def overload_run(url: str, multiplier: float, duration: float) -> dict[str, Any]:
    host, port = _host_port(url)
    payloads = _payloads(url, 64, 12)

    async def run() -> tuple[float, list[Shot], float]:
        await closed_loop(host, port, payloads, 16, 32)  # warm-up
        started = time.perf_counter()
        measured = await closed_loop(host, port, payloads, 16, 160)
        capacity = len(measured) / (time.perf_counter() - started)
        started = time.perf_counter()
        shots = await open_loop(host, port, payloads, multiplier * capacity, duration, 30.0)
        return capacity, shots, time.perf_counter() - started

    capacity, shots, wall = asyncio.run(run())
    statuses: dict[str, int] = {}
    for shot in shots:
        statuses[str(shot.status)] = statuses.get(str(shot.status), 0) + 1
    refused = [s.latency_s for s in shots if s.status == 429]
    accepted = [s.latency_s for s in shots if s.status == 200]
    other = [s.latency_s for s in shots if s.status not in (200, 429)]
    return {
        "capacity_rps": round(capacity, 1),
        "offered_rps": round(multiplier * capacity, 1),
        "requests": len(shots),
        "wall_s": round(wall, 2),
        "statuses": dict(sorted(statuses.items())),
        "refused_p50_ms": _ms(refused, 50),
        "refused_p99_ms": _ms(refused, 99),
        "accepted_p50_ms": _ms(accepted, 50),
        "accepted_p99_ms": _ms(accepted, 99),
        "accepted_max_ms": _ms(accepted, 100),
        "accepted_rps": round(len(accepted) / wall, 1),
        "other_p50_ms": _ms(other, 50),
    }


def slow_client_run(url: str, slow_clients: int, seconds: float) -> dict[str, Any]:
    host, port = _host_port(url)
    payloads = _payloads(url, 16, 12)
    # a request line, then valid header lines without end
    head = b"POST /v1/domains/shapes/predict HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"X-Pad-{i}: {i}\r\n".encode() for i in range(2000)
    )

    async def slow(stop: asyncio.Event) -> float | None:
        """Seconds until the server closed the connection (None: still open at the end)."""
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return 0.0
        started = time.monotonic()

        async def closed() -> float:
            with contextlib.suppress(ConnectionError):
                while await reader.read(4096):
                    pass
            return time.monotonic() - started

        watching = asyncio.create_task(closed())
        with contextlib.suppress(ConnectionError):
            for byte in head:
                if watching.done() or stop.is_set():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)
        closed_by_server = watching.done()  # before our own close ends the connection
        writer.close()
        if closed_by_server:
            return watching.result()
        watching.cancel()
        return None

    async def normal(total: int) -> tuple[list[Shot], float]:
        started = time.perf_counter()
        shots = await closed_loop(host, port, payloads, 8, total)
        return shots, time.perf_counter() - started

    async def run() -> dict[str, Any]:
        await closed_loop(host, port, payloads, 8, 200)  # warm-up
        calm, calm_wall = await normal(int(400 * seconds))
        stop = asyncio.Event()
        slow_tasks = [asyncio.create_task(slow(stop)) for _ in range(slow_clients)]
        await asyncio.sleep(0.5)
        busy, busy_wall = await normal(int(400 * seconds))
        await asyncio.sleep(max(0.0, seconds - busy_wall))
        stop.set()
        closes = await asyncio.gather(*slow_tasks)
        closed = sorted(c for c in closes if c is not None)

        def traffic(shots: list[Shot], wall: float) -> dict[str, Any]:
            ok = [s.latency_s for s in shots if s.status == 200]
            return {
                "requests": len(shots),
                "ok": len(ok),
                "rps": round(len(shots) / wall, 1),
                "p50_ms": _ms(ok, 50),
                "p99_ms": _ms(ok, 99),
            }

        return {
            "slow_clients": slow_clients,
            "normal_without_slow_clients": traffic(calm, calm_wall),
            "normal_with_slow_clients": traffic(busy, busy_wall),
            "slow_closed_by_server": len(closed),
            "slow_still_open_at_end": len(closes) - len(closed),
            "slow_closed_after_s": {
                "min": round(closed[0], 2) if closed else None,
                "median": round(float(np.median(closed)), 2) if closed else None,
                "max": round(closed[-1], 2) if closed else None,
            },
        }

    return asyncio.run(run())


def _rows(runs: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, result) of every round of every version, rounds in order."""
    rounds = max(len(results) for results in runs.values())
    return [
        (f"{name}, round {i + 1}", results[i])
        for i in range(rounds)
        for name, results in runs.items()
        if i < len(results)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multiplier", type=float, default=4.0)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of open-loop load")
    parser.add_argument("--baseline", help="git revision to run the same load against")
    parser.add_argument("--slow-clients", type=int, default=200)
    parser.add_argument("--header-timeout", type=float, default=5.0)
    parser.add_argument("--slow-seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per part")
    parser.add_argument("--out", type=Path, default=RESULTS / "overload")
    args = parser.parse_args()
    record: dict[str, Any] = {"command": "python " + shlex.join(sys.argv)}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        roots = {"working tree": ROOT}
        if args.baseline:
            roots[f"baseline {args.baseline}"] = export_revision(args.baseline, scratch / "base")

        def on_each_version(
            part: str, artifact: Path, settings: dict[str, str], measure: Callable[[str], Any]
        ) -> None:
            """``--rounds`` rounds, each measuring every version (order alternating)."""
            runs: dict[str, list[Any]] = {name: [] for name in roots}
            record[part] = {"settings": settings, "runs": runs}
            for round_ in range(args.rounds):
                for name in list(roots) if round_ % 2 == 0 else list(reversed(roots)):
                    log = scratch / f"{part}-{name.split()[0]}-{round_}.log"
                    with fastapi_server(artifact, settings, log, root=roots[name]) as url:
                        result = measure(url)
                    runs[name].append(result)
                    print(part, name, json.dumps(result), flush=True)

        on_each_version(
            "overload",
            write_tiny_artifact(scratch / "heavy", arch=ArchSpec(width_mult=1.0, image_size=64)),
            OVERLOAD_SETTINGS,
            lambda url: overload_run(url, args.multiplier, args.duration),
        )
        on_each_version(
            "slow_clients",
            write_tiny_artifact(scratch / "tiny"),
            {"MDP_HEADER_TIMEOUT_S": str(args.header_timeout), "MDP_LOG_LEVEL": "warning"},
            lambda url: slow_client_run(url, args.slow_clients, args.slow_seconds),
        )
    lines = [
        "# Overload and slow clients",
        "",
        f"Command: `{record['command']}`",
        "",
        f"## Overload: open loop at {args.multiplier:g}x the measured capacity for "
        f"{args.duration:g} s",
        "",
        "Test artifact ResNet-26 width 1.0, 64x64, 3 domains, random weights; service settings "
        f"{OVERLOAD_SETTINGS}, all else default (deadline 10 s). Capacity: closed loop, 16 "
        "clients.",
        "",
        "| code, round | capacity req/s | offered req/s | requests | statuses | 429 p50 / p99 ms | "
        "accepted p50 / p99 / max ms | accepted req/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in _rows(record["overload"]["runs"]):
        statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(
            f"| {name} | {r['capacity_rps']} | {r['offered_rps']} | {r['requests']} | "
            f"{statuses} | {r['refused_p50_ms']} / {r['refused_p99_ms']} | "
            f"{r['accepted_p50_ms']} / {r['accepted_p99_ms']} / {r['accepted_max_ms']} | "
            f"{r['accepted_rps']} |"
        )
    lines += [
        "",
        f"## Slow clients: {args.slow_clients} connections sending headers one byte per 100 ms",
        "",
        f"Tiny test artifact; `MDP_HEADER_TIMEOUT_S={args.header_timeout:g}`; normal traffic: 8 "
        "keep-alive clients, closed loop.",
        "",
        "| code, round | normal req/s without / with slow clients | normal p99 ms without / with | "
        "slow connections closed by the server | closed after s (min / median / max) |",
        "|---|---|---|---|---|",
    ]
    for name, r in _rows(record["slow_clients"]["runs"]):
        calm, busy = r["normal_without_slow_clients"], r["normal_with_slow_clients"]
        after = r["slow_closed_after_s"]
        lines.append(
            f"| {name} | {calm['rps']} / {busy['rps']} | {calm['p99_ms']} / {busy['p99_ms']} | "
            f"{r['slow_closed_by_server']} of {r['slow_clients']} | "
            f"{after['min']} / {after['median']} / {after['max']} |"
        )
    lines.append("")
    write_results(args.out, record, "\n".join(lines))


if __name__ == "__main__":
    main()
