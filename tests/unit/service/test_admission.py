"""Admission and the edges of a request, on the app in-process through raw ASGI calls: in-flight
bounds refuse before the body is read, the decode queue is bounded, a slow body gets 408, a
client that goes away is recorded as 499 and its queued work is dropped, malformed bodies get
400 and a bad image of a batch is named by its index."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from torch import Tensor

from service.app import create_app
from service.model import ServedModel
from tests.unit.service.test_app import (
    IMAGES,
    PNG,
    GatedForward,
    assert_error,
    encode,
    noise,
    serving,
    settings_for,
)

Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


async def call(
    app: FastAPI, path: str, receive: Receive, content_type: str = "image/png", **headers: str
) -> Answer:
    """One request through the app's ASGI interface, with the given ``receive``."""
    answer = Answer()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", content_type.encode())]
        + [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            answer.body += message.get("body", b"")

    await app(scope, receive, send)
    return answer


def body_then(data: bytes, after: asyncio.Event | None = None) -> Receive:
    """``receive`` of a client that sends ``data``, then disconnects once ``after`` is set
    (never, without it)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        await (after or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    return receive


async def never_read() -> dict[str, Any]:
    raise AssertionError("the body was read")


def json_error(answer: Answer, status: int, type_: str) -> dict[str, Any]:
    import json

    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    error: dict[str, Any] = json.loads(answer.body)["error"]
    assert error["code"] == status and error["type"] == type_
    return error


def sample(app: FastAPI, name: str, **labels: str) -> float:
    value = app.state.service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_in_flight_bounds_refuse_before_the_body_is_read(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(
        settings_for(store, max_in_flight=3, max_in_flight_per_domain=2, retry_after_s=3)
    )
    forward = GatedForward(monkeypatch)

    async def scenario() -> None:
        async with serving(app) as client:
            forward.install()
            headers = {"content-type": "image/png"}
            held = [
                asyncio.create_task(
                    client.post("/v1/domains/shapes/predict", content=PNG, headers=headers)
                )
            ]
            await asyncio.to_thread(forward.entered.wait, 5)  # computing, holds the slot
            held.append(
                asyncio.create_task(
                    client.post("/v1/domains/shapes/predict", content=PNG, headers=headers)
                )
            )
            await asyncio.sleep(0.1)
            per_domain = await call(app, "/v1/domains/shapes/predict", never_read)
            error = json_error(per_domain, 429, "overloaded")
            assert "'shapes'" in error["message"] and per_domain.headers["retry-after"] == "3"
            held.append(
                asyncio.create_task(
                    client.post("/v1/domains/colours/predict", content=PNG, headers=headers)
                )
            )
            await asyncio.sleep(0.1)
            assert sample(app, "mdp_in_flight_requests", domain="shapes") == 2
            overall = await call(app, "/v1/domains/digits/predict/batch", never_read)
            assert "prediction requests" in json_error(overall, 429, "overloaded")["message"]
            forward.gate.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
            assert sample(app, "mdp_in_flight_requests", domain="shapes") == 0
            assert sample(app, "mdp_rejections_total", domain="shapes", reason="in_flight") == 1
            assert sample(app, "mdp_rejections_total", domain="digits", reason="in_flight") == 1

    run(scenario)


def test_the_decode_queue_is_bounded(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(
        settings_for(
            store,
            preprocess_threads=1,
            preprocess_queue_size=2,
            max_batch_images=2,
            inline_decode_bytes=0,  # every image through the threads
        )
    )
    gate, entered = threading.Event(), threading.Event()
    decode = ServedModel.preprocess

    def slow_decode(*args: Any) -> Tensor:
        entered.set()
        assert gate.wait(10)
        return decode(*args)

    async def scenario() -> None:
        async with serving(app) as client:
            monkeypatch.setattr(ServedModel, "preprocess", staticmethod(slow_decode))
            headers = {"content-type": "image/png"}
            first = asyncio.create_task(
                client.post("/v1/domains/shapes/predict", content=PNG, headers=headers)
            )
            await asyncio.to_thread(entered.wait, 5)  # decoding: the one thread is busy
            second = asyncio.create_task(
                client.post("/v1/domains/digits/predict", content=PNG, headers=headers)
            )
            await asyncio.sleep(0.1)  # waits for the thread
            assert sample(app, "mdp_preprocess_pending_images") == 2
            refused = await client.post("/v1/domains/colours/predict", content=PNG, headers=headers)
            assert "waiting for decoding" in assert_error(refused, 429, "overloaded")
            assert refused.headers["retry-after"] == "1"
            gate.set()
            assert (await first).status_code == 200 and (await second).status_code == 200
            assert sample(app, "mdp_preprocess_pending_images") == 0
            assert (
                sample(app, "mdp_rejections_total", domain="colours", reason="decode_queue_full")
                == 1
            )

    try:
        run(scenario)
    finally:
        gate.set()


def test_a_body_slower_than_the_body_timeout_gets_408(store: Path) -> None:
    app = create_app(settings_for(store, body_timeout_s=0.3, request_timeout_s=5))

    async def slow_body() -> Any:
        yield PNG[:10]
        await asyncio.sleep(2)
        yield PNG[10:]

    async def scenario() -> None:
        async with serving(app) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            response = await client.post(
                "/v1/domains/shapes/predict",
                content=slow_body(),
                headers={"content-type": "image/png"},
            )
            assert loop.time() - started < 1.5
            assert "body" in assert_error(response, 408, "request_timeout")
            assert response.headers["connection"] == "close"
            assert sample(app, "mdp_rejections_total", domain="shapes", reason="body_timeout") == 1
            fast = await client.post(
                "/v1/domains/shapes/predict", content=PNG, headers={"content-type": "image/png"}
            )
            assert fast.status_code == 200

    run(scenario)


def test_a_client_that_goes_away_is_499_and_its_queued_work_is_dropped(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(store, max_wait_ms=0))
    forward = GatedForward(monkeypatch)

    async def scenario() -> None:
        async with serving(app) as client:
            forward.install()
            busy = asyncio.create_task(
                client.post(
                    "/v1/domains/shapes/predict", content=PNG, headers={"content-type": "image/png"}
                )
            )
            await asyncio.to_thread(forward.entered.wait, 5)
            # queued behind the busy slot, then the client goes away
            gone = asyncio.Event()
            queued = asyncio.create_task(
                call(app, "/v1/domains/colours/predict", body_then(PNG, gone))
            )
            for _ in range(100):
                if sample(app, "mdp_queue_depth", domain="colours") == 1:
                    break
                await asyncio.sleep(0.01)
            assert sample(app, "mdp_queue_depth", domain="colours") == 1
            gone.set()
            answer = await asyncio.wait_for(queued, 2)  # at once, not after the busy batch
            assert answer.status == 499
            assert sample(app, "mdp_queue_depth", domain="colours") == 0  # live work only
            # gone while uploading: the body never completes
            chunks = iter(
                [
                    {"type": "http.request", "body": PNG[:10], "more_body": True},
                    {"type": "http.disconnect"},
                ]
            )

            async def uploading() -> dict[str, Any]:
                return next(chunks)

            assert (await call(app, "/v1/domains/digits/predict", uploading)).status == 499
            forward.gate.set()
            assert (await busy).status_code == 200
            await asyncio.sleep(0.1)  # the colours worker has had its turn
            assert sample(app, "mdp_batch_size_count", domain="colours") == 0  # never computed
            for domain in ("colours", "digits"):
                assert (
                    sample(
                        app, "mdp_requests_total", domain=domain, status="499", **{"class": "4xx"}
                    )
                    == 1
                )
                assert (
                    sample(app, "mdp_rejections_total", domain=domain, reason="client_closed") == 1
                )
                assert (
                    sample(
                        app, "mdp_requests_total", domain=domain, status="500", **{"class": "5xx"}
                    )
                    == 0
                )

    with caplog.at_level(logging.INFO):
        run(scenario)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_truncated_multipart_body_is_400(store: Path) -> None:
    app = create_app(settings_for(store))
    boundary = "b0undary"
    whole = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + PNG
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f"multipart/form-data; boundary={boundary}"

    async def scenario() -> None:
        async with serving(app) as client:
            for cut in (len(whole) - 4, len(whole) // 2, 60):
                response = await client.post(
                    "/v1/domains/shapes/predict",
                    content=whole[:cut],
                    headers={"content-type": content_type},
                )
                assert "closing boundary" in assert_error(response, 400, "malformed_request")
            response = await client.post(
                "/v1/domains/shapes/predict", content=whole, headers={"content-type": content_type}
            )
            assert response.status_code == 200, response.text
            # split across reads: the delimiter spans two chunks
            chunks = [whole[: len(whole) - 7], whole[len(whole) - 7 :]]

            async def body() -> Any:
                for chunk in chunks:
                    yield chunk

            response = await client.post(
                "/v1/domains/shapes/predict", content=body(), headers={"content-type": content_type}
            )
            assert response.status_code == 200, response.text

    run(scenario)


def test_a_batch_error_names_the_bad_image(store: Path) -> None:
    app = create_app(settings_for(store))
    files = [("files", image) for image in IMAGES[:3]]
    files.insert(2, ("files", ("bad.png", PNG[:40], "image/png")))
    files.append(("files", ("big.png", encode(noise(64, 64)), "image/png")))

    async def scenario() -> None:
        async with serving(app) as client:
            response = await client.post("/v1/domains/digits/predict/batch", files=files)
            assert assert_error(response, 422, "bad_image").startswith("files[2]: ")
            single = await client.post(
                "/v1/domains/digits/predict",
                content=PNG[:40],
                headers={"content-type": "image/png"},
            )
            assert not assert_error(single, 422, "bad_image").startswith("files[")

    run(scenario)


@pytest.mark.parametrize(("inline_decode_bytes", "on_event_loop"), [(16384, True), (0, False)])
def test_small_images_are_decoded_on_the_event_loop(
    store: Path, monkeypatch: pytest.MonkeyPatch, inline_decode_bytes: int, on_event_loop: bool
) -> None:
    app = create_app(settings_for(store, inline_decode_bytes=inline_decode_bytes))
    decode = ServedModel.preprocess
    threads: list[threading.Thread] = []

    def recording_decode(*args: Any) -> Tensor:
        threads.append(threading.current_thread())
        return decode(*args)

    async def scenario() -> None:
        async with serving(app) as client:
            monkeypatch.setattr(ServedModel, "preprocess", staticmethod(recording_decode))
            answer = await client.post(
                "/v1/domains/shapes/predict", content=PNG, headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200
            assert len(PNG) <= 16384
            assert (threads == [threading.current_thread()]) is on_event_loop

    run(scenario)
