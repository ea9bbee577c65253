"""The HTTP API over a real (tiny) artifact: every route, every error, real image bytes."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from torch import Tensor

from multidomain.store import resolve_artifact
from service import engine as engine_module
from service.app import create_app
from service.engine import InferenceEngine
from service.settings import ServiceSettings, SettingsError, load_settings
from tests.apps import ready_client, until_ready
from tests.artifacts import TINY_DOMAINS, offline_reference

DOMAINS = list(TINY_DOMAINS)
Reference = Callable[[str, bytes], Tensor]


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


#: (name, bytes, content type) of valid images in several formats, sizes and modes
IMAGES = [
    ("rgb16.png", encode(noise(16, 16, seed=1)), "image/png"),
    ("wide.png", encode(noise(40, 24, seed=2)), "image/png"),
    ("grey.png", encode(noise(20, 20, "L", seed=3)), "image/png"),
    ("alpha.png", encode(noise(30, 30, "RGBA", seed=4)), "image/png"),
    ("photo.jpg", encode(noise(48, 32, seed=5), "JPEG"), "image/jpeg"),
]
PNG = IMAGES[0][1]


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels but holds (almost) no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def assert_error(response: httpx.Response, status: int, type_: str) -> str:
    """The one error shape; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "type", "message"}
    assert body["error"]["code"] == status and body["error"]["type"] == type_
    message = body["error"]["message"]
    assert isinstance(message, str) and len(message) > 10
    return message


def predict(
    client: TestClient,
    domain: str,
    data: bytes | Iterator[bytes],
    content_type: str = "image/png",
    **params: Any,
) -> httpx.Response:
    return client.post(
        f"/v1/domains/{domain}/predict",
        content=data,
        headers={"content-type": content_type},
        params=params,
    )


def assert_matches(predictions: list[dict[str, Any]], expected: Tensor, domain: str) -> None:
    """Every class present, sorted, labelled, and equal to the offline probabilities."""
    labels = TINY_DOMAINS[domain]
    assert len(predictions) == len(labels)
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(labels[p["index"]] == p["label"] for p in predictions)
    assert predictions[0]["index"] == int(expected.argmax())
    got = torch.zeros(len(labels), dtype=torch.float64)
    for p in predictions:
        got[p["index"]] = p["probability"]
    assert torch.max(torch.abs(got - expected.double())).item() <= 1e-5


def settings_for(store: Path, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "model_store": store,
        "model_name": "tiny",
        "max_wait_ms": 2.0,
        "torch_threads": 1,
        "max_batch_size": 8,
    }
    return ServiceSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[TestClient]:
    with ready_client(create_app(settings_for(store))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def offline(store: Path) -> Iterator[Reference]:
    """The offline evaluation of the same artifact: compact subnetwork on eval_transform. It
    runs single-threaded: two multi-threaded OpenMP teams (this one and the service's compute
    thread) spin against each other on a small machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield offline_reference(resolve_artifact(store, "tiny"))
    torch.set_num_threads(threads)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan and an async client, both on the current event loop."""
    async with app.router.lifespan_context(app):
        await until_ready(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


# -- routes ------------------------------------------------------------------------------------


def test_liveness_readiness_and_docs(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/domains/{domain}/predict",
        "/v1/domains/{domain}/predict/batch",
        "/v1/domains",
        "/v1/domains/{domain}",
        "/livez",
        "/readyz",
        "/metrics",
    } <= set(paths)


def test_not_ready_before_startup(store: Path) -> None:
    client = TestClient(create_app(settings_for(store)))  # no `with`: the lifespan never runs
    assert_error(client.get("/readyz"), 503, "not_ready")
    response = predict(client, "shapes", PNG)
    assert_error(response, 503, "not_ready")
    assert response.headers["retry-after"] == "1"
    assert_error(client.get("/v1/domains"), 503, "not_ready")
    assert client.get("/livez").status_code == 200


@pytest.mark.parametrize("domain", DOMAINS)
def test_predictions_equal_the_offline_evaluation(
    client: TestClient, offline: Reference, domain: str
) -> None:
    for _, data, content_type in IMAGES:
        response = predict(client, domain, data, content_type, top_k=100)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["version"], body["domain"]) == ("tiny", "v1", domain)
        assert_matches(body["predictions"], offline(domain, data), domain)


def test_multipart_single_and_batch_equal_the_offline_evaluation(
    client: TestClient, offline: Reference
) -> None:
    name, data, content_type = IMAGES[3]
    response = client.post(
        "/v1/domains/digits/predict",
        files={"file": (name, data, content_type)},
        params={"top_k": 10},
    )
    assert response.status_code == 200, response.text
    assert_matches(response.json()["predictions"], offline("digits", data), "digits")

    files = [("files", image) for image in IMAGES]
    response = client.post("/v1/domains/shapes/predict/batch", files=files, params={"top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["domain"]) == ("tiny", "v1", "shapes")
    assert len(body["results"]) == len(IMAGES)
    for result, (_, data, _) in zip(body["results"], IMAGES, strict=True):  # request order
        assert_matches(result["predictions"], offline("shapes", data), "shapes")


def test_top_k(client: TestClient) -> None:
    def count(domain: str, **params: Any) -> int:
        response = predict(client, domain, PNG, **params)
        assert response.status_code == 200, response.text
        return len(response.json()["predictions"])

    assert count("digits") == 5  # default
    assert count("shapes") == 3  # default clamped to the number of labels
    assert count("digits", top_k=1) == 1
    assert count("digits", top_k=10**6) == 10
    message = assert_error(predict(client, "digits", PNG, top_k=0), 422, "invalid_request")
    assert "top_k" in message
    assert_error(predict(client, "digits", PNG, top_k="many"), 422, "invalid_request")


def test_domain_routes(client: TestClient) -> None:
    summary = client.get("/v1/domains").json()
    assert (summary["model"], summary["version"], summary["budget"]) == ("tiny", "v1", 0.5)
    assert summary["sharing"] == "none" and summary["budget_metric"] == "both"
    assert [d["name"] for d in summary["domains"]] == DOMAINS
    assert [d["budget"] for d in summary["domains"]] == [0.5, 0.4, 0.5]  # each domain's own
    assert summary["domains"][1]["measured_time_fraction"] == {"1": 0.7, "32": 0.45}
    assert summary["domains"][0]["measured_time_fraction"] is None
    assert summary["channel_group"] == 1
    # the service keeps the shared weights once: about the artifact's bytes
    assert 0 < summary["resident_weight_bytes"] <= 1.1 * summary["artifact_weight_bytes"]
    colours = client.get("/v1/domains/colours").json()
    assert colours["budget"] == 0.4 and colours["budget_metric"] == "both"
    detail = client.get("/v1/domains/digits").json()
    assert detail["labels"] == TINY_DOMAINS["digits"] and detail["num_classes"] == 10
    assert detail["test_accuracy"] == 0.5 and detail["val_accuracy"] is None
    assert detail["image_size"] == 16 and detail["budget"] == 0.5
    assert len(detail["channels_per_block"]) == 12
    assert detail["channels"] == sum(detail["channels_per_block"]) > 0


# -- client errors -----------------------------------------------------------------------------


def test_unknown_domain_is_404_listing_the_known_ones(client: TestClient) -> None:
    for response in (
        predict(client, "sketches", PNG),
        client.post("/v1/domains/sketches/predict/batch", files=[("files", IMAGES[0])]),
        client.get("/v1/domains/sketches"),
    ):
        message = assert_error(response, 404, "unknown_domain")
        assert "'sketches'" in message and all(domain in message for domain in DOMAINS)


def test_unsupported_media_types_are_415(client: TestClient) -> None:
    assert_error(predict(client, "shapes", b"a cat", "text/plain"), 415, "unsupported_media_type")
    response = client.post("/v1/domains/shapes/predict", content=PNG)  # no content type
    assert_error(response, 415, "unsupported_media_type")
    for form in ({"files": IMAGES[0]}, {"file": (None, b"not a file")}):  # wrong field, text
        response = client.post("/v1/domains/shapes/predict", files=form)
        assert_error(response, 415, "unsupported_media_type")
    response = client.post("/v1/domains/shapes/predict/batch", files={"file": IMAGES[0]})
    assert_error(response, 415, "unsupported_media_type")
    response = client.post(  # a raw body is not a batch
        "/v1/domains/shapes/predict/batch", content=PNG, headers={"content-type": "image/png"}
    )
    assert_error(response, 415, "unsupported_media_type")


def test_undecodable_images_are_422(client: TestClient) -> None:
    for data in (PNG[: len(PNG) // 2], b"\x89PNG\r\n\x1a\n garbage", b"", b"GIF89a" + bytes(30)):
        assert_error(predict(client, "colours", data), 422, "bad_image")
    message = assert_error(
        predict(client, "colours", png_claiming(100_000, 100_000)), 422, "image_too_large"
    )
    assert "100000" in message


def test_the_pixel_limit_is_checked_before_decoding(store: Path) -> None:
    with ready_client(create_app(settings_for(store, max_image_pixels=32 * 32))) as client:
        assert predict(client, "shapes", encode(noise(32, 32))).status_code == 200
        too_big = predict(client, "shapes", png_claiming(33, 32))  # header only, no pixel data
        assert "1056" in assert_error(too_big, 422, "image_too_large")


def test_bodies_over_the_limit_are_413(store: Path) -> None:
    settings = settings_for(store, max_body_bytes=2048, max_batch_images=2)
    big = encode(noise(64, 64, seed=7))
    assert len(big) > 4096
    boundary = "x1y2z3"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + big
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with ready_client(create_app(settings)) as client:
        assert_error(predict(client, "shapes", big), 413, "body_too_large")  # Content-Length
        chunks = (big[i : i + 512] for i in range(0, len(big), 512))  # chunked, no length
        assert_error(predict(client, "shapes", chunks), 413, "body_too_large")
        response = client.post("/v1/domains/shapes/predict", files={"file": ("a.png", big)})
        assert_error(response, 413, "body_too_large")
        chunks = (multipart[i : i + 512] for i in range(0, len(multipart), 512))
        response = client.post(
            "/v1/domains/shapes/predict",
            content=chunks,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert_error(response, 413, "body_too_large")
        three = [("files", ("a.png", encode(noise(2, 2)), "image/png"))] * 3
        response = client.post("/v1/domains/shapes/predict/batch", files=three)
        assert "at most 2" in assert_error(response, 413, "too_many_images")
        assert predict(client, "shapes", PNG).status_code == 200


def test_malformed_multipart_is_400(client: TestClient) -> None:
    response = predict(client, "shapes", b"--nothing--", "multipart/form-data")  # no boundary
    assert_error(response, 400, "malformed_request")


def test_framework_errors_have_the_same_shape(client: TestClient) -> None:
    assert_error(client.get("/v9/anything"), 404, "not_found")
    response = client.delete("/v1/domains/shapes/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


# -- load, deadlines, failures -----------------------------------------------------------------


@pytest.mark.parametrize("overload_status", [429, 503])
def test_a_burst_over_the_queue_bound_is_shed_and_the_rest_answered(
    store: Path, offline: Reference, overload_status: int
) -> None:
    settings = settings_for(
        store,
        queue_size=1,
        max_batch_images=1,
        max_wait_ms=300,
        overload_status=overload_status,
        retry_after_s=2,
    )
    app = create_app(settings)
    images = [encode(noise(16, 16, seed=100 + i)) for i in range(12)]

    async def burst() -> list[httpx.Response]:
        async with serving(app) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/domains/digits/predict",
                        content=data,
                        headers={"content-type": "image/png"},
                        params={"top_k": 10},
                    )
                    for data in images
                )
            )

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, overload_status}, statuses
    for data, response in zip(images, responses, strict=True):
        if response.status_code == 200:
            assert_matches(response.json()["predictions"], offline("digits", data), "digits")
        else:
            assert_error(response, overload_status, "overloaded")
            assert response.headers["retry-after"] == "2"


class GatedForward:
    """Stand-in for the engine's forward pass (install it after warm-up): signals ``entered`` on
    the compute thread and holds the compute slot until ``gate`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate, self.entered = threading.Event(), threading.Event()
        self._forward = engine_module._forward
        self._monkeypatch = monkeypatch

    def install(self) -> None:
        self._monkeypatch.setattr(engine_module, "_forward", self)

    def __call__(self, network: torch.nn.Module, inputs: Tensor) -> Tensor:
        self.entered.set()
        assert self.gate.wait(10)
        return self._forward(network, inputs)


def test_the_deadline_gives_504_and_the_expired_image_is_not_computed(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(settings_for(store, request_timeout_s=0.3))
    forward = GatedForward(monkeypatch)

    async def scenario() -> str:
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        await until_ready(app)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
                forward.install()
                headers = {"content-type": "image/png"}
                busy = asyncio.create_task(
                    client.post("/v1/domains/shapes/predict", content=PNG, headers=headers)
                )
                await asyncio.to_thread(forward.entered.wait, 5)  # the compute slot is taken
                late = await client.post(
                    "/v1/domains/colours/predict", content=PNG, headers=headers
                )
                assert_error(late, 504, "deadline_exceeded")
                forward.gate.set()  # the colours worker now takes the expired image, drops it
                assert_error(await busy, 504, "deadline_exceeded")  # started and expired first
                for _ in range(100):
                    text = (await client.get("/metrics")).text
                    if 'mdp_queue_depth{domain="colours"} 0.0' in text:
                        break
                    await asyncio.sleep(0.05)
        finally:
            forward.gate.set()
            await lifespan.__aexit__(None, None, None)
        return text

    text = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert 'mdp_queue_depth{domain="colours"} 0.0' in text
    assert 'mdp_batch_size_count{domain="colours"} 0.0' in text
    assert 'mdp_rejections_total{domain="colours",reason="deadline"} 1.0' in text


def test_an_unexpected_error_is_a_generic_500_with_the_traceback_logged(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(*args: Any, **kwargs: Any) -> list[Tensor]:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(InferenceEngine, "answer", explode)
    with ready_client(create_app(settings_for(store))) as client, caplog.at_level(logging.ERROR):
        response = predict(client, "shapes", PNG)
        text = client.get("/metrics").text
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": 500, "type": "internal", "message": "internal error"}
    }
    assert "secret" not in response.text
    assert any("secret internals" in (r.exc_text or "") for r in caplog.records)
    assert 'mdp_requests_total{class="5xx",domain="shapes",status="500"} 1.0' in text
    assert 'mdp_rejections_total{domain="shapes",reason="internal"} 1.0' in text


def test_shutdown_turns_readiness_off_and_drains_in_flight_requests(
    store: Path, offline: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(settings_for(store, max_wait_ms=0))
    forward = GatedForward(monkeypatch)

    async def scenario() -> None:
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        await until_ready(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            forward.install()
            in_flight = asyncio.create_task(
                client.post(
                    "/v1/domains/shapes/predict",
                    content=PNG,
                    headers={"content-type": "image/png"},
                    params={"top_k": 3},
                )
            )
            await asyncio.to_thread(forward.entered.wait, 5)
            closing = asyncio.create_task(lifespan.__aexit__(None, None, None))
            await asyncio.sleep(0.05)
            assert_error(await client.get("/readyz"), 503, "not_ready")
            late = await client.post(
                "/v1/domains/shapes/predict", content=PNG, headers={"content-type": "image/png"}
            )
            assert_error(late, 503, "not_ready")
            forward.gate.set()
            response = await in_flight
            await closing
        assert response.status_code == 200, response.text
        assert_matches(response.json()["predictions"], offline("shapes", PNG), "shapes")

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_expose_every_series_for_every_domain(client: TestClient) -> None:
    assert predict(client, "digits", PNG).status_code == 200
    assert predict(client, "nowhere", PNG).status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    labelled = {
        "mdp_request_latency_seconds": "histogram",
        "mdp_queue_wait_seconds": "histogram",
        "mdp_preprocess_seconds": "histogram",
        "mdp_batch_compute_seconds": "histogram",
        "mdp_batch_size": "histogram",
        "mdp_queue_depth": "gauge",
        "mdp_in_flight_requests": "gauge",
        "mdp_requests": "counter",
        "mdp_rejections": "counter",
    }
    for name, kind in labelled.items():
        assert families[name].type == kind
        domains = {s.labels["domain"] for s in families[name].samples}
        assert domains == {*DOMAINS, "_unknown"}, name
    latency = families["mdp_request_latency_seconds"].samples
    buckets = {s.labels["le"] for s in latency if s.name.endswith("_bucket")}
    assert buckets == {
        *("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5"),
        *("1.0", "2.5", "5.0", "10.0", "+Inf"),  # up to the 10 s deadline
    }
    requests = {
        (s.labels["domain"], s.labels["status"], s.labels["class"]): s.value
        for s in families["mdp_requests"].samples
        if s.name == "mdp_requests_total"
    }
    assert requests[("digits", "200", "2xx")] >= 1 and requests[("_unknown", "404", "4xx")] >= 1
    for process in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds"):
        (value,) = [s.value for s in families[process].samples]
        assert value > 0, process
    info = families["mdp_model_info"].samples[0]
    assert info.labels == {"model": "tiny", "version": "v1", "budget": "0.5", "sharing": "none"}


def test_latency_buckets_end_at_the_deadline() -> None:
    from service.metrics import ServiceMetrics

    metrics = ServiceMetrics(request_timeout_s=3)
    metrics.observe_request("_unknown", 200, 2.9)
    bounds = [
        s.labels["le"]
        for family in metrics.registry.collect()
        if family.name == "mdp_request_latency_seconds"
        for s in family.samples
        if s.name.endswith("_bucket")
    ]
    assert bounds[-3:] == ["2.5", "3.0", "+Inf"]


def test_each_app_has_its_own_registry(store: Path) -> None:
    first, second = create_app(settings_for(store)), create_app(settings_for(store))
    assert first.state.service.metrics.registry is not second.state.service.metrics.registry


# -- documentation offline, default top_k, version header -----------------------------------


def test_the_docs_pages_load_every_asset_from_the_service(client: TestClient) -> None:
    """/docs and /redoc work with no internet: every script, style and icon they reference is
    served by the service itself (from the pinned fastapi-offline package)."""
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200
        html = response.text
        assert not re.search(r"https?://|\"//", html), html  # no other host
        urls = set(re.findall(r'(?:src|href)="([^"]+)"', html))
        assert urls and all(url.startswith("/docs/assets/") for url in urls), urls
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text[:5000]


def test_top_k_defaults_to_the_setting(store: Path) -> None:
    with ready_client(create_app(settings_for(store, default_top_k=2))) as client:
        response = predict(client, "digits", PNG)
        assert len(response.json()["predictions"]) == 2
        assert len(predict(client, "digits", PNG, top_k=4).json()["predictions"]) == 4
        files = [("files", ("a.png", PNG, "image/png"))] * 2
        batch = client.post("/v1/domains/digits/predict/batch", files=files).json()
        assert [len(r["predictions"]) for r in batch["results"]] == [2, 2]


def test_default_top_k_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_DEFAULT_TOP_K", "3")
    assert load_settings().default_top_k == 3
    monkeypatch.setenv("MDP_DEFAULT_TOP_K", "0")
    with pytest.raises(SettingsError, match="MDP_DEFAULT_TOP_K"):
        load_settings()


def test_every_response_names_the_model_version(client: TestClient) -> None:
    version = client.get("/v1/domains").json()["version"]
    for response in (
        predict(client, "shapes", PNG),
        predict(client, "shapes", b"not an image"),
        predict(client, "nope", PNG),
        client.get("/v1/domains/colours"),
    ):
        assert response.headers["x-model-version"] == version
