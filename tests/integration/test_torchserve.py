"""A real TorchServe (Java frontend + Python worker) on 127.0.0.1 serving the exported ``.mar``
of a tiny artifact: its answers equal the offline model's and the FastAPI service's, bad input
gets the service's 4xx error shape, and stopping it leaves no process behind."""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from devtools.torchserve_local import LocalTorchServe
from multidomain.artifact import load_artifact
from multidomain.preprocess import eval_transform
from tests.artifacts import TINY_DOMAINS, write_tiny_artifact
from torchserving.export import TorchServeModelConfig, export_mar

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = list(TINY_DOMAINS)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


#: (domain, PNG/JPEG bytes, content type): three images of every domain, several sizes and modes
CASES = [
    (domain, encode(noise(w, h, mode, seed=10 * k + j), fmt), f"image/{fmt.lower()}")
    for k, domain in enumerate(DOMAINS)
    for j, (w, h, mode, fmt) in enumerate(
        [(16, 16, "RGB", "PNG"), (40, 24, "L", "PNG"), (30, 30, "RGB", "JPEG")]
    )
]


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_artifact(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def mar(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TorchServeModelConfig(batch_size=8, max_batch_delay_ms=20, torch_threads=2)
    return export_mar(artifact_dir, tmp_path_factory.mktemp("mars"), "tiny", config)


@pytest.fixture(scope="module")
def torchserve(mar: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTorchServe]:
    repo_logs = (ROOT / "logs").exists()
    server = LocalTorchServe(
        mar.parent,
        {"tiny": mar.name},
        tmp_path_factory.mktemp("ts"),
        env={"MDP_TORCH_THREADS": "1"},  # overrides the archive's torch_threads: 2
    )
    try:
        with server:
            yield server
    finally:
        server.stop()
        assert server.group_members() == [], "TorchServe processes survived stop()"
        assert (ROOT / "logs").exists() == repo_logs, "TorchServe wrote logs into the repo"


@pytest.fixture(scope="module")
def client(torchserve: LocalTorchServe) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=torchserve.inference_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def fastapi_client(artifact_dir: Path) -> Iterator[Any]:
    from service.app import create_app
    from service.settings import ServiceSettings
    from tests.apps import ready_client

    settings = ServiceSettings(
        model_store=artifact_dir.parents[1], model_name="tiny", model_version="v1"
    )
    with ready_client(create_app(settings)) as test_client:
        yield test_client


def predict(client: httpx.Client, domain: str, data: bytes, content_type: str) -> httpx.Response:
    top_k = str(len(TINY_DOMAINS[domain]))  # every class: the whole distribution
    headers = {"Content-Type": content_type, "X-Domain": domain, "X-Top-K": top_k}
    return client.post("/predictions/tiny", content=data, headers=headers)


def distribution(body: dict[str, Any]) -> torch.Tensor:
    """Probabilities by class index from a top-k (k = all classes) response."""
    out = torch.full((len(body["predictions"]),), float("nan"))
    for p in body["predictions"]:
        out[p["index"]] = p["probability"]
    return out


def assert_error_shape(response: Any, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "type", "message"}
    assert (body["error"]["code"], body["error"]["type"]) == (status, type_)
    return body["error"]


def test_archive_holds_handler_artifact_code_and_config(mar: Path, artifact_dir: Path) -> None:
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        assert (
            archive.read("weights.safetensors")
            == (artifact_dir / "weights.safetensors").read_bytes()
        )
        config = archive.read("model-config.yaml").decode()
    assert {"torchserve_handler.py", "manifest.json", "MAR-INF/MANIFEST.json"} <= names
    assert {
        "multidomain/__init__.py",
        "multidomain/artifact.py",
        "multidomain/preprocess.py",
    } <= names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    assert "batchSize: 8" in config and "torch_threads: 2" in config


def test_model_config_reaches_torchserve(torchserve: LocalTorchServe) -> None:
    described = torchserve.describe("tiny")
    assert described["modelVersion"] == "v1"
    assert (described["batchSize"], described["maxBatchDelay"]) == (8, 20)
    assert [w["status"] for w in described["workers"]] == ["READY"]
    log = (torchserve.log_dir / "model_log.log").read_text(encoding="utf-8")
    (loaded,) = [line for line in log.splitlines() if "loaded tiny v1 from" in line]
    assert "torch threads 1," in loaded  # MDP_TORCH_THREADS reached the worker
    # the worker imported the archive's copy of multidomain, not the project's
    model_dir = loaded.split(" from ", 1)[1].split(":", 1)[0]
    assert f"(multidomain from {model_dir}/multidomain)" in loaded


def test_predictions_equal_offline_model_and_fastapi(
    client: httpx.Client, artifact_dir: Path, fastapi_client: Any
) -> None:
    artifact = load_artifact(artifact_dir)
    # All images at once: TorchServe batches requests of different domains together.
    with ThreadPoolExecutor(len(CASES)) as pool:
        responses = list(pool.map(lambda case: predict(client, *case), CASES))
    for (domain, data, content_type), response in zip(CASES, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert (body["model"], body["version"], body["domain"]) == ("tiny", "v1", domain)
        entry = artifact.domain(domain)
        image = eval_transform(entry.image_size, entry.mean, entry.std)(
            Image.open(io.BytesIO(data))
        )
        with torch.inference_mode():
            expected = torch.softmax(artifact.subnet(domain)(image[None]), dim=1)[0]
        got = distribution(body)
        assert body["predictions"][0]["index"] == int(expected.argmax())
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

        top_k = len(entry.labels)
        reply = fastapi_client.post(
            f"/v1/domains/{domain}/predict",
            params={"top_k": top_k},
            content=data,
            headers={"Content-Type": content_type},
        )
        assert reply.status_code == 200, reply.text
        fastapi_body = reply.json()
        assert set(fastapi_body) == set(body)
        assert {k: fastapi_body[k] for k in ("model", "version", "domain")} == {
            k: body[k] for k in ("model", "version", "domain")
        }
        assert fastapi_body["predictions"][0] == {**body["predictions"][0], "probability": ANY}
        torch.testing.assert_close(distribution(fastapi_body), got, atol=1e-5, rtol=0)


def test_json_and_multipart_variants_and_default_top_k(client: httpx.Client) -> None:
    domain, data, content_type = CASES[-1]  # digits: 10 classes
    raw = client.post(
        "/predictions/tiny",
        content=data,
        headers={"Content-Type": content_type, "X-Domain": domain},
    )
    as_json = client.post(
        "/predictions/tiny",
        json={"domain": domain, "image": base64.b64encode(data).decode(), "top_k": 3},
    )
    form = client.post(
        "/predictions/tiny",
        files={"file": ("image", data, content_type)},
        data={"domain": domain, "top_k": "2"},
    )
    for reply in (raw, as_json, form):
        assert reply.status_code == 200, reply.text
    assert len(raw.json()["predictions"]) == 5
    assert as_json.json()["predictions"] == raw.json()["predictions"][:3]
    assert form.json()["predictions"] == raw.json()["predictions"][:2]


def test_bad_input_is_4xx_with_the_service_error_shape(
    client: httpx.Client, fastapi_client: Any
) -> None:
    png = CASES[0][1]
    bad = [
        ("nope", png, 404, "unknown_domain"),
        ("digits", b"\x89PNG\r\n\x1a\n not really", 422, "bad_image"),
    ]

    def send(case: tuple[str, bytes, int, str]) -> httpx.Response:
        domain, data, _, _ = case
        headers = {"Content-Type": "image/png", "X-Domain": domain}
        return client.post("/predictions/tiny", content=data, headers=headers)

    # Bad and good requests in one burst: the bad ones must not fail their batch-mates.
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(predict, client, *case) for case in CASES[:6]]
        errors = list(pool.map(send, bad))
    assert [g.result().status_code for g in good] == [200] * len(good)
    for (domain, data, status, type_), response in zip(bad, errors, strict=True):
        error = assert_error_shape(response, status, type_)
        reference = fastapi_client.post(
            f"/v1/domains/{domain}/predict", content=data, headers={"Content-Type": "image/png"}
        )
        fastapi_error = assert_error_shape(reference, status, type_)
        if type_ == "unknown_domain":
            assert error["message"] == fastapi_error["message"]
        else:
            assert error["message"].startswith("cannot decode image")
            assert fastapi_error["message"].startswith("cannot decode image")
    missing = client.post("/predictions/tiny", content=png, headers={"Content-Type": "image/png"})
    assert "X-Domain" in assert_error_shape(missing, 400, "malformed_request")["message"]
