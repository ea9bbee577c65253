"""A real Prometheus server scrapes a real service process; after mixed-domain traffic its query
API returns every domain's latency histogram, and quantiles can be computed from it."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_service_process import (
    DOMAINS,
    free_port,
    png,
    service_process,
    stop_process,
    wait_for,
)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path(PROMETHEUS).exists(),
        reason="needs the prometheus binary (Debian package prometheus; make system-deps)",
    ),
]


def query(base: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_per_domain_latency_histograms(tmp_path: Path) -> None:
    with service_process(tmp_path) as service:
        target = service.url.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: mdp\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = tmp_path / "prometheus.log"
        with log.open("wb") as output:
            prometheus = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(
                "prometheus target up",
                lambda: any(r["value"][1] == "1" for r in query(base, 'up{job="mdp"}')),
                prometheus,
                log,
                timeout=60,
            )
            with httpx.Client(timeout=10) as client:
                for i in range(60):  # about 3 s of mixed-domain traffic, spanning scrapes
                    domain = DOMAINS[i % len(DOMAINS)]
                    assert service.predict(domain, png(i), client).status_code == 200
                    time.sleep(0.05)

            quantiles: dict[str, float] = {}

            def every_domain_has_data() -> bool:
                series = query(base, "count by (domain) (mdp_request_latency_seconds_bucket)")
                if not set(DOMAINS) <= {s["metric"]["domain"] for s in series}:
                    return False
                p95 = query(
                    base,
                    "histogram_quantile(0.95, sum by (le, domain) "
                    "(rate(mdp_request_latency_seconds_bucket[30s])))",
                )
                quantiles.clear()
                quantiles.update({s["metric"]["domain"]: float(s["value"][1]) for s in p95})
                return all(math.isfinite(quantiles.get(d, math.nan)) for d in DOMAINS)

            wait_for("per-domain quantiles", every_domain_has_data, prometheus, log, timeout=30)
        finally:
            stop_process(prometheus)
    assert all(0 < quantiles[d] <= 2.5 for d in DOMAINS), quantiles
