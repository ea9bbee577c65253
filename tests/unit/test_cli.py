"""Bad input through the command line: one-line error, exit code 2, nothing written."""

from __future__ import annotations

import json
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


def _other_table(
    path: Path, width: float = 0.125, size: int = 16, group: int = 4, **changes: object
) -> Path:
    """A latency table (made up, well formed) for ``width``/``size``/``group`` on this machine,
    with ``changes``."""
    from multidomain.arch import ArchSpec
    from multidomain.groups import cpu_capability

    arch = ArchSpec(width_mult=width, image_size=size)
    data = {
        "format": "multidomain-pruning-latency-table",
        "format_version": 1,
        "architecture": arch.to_dict(),
        "channel_group": group,
        "cpu_capability": cpu_capability(),
        "torch_threads": 1,
        "batch_sizes": [32],
        "backbone_ms": {"32": 9.0},
        "block_ms": {"32": [[0.1] * (w // group) for w in arch.full_mid_channels()]},
        **changes,
    }
    path.write_text(json.dumps(data))
    return path


SMALL = ["--width-mult", "0.125", "--image-size", "16", "--no-serve"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channel-group", "16"], "error: channel group 16 does not divide the mid width 8"),
        (["--channel-group", "3"], "error: channel group must be auto or one of 1, 4, 8, 16"),
        (
            ["--channel-group", "4", "--budget", "0.05", "--budget-metric", "macs"],
            "error: budget 0.05 is below the least a domain can cost with channel groups of 4: "
            "0.3452 of the backbone's macs",
        ),
        (
            ["--channel-group", "4", "--budget", "0.5", "--budget", "digits=0.1"],
            "error: budget 0.1 is below the least a domain can cost",
        ),
        (["--budget", "nope=0.3"], "error: --budget names unknown domain 'nope'; the domains are"),
        (["--budget", "digits=1.5"], "error: budget of domain 'digits' must be in (0, 1], got 1.5"),
        (["--budget", "digits=0"], "error: budget of domain 'digits' must be in (0, 1], got 0.0"),
        (["--budget", "half"], "error: --budget: expected a number or <domain>=<number>"),
        (["--budget", "0.5", "--budget", "0.4"], "error: --budget: two budgets for every domain"),
        (
            ["--channel-group", "4", "--budget-metric", "latency", "--latency-table", "none.json"],
            "error: no latency table at none.json",
        ),
    ],
)
def test_bad_budget_options_are_refused_before_any_data_or_training(
    args: list[str], message: str, tmp_path: Path
) -> None:
    code, output = run(
        "pipeline", *SMALL, *args, "--cache-dir", str(tmp_path / "cache"),
        "--run-dir", str(tmp_path / "run"), "--model-store", str(tmp_path / "store"),
    )  # fmt: skip
    assert code == 2, output
    assert message in output
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"width": 0.25}, "width_mult 0.25 (this run: 0.125)"),
        ({"size": 32}, "image_size 32 (this run: 16)"),
        ({"cpu_capability": "NEON"}, "CPU capability NEON (this machine: "),
        ({"group": 8}, "channel group 8 (this run: 4)"),
        ({"format": "csv"}, "not a multidomain-pruning-latency-table file"),
    ],
)
def test_a_latency_table_for_another_setting_is_refused(
    setting: dict, message: str, tmp_path: Path
) -> None:
    table = _other_table(tmp_path / "table.json", **setting)
    code, output = run(
        "pipeline", *SMALL, "--channel-group", "4", "--budget-metric", "latency",
        "--latency-table", str(table), "--cache-dir", str(tmp_path / "cache"),
        "--model-store", str(tmp_path / "store"),
    )  # fmt: skip
    assert code == 2, output
    assert output.startswith("error: ") and message in output
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "store").exists()


def test_profile_writes_a_table_the_budget_accepts(tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    code, output = run(
        "profile", "--width-mult", "0.125", "--image-size", "16", "--channel-group", "4",
        "--batch-size", "2", "--repeats", "2", "--out", str(out),
    )  # fmt: skip
    assert code == 0, output
    from multidomain.arch import ArchSpec
    from multidomain.latency import LatencyTable

    table = LatencyTable.load(out)
    table.check(ArchSpec(width_mult=0.125, image_size=16), 4)
    assert table.batch_sizes == (2,)
    code, output = run(
        "profile", "--width-mult", "0.125", "--channel-group", "16", "--out", str(tmp_path / "x")
    )
    assert code == 2 and output.startswith("error: channel group 16 does not divide")
    assert not (tmp_path / "x").exists()
