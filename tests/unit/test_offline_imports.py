"""Import rules of the offline packages: ``training`` uses ``multidomain`` and never imports the
servers, ``reporting`` or the CLI; ``reporting`` reads JSON and loads no torch, ``training`` or
server. Checked in a fresh interpreter, since the test session itself imports everything."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import reporting
import training
import training.data

ROOT = Path(__file__).resolve().parents[2]


def _submodules(package: ModuleType) -> list[str]:
    return [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]


def _assert_imports_avoid(modules: list[str], forbidden: set[str]) -> None:
    """Importing every module of ``modules`` loads no top-level package in ``forbidden``."""
    check = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & {forbidden!r}); "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_training_imports_no_server_reporting_or_cli() -> None:
    modules = _submodules(training) + _submodules(training.data)
    assert {"training.loop", "training.data.cache"} <= set(modules)
    _assert_imports_avoid(modules, {"service", "torchserve", "reporting", "mdprune", "fastapi"})


def test_reporting_imports_no_torch_training_or_servers() -> None:
    modules = _submodules(reporting)
    assert "reporting.build" in modules
    _assert_imports_avoid(modules, {"torch", "training", "service", "torchserve", "mdprune"})
