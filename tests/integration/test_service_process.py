"""The service as a real process (``python -m service`` under uvicorn): start-up, serving, and a
graceful SIGTERM. ``service_process`` is shared with the Prometheus scrape test."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from multidomain.arch import ArchSpec
from tests.artifacts import TINY_DOMAINS, write_tiny_artifact, write_tiny_nested_artifact

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = list(TINY_DOMAINS)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (seed * 37 % 256, seed * 91 % 256, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Terminate; kill if it has not exited after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def wait_for(
    what: str,
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float,
) -> None:
    """Poll ``ready`` until it holds; fail with the process's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what}: process exited with {process.returncode}\n{log.read_text()}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{what}: not ready after {timeout} s\n{log.read_text()}")


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def predict(
        self, domain: str, data: bytes, client: httpx.Client, **params: int
    ) -> httpx.Response:
        return client.post(
            f"{self.url}/v1/domains/{domain}/predict",
            content=data,
            headers={"content-type": "image/png"},
            params=params,
        )


@contextmanager
def service_process(
    tmp_path: Path,
    arch: ArchSpec | None = None,
    ready: bool = True,
    nested: bool = False,
    **env: str,
) -> Iterator[ServiceProcess]:
    """``python -m service`` on a free port serving a tiny artifact (of ``arch``; ``nested``:
    with the budget levels of ``NESTED_BUDGETS``), stopped on exit; with ``ready``, once
    ``/readyz`` answers 200."""
    store = tmp_path / "model_store"
    if nested:
        write_tiny_nested_artifact(store, model_name="tiny", arch=arch)
    else:
        write_tiny_artifact(store, arch=arch)
    port = free_port()
    log = tmp_path / "service.log"
    command = [
        sys.executable,
        "-m",
        "service",
        "--model-store",
        str(store),
        "--model-name",
        "tiny",
        "--port",
        str(port),
    ]
    environment = {**os.environ, "MDP_TORCH_THREADS": "1", **env}
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        if ready:
            wait_for(
                "service",
                lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
                process,
                log,
                timeout=90,
            )
        yield ServiceProcess(process, url, log)
    finally:
        stop_process(process)


def large_png(seed: int) -> bytes:
    """A 6000x2700 gradient: a small file whose decoding and resizing take a while."""
    width, height = 6000, 2700
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    pixels[:, :, 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    pixels[:, :, 2] = seed
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_sigterm_lets_in_flight_requests_finish_then_exits(tmp_path: Path) -> None:
    # A batch request of large images is still being preprocessed while small requests of the
    # same domain wait in the queue for it (they may wait up to 1 s) when SIGTERM arrives.
    grace = 8
    settings = {
        "MDP_MAX_WAIT_MS": "1000",
        "MDP_PREPROCESS_THREADS": "8",
        "MDP_SHUTDOWN_GRACE_S": str(grace),
    }
    domain = DOMAINS[0]
    large = [("files", (f"{i}.png", large_png(i), "image/png")) for i in range(6)]
    with service_process(tmp_path, **settings) as service, httpx.Client(timeout=30) as client:
        with ThreadPoolExecutor(6) as pool:
            batch = pool.submit(
                client.post, f"{service.url}/v1/domains/{domain}/predict/batch", files=large
            )
            time.sleep(0.1)
            small = [pool.submit(service.predict, domain, png(i), client) for i in range(5)]

            def queued() -> bool:
                metrics = client.get(f"{service.url}/metrics").text
                depth = f'mdp_queue_depth{{domain="{domain}"}} '
                return any(
                    line.startswith(depth) and float(line.split()[-1]) >= 1
                    for line in metrics.splitlines()
                )

            wait_for("queued requests", queued, service.process, service.log, timeout=10)
            signalled = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            responses = [batch.result()] + [future.result() for future in small]
        service.process.wait(grace + 5)
        elapsed = time.monotonic() - signalled
        log = service.log.read_text()
    assert [r.status_code for r in responses] == [200] * len(responses), log
    assert len(responses[0].json()["results"]) == len(large)
    assert all(r.json()["domain"] == domain for r in responses)
    assert elapsed < grace, log
    assert service.process.returncode in (0, -signal.SIGTERM), log
    assert "draining" in log and "stopped" in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{service.url}/livez", timeout=2)


@pytest.mark.parametrize("command", ["python -m service", "mdprune serve"])
def test_start_up_fails_cleanly_on_a_corrupt_artifact(tmp_path: Path, command: str) -> None:
    store = tmp_path / "model_store"
    weights = write_tiny_artifact(store) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    program = (
        [sys.executable, "-m", "service"]
        if command == "python -m service"
        else [str(Path(sys.executable).parent / "mdprune"), "serve"]
    )
    result = subprocess.run(
        [*program, "--model-store", str(store), "--model-name", "tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MDP_PORT": str(free_port())},
    )
    assert result.returncode == 3, result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "Exception" not in output, output
    errors = [line for line in output.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1, output
    assert "cannot load the model" in errors[0] and "sha256" in errors[0]


def test_the_port_opens_before_the_model_is_loaded(tmp_path: Path) -> None:
    # a larger artifact: loading and warming up take seconds
    arch = ArchSpec(width_mult=1.0, image_size=64)
    seen: list[tuple[int, int]] = []
    with service_process(tmp_path, arch=arch, ready=False) as service:
        url = service.url

        def probes() -> bool:
            live = httpx.get(f"{url}/livez", timeout=2).status_code
            ready = httpx.get(f"{url}/readyz", timeout=2).status_code
            seen.append((live, ready))
            if ready == 503:  # loading: prediction routes say so too
                response = service.predict(DOMAINS[0], png(0), httpx.Client(timeout=5))
                assert response.status_code in (503, 200), response.text
                if response.status_code == 503:
                    assert response.json()["error"]["type"] == "not_ready"
                    assert response.headers["retry-after"] == "1"
            return ready == 200

        wait_for("ready", probes, service.process, service.log, timeout=120)
        log = service.log.read_text()
    loading = [pair for pair in seen if pair == (200, 503)]
    assert loading, f"the probes never answered while the model loaded: {seen}\n{log}"
    assert seen[0] == (200, 503) and seen[-1] == (200, 200)
    assert log.index("Uvicorn running on") < log.index('"ready: model tiny')


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_readiness_first_then_closes(tmp_path: Path, workers: int) -> None:
    delay = 3.0  # long enough for several probes on a loaded machine
    settings = {
        "MDP_DRAIN_DELAY_S": str(delay),
        "MDP_SHUTDOWN_GRACE_S": "5",
        "MDP_WORKERS": str(workers),
    }
    domain = DOMAINS[1]
    with service_process(tmp_path, **settings) as service, httpx.Client(timeout=10) as client:
        assert client.get(f"{service.url}/readyz").status_code == 200
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        during: list[int] = []
        while time.monotonic() - signalled < delay - 0.5:
            ready = httpx.get(f"{service.url}/readyz", timeout=2)  # a new connection each time
            assert ready.status_code == 503 and ready.json()["error"]["type"] == "not_ready"
            assert httpx.get(f"{service.url}/livez", timeout=2).status_code == 200
            response = service.predict(domain, png(3), client)
            assert response.status_code == 200, response.text
            assert response.headers["connection"] == "close"  # clients move elsewhere
            during.append(response.status_code)
            time.sleep(0.1)
        service.process.wait(delay + 10)
        elapsed = time.monotonic() - signalled
        log = service.log.read_text()
    assert len(during) >= 5, log
    assert delay <= elapsed < delay + 5, log
    # every worker drained (and new connections reached them all: each answered 503)
    assert log.count("serving for 3 s before closing the listener") == workers, log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{service.url}/livez", timeout=2)


def test_request_ids_reach_the_access_log(tmp_path: Path) -> None:
    with service_process(tmp_path) as service, httpx.Client(timeout=10) as client:
        response = client.post(
            f"{service.url}/v1/domains/{DOMAINS[0]}/predict",
            content=png(1),
            headers={"content-type": "image/png", "x-request-id": "trace-42"},
        )
        assert response.status_code == 200 and response.headers["x-request-id"] == "trace-42"

        def logged() -> list[dict[str, object]]:
            lines = service.log.read_text().splitlines()
            entries = [json.loads(line) for line in lines if line.startswith("{")]
            return [e for e in entries if e.get("request_id") == "trace-42"]

        wait_for("the access line", lambda: bool(logged()), service.process, service.log, 10)
        (line,) = logged()
        assert line["logger"] == "service.access" and line["status"] == 200
        assert line["domain"] == DOMAINS[0] and line["method"] == "POST"
        assert all(line.startswith("{") for line in service.log.read_text().splitlines() if line), (
            "every log line is one JSON object"
        )
