"""Reporting reads JSON only: importing every reporting module loads no torch, no ``training``
and no server package. Checked in a fresh interpreter, since the test session imports them all."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import reporting

ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN = ("torch", "training", "service", "torchserve", "mdprune")


def test_reporting_imports_no_torch_training_or_servers() -> None:
    modules = [f"reporting.{m.name}" for m in pkgutil.iter_modules(reporting.__path__)]
    assert "reporting.build" in modules
    check = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & {set(FORBIDDEN)!r}); "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
