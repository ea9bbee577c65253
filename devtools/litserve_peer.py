"""LitServe serving an artifact through :mod:`multidomain.serving`: a benchmark peer of the
FastAPI service and TorchServe (``bench/serve_compare.py``), not a way we serve.

    python -m devtools.litserve_peer ARTIFACT --port 8123 [--workers 1] [--max-batch-size 32]
        [--batch-timeout-ms 5] [--no-fast-queue]

``POST /predict`` with ``multipart/form-data``: the image in the field ``file``, the domain in
the field ``domain``, optionally ``top_k``. LitServe reads a request body as JSON or as a form
only, so a raw ``image/*`` body (what the service and TorchServe take) is not possible without
a custom spec. Answers: the service's ``PredictResponse`` body; bad input its error body with its
4xx status.

LitServe's parts: its uvicorn process(es) parse HTTP and put each request on a queue (ZeroMQ with
``fast_queue``, LitServe's advice above ~100 requests/s); each inference worker process
(``workers_per_device``, ``MDP_TORCH_THREADS`` torch threads each) collects up to
``max_batch_size`` requests within ``batch_timeout`` (requests of every domain together), then
runs ``decode_request`` on each (:meth:`ServedDomain.preprocess`), ``predict`` once on the
batch, which groups it by domain and runs each domain's served network once on its group (as
the TorchServe handler does), and ``encode_response`` on each answer. LitServe fails a whole
batch when one of these hooks raises, so a bad request is not raised: ``decode_request`` turns
it into its error response, which passes through ``predict`` untouched.

Settings: LitServe's from the options above; the model side's (``torch_threads``,
``max_image_pixels``, ``default_top_k``) from the ``MDP_*`` variables, as both servers read them
(:class:`multidomain.serving.ServingSettings`).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from starlette.responses import Response
from torch import Tensor

from multidomain.artifact import ArtifactError, load_artifact
from multidomain.preprocess import ImageDecodeError, ImageTooLargeError
from multidomain.serving import (
    ServedArtifact,
    ServedDomain,
    ServingSettings,
    UnknownDomainError,
    class_probabilities,
    error_body,
)

__all__ = ["API_PATH", "DOMAIN_FIELD", "IMAGE_FIELD", "MultiDomainLitAPI", "main"]

API_PATH = "/predict"
IMAGE_FIELD = "file"
DOMAIN_FIELD = "domain"
TOP_K_FIELD = "top_k"
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Decoded:
    """A decoded request: its domain, its input tensor and how many classes to answer."""

    domain: ServedDomain
    image: Tensor
    top_k: int


@dataclass(frozen=True)
class Answered:
    """A prediction: the request's domain, its class probabilities and its ``top_k``."""

    domain: ServedDomain
    probabilities: Tensor
    top_k: int


#: Placeholder of a decoded request's answer until its domain's forward pass has run.
_PENDING = Response(status_code=500)


def _json_response(body: Mapping[str, Any], status: int = 200) -> Response:
    content = json.dumps(body, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type=JSON_TYPE)


def _error(status: int, type_: str, message: str) -> Response:
    return _json_response(error_body(status, type_, message), status)


class MultiDomainLitAPI(ls.LitAPI):
    """Every domain of one artifact behind one LitServe endpoint, batched across domains."""

    def __init__(self, artifact_path: Path, max_batch_size: int, batch_timeout_s: float) -> None:
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout_s, api_path=API_PATH
        )
        self.artifact_path = Path(artifact_path)
        self.settings = ServingSettings()
        self.model: ServedArtifact | None = None

    def setup(self, device: str) -> None:
        """In each inference worker: the settings, the served model, a warm-up of every domain."""
        self.settings = ServingSettings.load(None)
        torch.set_num_threads(self.settings.torch_threads)
        model = ServedArtifact.build(load_artifact(self.artifact_path))
        for domain in model.domains.values():
            class_probabilities(
                domain.network, torch.zeros(1, *domain.input_shape, dtype=domain.input_dtype)
            )
        self.model = model
        gc.collect()
        gc.freeze()  # the model lives as long as the worker: no full collections over it

    # ``request`` stays unannotated: LitServe reads the annotation to choose how to parse the
    # body, and parses a form (or JSON) only when there is none or it is starlette's Request.
    def decode_request(self, request) -> Decoded | Response:
        """The form's image decoded for its domain, or the error response of a bad request."""
        if self.model is None:
            raise RuntimeError("setup() has not run")
        name = request.get(DOMAIN_FIELD)
        upload = request.get(IMAGE_FIELD)
        if not isinstance(name, str) or not name.strip():
            return _error(
                400, "malformed_request", f"no domain: send the form field {DOMAIN_FIELD!r}"
            )
        if upload is None or isinstance(upload, str):
            return _error(
                415, "unsupported_media_type", f"send the image as the form file {IMAGE_FIELD!r}"
            )
        top_k = request.get(TOP_K_FIELD, self.settings.default_top_k)
        if not str(top_k).strip().isdigit() or int(top_k) < 1:
            return _error(422, "invalid_request", f"top_k must be an integer >= 1, got {top_k!r}")
        try:
            domain = self.model.domain(name.strip())
        except UnknownDomainError as exc:
            return _error(404, "unknown_domain", str(exc))
        data = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        try:
            image = domain.preprocess(data, self.settings.max_image_pixels)
        except ImageTooLargeError as exc:
            return _error(422, "image_too_large", str(exc))
        except ImageDecodeError as exc:
            return _error(422, "bad_image", str(exc))
        return Decoded(domain, image, int(top_k))

    def batch(self, inputs: list[Decoded | Response]) -> list[Decoded | Response]:
        return inputs  # grouped by domain in predict

    def predict(self, x: Sequence[Decoded | Response], **kwargs: Any) -> list[Answered | Response]:
        """One forward pass per domain present in the batch; error responses pass through."""
        answers: list[Answered | Response] = []
        groups: dict[str, list[tuple[int, Decoded]]] = {}
        for idx, item in enumerate(x):
            answers.append(item if isinstance(item, Response) else _PENDING)
            if isinstance(item, Decoded):
                groups.setdefault(item.domain.name, []).append((idx, item))
        for group in groups.values():
            domain = group[0][1].domain
            images = torch.stack([item.image for _, item in group])
            rows = class_probabilities(domain.network, images)
            for (idx, item), row in zip(group, rows, strict=True):
                answers[idx] = Answered(domain, row, item.top_k)
        return answers

    def unbatch(self, output: list[Answered | Response]) -> list[Answered | Response]:
        return output

    def encode_response(self, output: Answered | Response, **kwargs: Any) -> Response:
        """The service's ``PredictResponse`` body (or the request's error response)."""
        if isinstance(output, Response):
            return output
        assert self.model is not None
        return _json_response(self.model.answer(output.domain, output.probabilities, output.top_k))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.litserve_peer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("artifact", type=Path, help="artifact folder <store>/<name>/<version>")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="LitServe request timeout")
    parser.add_argument(
        "--no-fast-queue", action="store_true", help="multiprocessing queues instead of ZeroMQ"
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.max_batch_size < 1 or args.batch_timeout_ms < 0:
        parser.error("--workers and --max-batch-size must be >= 1, --batch-timeout-ms >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        load_artifact(args.artifact)
        ServingSettings.load(None)
    except (ArtifactError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    api = MultiDomainLitAPI(
        args.artifact.resolve(), args.max_batch_size, args.batch_timeout_ms / 1000
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=args.workers,
        timeout=args.timeout_s,
        fast_queue=not args.no_fast_queue,
    )
    server.run(host=args.host, port=args.port, log_level=args.log_level, generate_client_file=False)


if __name__ == "__main__":
    main()
