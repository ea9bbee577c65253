"""Rollout in a real uvicorn process: new versions written into the store (atomically, as
training writes them) while every domain is under continuous load are switched to with no
error, every response computed by the version it names, and the old versions' memory released;
SIGHUP checks at once; a corrupt version is refused while the old one keeps serving; hiding the
newest versions rolls back."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from multidomain.arch import ArchSpec
from tests.artifacts import TINY_DOMAINS, offline_reference, write_tiny_artifact
from tests.integration.test_service_process import (
    DOMAINS,
    ServiceProcess,
    png,
    service_process,
)

pytestmark = pytest.mark.integration

IMAGE = png(7)
#: large enough that a version's memory stands out of the process's noise
ARCH = ArchSpec(width_mult=1.0, image_size=32)
SWITCHES = 4


@dataclass
class Answer:
    domain: str
    status: int
    header_version: str | None
    body: dict


def write_version(store: Path, version: str, seed: int, day: int, arch: ArchSpec | None) -> Path:
    return write_tiny_artifact(
        store,
        version=version,
        seed=seed,
        arch=arch,
        created_at=f"2026-01-{day:02d}T00:00:00+00:00",
    )


def metric(service: ServiceProcess, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match
    return int(match[1]) * 1024


def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def served_version(service: ServiceProcess) -> str:
    return str(httpx.get(f"{service.url}/v1/domains", timeout=10).json()["version"])


def assert_computed_by_named_version(
    answers: list[Answer], references: dict[str, Callable[[str, bytes], torch.Tensor]]
) -> None:
    expected = {
        (version, domain): reference(domain, IMAGE)
        for version, reference in references.items()
        for domain in DOMAINS
    }
    for answer in answers:
        assert answer.status == 200, answer
        version = answer.body["version"]
        assert answer.header_version == version
        probabilities = torch.zeros(len(TINY_DOMAINS[answer.domain]), dtype=torch.float64)
        for p in answer.body["predictions"]:
            probabilities[p["index"]] = p["probability"]
        reference = expected[(version, answer.domain)].double()
        assert torch.max(torch.abs(probabilities - reference)).item() <= 1e-5, (
            f"{answer.domain}: the answer naming {version} is not what {version} computes"
        )


def test_new_versions_under_load_no_errors_each_answer_from_its_version_memory_released(
    tmp_path: Path,
) -> None:
    store = tmp_path / "model_store"
    with service_process(tmp_path, arch=ARCH, MDP_MODEL_POLL_S="0.2") as service:
        answers: list[Answer] = []
        stop = threading.Event()

        def load(domain: str) -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    response = service.predict(domain, IMAGE, client, top_k=100)
                    answers.append(
                        Answer(
                            domain,
                            response.status_code,
                            response.headers.get("x-model-version"),
                            response.json(),
                        )
                    )

        threads = [threading.Thread(target=load, args=(domain,)) for domain in DOMAINS]
        for thread in threads:
            thread.start()
        last = SWITCHES + 1
        rss: dict[int, int] = {}
        try:
            until(lambda: len(answers) >= 30, "the first answers")
            version_bytes = (store / "tiny" / "v1" / "weights.safetensors").stat().st_size
            for number in range(2, last + 1):
                rss[number - 1] = rss_bytes(service.process.pid)
                write_version(store, f"v{number}", seed=number, day=number, arch=ARCH)
                seen = len(answers)
                until(
                    lambda n=number, s=seen: (
                        {a.domain for a in answers[s:] if a.body.get("version") == f"v{n}"}
                        == set(DOMAINS)
                    ),
                    f"every domain answered by v{number}",
                )
                until(
                    lambda n=number: f"released model version v{n - 1}" in service.log.read_text(),
                    f"v{number - 1} released",
                )
            until(lambda: metric(service, "mdp_model_versions_resident") == 1, "freed")
            seen = len(answers)
            until(lambda: len(answers) >= seen + 30, "more answers after the last switch")
            rss[last] = rss_bytes(service.process.pid)  # under load, as the others
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert metric(service, "mdp_model_reloads_total") == SWITCHES
        assert metric(service, "mdp_model_reload_failures_total") == 0
        assert metric(service, "mdp_model_info", version=f"v{last}") == 1
        assert metric(service, "mdp_model_info", version=f"v{last - 1}") is None
        assert metric(service, "mdp_model_version_requests_total", version=f"v{last - 1}") > 0
        assert metric(service, "mdp_model_version_requests_total", version="v1") is None
    versions = {answer.body.get("version") for answer in answers}
    assert versions == {f"v{n}" for n in range(1, last + 1)}, versions
    print(
        f"{len(answers)} answers; RSS (MiB) serving each version: "
        + ", ".join(f"v{n} {value / 2**20:.1f}" for n, value in rss.items())
        + f"; a version's weights: {version_bytes / 2**20:.1f} MiB"
    )
    # From the second version on (the first switch starts a compute thread and its arena),
    # every version kept adds ~2x its weights (measured: +136 MiB over three switches of
    # 20 MiB weights); released, RSS stays within the noise of a loaded process (+-25 MiB).
    growth = rss[last] - rss[2]
    assert growth < 3 * version_bytes, (rss, version_bytes)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        references = {
            f"v{n}": offline_reference(store / "tiny" / f"v{n}") for n in range(1, last + 1)
        }
        assert_computed_by_named_version(answers, references)
    finally:
        torch.set_num_threads(threads_before)


def test_sighup_corrupt_version_refused_and_roll_back(tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    with service_process(tmp_path, MDP_MODEL_POLL_S="0") as service:
        broken = write_version(store, "v2", seed=2, day=2, arch=None)
        weights = broken / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
        os.kill(service.process.pid, signal.SIGHUP)
        until(lambda: "refused model version v2" in service.log.read_text(), "the refusal")
        assert served_version(service) == "v1"
        with httpx.Client(timeout=30) as client:
            for domain in DOMAINS:
                response = service.predict(domain, IMAGE, client)
                assert response.status_code == 200 and response.json()["version"] == "v1"
        assert metric(service, "mdp_model_reload_failures_total") == 1
        refusals = [line for line in service.log.read_text().splitlines() if "refused" in line]
        assert len(refusals) == 1 and "Traceback" not in service.log.read_text()
        assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200

        write_version(store, "v3", seed=3, day=3, arch=None)
        time.sleep(1)  # no polling: nothing happens until SIGHUP
        assert served_version(service) == "v1"
        os.kill(service.process.pid, signal.SIGHUP)
        until(lambda: served_version(service) == "v3", "the switch to v3")

        # roll back: hide the newest versions; v1 is the newest complete one again
        (store / "tiny" / "v3").rename(store / "tiny" / ".v3-withdrawn")
        broken.rename(store / "tiny" / ".v2-corrupt")
        os.kill(service.process.pid, signal.SIGHUP)
        until(lambda: served_version(service) == "v1", "the roll back to v1")
        assert metric(service, "mdp_model_reloads_total") == 2
