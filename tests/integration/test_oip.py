"""The Open Inference Protocol v2 through the official client (``tritonclient[http]``) against
the service as a real uvicorn process: health, metadata, and inference for every domain equal
to the ``/v1`` answers, with tensors in binary (the client's default) and in JSON (base64);
bad tensors are answered 400 in the protocol's error shape. The artifact is nested: a request
names a budget level (parameter ``budget`` or ``X-Budget``) and the answer names the level."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.artifacts import NESTED_BUDGETS
from tests.integration.test_service_process import DOMAINS, ServiceProcess, png, service_process

pytestmark = pytest.mark.integration

IMAGES = [png(seed) for seed in range(3)]
LABELS = [f"{b:g}" for b in NESTED_BUDGETS]
LEVELS = ", ".join(LABELS)
BASE64 = [base64.b64encode(image).decode() for image in IMAGES]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    directory = tmp_path_factory.mktemp("oip")
    with service_process(directory, nested=True, MDP_DEFAULT_TOP_K="2") as process:
        yield process


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(service.url.removeprefix("http://"))
    yield client
    client.close()


def v1_batch(service: ServiceProcess, domain: str, top_k: int, budget: str | None = None) -> dict:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(IMAGES)]
    response = httpx.post(
        f"{service.url}/v1/domains/{domain}/predict/batch",
        files=files,
        params={"top_k": top_k, **({"budget": budget} if budget is not None else {})},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def images_input(binary: bool, base64_text: bool = False) -> triton.InferInput:
    images = triton.InferInput("images", [len(IMAGES)], "BYTES")
    # JSON data must be text: there the images go as base64
    data = [base64.b64encode(i).decode() for i in IMAGES] if base64_text else list(IMAGES)
    images.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
    return images


def test_health_and_metadata(client: triton.InferenceServerClient, service: ServiceProcess) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "multidomain-pruning" and "binary_tensor_data" in server["extensions"]
    summary = httpx.get(f"{service.url}/v1/domains").json()
    for domain in summary["domains"]:
        name = domain["name"]
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, model_version=summary["version"])
        metadata = client.get_model_metadata(name)
        assert metadata["name"] == name and metadata["versions"] == [summary["version"]]
        assert metadata["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
        assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {
            "labels": "BYTES",
            "probabilities": "FP32",
            "indices": "INT64",
        }
        assert metadata["parameters"]["num_classes"] == domain["num_classes"]
        levels = [f"{level['budget']:g}" for level in domain["levels"]]
        assert metadata["parameters"]["budgets"] == ", ".join(levels) == LEVELS
    assert not client.is_model_ready("no-such-domain")
    with pytest.raises(InferenceServerException, match="unknown domain"):
        client.get_model_metadata("no-such-domain")
    with pytest.raises(InferenceServerException, match="no version 'v0'"):
        client.get_model_metadata(DOMAINS[0], model_version="v0")


@pytest.mark.parametrize(
    "mode", ["binary in, binary out", "binary in, json out", "base64 json in, json out"]
)
def test_infer_equals_v1_for_every_domain(
    client: triton.InferenceServerClient, service: ServiceProcess, mode: str
) -> None:
    for domain in DOMAINS:
        top_k = 3
        expected = v1_batch(service, domain, top_k)
        binary_out = mode == "binary in, binary out"
        outputs = [
            triton.InferRequestedOutput(name, binary_data=binary_out)
            for name in ("labels", "probabilities", "indices")
        ]
        result = client.infer(
            domain,
            [images_input(binary=mode.startswith("binary"), base64_text="base64" in mode)],
            outputs=outputs,
            parameters={"top_k": top_k},
        )
        response = result.get_response()
        assert response["model_name"] == domain
        assert response["model_version"] == expected["version"]
        assert response["parameters"]["budget"] == NESTED_BUDGETS[0]  # the default: largest
        assert_answers_equal(result, expected, top_k)


def assert_answers_equal(result: triton.InferResult, expected: dict, top_k: int) -> None:
    """The client's outputs hold the classes and probabilities of the ``/v1`` batch answer."""
    labels = result.as_numpy("labels")
    probabilities = result.as_numpy("probabilities")
    indices = result.as_numpy("indices")
    k = min(top_k, len(expected["results"][0]["predictions"]))
    assert labels.shape == probabilities.shape == indices.shape == (len(IMAGES), k)
    assert probabilities.dtype == np.float32 and indices.dtype == np.int64
    for row, item in enumerate(expected["results"]):
        predictions = item["predictions"]
        assert [label.decode() if isinstance(label, bytes) else label for label in labels[row]] == [
            p["label"] for p in predictions
        ]
        assert indices[row].tolist() == [p["index"] for p in predictions]
        np.testing.assert_allclose(
            probabilities[row], [p["probability"] for p in predictions], rtol=1e-6, atol=1e-7
        )


@pytest.mark.parametrize("level", range(len(NESTED_BUDGETS)))
def test_infer_answers_at_the_level_it_names(
    client: triton.InferenceServerClient, service: ServiceProcess, level: int
) -> None:
    """The level as a request parameter (a number or text) or as the X-Budget header: the
    answer is that level's (equal to /v1's at the level, unequal to the other levels') and its
    parameters and X-Budget header name it."""
    domain, top_k = "digits", 100  # every class
    expected = v1_batch(service, domain, top_k, LABELS[level])
    assert {item["budget"] for item in expected["results"]} == {NESTED_BUDGETS[level]}
    for named in (
        {"parameters": {"budget": NESTED_BUDGETS[level]}},
        {"parameters": {"budget": LABELS[level]}},
        {"headers": {"X-Budget": LABELS[level]}},
        {"parameters": {"budget": NESTED_BUDGETS[level]}, "headers": {"X-Budget": LABELS[level]}},
    ):
        result = client.infer(
            domain,
            [images_input(binary=True)],
            parameters={"top_k": top_k, **named.get("parameters", {})},
            headers=dict(named.get("headers", {})),  # the client adds to it: a copy
        )
        assert result.get_response()["parameters"]["budget"] == NESTED_BUDGETS[level], named
        assert_answers_equal(result, expected, top_k)
    others = [v1_batch(service, domain, top_k, label) for label in LABELS if label != LABELS[level]]
    assert all(other["results"] != expected["results"] for other in others)
    # the response header (the client does not show it), in JSON and in binary
    for binary in (False, True):
        parameters = {"budget": NESTED_BUDGETS[level], "binary_data_output": binary}
        response = post_infer(service, tensor_request(parameters, data=[BASE64[0]]))
        assert response.status_code == 200, response.text
        assert response.headers["x-budget"] == LABELS[level]
        media = "application/octet-stream" if binary else "application/json"
        assert response.headers["content-type"] == media


def test_infer_defaults(client: triton.InferenceServerClient, service: ServiceProcess) -> None:
    """No outputs named: every output, in binary (the client asks so); no top_k: the service's
    MDP_DEFAULT_TOP_K (2 here), the same default as /v1; no level: the largest."""
    result = client.infer("digits", [images_input(binary=True)])
    assert result.as_numpy("probabilities").shape == (len(IMAGES), 2)
    assert result.as_numpy("labels").shape == (len(IMAGES), 2)
    assert result.get_response()["parameters"]["budget"] == NESTED_BUDGETS[0]
    one = httpx.post(
        f"{service.url}/v1/domains/digits/predict",
        content=IMAGES[0],
        headers={"content-type": "image/png"},
    )
    assert len(one.json()["predictions"]) == 2
    assert one.headers["x-model-version"] == result.get_response()["model_version"]


def post_infer(service: ServiceProcess, body: bytes, headers: dict[str, str] | None = None):
    return httpx.post(
        f"{service.url}/v2/models/shapes/infer",
        content=body,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=30,
    )


def assert_oip_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert fragment in body["error"], body["error"]


def tensor_request(options: dict[str, object] | None = None, **tensor: object) -> bytes:
    """A request of one input (``tensor``: its fields); ``options``: the request's parameters."""
    base = {"name": "images", "datatype": "BYTES", "shape": [1]}
    request: dict[str, object] = {"inputs": [{**base, **tensor}]}
    if options is not None:
        request["parameters"] = options
    return json.dumps(request).encode()


def test_bad_tensors_get_400_in_the_protocol_error_shape(
    client: triton.InferenceServerClient, service: ServiceProcess
) -> None:
    good = base64.b64encode(IMAGES[0]).decode()
    cases = [
        (b"{not json", "not valid JSON"),
        (json.dumps({"inputs": []}).encode(), "exactly one tensor"),
        (tensor_request(datatype="FP32", data=[1.0]), "datatype 'FP32'"),
        (tensor_request(shape=[1, 3], data=[good]), "shape [1, 3]"),
        (tensor_request(shape=[2], data=[good]), "2 base64 strings"),
        (tensor_request(data=["not base64!"]), "not a base64 string"),
        (tensor_request(data=[base64.b64encode(b"not an image").decode()]), "image"),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "images", "datatype": "BYTES", "shape": [1], "data": [good]}
                    ],
                    "outputs": [{"name": "logits"}],
                }
            ).encode(),
            "unknown output 'logits'",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "images", "datatype": "BYTES", "shape": [1], "data": [good]}
                    ],
                    "parameters": {"top_k": 0},
                }
            ).encode(),
            "top_k",
        ),
    ]
    for body, fragment in cases:
        assert_oip_error(post_infer(service, body), 400, fragment)
    # binary data shorter than declared
    header = tensor_request(parameters={"binary_data_size": 100})
    response = post_infer(
        service,
        header + b"\x05\x00\x00\x00abc",
        {"inference-header-content-length": str(len(header))},
    )
    assert_oip_error(response, 400, "binary_data_size 100")
    # the official client sees the 400 and its message
    bad = triton.InferInput("images", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"definitely not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("colours", [bad])
    assert raised.value.status() == "400" and "image" in raised.value.message()
    assert_oip_error(httpx.post(f"{service.url}/v2/models/nope/infer", content=b"{}"), 404, "nope")


@pytest.mark.parametrize(
    ("parameters", "headers", "fragments"),
    [
        ({"budget": 0.5}, {}, ["budget level 0.5", LEVELS]),
        ({"budget": "abc"}, {}, ["budget 'abc' is not a number", LEVELS]),
        ({"budget": True}, {}, ["budget True is not a number", LEVELS]),
        ({}, {"X-Budget": "2"}, ["budget level 2", LEVELS]),
        (
            {"budget": NESTED_BUDGETS[1]},
            {"X-Budget": LABELS[2]},
            [f"header X-Budget '{LABELS[2]}'", f"parameter budget {NESTED_BUDGETS[1]}", LEVELS],
        ),
    ],
)
def test_an_unknown_or_twice_named_level_is_a_bad_request_listing_the_levels(
    client: triton.InferenceServerClient,
    service: ServiceProcess,
    parameters: dict[str, object],
    headers: dict[str, str],
    fragments: list[str],
) -> None:
    """The /v1 route's unknown-level message (a 422 there, 400 under /v2 as every invalid
    parameter), and one naming both places when the parameter and the header disagree."""
    with pytest.raises(InferenceServerException) as raised:
        # the client adds its own headers to the dict it is given: a copy
        client.infer(
            "shapes", [images_input(binary=True)], parameters=parameters, headers=dict(headers)
        )
    assert raised.value.status() == "400", raised.value
    assert all(fragment in raised.value.message() for fragment in fragments), raised.value
    response = post_infer(service, tensor_request(parameters, data=[BASE64[0]]), headers)
    for fragment in fragments:
        assert_oip_error(response, 400, fragment)
    if headers and not parameters:  # the /v1 route's message
        v1 = httpx.post(
            f"{service.url}/v1/domains/shapes/predict",
            content=IMAGES[0],
            headers={"content-type": "image/png", **headers},
        )
        assert v1.status_code == 422 and v1.json()["error"]["message"] == response.json()["error"]
