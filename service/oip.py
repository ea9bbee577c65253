"""The Open Inference Protocol v2 (REST), next to the ``/v1`` API: the protocol Triton, KServe,
Seldon MLServer and TorchServe's KServe mode speak, so their clients (``tritonclient[http]``)
work unchanged.

Every domain is a model named after the domain (``/v2/models/shapes``), versioned by the served
artifact's version. ``infer`` takes one input, encoded images (PNG, JPEG, ...) as ``BYTES`` of
shape ``[N]`` or ``[N, 1]``, in the binary tensor data extension or as base64 strings in JSON
``data``; it answers the top-k classes of each image as ``labels`` (BYTES ``[N, k]``),
``probabilities`` (FP32 ``[N, k]``) and ``indices`` (INT64 ``[N, k]``), in JSON or binary as
requested. ``top_k`` is a request parameter (default ``MDP_DEFAULT_TOP_K``); ``budget`` (or the
``X-Budget`` header) names a nested artifact's level, and the response's ``budget`` parameter
and ``X-Budget`` header the one that answered. A request runs the
same steps as ``/v1`` batch predictions (decode, micro-batched predict, encode) behind the same
admission, authentication and metrics; errors are ``{"error": "<message>"}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from multidomain import __version__
from multidomain.serving import ServedDomain, level_label
from service.errors import MalformedRequest, TooManyImages, UnknownDomain
from service.inputs import read_body
from service.model import ServedModel
from service.routes import State, _begin, _infer, _timed_out, readyz
from service.schemas import BatchPredictResponse

__all__ = ["HEADER_LENGTH", "OIP_PREFIX", "oip_router", "oip_status"]

OIP_PREFIX = "/v2/"
#: Header naming the length of the JSON part of a body with binary tensor data.
HEADER_LENGTH = "inference-header-content-length"
INPUT_NAME = "images"
#: Outputs and their datatypes, in answer order.
OUTPUTS = {"labels": "BYTES", "probabilities": "FP32", "indices": "INT64"}
_NUMPY = {"FP32": "<f4", "INT64": "<i8"}

oip_router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])


@oip_router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {
        "name": "multidomain-pruning",
        "version": __version__,
        "extensions": ["binary_tensor_data"],
    }


@oip_router.get("/health/live", summary="Server liveness (as /livez)")
async def server_live(state: State) -> Response:
    failed = state.engine.failed_domains() if state.engine is not None else {}
    if failed:
        return _error(503, "a domain's worker has died: restart the service")
    return JSONResponse({"live": True})


@oip_router.get("/health/ready", summary="Server readiness (as /readyz)")
async def server_ready(state: State) -> Response:
    answer = await readyz(state)
    if answer.status_code != 200:
        detail = json.loads(bytes(answer.body))["error"]["message"]
        return _error(answer.status_code, detail)
    return JSONResponse({"ready": True})


@oip_router.get("/models/{model_name}", summary="Model (domain) metadata")
@oip_router.get("/models/{model_name}/versions/{model_version}", summary="Model metadata")
async def model_metadata(state: State, model_name: str, model_version: str = "") -> Response:
    model, served = _served(state, model_name, model_version)
    return JSONResponse(
        {
            "name": served.name,
            "versions": [model.version],
            "platform": "pytorch",
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": name, "datatype": datatype, "shape": [-1, -1]}
                for name, datatype in OUTPUTS.items()
            ],
            "parameters": {
                "model": model.name,
                "num_classes": served.entry.num_classes,
                "image_size": served.entry.image_size,
                "default_top_k": state.settings.default_top_k,
                # parameter values are scalars in the protocol: the levels as text
                "budgets": served.level_labels,
            },
        }
    )


@oip_router.get("/models/{model_name}/ready", summary="Model (domain) readiness")
@oip_router.get("/models/{model_name}/versions/{model_version}/ready", summary="Model readiness")
async def model_ready(state: State, model_name: str, model_version: str = "") -> Response:
    _served(state, model_name, model_version)
    engine = state.engine
    failed = engine.failed_domains() if engine is not None else {}
    if not state.ready or model_name in failed:
        return _error(503, f"model {model_name!r} is not ready")
    return JSONResponse({"name": model_name, "ready": True})


@oip_router.post("/models/{model_name}/infer", summary="Classify encoded images of a domain")
@oip_router.post("/models/{model_name}/versions/{model_version}/infer", summary="Classify")
async def infer(
    request: Request, state: State, model_name: str, model_version: str = ""
) -> Response:
    _served(state, model_name, model_version)
    model, served, deadline, body_deadline = _begin(state, model_name)
    header = request.headers.get("x-budget")
    model.level(served, header)  # a bad header is answered before the body is read
    settings = state.settings
    reading = True
    try:
        async with asyncio.timeout_at(min(body_deadline, deadline)) as timeout:
            body = await read_body(request, settings.max_body_bytes)
            reading = False
            timeout.reschedule(deadline)
            parsed, binary_start = _parse_request(body, request.headers.get(HEADER_LENGTH))
            images = _input_images(parsed, body[binary_start:], settings.max_batch_images)
            top_k, outputs, binary_default = _answer_options(parsed, settings.default_top_k)
            level = model.requested_level(
                served,
                {"header X-Budget": header, "parameter budget": _parameters(parsed).get("budget")},
            )
            rows = await _infer(state, served, images, deadline, request.receive, level, batch=True)
    except TimeoutError:
        raise _timed_out(reading, body_deadline, deadline) from None
    answer = model.encode_batch(served, rows, top_k)
    answered = served.budgets[max(row.level for row in rows)]  # the cheapest that answered
    return _infer_response(model, served, parsed, answer, outputs, binary_default, top_k, answered)


def _served(state: Any, name: str, version: str) -> tuple[ServedModel, ServedDomain]:
    """The model and domain a path names; 404 for an unknown domain or a version not served."""
    model, _, _ = state.serving()
    served = model.domain(name)
    if version and version != model.version:
        raise UnknownDomain(
            f"model {name!r} has no version {version!r}; version {model.version!r} is served"
        )
    return model, served


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], int]:
    """The JSON part of an inference request (all of it, or the first bytes the binary tensor
    data extension's header names) and where the binary data starts."""
    end = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise MalformedRequest(
                f"{HEADER_LENGTH} {header_length!r} is not a length within the body "
                f"of {len(body)} bytes"
            )
        end = int(header_length)
    try:
        parsed = json.loads(body[:end])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise MalformedRequest("the inference request must be a JSON object")
    return parsed, end


def _input_images(parsed: dict[str, Any], binary: bytes, max_images: int) -> list[bytes]:
    """The encoded images of the request's one BYTES input (``binary``: the body's binary
    tensor data)."""
    inputs = parsed.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise MalformedRequest(
            f"'inputs' must list exactly one tensor (the encoded images, '{INPUT_NAME}')"
        )
    tensor = inputs[0]
    name = tensor.get("name")
    where = f"input {name!r}"
    if tensor.get("datatype") != "BYTES":
        raise MalformedRequest(
            f"{where} has datatype {tensor.get('datatype')!r}; encoded images are 'BYTES'"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
        or shape[0] < 1
    ):
        raise MalformedRequest(f"{where} has shape {shape!r}; expected [N] or [N, 1] with N >= 1")
    count = shape[0]
    if count > max_images:
        raise TooManyImages(f"{count} images in one request; at most {max_images} are allowed")
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        return _binary_elements(binary, size, count, where)
    data = tensor.get("data")
    if isinstance(data, list) and len(shape) == 2:
        data = [row[0] if isinstance(row, list) and len(row) == 1 else row for row in data]
    if not isinstance(data, list) or len(data) != count:
        raise MalformedRequest(
            f"{where} needs 'data' with {count} base64 strings (or binary data), "
            f"got {type(data).__name__}{f' of {len(data)}' if isinstance(data, list) else ''}"
        )
    images = []
    for index, element in enumerate(data):
        try:
            if not isinstance(element, str):
                raise ValueError
            images.append(base64.b64decode(element, validate=True))
        except (ValueError, binascii.Error):
            raise MalformedRequest(
                f"{where} element {index} is not a base64 string of an encoded image"
            ) from None
    return images


def _binary_elements(data: bytes, size: Any, count: int, where: str) -> list[bytes]:
    """BYTES elements of the binary tensor data extension: each a 4-byte little-endian length,
    then that many bytes."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or len(data) != size:
        raise MalformedRequest(
            f"{where} declares binary_data_size {size!r} but the body holds {len(data)} bytes "
            "of binary data for it"
        )
    elements: list[bytes] = []
    offset = 0
    while offset < size:
        if offset + 4 > size:
            raise MalformedRequest(f"{where}: binary data ends inside an element's length")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > size:
            raise MalformedRequest(f"{where}: binary element {len(elements)} is truncated")
        elements.append(data[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise MalformedRequest(
            f"{where} has shape [{count}] but its binary data holds {len(elements)} elements"
        )
    return elements


def _parameters(parsed: dict[str, Any]) -> dict[str, Any]:
    """The request's ``parameters`` (none: empty)."""
    parameters = parsed.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise MalformedRequest("'parameters' must be a JSON object")
    return parameters


def _answer_options(
    parsed: dict[str, Any], default_top_k: int
) -> tuple[int, dict[str, bool], bool]:
    """``top_k``, the requested outputs (name -> binary) and whether unrequested outputs are
    answered in binary."""
    parameters = _parameters(parsed)
    top_k = parameters.get("top_k", default_top_k)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise MalformedRequest(f"parameter top_k must be an integer >= 1, got {top_k!r}")
    binary_default = parameters.get("binary_data_output", False) is True
    requested = parsed.get("outputs")
    if requested is None:
        return top_k, dict.fromkeys(OUTPUTS, binary_default), binary_default
    if not isinstance(requested, list) or not requested:
        raise MalformedRequest("'outputs' must be a non-empty list of requested outputs")
    outputs: dict[str, bool] = {}
    for output in requested:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise MalformedRequest(f"unknown output {name!r}; the outputs are {', '.join(OUTPUTS)}")
        options = output.get("parameters") or {}
        binary = options.get("binary_data", binary_default) if isinstance(options, dict) else False
        outputs[name] = binary is True
    return top_k, outputs, binary_default


def _infer_response(
    model: ServedModel,
    served: ServedDomain,
    parsed: dict[str, Any],
    answer: BatchPredictResponse,
    outputs: dict[str, bool],
    binary_default: bool,
    top_k: int,
    budget: float,
) -> Response:
    """The inference response; ``budget``, the level that answered (a batch's cheapest), is
    a response parameter and the ``X-Budget`` header, as for ``/v1``."""
    k = min(top_k, served.entry.num_classes)
    ranked = [item.predictions for item in answer.results]
    values: dict[str, list[list[Any]]] = {
        "labels": [[p.label for p in row] for row in ranked],
        "probabilities": [[p.probability for p in row] for row in ranked],
        "indices": [[p.index for p in row] for row in ranked],
    }
    shape = [len(ranked), k]
    tensors, chunks = [], []
    for name, binary in outputs.items():
        datatype = OUTPUTS[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            chunk = _binary(datatype, values[name])
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = [value for row in values[name] for value in row]
        tensors.append(tensor)
    body: dict[str, Any] = {
        "model_name": served.name,
        "model_version": answer.version,
        "parameters": {"model": model.name, "top_k": top_k, "budget": budget},
        "outputs": tensors,
    }
    if isinstance(parsed.get("id"), str):
        body["id"] = parsed["id"]
    header = json.dumps(body, separators=(",", ":")).encode()
    level = {"X-Budget": level_label(budget)}
    if not chunks:
        return Response(header, media_type="application/json", headers=level)
    return Response(
        b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header)), **level},
    )


def _binary(datatype: str, rows: list[list[Any]]) -> bytes:
    if datatype == "BYTES":
        parts = []
        for row in rows:
            for value in row:
                encoded = str(value).encode()
                parts += [struct.pack("<I", len(encoded)), encoded]
        return b"".join(parts)
    return np.asarray(rows, dtype=_NUMPY[datatype]).tobytes()


def oip_status(status: int) -> int:
    """The status of an error under ``/v2``: what ``/v1`` answers 415 or 422 (an undecodable
    image, too many pixels, invalid parameters) is a bad request there, 400."""
    return 400 if status in (415, 422) else status
