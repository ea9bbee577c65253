"""Several worker processes on one port (``MDP_WORKERS``): a worker that dies is replaced, the
workers stop when their supervisor is killed, and a model that cannot be loaded stops everything
with status 3. (Draining on SIGTERM and metrics across workers: ``test_service_process`` and
``test_prometheus_scrape``, run with 1 and 2 workers.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.artifacts import write_tiny_artifact
from tests.integration.test_service_process import (
    DOMAINS,
    ROOT,
    free_port,
    png,
    service_process,
    wait_for,
)

pytestmark = pytest.mark.integration


def _workers(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children()


def _stop_all(processes: list[psutil.Process]) -> None:
    """Wait for the workers to end with their supervisor; kill any left after 15 s."""
    for left in psutil.wait_procs(processes, timeout=15)[1]:
        left.kill()


def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    with service_process(tmp_path, MDP_WORKERS="2") as service:
        first = _workers(service.process.pid)
        assert len(first) == 2
        try:
            first[0].kill()
            first[0].wait(10)

            def replaced() -> bool:
                workers = _workers(service.process.pid)
                return (
                    len(workers) == 2
                    and first[0].pid not in {w.pid for w in workers}
                    and httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200
                )

            wait_for("a new worker", replaced, service.process, service.log, timeout=90)
            for i in range(10):  # new connections: either worker
                with httpx.Client(timeout=10) as client:
                    assert service.predict(DOMAINS[i % 3], png(i), client).status_code == 200
        finally:
            workers = _workers(service.process.pid)
    _stop_all(workers)
    assert not [w for w in workers if w.is_running()]
    assert f"worker pid {first[0].pid} exited with status -9" in service.log.read_text()


def test_sighup_to_the_supervisor_rolls_out_in_every_worker(tmp_path: Path) -> None:
    with service_process(tmp_path, MDP_WORKERS="2") as service:
        workers = _workers(service.process.pid)
        try:
            write_tiny_artifact(
                tmp_path / "model_store", version="v2", created_at="2026-02-01T00:00:00+00:00"
            )
            service.process.send_signal(signal.SIGHUP)

            def versions() -> set[str]:
                answers = set()
                for i in range(8):  # new connections: either worker
                    with httpx.Client(timeout=10) as client:
                        answer = service.predict(DOMAINS[i % 3], png(i), client)
                        answers.add(answer.headers["X-Model-Version"])
                return answers

            wait_for(
                "v2 in both workers",
                lambda: versions() == {"v2"},
                service.process,
                service.log,
                timeout=90,
            )
            assert service.process.poll() is None
            assert {w.pid for w in _workers(service.process.pid)} == {w.pid for w in workers}
        finally:
            workers = _workers(service.process.pid)
    _stop_all(workers)


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with service_process(tmp_path, MDP_WORKERS="2") as service:
        workers = _workers(service.process.pid)
        try:
            service.process.kill()
            service.process.wait(10)
            gone, alive = psutil.wait_procs(workers, timeout=20)
        finally:
            _stop_all(workers)
    assert not alive and len(gone) == 2
    assert service.log.read_text().count("the supervisor has gone") == 2


def test_workers_that_cannot_load_the_model_stop_the_service(tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    weights = write_tiny_artifact(store) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model-store", str(store), "--model-name", "tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "MDP_PORT": str(free_port()), "MDP_WORKERS": "2"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "Traceback" not in output, output
    assert "cannot load the model" in output and "sha256" in output
    assert "could not load the model: stopping" in output
