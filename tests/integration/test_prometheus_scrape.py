"""A real Prometheus server scrapes a real service process; after mixed-domain traffic its query
API returns every domain's latency histogram, and quantiles can be computed from it. With two
worker processes the requests spread over both and the counts Prometheus sees add up."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.prometheus import prometheus_scraping
from tests.integration.test_service_process import DOMAINS, png, service_process

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workers", [1, 2])
def test_prometheus_scrapes_per_domain_latency_histograms(tmp_path: Path, workers: int) -> None:
    requests = 60
    with (
        service_process(tmp_path, MDP_WORKERS=str(workers)) as service,
        prometheus_scraping(service.url, tmp_path) as prom,
    ):
        for i in range(requests):  # about 3 s of mixed-domain traffic, spanning scrapes
            domain = DOMAINS[i % len(DOMAINS)]
            with httpx.Client(timeout=10) as client:  # a new connection: any worker
                assert service.predict(domain, png(i), client).status_code == 200
            time.sleep(0.05)

        quantiles: dict[str, float] = {}

        def every_domain_has_data() -> bool:
            series = prom.query("count by (domain) (mdp_request_latency_seconds_bucket)")
            if not set(DOMAINS) <= {s["metric"]["domain"] for s in series}:
                return False
            p95 = prom.query(
                "histogram_quantile(0.95, sum by (le, domain) "
                "(rate(mdp_request_latency_seconds_bucket[30s])))",
            )
            quantiles.clear()
            quantiles.update({s["metric"]["domain"]: float(s["value"][1]) for s in p95})
            return all(math.isfinite(quantiles.get(d, math.nan)) for d in DOMAINS)

        prom.wait_for("per-domain quantiles", every_domain_has_data)

        def counted() -> float:
            total = prom.query("sum(mdp_request_latency_seconds_count)")
            return float(total[0]["value"][1]) if total else 0.0

        prom.wait_for("every request counted", lambda: counted() >= requests)
        assert counted() == requests
        per_domain = prom.query('sum by (domain) (mdp_requests_total{status="200"})')
        assert {
            s["metric"]["domain"]: float(s["value"][1]) for s in per_domain if s["value"][1] != "0"
        } == {d: requests / len(DOMAINS) for d in DOMAINS}
        processes = prom.query("count(process_resident_memory_bytes)")
        assert float(processes[0]["value"][1]) == workers
        assert float(prom.query("mdp_ready_workers")[0]["value"][1]) == workers
        log = [
            json.loads(line)
            for line in service.log.read_text().splitlines()
            if line.startswith("{")
        ]
        served_by = {entry["pid"] for entry in log if entry.get("path", "").endswith("/predict")}
    assert len(served_by) == workers, served_by
    assert all(0 < quantiles[d] <= 2.5 for d in DOMAINS), quantiles
