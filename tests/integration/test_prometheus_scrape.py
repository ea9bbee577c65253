"""A real Prometheus server scrapes a real service process; after mixed-domain traffic its query
API returns every domain's latency histogram, and quantiles can be computed from it."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.prometheus import prometheus_scraping
from tests.integration.test_service_process import DOMAINS, png, service_process

pytestmark = pytest.mark.integration


def test_prometheus_scrapes_per_domain_latency_histograms(tmp_path: Path) -> None:
    with service_process(tmp_path) as service, prometheus_scraping(service.url, tmp_path) as prom:
        with httpx.Client(timeout=10) as client:
            for i in range(60):  # about 3 s of mixed-domain traffic, spanning scrapes
                domain = DOMAINS[i % len(DOMAINS)]
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
    assert all(0 < quantiles[d] <= 2.5 for d in DOMAINS), quantiles
