"""The main job through the real console script, on two embedded domains with few steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

MDPRUNE = [sys.executable, "-m", "mdprune.cli"]


def test_pipeline_exports_a_verified_artifact_within_budget(tmp_path: Path) -> None:
    store = tmp_path / "store"
    command = [
        *MDPRUNE, "pipeline", "--no-serve",
        "--domains", "embedded:digits", "--domains", "embedded:faces",
        "--pretrain-steps", "8", "--steps", "12", "--width-mult", "0.125",
        "--budget", "0.4", "--cache-dir", str(tmp_path / "cache"),
        "--run-dir", str(tmp_path / "backbone"), "--model-store", str(store),
        "--model-version", "v1",
    ]  # fmt: skip
    # --if-missing on an empty store trains
    done = subprocess.run(
        [*command, "--if-missing"], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "benchmark digest" in done.stderr
    manifest = json.loads((store / "default" / "v1" / "manifest.json").read_text())
    assert [d["name"] for d in manifest["domains"]] == ["digits", "faces"]
    for domain in manifest["domains"]:
        assert domain["params_fraction"] <= 0.4 and domain["macs_fraction"] <= 0.4
        assert domain["max_compact_logit_diff"] <= 1e-4
    assert manifest["command"].startswith("cli.py pipeline") or "pipeline" in manifest["command"]

    verify = subprocess.run(
        [*MDPRUNE, "verify", str(store / "default" / "v1")], capture_output=True, text=True
    )
    assert verify.returncode == 0 and "OK" in verify.stdout

    again = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "v1 already exists" in again.stderr
    assert "pretrain" not in again.stderr  # refused before any training

    # --if-missing (compose's trainer): a complete, verified version is kept, nothing trained
    without_version = command[: command.index("--model-version")]
    kept = subprocess.run(
        [*without_version, "--if-missing"], capture_output=True, text=True, timeout=120
    )
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert "not training (--if-missing)" in kept.stdout
    assert "backbone" not in kept.stdout + kept.stderr
    assert sorted(p.name for p in (store / "default").iterdir()) == ["v1"]
