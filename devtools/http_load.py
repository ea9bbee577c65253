"""A lean HTTP/1.1 load client on raw asyncio streams, for tests and benchmarks on 127.0.0.1.

Requests are serialised once up front (:func:`raw_request`); only the status line, the headers
and a Content-Length or chunked body are parsed from each answer (:func:`read_response`).

* :func:`closed_loop`: ``concurrency`` clients, each on its own keep-alive connection, send a
  request and wait for its answer, until ``total`` answers have arrived;
* :func:`open_loop`: requests start on a fixed schedule (``rate`` per second, evenly spaced or
  Poisson arrivals) whatever the server answers, each on an idle keep-alive connection or a
  new one: the way to offer a server more than it can take.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Shot", "closed_loop", "open_loop", "raw_request", "read_response"]


@dataclass(frozen=True)
class Shot:
    """One request's outcome: the index of its payload, the status (0: no answer, the
    connection failed or timed out), the latency in seconds and the body."""

    index: int
    status: int
    latency_s: float
    body: bytes = b""


def raw_request(
    host: str, port: int, method: str, path: str, body: bytes, headers: Mapping[str, str]
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length or chunked body): status, headers, body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in fields:
        body = await reader.readexactly(int(fields["content-length"]))
    elif fields.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append((await reader.readexactly(size + 2))[:-2])
            if size == 0:
                break
        body = b"".join(parts)
    return status, fields, body


async def closed_loop(
    host: str, port: int, payloads: Sequence[bytes], concurrency: int, total: int
) -> list[Shot]:
    """``concurrency`` keep-alive clients send ``payloads`` in turn until ``total`` answers."""
    shots: list[Shot] = []
    sent = 0

    async def client() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while sent < total:
                index = sent % len(payloads)
                sent += 1
                started = time.perf_counter()
                writer.write(payloads[index])
                status, _, body = await read_response(reader)
                shots.append(Shot(index, status, time.perf_counter() - started, body))
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return shots


async def open_loop(
    host: str,
    port: int,
    payloads: Sequence[bytes],
    rate: float,
    duration_s: float,
    timeout_s: float = 30.0,
    poisson_seed: int | None = None,
) -> list[Shot]:
    """Start ``rate * duration_s`` requests at ``rate`` per second (payloads in turn), each on
    an idle connection or a new one; every request waits at most ``timeout_s``. Arrivals are
    evenly spaced, or a Poisson process (exponential gaps, seeded) with ``poisson_seed``."""
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[asyncio.StreamWriter] = []
    shots: list[Shot] = []

    async def one(index: int, payload_index: int) -> None:
        started = time.perf_counter()
        try:
            if idle:
                reader, writer = idle.pop()
            else:
                reader, writer = await asyncio.open_connection(host, port)
                opened.append(writer)
            writer.write(payloads[payload_index])
            status, fields, body = await asyncio.wait_for(read_response(reader), timeout_s)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            shots.append(Shot(payload_index, 0, time.perf_counter() - started))
            return
        shots.append(Shot(payload_index, status, time.perf_counter() - started, body))
        if fields.get("connection", "").lower() != "close":
            idle.append((reader, writer))

    count = int(rate * duration_s)
    offsets = [index / rate for index in range(count)]
    if poisson_seed is not None:
        gaps = random.Random(poisson_seed)
        offsets = list(itertools.accumulate(gaps.expovariate(rate) for _ in range(count)))
    start = loop.time()
    tasks = []
    for index, offset in enumerate(offsets):
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, index % len(payloads))))
    await asyncio.gather(*tasks)
    for writer in opened:
        writer.close()
    return shots
