"""The command line: bad input is a one-line error with exit code 2 (nothing written, nothing
loaded first), help fits 80 columns, every command answers -h and --version, artifact paths
resolve the same in every command."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mdprune.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), prog_name="mdprune")
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--budget", "0"], "error: budget must be in (0, 1], got 0.0"),
        (["train", "--budget", "1.2"], "error: budget must be in (0, 1], got 1.2"),
        (["train", "--sharing", "overlap"], "error: unknown sharing variant 'overlap'"),
        (["pipeline", "--budget-metric", "flops", "--no-serve"], "error: unknown budget metric"),
        (["train", "--budgets", "0.5"], "error: --budgets needs at least two different budgets"),
        (
            ["train", "--budgets", "1", "--budgets", "0.5", "--budget", "digits=0.3"],
            "error: --budgets cannot be combined with a domain's own --budget",
        ),
        (["train", "--budgets", "1", "--budgets", "1.5"], "error: every budget of --budgets must"),
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


def test_budgets_take_several_numbers_after_one_option() -> None:
    from mdprune.cli import _spread_budgets

    args = ["train", "--budgets", "1.0", "0.5", ".25", "--steps", "3", "--budget", "0.5"]
    assert _spread_budgets(args) == [
        "train", "--budgets", "1.0", "--budgets", "0.5", "--budgets", ".25",
        "--steps", "3", "--budget", "0.5",
    ]  # fmt: skip
    assert _spread_budgets(["train", "--budget", "0.5", "0.25"]) == [
        "train", "--budget", "0.5", "0.25",
    ]  # fmt: skip


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


def command_names() -> list[str]:
    import typer

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return sorted(group.commands)


def long_options(command: str) -> list[str]:
    import typer

    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    params = group.commands[command].params
    return [o for p in params for o in [*p.opts, *p.secondary_opts] if o.startswith("--")]


def cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a fresh interpreter, at a terminal width."""
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "mdprune.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", [c for c in command_names() if c != "serve"])
def test_help_at_80_columns_shows_every_option_in_full(command: str) -> None:
    done = cli(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: mdprune {command} ")
    options = long_options(command)
    assert "--version" in options
    for option in options:
        assert re.search(rf"(^|[\s,/]){re.escape(option)}([\s,]|$)", done.stdout), option
    assert "…" not in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80


def test_command_list_at_80_columns_is_not_cut() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for command in command_names():
        line = next(x for x in done.stdout.splitlines() if x.strip().startswith(f"{command} "))
        assert not line.endswith("..."), line


def test_serve_help_and_version_name_mdprune_serve() -> None:
    from multidomain import __version__

    done = cli("serve", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mdprune serve ")
    for option in ("--model-store", "--model-name", "--model-version", "--port", "--version"):
        assert option in done.stdout
    assert cli("serve", "-h").stdout == done.stdout
    version = cli("serve", "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"mdprune {__version__}")


@pytest.mark.parametrize("command", [*command_names(), None])
def test_every_command_answers_h_and_version(command: str | None) -> None:
    from multidomain import __version__

    prefix = [] if command is None else [command]
    code, output = run(*prefix, "--version")
    assert (code, output.strip()) == (0, f"mdprune {__version__}")
    if command != "serve":  # its -h is argparse's, in a subprocess above
        code, output = run(*prefix, "-h")
        assert code == 0 and output.startswith("Usage: mdprune")


def test_artifact_paths_resolve_the_same_in_every_command(tmp_path: Path) -> None:
    from tests.artifacts import write_tiny_artifact

    store = tmp_path / "store"
    write_tiny_artifact(store, version="v1")
    write_tiny_artifact(store, version="v2", seed=1)
    for path in ("tiny", "tiny/latest", "tiny/v2"):
        code, output = run("verify", str(store / path))
        assert code == 0 and output.startswith("tiny v2: OK"), (path, output)
    code, output = run("verify", str(store / "tiny" / "v1"))
    assert code == 0 and output.startswith("tiny v1: OK")
    for command in ("verify", "torchserve-export"):
        code, output = run(command, str(store))
        assert code == 2, output
        assert (
            output.strip()
            == f"error: {store} is a model store: name a model in it, e.g. " + str(store / "tiny")
        )
        code, output = run(command, str(tmp_path / "nowhere"))
        assert (
            code == 2
            and output.strip() == f"error: {tmp_path / 'nowhere'}: no such artifact folder"
        )


def write_fake_backbone(folder: Path) -> Path:
    """A finished backbone as far as its record goes (the weights are never read here)."""
    from multidomain.arch import ArchSpec

    folder.mkdir()
    (folder / "backbone.json").write_text(json.dumps({"arch": ArchSpec().to_dict()}))
    (folder / "backbone.safetensors").write_bytes(b"never read")
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pipeline", "--no-serve", "--budget", "0.01"], "error: budget 0.01 is below the least"),
        (["train", "--budget", "0.01"], "error: budget 0.01 is below the least"),
        (["train", "--budgets", "1", "--budgets", "0.01"], "error: budget 0.01 is below the least"),
        (["data", "-d", "embedded:digits", "-d", "embedded:nope"], "unknown embedded domain"),
        (["pretrain", "-d", "embedded:digits", "--init-from", "nowhere"], "no finished backbone"),
        (
            ["data", "-d", "embedded:digits", "-d", "imagefolder:x=nowhere"],
            "nowhere does not exist",
        ),
    ],
)
def test_arguments_are_checked_before_any_data_is_loaded(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    extra = ["--backbone", str(write_fake_backbone(tmp_path / "bb"))] if args[0] == "train" else []
    code, output = run(*args, *extra, "--cache-dir", str(tmp_path / "cache"))
    assert code == 2
    assert message in output and output.startswith("error: ")
    assert len(output.strip().splitlines()) == 1  # no data table before it
    assert not (tmp_path / "cache").exists()  # nothing built or loaded


def test_the_curl_line_waits_until_the_service_is_ready(capsys: pytest.CaptureFixture[str]) -> None:
    from mdprune.cli import _announce_when_ready

    ready = threading.Event()

    class Readiness(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if ready.is_set() else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Readiness)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = _announce_when_ready(
        f"http://127.0.0.1:{server.server_address[1]}/readyz", "try: curl", interval_s=0.02
    )
    try:
        time.sleep(0.5)
        assert "try: curl" not in capsys.readouterr().out  # 503: still loading
        ready.set()
        deadline = time.monotonic() + 10
        printed = ""
        while "try: curl" not in printed and time.monotonic() < deadline:
            time.sleep(0.02)
            printed += capsys.readouterr().out
        assert printed.count("try: curl") == 1
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


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
    for args, message in (
        (["--clock", "cpu", "--threads", "2"], "error: clock cpu needs 1 torch thread"),
        (["--clock", "gpu"], "error: clock must be one of wall, cpu, got 'gpu'"),
    ):
        code, output = run(
            "profile", "--width-mult", "0.125", "--channel-group", "4", *args,
            "--out", str(tmp_path / "x"),
        )  # fmt: skip
        assert code == 2 and output.startswith(message), output
        assert len(output.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()


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
