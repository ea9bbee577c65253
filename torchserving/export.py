"""Package an artifact for TorchServe: ``model_store/<name>.mar`` via torch-model-archiver.

The archive holds, at its top level (TorchServe unpacks it into the worker's model dir, which is
first on the worker's ``sys.path``):

* ``torchserve_handler.py``: a copy of :mod:`torchserving.handler`, the entry point (it imports
  only ``multidomain``, so nothing else of this project needs to be in the archive);
* ``weights.safetensors`` and ``manifest.json``: the artifact, verified again when a worker loads
  it;
* ``multidomain/``: a copy of the package the handler imports, so the archive is self-contained
  (a worker uses this copy even where the project is installed too);
* ``model-config.yaml``: TorchServe's per-model settings (workers, ``batchSize``,
  ``maxBatchDelay``, ``responseTimeout``) and the handler's (``torch_threads``,
  ``max_image_pixels``, ``default_top_k``, ``materialized_domains``). Settings given when
  registering the model through the management API take precedence over TorchServe's;
  ``MDP_*`` variables over the handler's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import multidomain
from multidomain.artifact import MANIFEST_FILE, WEIGHTS_FILE, check_name, load_artifact
from multidomain.serving import DEFAULTS
from torchserving import handler

__all__ = ["CONFIG_FILE", "HANDLER_FILE", "TorchServeModelConfig", "export_mar"]

CONFIG_FILE = "model-config.yaml"
#: The handler's name in the archive (and so its module name in the worker).
HANDLER_FILE = "torchserve_handler.py"


@dataclass(frozen=True)
class TorchServeModelConfig:
    """What ``model-config.yaml`` in the archive sets (TorchServe's names in brackets)."""

    batch_size: int = 8  # batchSize: most requests TorchServe hands the handler at once
    max_batch_delay_ms: int = 5  # maxBatchDelay: how long a batch waits to fill
    workers: int = 1  # minWorkers = maxWorkers: worker processes (one model copy each)
    response_timeout_s: int = 120  # responseTimeout
    torch_threads: int = DEFAULTS.torch_threads  # per worker
    max_image_pixels: int = DEFAULTS.max_image_pixels
    default_top_k: int = DEFAULTS.default_top_k
    materialized_domains: int = DEFAULTS.materialized_domains

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            minimum = 0 if name in ("max_batch_delay_ms", "materialized_domains") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

    def to_yaml(self) -> str:
        return (
            "# TorchServe model config, written by torchserving/export.py\n"
            f"minWorkers: {self.workers}\n"
            f"maxWorkers: {self.workers}\n"
            f"batchSize: {self.batch_size}\n"
            f"maxBatchDelay: {self.max_batch_delay_ms}\n"
            f"responseTimeout: {self.response_timeout_s}\n"
            "handler:\n"
            f"  torch_threads: {self.torch_threads}\n"
            f"  max_image_pixels: {self.max_image_pixels}\n"
            f"  default_top_k: {self.default_top_k}\n"
            f"  materialized_domains: {self.materialized_domains}\n"
        )


def export_mar(
    artifact_dir: Path,
    model_store: Path,
    name: str,
    config: TorchServeModelConfig | None = None,
) -> Path:
    """Verify the artifact, then write ``model_store/<name>.mar`` (replacing one that exists).

    Raises ``ArtifactError`` for a bad artifact, ``ValueError`` for a bad name and
    ``RuntimeError`` (with the archiver's output) when torch-model-archiver fails."""
    artifact_dir = Path(artifact_dir)
    model_store = Path(model_store)
    check_name("model name", name)
    config = config or TorchServeModelConfig()
    artifact = load_artifact(artifact_dir)
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mdp-mar-") as tmp:
        staging = Path(tmp)
        package = staging / "extra"
        _copy_package(package / "multidomain")
        shutil.copy2(handler.__file__, staging / HANDLER_FILE)
        (staging / CONFIG_FILE).write_text(config.to_yaml(), encoding="utf-8")
        extra = [artifact_dir / WEIGHTS_FILE, artifact_dir / MANIFEST_FILE, package]
        for path in extra:
            if "," in str(path.resolve()):
                raise ValueError(f"torch-model-archiver cannot take a path with a comma: {path}")
        command = [
            sys.executable,
            "-m",
            "model_archiver.model_packaging",
            "--model-name",
            name,
            "--version",
            artifact.version,
            "--handler",
            str((staging / HANDLER_FILE).resolve()),
            "--extra-files",
            ",".join(str(p.resolve()) for p in extra),
            "--config-file",
            str(staging / CONFIG_FILE),
            "--export-path",
            str(model_store.resolve()),
            "--force",
        ]
        # The archiver stages files in $TMPDIR/<name>: a private TMPDIR keeps concurrent
        # exports of the same name apart.
        env = {**os.environ, "TMPDIR": str(staging)}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    mar = model_store / f"{name}.mar"
    if result.returncode != 0 or not mar.is_file():
        output = (result.stdout + result.stderr).strip()
        raise RuntimeError(f"torch-model-archiver failed (exit {result.returncode}): {output}")
    return mar


def _copy_package(target: Path) -> None:
    """The ``multidomain`` package's Python sources (no caches) into ``target``."""
    source = Path(multidomain.__file__).resolve().parent
    target.mkdir(parents=True)
    for path in sorted(source.glob("*.py")):
        shutil.copy2(path, target / path.name)
