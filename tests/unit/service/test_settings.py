"""Service settings (env + overrides, validation) and the serve command's start-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import server
from service.settings import ServiceSettings, SettingsError, load_settings
from tests.artifacts import write_tiny_artifact


def test_defaults() -> None:
    settings = ServiceSettings()
    assert (settings.host, settings.port, settings.model_name) == ("127.0.0.1", 8000, "default")
    assert settings.model_store == Path("model_store") and settings.model_version == "latest"
    assert (settings.max_batch_size, settings.max_wait_ms, settings.queue_size) == (32, 5.0, 256)
    assert settings.max_body_bytes == 8 * 1024 * 1024
    assert settings.max_image_pixels == 4096 * 4096
    assert (settings.overload_status, settings.retry_after_s) == (429, 1)


def test_environment_variables_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDP_MAX_WAIT_MS", "7.5")
    monkeypatch.setenv("MDP_OVERLOAD_STATUS", "503")
    monkeypatch.setenv("MDP_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("MDP_PORT", "9000")
    settings = load_settings(port=9100)
    assert settings.max_wait_ms == 7.5 and settings.overload_status == 503
    assert settings.log_level == "debug" and settings.port == 9100


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MDP_PORT", "70000"),
        ("MDP_PORT", "eighty"),
        ("MDP_TORCH_THREADS", "0"),
        ("MDP_MAX_BATCH_SIZE", "257"),
        ("MDP_MAX_WAIT_MS", "1001"),
        ("MDP_QUEUE_SIZE", "0"),
        ("MDP_OVERLOAD_STATUS", "500"),
        ("MDP_REQUEST_TIMEOUT_S", "0"),
        ("MDP_LOG_LEVEL", "loud"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("invalid service settings:")
    assert variable in message and value in message


def test_every_problem_is_listed_and_batches_must_fit_the_queue() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(port=0, queue_size=0)
    assert "MDP_PORT" in str(info.value) and "MDP_QUEUE_SIZE" in str(info.value)
    with pytest.raises(SettingsError, match=r"max_batch_images \(9\) must not exceed queue_size"):
        load_settings(queue_size=8, max_batch_images=9)
    with pytest.raises(SettingsError, match="MDP_NOT_A_SETTING"):
        load_settings(not_a_setting=1)


def test_command_line_overrides_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_artifact(tmp_path)
    started: list[ServiceSettings] = []
    monkeypatch.setattr(server, "run", started.append)
    monkeypatch.setenv("MDP_PORT", "1234")
    monkeypatch.setenv("MDP_MAX_WAIT_MS", "3")
    server.main(["--model-store", str(tmp_path), "--model-name", "tiny", "--port", "9001"])
    (settings,) = started
    assert settings.model_store == tmp_path and settings.model_name == "tiny"
    assert settings.port == 9001 and settings.max_wait_ms == 3


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "0"], "MDP_PORT"),
        (["--model-name", "missing"], "no artifact versions"),
        (["--model-version", "v9"], "no artifact at"),
    ],
)
def test_start_up_errors_are_one_readable_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    write_tiny_artifact(tmp_path)
    with pytest.raises(SystemExit) as info:
        server.main(["--model-store", str(tmp_path), "--model-name", "tiny", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err


def test_unknown_mdp_variables_are_refused_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MDP_MAX_WAITMS", "3")
    monkeypatch.setenv("MDP_DRAIN_DELAY", "5")
    monkeypatch.setenv("MDP_PORT", "eighty")
    monkeypatch.setenv("MDP_COMPLETELY_DIFFERENT_THING", "1")
    monkeypatch.setenv("OTHER_VARIABLE", "not ours")
    with pytest.raises(SettingsError) as info:
        load_settings()
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid service settings:"
    assert "  MDP_MAX_WAITMS: unknown setting; did you mean MDP_MAX_WAIT_MS?" in lines
    assert "  MDP_DRAIN_DELAY: unknown setting; did you mean MDP_DRAIN_DELAY_S?" in lines
    unrelated = "  MDP_COMPLETELY_DIFFERENT_THING: unknown setting"
    assert any(line.startswith(unrelated) for line in lines)
    assert any("MDP_PORT" in line and "eighty" in line for line in lines)  # listed together
    assert not any("OTHER_VARIABLE" in line for line in lines)


def test_the_serve_command_refuses_a_misspelt_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny_artifact(tmp_path)
    monkeypatch.setenv("MDP_MAX_WAITMS", "3")
    with pytest.raises(SystemExit) as info:
        server.main(["--model-store", str(tmp_path), "--model-name", "tiny"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid service settings:") and "MDP_MAX_WAIT_MS?" in err
    assert "Traceback" not in err


def test_hardening_settings_are_validated() -> None:
    digest = "AB" * 32
    assert load_settings(model_digest=digest).model_digest == digest.lower()
    assert load_settings(model_digest="").model_digest is None
    with pytest.raises(SettingsError, match=r"MDP_MODEL_DIGEST.*sha256 hex digest"):
        load_settings(model_digest="1234")
    with pytest.raises(SettingsError, match="must not exceed max_in_flight"):
        load_settings(max_in_flight=4, max_in_flight_per_domain=8)
    with pytest.raises(SettingsError, match="must not exceed preprocess_queue_size"):
        load_settings(preprocess_queue_size=8, max_batch_images=9)
    for name, value in (
        ("access_log_sample", 1.5),
        ("log_format", "xml"),
        ("header_timeout_s", 0),
        ("body_timeout_s", -1),
        ("drain_delay_s", -1),
        ("max_connections", 0),
    ):
        with pytest.raises(SettingsError, match=f"MDP_{name.upper()}"):
            load_settings(**{name: value})
