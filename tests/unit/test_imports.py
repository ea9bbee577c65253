"""The import rules between the project's packages (docs/architecture.md): training and the two
servers never import each other, the TorchServe package no web framework, ``multidomain`` none
of them. Each package is imported whole (every module) in a fresh interpreter, since the test
session itself imports everything, and ``sys.modules`` is searched for what it must not load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ("fastapi", "starlette", "pydantic", "uvicorn")

#: Package -> the modules (and their submodules) importing it must never load.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "multidomain": ("training", "service", "torchserving", "reporting", "devtools", *WEB),
    "service": ("training", "reporting", "torchserving", "devtools", "psutil"),
    "torchserving": ("service", "training", "reporting", "devtools", "psutil", *WEB),
    "training": ("service", "torchserving", "reporting", "devtools", "mdprune", *WEB),
    "reporting": ("torch", "training", "service", "torchserving", "devtools", "mdprune", *WEB),
    "devtools": ("training", "service", "torchserving", "reporting"),
    # the console script imports each part lazily, inside the command that needs it
    "mdprune": ("training", "service", "torchserving", "reporting", "torch"),
}

#: Imports every module of the package named by argv[1] (``__main__`` modules run a program
#: when imported, so they are skipped) and prints the names in ``sys.modules``.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if module.name.rsplit(".", 1)[-1] != "__main__":
        importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""


def project_packages() -> list[str]:
    """The top-level packages of the project (folders with an ``__init__.py``), tests aside."""
    return sorted(
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if path.parent.name not in {"tests", "bench"}
    )


def loaded_by(package: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, package],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    modules: list[str] = json.loads(result.stdout.splitlines()[-1])
    return modules


def test_every_package_has_a_rule() -> None:
    packages = project_packages()
    assert {"multidomain", "service", "torchserving", "training"} <= set(packages)
    assert set(packages) <= set(FORBIDDEN), "a package without an import rule in FORBIDDEN"


@pytest.mark.parametrize("package", project_packages())
def test_package_imports_only_what_it_may(package: str) -> None:
    forbidden = FORBIDDEN[package]
    loaded = loaded_by(package)
    assert package in loaded
    bad = [m for m in loaded if any(m == f or m.startswith(f"{f}.") for f in forbidden)]
    assert not bad, f"importing {package} loads {', '.join(bad[:8])} ({len(bad)} modules)"
