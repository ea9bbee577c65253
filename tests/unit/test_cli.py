"""Bad input through the command line: one-line error, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mdprune.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--budget", "0"], "error: budget must be in (0, 1], got 0.0"),
        (["train", "--budget", "1.2"], "error: budget must be in (0, 1], got 1.2"),
        (["train", "--sharing", "overlap"], "error: unknown sharing variant 'overlap'"),
        (["pipeline", "--budget-metric", "flops", "--no-serve"], "error: unknown budget metric"),
        (["pretrain", "--width-mult", "0"], "error: width multiplier must be > 0, got 0.0"),
        (["pretrain", "--width-mult", "-0.5"], "error: width multiplier must be > 0, got -0.5"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    code, output = run(*args, "--cache-dir", str(tmp_path / "cache"))
    assert code == 2
    assert message in output
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_missing_data_path(tmp_path: Path) -> None:
    code, output = run(
        "data",
        "--domains",
        f"imagefolder:mine={tmp_path / 'nowhere'}",
        "--cache-dir",
        str(tmp_path),
    )
    assert code == 2
    assert output.startswith("error: ") and "nowhere" in output
    assert len(output.strip().splitlines()) == 1


def test_train_without_backbone(tmp_path: Path) -> None:
    code, output = run("train", "--backbone", str(tmp_path / "none"))
    assert code == 2
    assert "no finished backbone" in output


def test_verify_reports_a_modified_artifact(tmp_path: Path) -> None:
    from tests.artifacts import write_tiny_artifact

    path = write_tiny_artifact(tmp_path)
    code, output = run("verify", str(path))
    assert code == 0 and "OK" in output
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    code, output = run("verify", str(path))
    assert code == 2 and "does not match" in output


def test_pipeline_if_missing_keeps_a_verified_version(tmp_path: Path) -> None:
    from tests.artifacts import write_tiny_artifact

    path = write_tiny_artifact(tmp_path, model_name="default", version="v1")
    code, output = run(
        "pipeline", "--if-missing", "--no-serve", "--model-store", str(tmp_path),
        "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert code == 0, output
    assert f"{path} exists and verifies: not training (--if-missing)" in output
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_if_missing_trains_past_a_missing_or_corrupt_version(tmp_path: Path) -> None:
    from mdprune.cli import _verified_version
    from tests.artifacts import write_tiny_artifact

    assert _verified_version(tmp_path, "default", None) is None
    path = write_tiny_artifact(tmp_path, model_name="default", version="v1")
    assert _verified_version(tmp_path, "default", None) == path
    assert _verified_version(tmp_path, "default", "v1") == path
    assert _verified_version(tmp_path, "default", "v2") is None
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert _verified_version(tmp_path, "default", None) is None
