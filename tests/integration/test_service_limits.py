"""The service's limits against a real uvicorn process on 127.0.0.1, with raw sockets where
clients misbehave: slow clients are cut off without stopping normal traffic, a connection over
the limit is refused, the HTTP parser's refusals have the JSON error body, a client that goes
away is recorded as 499 and its queued work is dropped, and load at about 4x capacity is shed
fast with 429 while every accepted request is answered correctly."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from devtools.http_load import Shot, closed_loop, open_loop, raw_request
from multidomain.arch import ArchSpec
from tests.integration.test_service_process import (
    DOMAINS,
    ServiceProcess,
    large_png,
    png,
    service_process,
    wait_for,
)

pytestmark = pytest.mark.integration


def samples(service: ServiceProcess, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one series: label items -> value."""
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def total(service: ServiceProcess, name: str, **labels: str) -> float:
    return sum(
        value
        for key, value in samples(service, name).items()
        if all((k, v) in key for k, v in labels.items())
    )


def noise_png(seed: int, side: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def host_port(service: ServiceProcess) -> tuple[str, int]:
    host, port = service.url.removeprefix("http://").split(":")
    return host, int(port)


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_slow_clients_are_cut_off_and_normal_traffic_goes_on(tmp_path: Path) -> None:
    timeout = 1.0
    slow_count = 40
    with service_process(tmp_path, MDP_HEADER_TIMEOUT_S=str(timeout)) as service:
        host, port = host_port(service)
        head = f"POST /v1/domains/{DOMAINS[0]}/predict HTTP/1.1\r\nHost: x\r\n".encode()
        head += b"".join(f"X-Pad-{i}: {i}\r\n".encode() for i in range(200))  # valid, endless

        async def slow_client() -> tuple[float, bytes]:
            """Headers byte by byte, one every 50 ms, until the server answers and closes;
            returns how long that took and the answer."""
            reader, writer = await asyncio.open_connection(host, port)
            started = time.monotonic()

            async def read_all() -> tuple[float, bytes]:
                data = b""
                with contextlib.suppress(ConnectionError):
                    while chunk := await reader.read(4096):
                        data += chunk
                return time.monotonic() - started, data

            reading = asyncio.create_task(read_all())
            with contextlib.suppress(ConnectionError):
                for byte in head:
                    if reading.done():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)
            result = await asyncio.wait_for(reading, 10)
            writer.close()
            return result

        async def idle_client() -> float:
            reader, writer = await asyncio.open_connection(host, port)
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without a word
            writer.close()
            return time.monotonic() - started

        async def normal_traffic() -> list[Shot]:
            payloads = [
                raw_request(
                    host,
                    port,
                    "POST",
                    f"/v1/domains/{d}/predict",
                    png(i),
                    {"Content-Type": "image/png"},
                )
                for i, d in enumerate(DOMAINS)
            ]
            await asyncio.sleep(0.3)  # the slow clients are connected
            return await closed_loop(host, port, payloads, concurrency=4, total=150)

        async def scenario() -> tuple[list[Any], float, list[Shot]]:
            slow = [asyncio.create_task(slow_client()) for _ in range(slow_count)]
            idle = asyncio.create_task(idle_client())
            shots = await normal_traffic()
            return await asyncio.gather(*slow), await idle, shots

        slow, idle, shots = asyncio.run(asyncio.wait_for(scenario(), 60))
        assert [shot.status for shot in shots] == [200] * len(shots)
        assert np.percentile([shot.latency_s for shot in shots], 99) < timeout
        for closed, answer in slow:
            assert timeout - 0.1 <= closed < timeout + 1.5
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert body["error"]["type"] == "request_timeout"
        assert timeout - 0.1 <= idle < timeout + 1.5
        rejected = total(
            service, "mdp_rejections_total", domain="_unknown", reason="header_timeout"
        )
        assert rejected == slow_count + 1
        assert total(service, "mdp_open_connections") <= 2  # the slow ones are gone


def test_connections_over_the_limit_are_refused(tmp_path: Path) -> None:
    with service_process(tmp_path, MDP_MAX_CONNECTIONS="4", MDP_HEADER_TIMEOUT_S="30") as service:
        host, port = host_port(service)
        held = [socket.create_connection((host, port)) for _ in range(4)]
        try:
            time.sleep(0.2)
            with socket.create_connection((host, port)) as extra:
                answer = read_until_closed(extra, 5)
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"retry-after: 1" in answer.lower()
            error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
            assert error["type"] == "overloaded" and "4 open connections" in error["message"]
        finally:
            for sock in held:
                sock.close()
        wait_for(
            "connections to close",
            lambda: httpx.get(f"{service.url}/livez", timeout=2).status_code == 200,
            service.process,
            service.log,
            timeout=10,
        )
        assert total(service, "mdp_rejections_total", reason="too_many_connections") == 1


#: Requests the HTTP parser refuses, and what its message names.
MALFORMED = [
    (
        b"POST /v1/domains/shapes/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
        "Content-Length",
    ),
    (b"GET /livez HTTP/1.1\r\nHo st: x\r\n\r\n", "header"),
    (
        b"POST /v1/domains/shapes/predict HTTP/1.1\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        "Transfer-Encoding",
    ),
]


def test_requests_the_http_parser_refuses_get_the_json_error(tmp_path: Path) -> None:
    with service_process(tmp_path) as service:
        for request_bytes, problem in MALFORMED:
            with socket.create_connection(host_port(service)) as sock:
                sock.sendall(request_bytes)
                answer = read_until_closed(sock, 5)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), answer
            assert b"content-type: application/json" in head and b"x-request-id: " in head
            error = json.loads(body)["error"]
            assert error["code"] == 400 and error["type"] == "malformed_request"
            assert problem in error["message"], error
        assert total(service, "mdp_requests_total", domain="_unknown", status="400") == 3


def test_clients_that_go_away_are_499_and_their_work_is_dropped(tmp_path: Path) -> None:
    # One preprocessing thread decodes six large images of a batch for seconds; a small
    # request of the same domain (sent to the threads too: no decoding on the event loop)
    # waits behind them for the thread, and its client goes away.
    # (Going away while queued for compute: tests/unit/service/test_admission.py.)
    domain = DOMAINS[0]
    large = [("files", (f"{i}.png", large_png(i), "image/png")) for i in range(6)]
    with (
        service_process(
            tmp_path, MDP_PREPROCESS_THREADS="1", MDP_INLINE_DECODE_BYTES="0"
        ) as service,
        httpx.Client(timeout=60) as client,
    ):
        host, port = host_port(service)
        with ThreadPoolExecutor(1) as pool:
            batch = pool.submit(
                client.post, f"{service.url}/v1/domains/{domain}/predict/batch", files=large
            )
            wait_for(
                "the batch to be decoding",
                lambda: total(service, "mdp_preprocess_pending_images") == len(large),
                service.process,
                service.log,
                timeout=10,
            )
            queued = socket.create_connection((host, port))
            queued.sendall(
                raw_request(
                    host,
                    port,
                    "POST",
                    f"/v1/domains/{domain}/predict",
                    png(9),
                    {"Content-Type": "image/png"},
                )
            )
            wait_for(
                "the small request to wait for the thread",
                lambda: total(service, "mdp_preprocess_pending_images") == len(large) + 1,
                service.process,
                service.log,
                timeout=10,
            )
            queued.close()  # gone while queued
            wait_for(
                "its image to leave the queue",
                lambda: total(service, "mdp_preprocess_pending_images") <= len(large),
                service.process,
                service.log,
                timeout=5,
            )
            uploading = socket.create_connection((host, port))  # gone while uploading
            uploading.sendall(
                f"POST /v1/domains/{DOMAINS[1]}/predict HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: image/png\r\nContent-Length: 5000\r\n\r\n".encode()
                + b"x" * 100
            )
            time.sleep(0.2)
            uploading.close()
            assert batch.result().status_code == 200

        def recorded() -> bool:
            return total(service, "mdp_requests_total", status="499") == 2

        wait_for("499s", recorded, service.process, service.log, timeout=10)
        assert total(service, "mdp_requests_total", domain=domain, status="499") == 1
        assert total(service, "mdp_requests_total", domain=DOMAINS[1], status="499") == 1
        assert total(service, "mdp_requests_total", **{"class": "5xx"}) == 0
        # the six large images were decoded and computed; the abandoned small one never was
        assert total(service, "mdp_preprocess_seconds_count", domain=domain) == len(large)
        assert total(service, "mdp_batch_size_sum", domain=domain) == len(large)
        log = service.log.read_text()
    assert "Traceback" not in log


def test_load_at_four_times_capacity_is_shed_fast_and_the_rest_answered(tmp_path: Path) -> None:
    # A heavier artifact (~40 images/s on the reference machine) so that the load generator, a
    # Python process on the same cores, can offer 4x what the service serves. In-flight bound
    # sized for this capacity: 64 requests ~ 1.6 s of work.
    arch = ArchSpec(width_mult=1.0, image_size=64)
    settings = {"MDP_MAX_IN_FLIGHT": "64", "MDP_MAX_IN_FLIGHT_PER_DOMAIN": "64"}
    deadline_s = 10.0
    with service_process(tmp_path, arch=arch, **settings) as service:
        host, port = host_port(service)
        images = [noise_png(seed, 64) for seed in range(12)]
        domains = [DOMAINS[i % len(DOMAINS)] for i in range(len(images))]
        payloads = [
            raw_request(
                host,
                port,
                "POST",
                f"/v1/domains/{d}/predict?top_k=100",
                data,
                {"Content-Type": "image/png"},
            )
            for d, data in zip(domains, images, strict=True)
        ]
        with httpx.Client(timeout=30) as client:
            expected = [
                client.post(
                    f"{service.url}/v1/domains/{d}/predict?top_k=100",
                    content=data,
                    headers={"content-type": "image/png"},
                ).json()
                for d, data in zip(domains, images, strict=True)
            ]

        async def scenario() -> tuple[float, list[Shot]]:
            started = time.perf_counter()
            measured = await closed_loop(host, port, payloads, concurrency=16, total=120)
            capacity = len(measured) / (time.perf_counter() - started)
            return capacity, await open_loop(host, port, payloads, 4 * capacity, 3.0)

        capacity, shots = asyncio.run(asyncio.wait_for(scenario(), 120))
        statuses = [shot.status for shot in shots]
        assert set(statuses) <= {200, 429}, {s: statuses.count(s) for s in set(statuses)}
        refused = [shot for shot in shots if shot.status == 429]
        accepted = [shot for shot in shots if shot.status == 200]
        assert len(refused) > len(shots) / 2 and accepted, (capacity, len(refused), len(shots))
        assert np.percentile([s.latency_s for s in refused], 99) < deadline_s / 20
        assert np.percentile([s.latency_s for s in accepted], 99) < deadline_s
        for shot in accepted:
            answer, reference = json.loads(shot.body), expected[shot.index]
            assert answer["domain"] == reference["domain"]
            got = {p["index"]: p["probability"] for p in answer["predictions"]}
            want = {p["index"]: p["probability"] for p in reference["predictions"]}
            assert got.keys() == want.keys()
            assert max(abs(got[k] - want[k]) for k in want) < 1e-4
        assert total(service, "mdp_requests_total", **{"class": "5xx"}) == 0
        assert total(service, "mdp_rejections_total", reason="in_flight") == len(refused)
