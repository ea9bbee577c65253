"""Optional API keys: digests in the settings, keys in headers, constant-time comparison, 401 in
the one error shape with ``WWW-Authenticate``, probes always open, /metrics and /docs
protectable."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import WWW_AUTHENTICATE, ApiKeys
from service.settings import ServiceSettings, SettingsError, load_settings
from tests.apps import ready_client
from tests.unit.service.test_app import PNG, assert_error
from tests.unit.service.test_app import settings_for as app_settings

KEY = "s3cret-key-for-tests"
OTHER_KEY = "another-accepted-key"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def settings_for(store: Path, **overrides: Any) -> ServiceSettings:
    """``test_app``'s settings with both test keys accepted."""
    return app_settings(store, **{"api_keys": [digest(KEY), digest(OTHER_KEY)], **overrides})


@pytest.fixture(scope="module")
def client(store: Path) -> Iterator[TestClient]:
    with ready_client(create_app(settings_for(store))) as test_client:
        yield test_client


def predict(client: TestClient, **headers: str) -> Any:
    return client.post(
        "/v1/domains/shapes/predict",
        content=PNG,
        headers={"content-type": "image/png", **headers},
    )


def test_missing_or_wrong_key_is_401_with_www_authenticate(client: TestClient) -> None:
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {KEY}"},  # not a bearer token
        {"x-api-key": KEY[:-1]},
        {"x-api-key": ""},
    ):
        response = predict(client, **headers)
        message = assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == WWW_AUTHENTICATE
        assert "API key" in message
    for path in ("/v1/domains", "/v1/domains/shapes", "/nowhere"):
        assert_error(client.get(path), 401, "unauthorized")
    metrics = client.get("/metrics").text  # 5 predictions and GET /v1/domains/shapes
    assert 'mdp_rejections_total{domain="shapes",reason="unauthorized"} 6.0' in metrics


def test_an_accepted_key_in_either_header_is_served(client: TestClient) -> None:
    for headers in (
        {"authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer {OTHER_KEY}"},
        {"x-api-key": KEY},
    ):
        response = predict(client, **headers)
        assert response.status_code == 200, response.text
        assert response.json()["domain"] == "shapes"
    assert client.get("/v1/domains", headers={"x-api-key": KEY}).status_code == 200


def test_probes_and_metrics_are_open_docs_are_protected(client: TestClient) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200  # MDP_AUTH_METRICS defaults to false
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert_error(client.get(path), 401, "unauthorized")
        assert client.get(path, headers={"x-api-key": KEY}).status_code == 200


def test_metrics_and_docs_protection_follow_the_settings(store: Path) -> None:
    settings = settings_for(store, auth_metrics=True, auth_docs=False)
    with ready_client(create_app(settings)) as client:
        assert_error(client.get("/metrics"), 401, "unauthorized")
        assert client.get("/metrics", headers={"x-api-key": KEY}).status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/livez").status_code == 200


def test_without_keys_nothing_is_protected(store: Path) -> None:
    with ready_client(create_app(settings_for(store, api_keys=[]))) as client:
        assert predict(client).status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_keys_are_compared_in_constant_time_against_every_digest(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert predict(client, **{"x-api-key": KEY}).status_code == 200
    # both accepted digests compared (no early exit on the first match), as digests
    assert [b.hex() for _, b in calls] == [digest(KEY), digest(OTHER_KEY)]
    assert all(a == hashlib.sha256(KEY.encode()).digest() for a, _ in calls)
    calls.clear()
    assert predict(client, **{"x-api-key": "nope"}).status_code == 401
    assert len(calls) == 2


def test_api_keys_accepts_only_listed_keys() -> None:
    keys = ApiKeys([digest(KEY)])
    assert keys.accepts(KEY.encode())
    for refused in (b"", None, b"x" + KEY.encode(), KEY.encode()[:-1]):
        assert not keys.accepts(refused)


def test_settings_take_digests_never_plaintext_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDP_API_KEYS", f"{digest(KEY)}, {digest(OTHER_KEY).upper()}")
    assert load_settings().api_keys == [digest(KEY), digest(OTHER_KEY)]
    monkeypatch.setenv("MDP_API_KEYS", KEY)
    with pytest.raises(SettingsError, match=r"MDP_API_KEYS.*sha256 hex digest"):
        load_settings()
    monkeypatch.delenv("MDP_API_KEYS")
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# service keys\n{digest(KEY)}  # ci\n\n{digest(OTHER_KEY)}\n")
    settings = load_settings(api_keys_file=keys_file)
    assert settings.api_keys == [digest(KEY), digest(OTHER_KEY)] and settings.auth_enabled
    keys_file.write_text(f"{KEY}\n")
    with pytest.raises(SettingsError, match="sha256 hex digest"):
        load_settings(api_keys_file=keys_file)
    with pytest.raises(SettingsError, match="cannot read api_keys_file"):
        load_settings(api_keys_file=tmp_path / "missing")


def test_docs_assets_and_the_inference_protocol_need_a_key(client: TestClient) -> None:
    asset = "/docs/assets/swagger-ui.css"
    assert_error(client.get(asset), 401, "unauthorized")
    assert client.get(asset, headers={"x-api-key": KEY}).status_code == 200
    response = client.get("/v2/models/shapes")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == WWW_AUTHENTICATE
    assert set(response.json()) == {"error"} and "API key" in response.json()["error"]
    assert client.get("/v2/models/shapes", headers={"x-api-key": KEY}).status_code == 200
    for probe in ("/v2/health/live", "/v2/health/ready"):  # probes stay open
        assert client.get(probe).status_code == 200


def test_docs_assets_are_open_when_docs_are(store: Path) -> None:
    with ready_client(create_app(settings_for(store, auth_docs=False))) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
