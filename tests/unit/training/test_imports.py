"""Imports go one way: ``training`` uses ``multidomain`` and never imports the servers,
``reporting`` or the CLI. Checked in a fresh interpreter, since the test session imports them."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import training
import training.data

ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN = ("service", "torchserve", "reporting", "mdprune", "fastapi")


def test_training_imports_no_server_reporting_or_cli() -> None:
    modules = [f"training.{m.name}" for m in pkgutil.iter_modules(training.__path__)]
    modules += [f"training.data.{m.name}" for m in pkgutil.iter_modules(training.data.__path__)]
    assert {"training.loop", "training.data.cache"} <= set(modules)
    check = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & {set(FORBIDDEN)!r}); "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
