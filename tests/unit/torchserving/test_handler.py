"""The TorchServe handler without TorchServe: TorchServe's own ``Context`` and
``RequestProcessor`` classes, fed the request shapes TorchServe 0.12 produces (checked against
a real TorchServe in tests/integration/test_torchserve.py)."""

from __future__ import annotations

import base64
import functools
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from ts.context import Context, RequestProcessor

from multidomain.artifact import ArtifactError, DomainEntry, load_artifact
from multidomain.preprocess import eval_transform
from tests.artifacts import TINY_DOMAINS, write_tiny_artifact
from torchserving.handler import HandlerConfig, MultiDomainHandler

ROOT = Path(__file__).resolve().parents[3]


def png(seed: int, size: tuple[int, int] = (20, 24)) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy(), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def raw(image: bytes, domain: str | None, content_type: str = "image/png", **headers: str) -> Any:
    """(parameters, headers) of a raw-body request as TorchServe hands them to the handler."""
    request_headers = {"body": {"content-type": content_type}, "Content-Type": content_type}
    if domain is not None:
        request_headers["X-Domain"] = domain
    request_headers.update(headers)
    return {"body": bytearray(image)}, request_headers


def as_json(body: Any) -> Any:
    return {"body": body}, {
        "body": {"content-type": "application/json"},
        "Content-Type": "application/json",
    }


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_artifact(tmp_path_factory.mktemp("store"))


def make_context(model_dir: Path, yaml_config: dict[str, Any] | None = None) -> Context:
    return Context("tiny", str(model_dir), None, 8, None, "0.12.0", model_yaml_config=yaml_config)


@pytest.fixture(scope="module")
def handler(artifact_dir: Path) -> MultiDomainHandler:
    handler = MultiDomainHandler()
    handler.initialize(make_context(artifact_dir))
    return handler


def run_batch(
    handler: MultiDomainHandler, model_dir: Path, requests: list[Any]
) -> list[tuple[int, str | None, dict[str, Any]]]:
    context = make_context(model_dir)
    context.request_processor = [RequestProcessor(headers) for _, headers in requests]
    bodies = handler.handle([row for row, _ in requests], context)
    assert len(bodies) == len(requests)
    return [
        (
            context.get_response_status(i)[0],
            context.get_response_content_type(i),
            json.loads(body),
        )
        for i, body in enumerate(bodies)
    ]


@functools.cache
def subnet(artifact_dir: Path, domain: str) -> tuple[DomainEntry, torch.nn.Module]:
    artifact = load_artifact(artifact_dir)
    return artifact.domain(domain), artifact.subnet(domain)


def reference(artifact_dir: Path, domain: str, image: bytes) -> torch.Tensor:
    """The offline model: the domain's compact subnetwork on the eval transform's tensor."""
    entry, network = subnet(artifact_dir, domain)
    tensor = eval_transform(entry.image_size, entry.mean, entry.std)(Image.open(io.BytesIO(image)))
    with torch.inference_mode():
        return torch.softmax(network(tensor[None]), dim=1)[0]


def assert_error(result: tuple[int, str | None, dict[str, Any]], status: int, type_: str) -> None:
    code, content_type, body = result
    assert (code, content_type) == (status, "application/json")
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "type", "message"}
    assert body["error"]["code"] == status and body["error"]["type"] == type_
    assert body["error"]["message"]


def test_mixed_batch_groups_by_domain_and_isolates_bad_requests(
    handler: MultiDomainHandler, artifact_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, list[int]] = {name: [] for name in TINY_DOMAINS}
    for name, served in handler.domains.items():
        forward = served.network.forward

        def counting(x: torch.Tensor, _name: str = name, _forward: Any = forward) -> Any:
            calls[_name].append(len(x))
            return _forward(x)

        monkeypatch.setattr(served.network, "forward", counting)
    images = [png(i) for i in range(5)]
    b64 = base64.b64encode(images[4]).decode()
    requests = [
        raw(images[0], "shapes"),
        raw(images[1], "nope"),
        raw(images[1], "digits"),
        raw(b"not an image", "digits"),
        raw(images[2], "shapes", **{"X-Top-K": "2"}),
        raw(images[3], None),
        as_json({"domain": "colours", "image": b64, "top_k": 1}),
        raw(images[3], "digits", content_type="text/csv"),
    ]
    results = run_batch(handler, artifact_dir, requests)
    assert calls == {"shapes": [2], "digits": [1], "colours": [1]}  # one forward per domain
    assert_error(results[1], 404, "unknown_domain")
    assert "colours, digits, shapes" in results[1][2]["error"]["message"]
    assert_error(results[3], 422, "bad_image")
    assert_error(results[5], 400, "malformed_request")
    assert_error(results[7], 415, "unsupported_media_type")
    expected = {0: ("shapes", images[0], 3), 2: ("digits", images[1], 5)}
    expected |= {4: ("shapes", images[2], 2), 6: ("colours", images[4], 1)}
    for idx, (domain, image, k) in expected.items():
        code, content_type, body = results[idx]
        assert (code, content_type) == (200, "application/json")
        assert set(body) == {"model", "version", "domain", "budget", "predictions"}
        assert (body["model"], body["version"], body["domain"]) == ("tiny", "v1", domain)
        probabilities = reference(artifact_dir, domain, image)
        values, indices = torch.topk(probabilities, k)
        assert [p["index"] for p in body["predictions"]] == indices.tolist()
        labels = TINY_DOMAINS[domain]
        assert [p["label"] for p in body["predictions"]] == [labels[i] for i in indices.tolist()]
        got = torch.tensor([p["probability"] for p in body["predictions"]])
        torch.testing.assert_close(got, values, atol=1e-5, rtol=0)


def test_json_and_form_variants_and_their_errors(
    handler: MultiDomainHandler, artifact_dir: Path
) -> None:
    image = png(7)
    b64 = base64.b64encode(image).decode()
    form = (
        {"file": bytearray(image), "domain": bytearray(b"digits"), "top_k": bytearray(b"3")},
        {
            "file": {"content-type": "image/png"},
            "domain": {"content-type": ""},
            "Content-Type": "multipart/form-data; boundary=x",
        },
    )
    header_and_json = as_json({"image": b64})
    header_and_json[1]["X-Domain"] = "digits"
    conflict = as_json({"domain": "shapes", "image": b64})
    conflict[1]["x-domain"] = "digits"
    requests = [
        form,
        header_and_json,
        conflict,
        as_json([1, 2]),
        as_json(bytearray(b"{not json")),
        as_json({"domain": "digits", "image": "***"}),
        as_json({"domain": "digits"}),
        (as_json({})[0], {**as_json({})[1], "X-Domain": "digits"}),
        as_json({"domain": 3, "image": b64}),
        raw(image, "digits", **{"X-Top-K": "0"}),
        as_json({"domain": "digits", "image": b64, "top_k": True}),
        ({"body": "some text"}, {"Content-Type": "text/plain", "X-Domain": "digits"}),
        ({}, {"Content-Type": "application/x-www-form-urlencoded", "X-Domain": "digits"}),
    ]
    results = run_batch(handler, artifact_dir, requests)
    assert results[0][0] == 200 and len(results[0][2]["predictions"]) == 3
    assert results[1][0] == 200 and results[1][2]["domain"] == "digits"
    assert results[0][2]["predictions"] == results[1][2]["predictions"][:3]
    for idx in (2, 3, 4, 5, 6, 7, 8):
        assert_error(results[idx], 400, "malformed_request")
    assert "'image'" in results[7][2]["error"]["message"]  # {} with X-Domain: no image
    assert_error(results[9], 422, "invalid_request")
    assert_error(results[10], 422, "invalid_request")
    assert_error(results[11], 415, "unsupported_media_type")
    assert_error(results[12], 415, "unsupported_media_type")


def test_too_many_pixels_is_422(artifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_MAX_IMAGE_PIXELS", "100")
    handler = MultiDomainHandler()
    handler.initialize(make_context(artifact_dir, {"handler": {"default_top_k": 2}}))
    ok, big = run_batch(
        handler, artifact_dir, [raw(png(1, (8, 8)), "shapes"), raw(png(2, (20, 20)), "shapes")]
    )
    assert ok[0] == 200 and len(ok[2]["predictions"]) == 2  # default_top_k from the yaml
    assert_error(big, 422, "image_too_large")


def test_handler_config_precedence_and_validation() -> None:
    assert HandlerConfig.load(None, {}) == HandlerConfig()
    section = {"torch_threads": 3, "max_image_pixels": 1000}
    assert HandlerConfig.load(section, {}).torch_threads == 3
    config = HandlerConfig.load(section, {"MDP_TORCH_THREADS": "1"})
    assert (config.torch_threads, config.max_image_pixels) == (1, 1000)
    with pytest.raises(ValueError, match="MDP_TORCH_THREADS"):
        HandlerConfig.load(None, {"MDP_TORCH_THREADS": "two"})
    with pytest.raises(ValueError, match=r"handler\.default_top_k"):
        HandlerConfig.load({"default_top_k": 0}, {})


def test_initialize_refuses_a_corrupt_artifact(tmp_path: Path) -> None:
    path = write_tiny_artifact(tmp_path)
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        MultiDomainHandler().initialize(make_context(path))


def test_handler_imports_no_web_framework() -> None:
    """The archive runs in TorchServe's Python, which need not have FastAPI or pydantic."""
    code = (
        "import sys, torchserving.handler; "
        "bad = sorted(m for m in ('fastapi', 'pydantic', 'starlette', 'service.errors') "
        "if m in sys.modules); print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_unexpected_failure_is_a_500_for_its_requests_only(
    handler: MultiDomainHandler, artifact_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    monkeypatch.setattr(handler.domains["colours"].network, "forward", broken)
    results = run_batch(handler, artifact_dir, [raw(png(1), "colours"), raw(png(2), "digits")])
    assert_error(results[0], 500, "internal")
    assert results[0][2]["error"]["message"] == "internal error"  # no internals leak
    assert results[1][0] == 200
