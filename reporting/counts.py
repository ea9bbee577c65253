"""Every ratio the report shows, counted from the weights at report time: an artifact's tensor
shapes (its ``weights.safetensors`` header, or the copy of that header a grid row records) and
its backbone's (the backbone run's ``backbone.safetensors``, the copy a grid records, or else the
architecture's own formula), counted with ``multidomain.costs`` (no torch). The fractions the
exporter wrote are only compared with the count: a difference becomes a warning."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multidomain.arch import ArchitectureError, ArchSpec
from multidomain.costs import (
    ArtifactCount,
    BackboneCount,
    Totals,
    WeightCountError,
    backbone_totals,
    count_artifact,
    count_backbone,
)
from multidomain.files import safetensors_shapes
from reporting.errors import ReportError

__all__ = [
    "ARTIFACT_WEIGHTS",
    "BACKBONE_WEIGHTS",
    "Counted",
    "count_run",
    "fp32_bytes",
    "locate",
    "read_shapes",
]

ARTIFACT_WEIGHTS = "weights.safetensors"  # multidomain.artifact.WEIGHTS_FILE
BACKBONE_WEIGHTS = "backbone.safetensors"  # training.pretrain.BACKBONE_WEIGHTS
#: Recorded and counted fractions further apart than this are reported
MISMATCH = 1e-6
FP32_BYTES = 4


@dataclass
class Counted:
    """What the weights count: the backbone, the compact model, each domain's budgeted part
    (convolutions it runs and its BatchNorm, no head) and its head, and where they came from."""

    backbone: Totals
    artifact: ArtifactCount
    weights_from: str
    backbone_from: str
    notes: list[str] = field(default_factory=list)
    #: every tensor of the weights file (a nested artifact's levels too) at 4 bytes a value
    weight_bytes: int = 0

    @property
    def compact_params_fraction(self) -> float:
        return self.artifact.compact_params / self.backbone.params

    def params_fraction(self) -> dict[str, float]:
        return {d.name: d.params / self.backbone.params for d in self.artifact.domains}

    def macs_fraction(self) -> dict[str, float]:
        return {d.name: d.macs / self.backbone.macs for d in self.artifact.domains}


def fp32_bytes(shapes: Mapping[str, Sequence[int]]) -> int:
    """The bytes of tensors of these shapes stored as float32 (the file's header excluded)."""
    return FP32_BYTES * sum(math.prod(s) for s in shapes.values())


def read_shapes(path: Path) -> dict[str, list[int]]:
    return safetensors_shapes(path, ReportError)


def locate(given: str, near: Path, name: str) -> Path | None:
    """``given/name`` as recorded (absolute, or relative to the working folder or to one of
    ``near``'s first four parents: runs record paths relative to where they ran)."""
    path = Path(given)
    candidates = [path]
    if not path.is_absolute():
        candidates += [parent / path for parent in list(Path(near).resolve().parents)[:4]]
    for candidate in candidates:
        if (candidate / name).is_file():
            return candidate / name
    return None


def _shapes(value: Any) -> dict[str, list[int]] | None:
    if not isinstance(value, Mapping) or not value:
        return None
    shapes = {}
    for name, shape in value.items():
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            return None
        shapes[str(name)] = shape
    return shapes


def count_run(
    manifest: Mapping[str, Any],
    source: Path,
    artifact_dir: Path | None,
    recorded_weights: Any = None,
    recorded_backbone: Any = None,
) -> tuple[Counted | None, list[str]]:
    """Count a run's weights; ``None`` and the reason when they cannot be counted.

    ``artifact_dir``: the artifact folder if found; ``recorded_weights`` /
    ``recorded_backbone``: tensor shapes a grid recorded, used where the files are gone."""
    try:
        arch = ArchSpec.from_dict(dict(manifest.get("architecture") or {}))
    except (ArchitectureError, TypeError, ValueError) as exc:
        return None, [f"weights not counted: no readable architecture ({exc})"]
    domains = [d for d in manifest.get("domains", []) if isinstance(d, Mapping)]
    names = [str(d.get("name", f"domain{k}")) for k, d in enumerate(domains)]
    weights_path = None if artifact_dir is None else artifact_dir / ARTIFACT_WEIGHTS
    try:
        if weights_path is not None and weights_path.is_file():
            shapes, weights_from = read_shapes(weights_path), str(weights_path)
        elif (recorded := _shapes(recorded_weights)) is not None:
            shapes, weights_from = recorded, f"the tensor shapes recorded in {source}"
        else:
            return None, ["weights not counted: no weights file nor recorded tensor shapes"]
        artifact = count_artifact(arch, shapes, names)
        backbone, backbone_from = _backbone(arch, manifest, source, recorded_backbone)
    except (WeightCountError, ReportError) as exc:
        return None, [f"weights not counted: {exc}"]
    counted = Counted(backbone, artifact, weights_from, backbone_from)
    counted.weight_bytes = fp32_bytes(shapes)
    counted.notes = _mismatches(manifest, domains, counted)
    return counted, counted.notes


def _backbone(
    arch: ArchSpec, manifest: Mapping[str, Any], source: Path, recorded: Any
) -> tuple[Totals, str]:
    run = (manifest.get("backbone") or {}).get("run")
    found = locate(str(run), source, BACKBONE_WEIGHTS) if isinstance(run, str) else None
    if found is not None:
        return _backbone_totals(arch, read_shapes(found)), str(found)
    shapes = _shapes(recorded)
    if shapes is not None:
        return _backbone_totals(arch, shapes), f"the backbone tensor shapes recorded in {source}"
    return backbone_totals(arch), "the architecture (backbone weights not found)"


def _backbone_totals(arch: ArchSpec, shapes: Mapping[str, Sequence[int]]) -> Totals:
    count: BackboneCount = count_backbone(arch, shapes)
    return count.totals


def _mismatches(
    manifest: Mapping[str, Any], domains: Sequence[Mapping[str, Any]], counted: Counted
) -> list[str]:
    """Where the manifest's recorded fractions differ from the count."""
    notes = []
    recorded = (manifest.get("compact") or {}).get("params_fraction")
    if isinstance(recorded, int | float) and (
        abs(recorded - counted.compact_params_fraction) > MISMATCH
    ):
        notes.append(
            f"manifest records compact params_fraction {recorded:.4f}, the weights count "
            f"{counted.compact_params_fraction:.4f}"
        )
    params, macs = counted.params_fraction(), counted.macs_fraction()
    for entry in domains:
        name = str(entry.get("name"))
        for field_name, value in (("params_fraction", params), ("macs_fraction", macs)):
            written = entry.get(field_name)
            if isinstance(written, int | float) and abs(written - value[name]) > MISMATCH:
                notes.append(
                    f"manifest records {name} {field_name} {written:.4f}, the weights count "
                    f"{value[name]:.4f}"
                )
    return notes
