"""The hostile image corpus (``tests/hostile_images.py``) against a real ``python -m service``
process started under an address-space limit: every case answered as expected (200 or a 4xx
naming the problem, never a 5xx), the process never dies, and its resident memory grows by less
than a stated bound."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.artifacts import TINY_DOMAINS, write_tiny_artifact
from tests.hostile_images import CaseResult, hostile_corpus, post_corpus, status_bytes
from tests.integration.test_service_process import free_port, stop_process, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GIB, MIB = 1 << 30, 1 << 20
# Address space: 8 GiB from the start (the limit under which the old resize answered 500),
# then, once the model is loaded, the loaded size plus 1.5 GiB, whatever torch maps at start-up.
START_LIMIT = 8 * GIB
HEADROOM = 3 * GIB // 2
# The largest valid case decodes to 64 MiB (4096x4096 RGB(X)); requests come one at a time.
# Resident growth over the whole corpus: freed memory the allocator keeps, at most a few of those.
RSS_GROWTH_BOUND = 256 * MIB
PEAK_GROWTH_BOUND = 512 * MIB


def test_hostile_corpus_never_5xx_never_dies_bounded_memory(tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    write_tiny_artifact(store)
    port = free_port()
    log = tmp_path / "service.log"
    command = [
        "prlimit", f"--as={START_LIMIT}", "--",
        sys.executable, "-m", "service", "--model-store", str(store), "--model-name", "tiny",
        "--port", str(port),
    ]  # fmt: skip
    environment = {**os.environ, "MDP_TORCH_THREADS": "1"}
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_for(
            "service",
            lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
            process,
            log,
            timeout=90,
        )
        pid = process.pid  # prlimit execs the service: same process
        limit = status_bytes(pid, "VmSize") + HEADROOM
        subprocess.run(["prlimit", f"--pid={pid}", f"--as={limit}"], check=True)
        rss_before = status_bytes(pid, "VmRSS")
        results = list(post_corpus(url, pid, next(iter(TINY_DOMAINS)), hostile_corpus()))
        rss_after = status_bytes(pid, "VmRSS")
        peak = max(r.rss_peak for r in results)
        alive = process.poll() is None
        live = alive and httpx.get(f"{url}/livez", timeout=5).status_code == 200
    finally:
        stop_process(process)
    text = log.read_text()
    print(
        f"{len(results)} cases; RSS {rss_before / MIB:.0f} -> {rss_after / MIB:.0f} MiB, "
        f"peak {peak / MIB:.0f} MiB; slowest {max(r.latency_s for r in results):.2f} s"
    )
    assert alive and live, f"the service died\n{text[-3000:]}"
    assert len(results) == sum(1 for _ in hostile_corpus())
    failures = [r for r in results if r.status is None or r.status >= 500]
    assert not failures, _table(failures) + text[-3000:]
    wrong = [r for r in results if r.status != r.expected_status]
    assert not wrong, _table(wrong)
    assert "Traceback" not in text, text[-3000:]
    assert rss_after - rss_before <= RSS_GROWTH_BOUND, (rss_before, rss_after)
    assert peak - rss_before <= PEAK_GROWTH_BOUND, (rss_before, peak)


def _table(results: list[CaseResult]) -> str:
    return "\n".join(
        f"{r.name}: expected {r.expected_status}, got {r.status} {r.error_type}" for r in results
    )
