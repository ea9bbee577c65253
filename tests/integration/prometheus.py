"""A real Prometheus server (Debian package ``prometheus``) on 127.0.0.1 for integration tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_service_process import free_port, stop_process, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@dataclass
class Prometheus:
    base: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base}/api/v1/query", params={"query": promql}, timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, what: str, condition: Any, timeout: float = 30) -> None:
        wait_for(what, condition, self.process, self.log, timeout=timeout)


@contextmanager
def prometheus_scraping(target_url: str, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping ``target_url`` every second; stopped by pid when the block ends."""
    if not Path(PROMETHEUS).exists():
        raise FileNotFoundError(
            f"{PROMETHEUS} not found: install the Debian package prometheus (make system-deps)"
        )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: mdp\n    scrape_interval: 1s\n"
        f"    static_configs:\n      - targets: ['{target_url.removeprefix('http://')}']\n"
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        server.wait_for(
            "prometheus target up",
            lambda: any(r["value"][1] == "1" for r in server.query('up{job="mdp"}')),
            timeout=60,
        )
        yield server
    finally:
        stop_process(process)
