"""Reading what the report covers: artifact manifests, folders holding them and the results JSON
of ``bench/budget_grid.py``. Manifests are JSON; of the weights only the safetensors headers are
read (tensor shapes, to count every ratio: ``reporting.counts``), no hash check; optional fields
a manifest lacks become ``None``.

A grid row is read from its artifact folder's manifest when the folder exists, else from the
copy of that manifest the row records (``manifest``), else from the row's own numbers (no
channel lists); the run's ``note`` says which folder was not found.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multidomain.arch import ArchitectureError, ArchSpec
from multidomain.costs import BackboneCount, WeightCountError, backbone_totals, count_backbone
from multidomain.files import read_json
from multidomain.stats import mean
from reporting.counts import BACKBONE_WEIGHTS, Counted, count_run, locate, read_shapes
from reporting.errors import ReportError

__all__ = [
    "MANIFEST_FILE",
    "SHARING_ORDER",
    "Level",
    "Reference",
    "Run",
    "as_mapping",
    "collect_grid",
    "collect_runs",
    "levels_of",
    "run_from_grid_row",
    "run_from_manifest",
    "sharing_key",
    "sort_runs",
]

MANIFEST_FILE = "manifest.json"
SHARING_ORDER = ("none", "union", "intersection", "jaccard")  # training.sharing's order


@dataclass(frozen=True)
class Level:
    """One level of a nested run: its budget, mean and per-domain test accuracy."""

    budget: float
    mean_test_accuracy: float | None
    test_accuracy: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Run:
    """One trained model, from its manifest or from a grid row."""

    source: str
    model_name: str
    version: str
    budget: float | None
    budget_metric: str | None
    sharing: str
    sharing_weight: float | None
    learnable_weight: bool | None
    domains: list[str]
    test_accuracy: dict[str, float | None]
    mean_test_accuracy: float | None
    compact_params_fraction: float | None
    params_fraction: dict[str, float | None]
    macs_fraction: dict[str, float | None]
    wall_time_s: float | None
    manifest: dict[str, Any] | None = None
    domain_budgets: dict[str, float | None] = field(default_factory=dict)  # each domain's own
    budget_costs: dict[str, dict[str, float]] = field(default_factory=dict)  # capped, exact
    time_fraction: dict[str, float | None] = field(default_factory=dict)  # measured
    predicted_time_fraction: dict[str, float | None] = field(default_factory=dict)
    time_batch: str | None = None  # the batch size of both time fractions
    budget_status: str = "unchecked"  # ok | over | unchecked
    budget_notes: list[str] = field(default_factory=list)
    channel_plot: str | None = None
    note: str | None = None  # where its data came from, when not from its artifact folder
    #: a nested artifact's levels, largest budget first (empty: a run of one budget)
    levels: list[Level] = field(default_factory=list)
    #: a nested run's per-level state: private (own BN affines and heads per level) or shared
    level_state: str | None = None
    steps: int | None = None  # a nested run's training steps (its levels are compared by them)
    protocol: str | None = None  # a grid's protocol (same-domain, held-out)
    seed: int | None = None  # a grid's training seed
    counted: Counted | None = None  # the weights counted (every ratio comes from here)
    s_score: float | None = None  # Visual Decathlon S-score against its protocol/seed baseline
    s_per_params: float | None = None  # S per backbone's worth of parameters
    s_per_macs: float | None = None  # S per backbone's worth of MACs (mean domain)
    count_notes: list[str] = field(default_factory=list)  # why not counted, or mismatches

    @property
    def label(self) -> str:
        return f"{self.model_name}/{self.version}"

    @property
    def nested(self) -> bool:
        """Several budget levels in one artifact (never averaged with runs of one budget)."""
        return bool(self.levels)

    @property
    def weight_bytes(self) -> int | None:
        """Its weights file's tensors at 4 bytes a value (``None``: not counted)."""
        return None if self.counted is None else self.counted.weight_bytes


@dataclass
class Reference:
    """A reference row and accuracy line: a protocol's pre-trained backbone, or per protocol and
    seed each domain fine-tuned alone (the S-score's baseline); ratios counted from weights."""

    label: str
    mean_test_accuracy: float | None
    source: str
    protocol: str | None = None
    seed: int | None = None
    kind: str = "backbone"  # backbone | alone
    test_accuracy: dict[str, float | None] = field(default_factory=dict)
    test_images: dict[str, int] = field(default_factory=dict)  # per domain, if recorded
    params_fraction: float | None = None  # everything serving its domains / backbone
    max_macs_fraction: float | None = None  # a domain's network / backbone (largest)
    counted_from: str | None = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _is_manifest(data: Any) -> bool:
    return isinstance(data, Mapping) and isinstance(data.get("domains"), list)


def run_from_manifest(
    manifest: Mapping[str, Any], source: str, counted: Counted | None = None
) -> Run:
    """The table row of one artifact manifest; missing optional fields become ``None``. Its
    ratios are ``counted``'s (the weights counted), ``None`` without it."""
    domains = [d for d in manifest.get("domains", []) if isinstance(d, Mapping)]
    names = [str(d.get("name", f"domain{k}")) for k, d in enumerate(domains)]
    sharing = as_mapping(manifest.get("sharing"))
    params = counted.params_fraction() if counted is not None else {}
    macs = counted.macs_fraction() if counted is not None else {}
    accuracy = {n: _number(d.get("test_accuracy")) for n, d in zip(names, domains, strict=True)}
    mean_accuracy = _number(manifest.get("mean_test_accuracy"))
    if mean_accuracy is None:
        mean_accuracy = mean(accuracy.values())
    learnable = sharing.get("learnable_weight")
    latencies = [as_mapping(d.get("latency")) for d in domains]
    measured = [as_mapping(x.get("measured_fraction")) for x in latencies]
    batches = {b for m in measured for b in m}
    batch = max(batches, key=_batch_order) if batches else None
    budget = _number(manifest.get("budget"))
    return Run(
        source=source,
        model_name=str(manifest.get("model_name", "?")),
        version=str(manifest.get("version", "?")),
        budget=_number(manifest.get("budget")),
        budget_metric=str(manifest["budget_metric"]) if "budget_metric" in manifest else None,
        sharing=str(sharing.get("variant", "?")),
        sharing_weight=_number(sharing.get("weight")),
        learnable_weight=learnable if isinstance(learnable, bool) else None,
        domains=names,
        test_accuracy=accuracy,
        mean_test_accuracy=mean_accuracy,
        compact_params_fraction=None if counted is None else counted.compact_params_fraction,
        params_fraction={n: params.get(n) for n in names},
        macs_fraction={n: macs.get(n) for n in names},
        wall_time_s=_number(as_mapping(manifest.get("training")).get("wall_time_s")),
        manifest=dict(manifest),
        domain_budgets={
            n: _number(d.get("budget", budget)) for n, d in zip(names, domains, strict=True)
        },
        budget_costs={
            n: {
                str(k): float(v)
                for k, v in as_mapping(d.get("budget_costs")).items()
                if _number(v) is not None
            }
            for n, d in zip(names, domains, strict=True)
            if d.get("budget_costs")
        },
        time_fraction={
            n: _number(m.get(batch or "")) for n, m in zip(names, measured, strict=True)
        },
        predicted_time_fraction={
            n: _number(as_mapping(x.get("predicted_fraction")).get(batch or ""))
            for n, x in zip(names, latencies, strict=True)
        },
        time_batch=batch,
        levels=_manifest_levels(manifest, names, domains),
        level_state=_level_state(manifest) if manifest.get("levels") else None,
        steps=_steps(manifest) if manifest.get("levels") else None,
        counted=counted,
    )


def _steps(manifest: Mapping[str, Any]) -> int | None:
    steps = as_mapping(as_mapping(manifest.get("training")).get("config")).get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def _level_state(record: Mapping[str, Any]) -> str:
    """A nested run's level state; nested artifacts made before it was recorded shared theirs."""
    return str(record.get("level_state", "shared"))


def _manifest_levels(
    manifest: Mapping[str, Any], names: Sequence[str], domains: Sequence[Mapping[str, Any]]
) -> list[Level]:
    """A nested manifest's levels: the mean from ``levels``, each domain's accuracy from its
    own ``levels`` entry of the same budget."""
    per_domain: dict[float, dict[str, float | None]] = {}
    for name, entry in zip(names, domains, strict=True):
        for level in entry.get("levels") or []:
            budget = _number(as_mapping(level).get("budget"))
            if budget is not None:
                accuracy = _number(as_mapping(level).get("test_accuracy"))
                per_domain.setdefault(budget, {})[name] = accuracy
    return levels_of(manifest.get("levels"), per_domain)


def levels_of(
    raw: Any, per_domain: Mapping[float, Mapping[str, float | None]] | None = None
) -> list[Level]:
    """``Level`` s from a list of ``{budget, mean_test_accuracy[, test_accuracy]}`` objects
    (a manifest's or a grid row's ``levels``); ``per_domain`` fills in missing accuracies."""
    levels = []
    for level in raw if isinstance(raw, list) else []:
        budget = _number(as_mapping(level).get("budget"))
        if budget is None:
            continue
        accuracy = {
            str(k): _number(v) for k, v in as_mapping(level.get("test_accuracy")).items()
        } or dict((per_domain or {}).get(budget, {}))
        levels.append(Level(budget, _number(level.get("mean_test_accuracy")), accuracy))
    return levels


def _batch_order(batch: str) -> tuple[int, str]:
    return (int(batch) if batch.isdigit() else -1, batch)


def run_from_grid_row(row: Mapping[str, Any], source: str) -> Run:
    """A grid row whose artifact folder is gone: its own numbers, no channel picture."""
    accuracy = {str(k): _number(v) for k, v in as_mapping(row.get("test_accuracy")).items()}
    names = list(accuracy)
    artifact = Path(str(row.get("artifact", "?/?")))
    mean_accuracy = _number(row.get("mean_test_accuracy"))
    return Run(
        source=source,
        model_name=artifact.parent.name or "?",
        version=artifact.name or "?",
        budget=_number(row.get("budget")),
        budget_metric=str(row["budget_metric"]) if "budget_metric" in row else None,
        sharing=str(row.get("sharing", "?")),
        sharing_weight=None,
        learnable_weight=None,
        domains=names,
        test_accuracy={n: accuracy.get(n) for n in names},
        mean_test_accuracy=mean_accuracy
        if mean_accuracy is not None
        else mean(accuracy.get(n) for n in names),
        compact_params_fraction=None,  # nothing to count: ratios are never copied
        params_fraction={n: None for n in names},
        macs_fraction={n: None for n in names},
        wall_time_s=_number(row.get("wall_time_s")),
        levels=levels_of(row.get("levels")),
        level_state=_level_state(as_mapping(row.get("manifest"))) if row.get("levels") else None,
        steps=_steps(as_mapping(row.get("manifest"))) if row.get("levels") else None,
    )


def _find_artifact(artifact: str, grid_file: Path) -> Path | None:
    """The grid stores artifact paths relative to where it ran (usually the repo root)."""
    return locate(artifact, grid_file, MANIFEST_FILE)


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _counted_weights(
    arch: ArchSpec | None, shapes: Any, run: Any, near: Path
) -> tuple[BackboneCount | None, str]:
    """A backbone-format weights file counted: from its run folder, else the recorded shapes."""
    if arch is None:
        return None, "no architecture recorded"
    try:
        found = locate(str(run), near, BACKBONE_WEIGHTS) if isinstance(run, str) else None
        if found is not None:
            return count_backbone(arch, read_shapes(found)), str(found)
        if isinstance(shapes, Mapping) and shapes:
            return count_backbone(arch, dict(shapes)), f"tensor shapes recorded in {near}"
    except (WeightCountError, ReportError, TypeError) as exc:
        return None, f"not counted: {exc}"
    return None, "weights not found nor recorded"


def _grid_arch(data: Mapping[str, Any]) -> ArchSpec | None:
    try:
        return ArchSpec.from_dict(dict(as_mapping(as_mapping(data.get("settings")).get("arch"))))
    except (ArchitectureError, TypeError, ValueError):
        return None


def _grid_references(data: Mapping[str, Any], source: Path, tag: str) -> list[Reference]:
    """The backbone of every protocol and, per protocol and seed, every target domain
    fine-tuned alone; their ratios counted from their weights (or recorded tensor shapes)."""
    arch = _grid_arch(data)
    references = []
    protocols = as_mapping(data.get("protocols"))
    counts: dict[str, BackboneCount] = {}
    for protocol, raw in protocols.items():
        backbone = as_mapping(as_mapping(raw).get("backbone"))
        count, where = _counted_weights(
            arch, backbone.get("weights_shapes"), backbone.get("run"), source
        )
        accuracy = {
            str(k): _number(v) for k, v in as_mapping(backbone.get("test_accuracy")).items()
        }
        sources = ", ".join(str(d) for d in as_mapping(raw).get("sources", []))
        reference = Reference(
            f"backbone (pre-trained on {sources}){tag}",
            mean(accuracy.values()),
            str(source),
            protocol=str(protocol),
            kind="backbone",
            test_accuracy=accuracy,
            counted_from=where,
        )
        if count is not None and arch is not None:
            counts[str(protocol)] = count
            reference.params_fraction = count.all_domains_params / count.totals.params
            reference.max_macs_fraction = count.totals.macs / backbone_totals(arch).macs
        references.append(reference)
    alone = data.get("reference_finetuned_alone")
    if isinstance(alone, Mapping):  # a grid of one protocol and seed, before counts
        level = _number(as_mapping(data.get("backbone")).get("mean_test_accuracy"))
        if level is not None:
            references.append(
                Reference(f"backbone (pre-trained, all domains){tag}", level, str(source))
            )
        accuracies = [_number(as_mapping(v).get("test_accuracy")) for v in alone.values()]
        mean_accuracy = mean(accuracies)
        if mean_accuracy is not None:
            references.append(
                Reference(f"each domain fine-tuned alone{tag}", mean_accuracy, str(source))
            )
        return references
    groups: dict[tuple[str, int | None], list[Mapping[str, Any]]] = {}
    for row in alone if isinstance(alone, list) else []:
        if isinstance(row, Mapping):
            key = (str(row.get("protocol", "?")), _integer(row.get("seed")))
            groups.setdefault(key, []).append(row)
    for (protocol, seed), rows in groups.items():
        reference = Reference(
            f"each domain fine-tuned alone{tag}",
            None,
            str(source),
            protocol=protocol,
            seed=seed,
            kind="alone",
        )
        params, macs, notes = 0, [], []
        for row in rows:
            domain = str(row.get("domain", "?"))
            reference.test_accuracy[domain] = _number(row.get("test_accuracy"))
            images = _integer(row.get("test_images"))
            if images is not None:
                reference.test_images[domain] = images
            count, where = _counted_weights(arch, row.get("weights_shapes"), row.get("run"), source)
            base = counts.get(protocol)
            if count is None or base is None:
                notes.append(f"{domain}: {where}")
                continue
            params += count.all_domains_params
            macs.append(count.totals.macs / base.totals.macs)
        reference.mean_test_accuracy = mean(reference.test_accuracy.values())
        if not notes and protocol in counts:
            reference.params_fraction = params / counts[protocol].totals.params
            reference.max_macs_fraction = max(macs, default=None)
        reference.counted_from = "; ".join(notes) or "each fine-tuned network's weights"
        references.append(reference)
    return references


@dataclass
class _Collector:
    runs: list[Run] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    grid_files: int = 0

    def add_manifest(
        self,
        path: Path,
        data: Any | None = None,
        row: Mapping[str, Any] | None = None,
        backbone_shapes: Any = None,
    ) -> None:
        key = str(path.resolve())
        if key in self.seen:
            return
        manifest = read_json(path, ReportError) if data is None else data
        if not _is_manifest(manifest):
            raise ReportError(f"{path}: not an artifact manifest (no 'domains' list)")
        self.seen.add(key)
        self.runs.append(self._counted_run(manifest, path, path.parent, row, backbone_shapes))

    @staticmethod
    def _counted_run(
        manifest: Mapping[str, Any],
        near: Path,
        artifact_dir: Path | None,
        row: Mapping[str, Any] | None,
        backbone_shapes: Any,
        source: str | None = None,
    ) -> Run:
        row = row or {}
        counted, notes = count_run(
            manifest, near, artifact_dir, row.get("weights_shapes"), backbone_shapes
        )
        run = run_from_manifest(manifest, source or str(near), counted)
        run.count_notes = notes
        run.protocol = str(row["protocol"]) if "protocol" in row else None
        run.seed = _integer(row.get("seed"))
        return run

    def add_grid(self, path: Path, data: Mapping[str, Any]) -> None:
        rows = data.get("grid")
        if not isinstance(rows, list):
            raise ReportError(f"{path}: 'grid' must be a list of rows")
        self.grid_files += 1
        protocols = as_mapping(data.get("protocols"))
        for k, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ReportError(f"{path}: grid row {k} is not an object")
            protocol = as_mapping(protocols.get(str(row.get("protocol"))))
            backbone = as_mapping(protocol.get("backbone"))
            shapes = backbone.get("weights_shapes")
            artifact = str(row.get("artifact", ""))
            found = _find_artifact(artifact, path)
            manifest = read_json(found, ReportError) if found is not None else None
            if found is not None and _is_manifest(manifest):
                self.add_manifest(found, manifest, row, shapes)
                continue
            recorded = as_mapping(row.get("manifest"))
            digest = recorded.get("weights_sha256")
            # one run recorded by several grid files (a grid run in pieces) is counted once
            key = f"{artifact}@{digest}" if artifact and digest else f"{path.resolve()}#{k}"
            if key in self.seen:
                continue
            self.seen.add(key)
            source = f"{path} (grid row {k})"
            if _is_manifest(recorded):
                self.runs.append(self._counted_run(recorded, path, None, row, shapes, source))
                continue
            run = run_from_grid_row(row, source)
            run.note = (
                f"artifact folder {artifact or '(none recorded)'} not found, nor a copy of its "
                f"manifest in {path}"
            )
            self.runs.append(run)
        tag = "" if self.grid_files == 1 else f" [{path.stem}]"
        self.references += _grid_references(data, path, tag)

    def add(self, path: Path) -> None:
        if not path.exists():
            raise ReportError(f"{path}: no such file or folder")
        if path.is_dir():
            if (path / MANIFEST_FILE).is_file():
                self.add_manifest(path / MANIFEST_FILE)
                return
            found = [p for p in sorted(path.rglob(MANIFEST_FILE)) if p.is_file()]
            manifests = [(p, m) for p in found if _is_manifest(m := read_json(p, ReportError))]
            if not manifests:
                raise ReportError(f"{path}: no artifact manifest.json found in this folder")
            for manifest_path, manifest in manifests:
                self.add_manifest(manifest_path, manifest)
            return
        data = read_json(path, ReportError)
        if isinstance(data, Mapping) and "grid" in data:
            self.add_grid(path, data)
        elif _is_manifest(data):
            self.add_manifest(path, data)
        else:
            raise ReportError(
                f"{path}: neither an artifact manifest nor a budget_grid.py results JSON"
            )


def collect_runs(inputs: Sequence[Path]) -> tuple[list[Run], list[Reference]]:
    """Read every input; raises ``ReportError`` naming the first path that holds no run."""
    if not inputs:
        raise ReportError("no input given: name artifact folders, model stores or grid JSONs")
    collector = _Collector()
    for path in inputs:
        collector.add(Path(path))
    return sort_runs(collector.runs), collector.references


def collect_grid(data: Mapping[str, Any], path: Path) -> tuple[list[Run], list[Reference]]:
    """The runs and reference lines of a ``bench/budget_grid.py`` result held in memory;
    ``path`` is where it is written (relative artifact paths are looked up from there)."""
    collector = _Collector()
    collector.add_grid(path, data)
    return sort_runs(collector.runs), collector.references


def sharing_key(sharing: str) -> tuple[int, str]:
    order = SHARING_ORDER.index(sharing) if sharing in SHARING_ORDER else len(SHARING_ORDER)
    return order, sharing


def sort_runs(runs: Iterable[Run]) -> list[Run]:
    """Budget descending (unknown last), then sharing variant, then name/version."""
    return sorted(
        runs,
        key=lambda r: (
            r.budget is None,
            -(r.budget or 0.0),
            sharing_key(r.sharing),
            r.model_name,
            r.version,
        ),
    )
