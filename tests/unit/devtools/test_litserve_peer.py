"""The LitServe peer's ``LitAPI`` without a server: its hooks called as LitServe's batched loop
calls them (``decode_request`` on each request, ``batch``, ``predict``, ``unbatch``,
``encode_response`` on each answer), on batches mixing domains and bad requests. The peer as a
real LitServe server runs in tests/integration/test_serve_compare.py."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from devtools.litserve_peer import MultiDomainLitAPI
from multidomain.artifact import load_artifact
from multidomain.serving import ServedArtifact, class_probabilities
from tests.artifacts import TINY_DOMAINS, write_tiny_artifact
from tests.unit.torchserving.test_handler import png

DOMAINS = list(TINY_DOMAINS)


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_artifact(tmp_path_factory.mktemp("store"))


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """``setup`` sets the process's torch threads, as in a LitServe worker: restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def api(artifact_dir: Path) -> MultiDomainLitAPI:
    api = MultiDomainLitAPI(artifact_dir, max_batch_size=16, batch_timeout_s=0.005)
    api.setup("cpu")
    return api


@pytest.fixture
def forward_batches(api: MultiDomainLitAPI) -> Iterator[dict[str, list[int]]]:
    """Per domain, the batch size of every forward pass of its network."""
    assert api.model is not None
    seen: dict[str, list[int]] = {name: [] for name in api.model.domains}
    handles = [
        domain.network.register_forward_hook(
            lambda _m, inputs, _o, name=name: seen[name].append(len(inputs[0]))
        )
        for name, domain in api.model.domains.items()
    ]
    yield seen
    for handle in handles:
        handle.remove()


def form(domain: str | None, image: bytes | None, **fields: str) -> FormData:
    """The form LitServe hands ``decode_request`` for a multipart request."""
    items: list[tuple[str, str | UploadFile]] = list(fields.items())
    if domain is not None:
        items.append(("domain", domain))
    if image is not None:
        items.append(("file", UploadFile(io.BytesIO(image), filename="image.png")))
    return FormData(items)


def serve(api: MultiDomainLitAPI, forms: list[FormData]) -> list[tuple[int, Any]]:
    decoded = [api.decode_request(f) for f in forms]
    outputs = api.unbatch(api.predict(api.batch(decoded)))
    assert len(outputs) == len(forms)
    responses = [api.encode_response(output) for output in outputs]
    assert all(isinstance(r, Response) for r in responses)
    return [(r.status_code, json.loads(bytes(r.body))) for r in responses]


def expected(artifact_dir: Path, domain: str, image: bytes, top_k: int = 5) -> dict[str, Any]:
    model = ServedArtifact.build(load_artifact(artifact_dir))
    served = model.domain(domain)
    probabilities = class_probabilities(served.network, served.preprocess(image, 1 << 24)[None])
    return model.answer(served, probabilities[0], top_k)


def assert_same_answer(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert {k: v for k, v in got.items() if k != "predictions"} == {
        k: v for k, v in want.items() if k != "predictions"
    }
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
    for g, w in zip(got["predictions"], want["predictions"], strict=True):
        assert g["probability"] == pytest.approx(w["probability"], abs=1e-5)


def test_mixed_batch_one_forward_per_domain_same_answers(
    api: MultiDomainLitAPI, artifact_dir: Path, forward_batches: dict[str, list[int]]
) -> None:
    requests = [(DOMAINS[i % len(DOMAINS)], png(i)) for i in range(7)]
    answers = serve(api, [form(domain, image) for domain, image in requests])
    for (domain, image), (status, body) in zip(requests, answers, strict=True):
        assert status == 200
        assert_same_answer(body, expected(artifact_dir, domain, image))
    counts = {name: sum(1 for d, _ in requests if d == name) for name in DOMAINS}
    assert forward_batches == {name: [counts[name]] for name in DOMAINS}


def test_bad_requests_answer_their_own_error_and_spare_the_batch(
    api: MultiDomainLitAPI, artifact_dir: Path, forward_batches: dict[str, list[int]]
) -> None:
    good = png(1)
    forms = [
        form(DOMAINS[0], good),
        form("nope", good),
        form(DOMAINS[1], b"not an image"),
        form(None, good),
        form(DOMAINS[0], None),
        form(DOMAINS[2], good, top_k="0"),
        form(DOMAINS[2], good, top_k="2"),
    ]
    answers = serve(api, forms)
    statuses = [status for status, _ in answers]
    assert statuses == [200, 404, 422, 400, 415, 422, 200]
    types = [body["error"]["type"] for status, body in answers if status != 200]
    assert types == [
        "unknown_domain", "bad_image", "malformed_request", "unsupported_media_type",
        "invalid_request",
    ]  # fmt: skip
    assert all(body["error"]["code"] == status for status, body in answers if status != 200)
    assert_same_answer(answers[0][1], expected(artifact_dir, DOMAINS[0], good))
    assert_same_answer(answers[-1][1], expected(artifact_dir, DOMAINS[2], good, top_k=2))
    assert forward_batches == {DOMAINS[0]: [1], DOMAINS[1]: [], DOMAINS[2]: [1]}


def test_settings_from_the_environment(artifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_DEFAULT_TOP_K", "1")
    monkeypatch.setenv("MDP_TORCH_THREADS", "3")
    api = MultiDomainLitAPI(artifact_dir, max_batch_size=4, batch_timeout_s=0.0)
    api.setup("cpu")
    assert torch.get_num_threads() == 3
    ((status, body),) = serve(api, [form(DOMAINS[2], png(3))])
    assert status == 200 and len(body["predictions"]) == 1
