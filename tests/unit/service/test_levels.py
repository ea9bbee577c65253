"""Nested budget levels over HTTP: a request picks a level (query or header), the answer names
the level and equals that level's compact subnetwork offline; an unknown level is a 422 that
lists the levels; the model description lists them; the level mix is a metric."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from multidomain.artifact import load_artifact
from service.app import create_app
from tests.apps import ready_client
from tests.artifacts import (
    NESTED_BUDGETS,
    TINY_DOMAINS,
    nested_offline_reference,
    write_tiny_nested_artifact,
)
from tests.unit.service.test_app import PNG, assert_error, settings_for

LABELS = [f"{b:g}" for b in NESTED_BUDGETS]


@pytest.fixture(scope="module")
def nested_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("nested-store")
    write_tiny_nested_artifact(store)
    return store


@pytest.fixture(scope="module")
def nested_client(nested_store: Path) -> Iterator[TestClient]:
    app = create_app(settings_for(nested_store, model_name="nested"))
    with ready_client(app) as client:
        yield client


def probabilities(body: dict[str, object], classes: int) -> torch.Tensor:
    got = torch.zeros(classes, dtype=torch.float64)
    for p in body["predictions"]:  # type: ignore[attr-defined]
        got[p["index"]] = p["probability"]
    return got


def test_the_artifact_verifies_nesting_and_keeps_a_head_per_level(nested_store: Path) -> None:
    artifact = load_artifact(nested_store / "nested" / "v1")
    assert artifact.budgets == list(NESTED_BUDGETS)
    for entry in artifact.domains:
        for upper, lower in zip(entry.levels, entry.levels[1:], strict=False):
            for mine, theirs in zip(lower.channels, upper.channels, strict=True):
                assert set(mine) <= set(theirs)
            assert sum(lower.mid_channels) < sum(upper.mid_channels)
    # private level state: every lower level holds its own head, which serving uses
    assert all("head.weight" in d for lvl in artifact.level_tensors for d in lvl)
    for j in range(1, len(NESTED_BUDGETS)):
        own = artifact.level_domain_tensors("digits", j)["head.weight"]
        assert not torch.equal(own, artifact.domain_tensors[0]["head.weight"])


def test_a_shared_state_artifact_keeps_one_head(tmp_path: Path) -> None:
    write_tiny_nested_artifact(tmp_path, level_state="shared")
    artifact = load_artifact(tmp_path / "nested" / "v1")
    assert not any(
        n.endswith("head.weight") for lvl in artifact.level_tensors for d in lvl for n in d
    )


@pytest.mark.parametrize("level", range(len(NESTED_BUDGETS)))
def test_a_request_answers_at_the_level_it_names(
    nested_client: TestClient, nested_store: Path, level: int
) -> None:
    reference = nested_offline_reference(nested_store / "nested" / "v1")
    domain = "digits"
    classes = len(TINY_DOMAINS[domain])
    response = nested_client.post(
        f"/v1/domains/{domain}/predict",
        content=PNG,
        headers={"content-type": "image/png"},
        params={"budget": LABELS[level], "top_k": 100},
    )
    assert response.status_code == 200, response.text
    assert response.json()["budget"] == NESTED_BUDGETS[level]
    assert response.headers["x-budget"] == LABELS[level]
    expected = reference(domain, level, PNG)
    got = probabilities(response.json(), classes)
    assert torch.max(torch.abs(got - expected.double())).item() <= 1e-5
    others = [reference(domain, j, PNG) for j in range(len(LABELS)) if j != level]
    assert all(torch.max(torch.abs(got - o.double())).item() > 1e-4 for o in others)


def test_the_default_is_the_largest_level_and_the_header_picks_one(
    nested_client: TestClient,
) -> None:
    plain = nested_client.post(
        "/v1/domains/shapes/predict", content=PNG, headers={"content-type": "image/png"}
    )
    assert plain.status_code == 200 and plain.json()["budget"] == NESTED_BUDGETS[0]
    assert plain.headers["x-budget"] == LABELS[0]
    header = nested_client.post(
        "/v1/domains/shapes/predict",
        content=PNG,
        headers={"content-type": "image/png", "x-budget": LABELS[-1]},
    )
    assert header.status_code == 200 and header.json()["budget"] == NESTED_BUDGETS[-1]
    batch = nested_client.post(
        "/v1/domains/shapes/predict/batch",
        files=[("files", ("a.png", PNG, "image/png")), ("files", ("b.png", PNG, "image/png"))],
        params={"budget": LABELS[1]},
    )
    assert batch.status_code == 200, batch.text
    assert [r["budget"] for r in batch.json()["results"]] == [NESTED_BUDGETS[1]] * 2
    assert batch.headers["x-budget"] == LABELS[1]


@pytest.mark.parametrize("budget", ["0.5", "abc", "nan", "2"])
def test_an_unknown_level_is_a_422_listing_the_levels(
    nested_client: TestClient, budget: str
) -> None:
    response = nested_client.post(
        "/v1/domains/shapes/predict",
        content=PNG,
        headers={"content-type": "image/png"},
        params={"budget": budget},
    )
    message = assert_error(response, 422, "unknown_level")
    assert all(label in message for label in LABELS), message


def test_query_and_header_must_name_the_same_level(nested_client: TestClient) -> None:
    def ask(query: str, header: str) -> httpx.Response:
        return nested_client.post(
            "/v1/domains/shapes/predict",
            content=PNG,
            headers={"content-type": "image/png", "x-budget": header},
            params={"budget": query},
        )

    same = ask(LABELS[1], f"{NESTED_BUDGETS[1]:.2f}")
    assert same.status_code == 200 and same.json()["budget"] == NESTED_BUDGETS[1], same.text
    message = assert_error(ask(LABELS[1], LABELS[2]), 422, "unknown_level")
    assert f"query budget '{LABELS[1]}'" in message and f"header X-Budget '{LABELS[2]}'" in message
    assert all(label in message for label in LABELS), message


def test_the_model_lists_every_domains_levels_and_counts_the_level_mix(
    nested_client: TestClient,
) -> None:
    summary = nested_client.get("/v1/domains").json()
    for domain in summary["domains"]:
        levels = domain["levels"]
        assert [level["budget"] for level in levels] == list(NESTED_BUDGETS)
        channels = [level["channels"] for level in levels]
        assert channels == sorted(channels, reverse=True) and channels[-1] < channels[0]
        assert levels[1]["test_accuracy"] == pytest.approx(0.8)
    nested_client.post(
        "/v1/domains/colours/predict",
        content=PNG,
        headers={"content-type": "image/png", "x-budget": LABELS[2]},
    )
    text = nested_client.get("/metrics").text
    samples = {
        (s.labels["domain"], s.labels["level"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "mdp_level_images"
        for s in family.samples
        if s.name == "mdp_level_images_total"
    }
    assert {level for (domain, level) in samples if domain == "colours"} == set(LABELS)
    assert samples[("colours", LABELS[2])] >= 1
