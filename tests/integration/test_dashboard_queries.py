"""Every PromQL expression of the Grafana dashboard returns data from a real Prometheus that
scraped a real service under mixed-domain load (good requests, an unknown domain, bad media)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.dashboard import dashboard_queries
from tests.integration.prometheus import prometheus_scraping
from tests.integration.test_service_process import DOMAINS, png, service_process

pytestmark = pytest.mark.integration


def test_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    with service_process(tmp_path) as service, prometheus_scraping(service.url, tmp_path) as prom:
        with httpx.Client(timeout=10) as client:
            for i in range(90):  # several scrapes of mixed traffic
                domain = DOMAINS[i % len(DOMAINS)]
                assert service.predict(domain, png(i), client).status_code == 200
                if i % 15 == 0:
                    bad = client.post(f"{service.url}/v1/domains/nope/predict", content=png(i))
                    assert bad.status_code == 404
                    text = client.post(
                        f"{service.url}/v1/domains/{domain}/predict",
                        content=b"hello",
                        headers={"Content-Type": "text/plain"},
                    )
                    assert text.status_code == 415
                time.sleep(0.04)

        empty: list[str] = []

        def all_return_data() -> bool:
            empty[:] = [q for q in queries if not prom.query(q)]
            return not empty

        try:
            prom.wait_for("every dashboard query to return data", all_return_data, timeout=45)
        except pytest.fail.Exception:
            pytest.fail(f"dashboard queries without data: {empty}")
