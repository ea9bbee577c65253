"""The service as a real process (``python -m service`` under uvicorn): start-up, serving, and a
graceful SIGTERM. ``service_process`` is shared with the Prometheus scrape test."""

from __future__ import annotations

import io
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

from tests.artifacts import TINY_DOMAINS, write_tiny_artifact

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

    def predict(self, domain: str, data: bytes, client: httpx.Client) -> httpx.Response:
        return client.post(
            f"{self.url}/v1/domains/{domain}/predict",
            content=data,
            headers={"content-type": "image/png"},
        )


@contextmanager
def service_process(tmp_path: Path, **env: str) -> Iterator[ServiceProcess]:
    """``python -m service`` on a free port serving a tiny artifact, stopped on exit."""
    store = tmp_path / "model_store"
    write_tiny_artifact(store)
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


def test_start_up_fails_cleanly_on_a_corrupt_artifact(tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    weights = write_tiny_artifact(store) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model-store", str(store), "--model-name", "tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MDP_PORT": str(free_port())},
    )
    assert result.returncode == 3, result.stderr
    assert "cannot load the model" in result.stderr and "sha256" in result.stderr
