"""Turn one or more runs into ``report.md`` + ``report.json`` + PNG plots.

An input is an artifact folder (holds ``manifest.json``), any folder searched recursively for
``manifest.json`` files (a model store, ``runs/grid``), a ``manifest.json`` file itself, or a
results JSON written by ``bench/budget_grid.py`` (its ``grid`` rows point at artifact folders;
where an artifact is gone the row's own numbers are used and its channel picture is skipped;
its ``backbone`` and ``reference_finetuned_alone`` become reference lines).

Only manifests are read (no weights, no hash check). Optional fields that a manifest lacks are
shown as missing and whatever cannot be plotted is skipped. Plots:

* ``accuracy_vs_budget.png``: mean test accuracy vs budget, one line per sharing variant;
* ``cost_vs_budget.png``: compact params / backbone params and domain MACs / backbone MACs
  (mean, bars min..max) vs budget, with the single-domain backbone (1.0) and the budget line;
* ``channel_usage_<model>_<version>.png``: per block, which backbone channels each domain uses
  and which survive pruning (all runs, or those at the default budget when there are many).

Every run is also checked against its budget: a domain whose ``params_fraction`` or
``macs_fraction`` (the ones its ``budget_metric`` caps) exceeds the budget is reported.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from multidomain.arch import ArchitectureError, ArchSpec

MANIFEST_FILE = "manifest.json"
DEFAULT_BUDGET = 0.5
MAX_CHANNEL_PLOTS = 6
BUDGET_TOLERANCE = 1e-9
SHARING_ORDER = ("none", "union", "intersection", "jaccard")  # training.sharing's order
METRIC_FIELDS = {"params": ("params",), "macs": ("macs",), "both": ("params", "macs")}
ACCURACY_PLOT = "accuracy_vs_budget.png"
COST_PLOT = "cost_vs_budget.png"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


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
    budget_status: str = "unchecked"  # ok | over | unchecked
    budget_notes: list[str] = field(default_factory=list)
    channel_plot: str | None = None

    @property
    def label(self) -> str:
        return f"{self.model_name}/{self.version}"


@dataclass
class Reference:
    """A horizontal accuracy line (the pre-trained backbone, each domain fine-tuned alone)."""

    label: str
    mean_test_accuracy: float
    source: str


@dataclass
class ChannelUsage:
    """Per block: the columns shown, which of them each domain uses and which are kept."""

    widths: list[int]
    used: list[list[set[int]]]  # [domain][block] -> column indices
    kept: list[set[int]]  # [block] -> column indices that survive pruning
    backbone_positions: bool  # False: columns are compact indices (origin unknown)
    backbone_widths: list[int] | None = None  # channels per block in the backbone, if known


# --------------------------------------------------------------------------------------------
# reading inputs


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _is_manifest(data: Any) -> bool:
    return isinstance(data, Mapping) and isinstance(data.get("domains"), list)


def _mean(values: Iterable[float | None]) -> float | None:
    items = list(values)
    if not items or any(v is None for v in items):
        return None
    return sum(v for v in items if v is not None) / len(items)


def run_from_manifest(manifest: Mapping[str, Any], source: str) -> Run:
    """The table row of one artifact manifest; missing optional fields become ``None``."""
    domains = [d for d in manifest.get("domains", []) if isinstance(d, Mapping)]
    names = [str(d.get("name", f"domain{k}")) for k, d in enumerate(domains)]
    sharing = _mapping(manifest.get("sharing"))
    compact = _mapping(manifest.get("compact"))
    backbone = _mapping(manifest.get("backbone"))
    compact_fraction = _number(compact.get("params_fraction"))
    compact_params, backbone_params = (
        _number(compact.get("params")),
        _number(backbone.get("params")),
    )
    if compact_fraction is None and compact_params is not None and backbone_params:
        compact_fraction = compact_params / backbone_params
    accuracy = {n: _number(d.get("test_accuracy")) for n, d in zip(names, domains, strict=True)}
    mean_accuracy = _number(manifest.get("mean_test_accuracy"))
    if mean_accuracy is None:
        mean_accuracy = _mean(accuracy.values())
    learnable = sharing.get("learnable_weight")
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
        compact_params_fraction=compact_fraction,
        params_fraction={
            n: _number(d.get("params_fraction")) for n, d in zip(names, domains, strict=True)
        },
        macs_fraction={
            n: _number(d.get("macs_fraction")) for n, d in zip(names, domains, strict=True)
        },
        wall_time_s=_number(_mapping(manifest.get("training")).get("wall_time_s")),
        manifest=dict(manifest),
    )


def run_from_grid_row(row: Mapping[str, Any], source: str) -> Run:
    """A grid row whose artifact folder is gone: its own numbers, no channel picture."""
    accuracy = {str(k): _number(v) for k, v in _mapping(row.get("test_accuracy")).items()}
    macs = {str(k): _number(v) for k, v in _mapping(row.get("domain_macs_fraction")).items()}
    params = {str(k): _number(v) for k, v in _mapping(row.get("domain_params_fraction")).items()}
    names = list(dict.fromkeys([*accuracy, *macs, *params]))
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
        else _mean(accuracy.get(n) for n in names),
        compact_params_fraction=_number(row.get("compact_params_fraction")),
        params_fraction={n: params.get(n) for n in names},
        macs_fraction={n: macs.get(n) for n in names},
        wall_time_s=_number(row.get("wall_time_s")),
    )


def _find_artifact(artifact: str, grid_file: Path) -> Path | None:
    """The grid stores artifact paths relative to where it ran (usually the repo root)."""
    given = Path(artifact)
    candidates = [given]
    if not given.is_absolute():
        candidates += [parent / given for parent in list(grid_file.resolve().parents)[:4]]
    for candidate in candidates:
        if (candidate / MANIFEST_FILE).is_file():
            return candidate / MANIFEST_FILE
    return None


def _grid_references(data: Mapping[str, Any], source: Path, tag: str) -> list[Reference]:
    references = []
    backbone = _number(_mapping(data.get("backbone")).get("mean_test_accuracy"))
    if backbone is not None:
        references.append(
            Reference(f"backbone (pre-trained, all domains){tag}", backbone, str(source))
        )
    alone = _mapping(data.get("reference_finetuned_alone"))
    accuracies = [_number(_mapping(v).get("test_accuracy")) for v in alone.values()]
    reference = _mean(accuracies)
    if reference is not None:
        references.append(Reference(f"each domain fine-tuned alone{tag}", reference, str(source)))
    return references


@dataclass
class _Collector:
    runs: list[Run] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    grid_files: int = 0

    def add_manifest(self, path: Path, data: Any | None = None) -> None:
        key = str(path.resolve())
        if key in self.seen:
            return
        manifest = _read_json(path) if data is None else data
        if not _is_manifest(manifest):
            raise ValueError(f"{path}: not an artifact manifest (no 'domains' list)")
        self.seen.add(key)
        self.runs.append(run_from_manifest(manifest, str(path)))

    def add_grid(self, path: Path, data: Mapping[str, Any]) -> None:
        rows = data.get("grid")
        if not isinstance(rows, list):
            raise ValueError(f"{path}: 'grid' must be a list of rows")
        self.grid_files += 1
        for k, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(f"{path}: grid row {k} is not an object")
            found = _find_artifact(str(row.get("artifact", "")), path)
            manifest = _read_json(found) if found is not None else None
            if found is not None and _is_manifest(manifest):
                self.add_manifest(found, manifest)
            elif (key := f"{path.resolve()}#{k}") not in self.seen:
                self.seen.add(key)
                self.runs.append(run_from_grid_row(row, f"{path} (grid row {k})"))
        tag = "" if self.grid_files == 1 else f" [{path.stem}]"
        self.references += _grid_references(data, path, tag)

    def add(self, path: Path) -> None:
        if not path.exists():
            raise ValueError(f"{path}: no such file or folder")
        if path.is_dir():
            if (path / MANIFEST_FILE).is_file():
                self.add_manifest(path / MANIFEST_FILE)
                return
            found = [p for p in sorted(path.rglob(MANIFEST_FILE)) if p.is_file()]
            manifests = [(p, m) for p in found if _is_manifest(m := _read_json(p))]
            if not manifests:
                raise ValueError(f"{path}: no artifact manifest.json found in this folder")
            for manifest_path, manifest in manifests:
                self.add_manifest(manifest_path, manifest)
            return
        data = _read_json(path)
        if isinstance(data, Mapping) and "grid" in data:
            self.add_grid(path, data)
        elif _is_manifest(data):
            self.add_manifest(path, data)
        else:
            raise ValueError(
                f"{path}: neither an artifact manifest nor a budget_grid.py results JSON"
            )


def collect_runs(inputs: Sequence[Path]) -> tuple[list[Run], list[Reference]]:
    """Read every input; raises ``ValueError`` naming the first path that holds no run."""
    if not inputs:
        raise ValueError("no input given: name artifact folders, model stores or grid JSONs")
    collector = _Collector()
    for path in inputs:
        collector.add(Path(path))
    return sort_runs(collector.runs), collector.references


def _sharing_key(sharing: str) -> tuple[int, str]:
    order = SHARING_ORDER.index(sharing) if sharing in SHARING_ORDER else len(SHARING_ORDER)
    return order, sharing


def sort_runs(runs: Iterable[Run]) -> list[Run]:
    """Budget descending (unknown last), then sharing variant, then name/version."""
    return sorted(
        runs,
        key=lambda r: (
            r.budget is None,
            -(r.budget or 0.0),
            _sharing_key(r.sharing),
            r.model_name,
            r.version,
        ),
    )


# --------------------------------------------------------------------------------------------
# checks


def check_budget(run: Run) -> tuple[str, list[str]]:
    """``ok``/``over``/``unchecked`` and the notes: every domain's cost in the metric(s) its
    budget caps must be at or below the budget."""
    if run.budget is None:
        return "unchecked", ["no budget recorded"]
    fields = METRIC_FIELDS.get(run.budget_metric or "both", ("params", "macs"))
    notes: list[str] = []
    maxima: list[str] = []
    over = False
    for metric in fields:
        fractions = run.params_fraction if metric == "params" else run.macs_fraction
        missing = [n for n in run.domains if fractions.get(n) is None]
        if missing:
            notes.append(f"no {metric}_fraction for {', '.join(missing)}")
        values = {n: v for n in run.domains if (v := fractions.get(n)) is not None}
        if values:
            maxima.append(f"max {metric} {max(values.values()):.4f}")
        for name, value in values.items():
            if value > run.budget + BUDGET_TOLERANCE:
                over = True
                notes.append(f"{name} {metric}_fraction {value:.4f} > budget {run.budget:g}")
    if over:
        return "over", notes
    if not maxima:
        return "unchecked", notes or ["no domain costs recorded"]
    return "ok", [f"every domain within budget {run.budget:g} ({', '.join(maxima)})", *notes]


def channel_usage(manifest: Mapping[str, Any]) -> ChannelUsage | None:
    """Which backbone channels each domain uses, per block; ``None`` if the manifest lacks the
    channel lists. Without ``compact_channel_origin`` the columns are compact indices unless
    nothing was pruned in a block (then compact and backbone indices coincide)."""
    domains = [d for d in manifest.get("domains", []) if isinstance(d, Mapping)]
    channels = [d.get("channels") for d in domains]
    if not domains or not all(isinstance(c, list) and c for c in channels):
        return None
    n_blocks = len(channels[0])  # type: ignore[arg-type]
    lists: list[list[list[int]]] = []
    for per_domain in channels:
        assert isinstance(per_domain, list)
        if len(per_domain) != n_blocks or not all(
            isinstance(b, list) and all(isinstance(i, int) and i >= 0 for i in b)
            for b in per_domain
        ):
            return None
        lists.append(per_domain)
    full: list[int] | None = None
    try:
        arch = ArchSpec.from_dict(dict(_mapping(manifest.get("architecture"))))
        full = arch.full_mid_channels()
    except (ArchitectureError, TypeError, ValueError):
        full = None
    if full is not None and len(full) != n_blocks:
        full = None
    compact_raw = manifest.get("compact_mid_channels")
    origin_raw = manifest.get("compact_channel_origin")
    compact = [
        max((max(lists[d][b], default=-1) for d in range(len(lists))), default=-1) + 1
        for b in range(n_blocks)
    ]
    if isinstance(compact_raw, list) and len(compact_raw) == n_blocks:
        compact = [
            max(c, int(w)) if isinstance(w, int) else c
            for c, w in zip(compact, compact_raw, strict=True)
        ]
    origin: list[list[int]] | None = None
    if (
        full is not None
        and isinstance(origin_raw, list)
        and len(origin_raw) == n_blocks
        and all(
            isinstance(o, list)
            and len(o) == compact[b]
            and all(isinstance(i, int) and 0 <= i < full[b] for i in o)
            for b, o in enumerate(origin_raw)
        )
    ):
        origin = origin_raw
    elif full is not None and compact == full:
        origin = [list(range(w)) for w in full]  # nothing pruned: identity
    if origin is None or full is None:
        return ChannelUsage(
            widths=compact,
            used=[[set(b) for b in per_domain] for per_domain in lists],
            kept=[set(range(w)) for w in compact],
            backbone_positions=False,
            backbone_widths=full,
        )
    return ChannelUsage(
        widths=full,
        used=[[{origin[b][i] for i in idx} for b, idx in enumerate(d)] for d in lists],
        kept=[set(o) for o in origin],
        backbone_positions=True,
        backbone_widths=full,
    )


# --------------------------------------------------------------------------------------------
# plots


def _agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def _save(figure: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)


def _by_sharing(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: _sharing_key(r.sharing)):
        groups.setdefault(run.sharing, []).append(run)
    return {k: sorted(v, key=lambda r: r.budget or 0.0) for k, v in groups.items()}


@dataclass(frozen=True)
class _Style:
    marker: str
    color: str
    offset: float  # small x shift so that equal points of different variants stay visible


def _styles(runs: Sequence[Run], dodge: float = 0.006) -> dict[str, _Style]:
    """One marker, colour and x offset per sharing variant, the same in every plot."""
    variants = list(_by_sharing(runs))
    middle = (len(variants) - 1) / 2
    return {
        s: _Style(MARKERS[k % len(MARKERS)], f"C{k % 10}", (k - middle) * dodge)
        for k, s in enumerate(variants)
    }


def _budget_axis(axes: Any, runs: Sequence[Run]) -> None:
    budgets = sorted({r.budget for r in runs if r.budget is not None})
    axes.set_xlabel("budget β (each domain's cost cap, fraction of the backbone)")
    if budgets:
        axes.set_xticks(budgets)
    axes.set_xlim(min([0.0, *budgets]) - 0.02, max([1.0, *budgets]) + 0.05)
    axes.grid(True, alpha=0.3)


def plot_accuracy(runs: Sequence[Run], references: Sequence[Reference], path: Path) -> bool:
    """Mean test accuracy vs budget per sharing variant; ``False`` (no file) if no run has both."""
    points = [r for r in runs if r.budget is not None and r.mean_test_accuracy is not None]
    if not points:
        return False
    _agg()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.5, 5.0), layout="constrained")
    axes = figure.add_subplot()
    styles = _styles(runs)
    for sharing, group in _by_sharing(points).items():
        style = styles[sharing]
        xs = [r.budget + style.offset for r in group if r.budget is not None]
        ys = [r.mean_test_accuracy for r in group if r.mean_test_accuracy is not None]
        axes.plot(xs, ys, marker=style.marker, color=style.color, label=f"sharing: {sharing}")
    lines = ("--", ":", "-.")
    for k, reference in enumerate(references):
        axes.axhline(
            reference.mean_test_accuracy,
            color="0.3",
            linestyle=lines[k % len(lines)],
            label=f"{reference.label} ({reference.mean_test_accuracy:.3f})",
        )
    _budget_axis(axes, points)
    axes.set_ylabel("mean test accuracy (over domains)")
    axes.set_title("Accuracy vs budget")
    figure.legend(loc="outside right upper", fontsize="small")
    _save(figure, path)
    return True


def _reference_lines(axes: Any, runs: Sequence[Run]) -> None:
    top = max([1.0, *(r.budget for r in runs if r.budget is not None)]) + 0.05
    axes.axhline(1.0, color="0.2", linestyle="--", label="single-domain backbone")
    axes.plot([0.0, top], [0.0, top], color="0.5", linestyle=":", label="budget (y = β)")


def plot_costs(runs: Sequence[Run], path: Path) -> bool:
    """Compact params and domain MACs (over the backbone) vs budget; ``False`` if no data."""
    params = [r for r in runs if r.budget is not None and r.compact_params_fraction is not None]
    macs = [
        r
        for r in runs
        if r.budget is not None and any(v is not None for v in r.macs_fraction.values())
    ]
    if not params and not macs:
        return False
    _agg()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13.0, 5.0), layout="constrained")
    left, right = figure.subplots(1, 2, sharex=True)
    styles = _styles(runs)
    for sharing, group in _by_sharing(params).items():
        style = styles[sharing]
        left.plot(
            [(r.budget or 0.0) + style.offset for r in group],
            [r.compact_params_fraction or 0.0 for r in group],
            marker=style.marker,
            color=style.color,
            label=f"sharing: {sharing}",
        )
    for sharing, group in _by_sharing(macs).items():
        style = styles[sharing]
        xs, ys, low, high = [], [], [], []
        for run in group:
            values = [v for v in run.macs_fraction.values() if v is not None]
            average = sum(values) / len(values)
            xs.append((run.budget or 0.0) + style.offset)
            ys.append(average)
            low.append(average - min(values))
            high.append(max(values) - average)
        right.errorbar(
            xs,
            ys,
            yerr=[low, high],
            marker=style.marker,
            color=style.color,
            capsize=3,
            label=f"sharing: {sharing}",
        )
    for axes, title, ylabel, shown in (
        (
            left,
            "Everything needed to serve all domains",
            "compact params / backbone params",
            params,
        ),
        (
            right,
            "Each domain's compute (mean, bars: min..max over domains)",
            "domain MACs / backbone MACs",
            macs,
        ),
    ):
        _reference_lines(axes, runs)
        _budget_axis(axes, runs)
        axes.set_title(title, fontsize="medium")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0.0)
        if not shown:
            axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center")
        axes.legend(loc="upper left", fontsize="small")
    figure.suptitle("Cost vs budget (single-domain backbone = 1.0)")
    _save(figure, path)
    return True


def _run_title(run: Run) -> str:
    budget = "?" if run.budget is None else f"{run.budget:g}"
    weight = ""
    if run.sharing_weight is not None and run.sharing != "none":
        weight = f", γ = {run.sharing_weight:g}{' (learnable)' if run.learnable_weight else ''}"
    metric = f" ({run.budget_metric})" if run.budget_metric else ""
    return f"{run.label}: budget {budget}{metric}, sharing {run.sharing}{weight}"


def plot_channel_usage(run: Run, usage: ChannelUsage, path: Path) -> None:
    """One subplot per block: rows = domains + "kept after pruning", columns = channels."""
    _agg()
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = ["#d0d0d0", "#ffffff", "#1f77b4", "#2ca02c"]  # pruned, unused, used, kept
    cmap = ListedColormap(colours)
    n_blocks = len(usage.widths)
    blocks_per_stage = _mapping(_mapping(run.manifest).get("architecture")).get("blocks_per_stage")
    ncols = (
        blocks_per_stage
        if isinstance(blocks_per_stage, int) and 1 <= blocks_per_stage <= 6
        else min(4, n_blocks)
    )
    nrows = math.ceil(n_blocks / ncols)
    row_names = [*run.domains, "kept after pruning"]
    height = max(1.6, 0.28 * len(row_names) + 0.9)
    figure = Figure(figsize=(4.0 * ncols + 1.2, height * nrows + 1.3), layout="constrained")
    grid = figure.subplots(nrows, ncols, squeeze=False)
    for b in range(nrows * ncols):
        axes = grid[b // ncols][b % ncols]
        if b >= n_blocks:
            axes.set_visible(False)
            continue
        width = usage.widths[b]
        image = np.ones((len(row_names), width), dtype=float)
        for c in range(width):
            if c not in usage.kept[b]:
                image[:, c] = 0.0
            else:
                image[-1, c] = 3.0
        for d, used in enumerate(usage.used):
            for c in used[b]:
                if c < width:
                    image[d, c] = 2.0
        axes.imshow(image, cmap=cmap, vmin=-0.5, vmax=3.5, aspect="auto", interpolation="none")
        axes.axhline(len(run.domains) - 0.5, color="black", linewidth=0.8)
        total = usage.backbone_widths[b] if usage.backbone_widths else "?"
        axes.set_title(f"block {b}: {len(usage.kept[b])}/{total} kept", fontsize="small")
        axes.set_yticks(range(len(row_names)))
        axes.set_yticklabels(row_names if b % ncols == 0 else [], fontsize="x-small")
        axes.tick_params(axis="x", labelsize="x-small")
        if b >= n_blocks - ncols:
            axes.set_xlabel(
                "backbone channel" if usage.backbone_positions else "compact channel",
                fontsize="x-small",
            )
    handles = [
        Patch(facecolor=colours[2], edgecolor="0.5", label="used by the domain"),
        Patch(facecolor=colours[1], edgecolor="0.5", label="kept, not used by the domain"),
        Patch(facecolor=colours[3], edgecolor="0.5", label="kept after pruning (union)"),
    ]
    if usage.backbone_positions:
        handles.append(Patch(facecolor=colours[0], edgecolor="0.5", label="pruned"))
    title = f"Channel usage per block — {_run_title(run)}"
    if not usage.backbone_positions:
        title += "\n(columns are compact channels: the manifest has no compact_channel_origin)"
    figure.suptitle(title, fontsize="medium")
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    _save(figure, path)


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "run"


def _choose_channel_runs(runs: Sequence[Run], limit: int) -> list[tuple[Run, ChannelUsage]]:
    candidates = []
    for run in runs:
        usage = channel_usage(run.manifest) if run.manifest is not None else None
        if usage is not None:
            candidates.append((run, usage))
    if len(candidates) <= limit:
        return candidates
    default = [
        c
        for c in candidates
        if c[0].budget is not None and abs(c[0].budget - DEFAULT_BUDGET) < 1e-9
    ]
    return (default or candidates)[:limit]


# --------------------------------------------------------------------------------------------
# the report


def _row(run: Run) -> dict[str, Any]:
    macs = [v for v in run.macs_fraction.values() if v is not None]
    params = [v for v in run.params_fraction.values() if v is not None]
    return {
        "model_name": run.model_name,
        "version": run.version,
        "source": run.source,
        "budget": run.budget,
        "budget_metric": run.budget_metric,
        "sharing": run.sharing,
        "sharing_weight": run.sharing_weight,
        "learnable_sharing_weight": run.learnable_weight,
        "mean_test_accuracy": run.mean_test_accuracy,
        "test_accuracy": run.test_accuracy,
        "compact_params_fraction": run.compact_params_fraction,
        "domain_params_fraction": run.params_fraction,
        "domain_macs_fraction": run.macs_fraction,
        "max_domain_params_fraction": max(params) if params else None,
        "max_domain_macs_fraction": max(macs) if macs else None,
        "wall_time_s": run.wall_time_s,
        "budget_check": run.budget_status,
        "budget_notes": run.budget_notes,
        "channel_usage_plot": run.channel_plot,
    }


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_report(
    inputs: Sequence[Path], out_dir: Path, max_channel_plots: int = MAX_CHANNEL_PLOTS
) -> dict[str, Any]:
    """Read the runs, write ``out_dir/report.{md,json}`` and the plots; returns the JSON."""
    if max_channel_plots < 0:
        raise ValueError(f"max channel plots must be >= 0, got {max_channel_plots}")
    runs, references = collect_runs(inputs)
    for run in runs:
        run.budget_status, run.budget_notes = check_budget(run)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    plots: dict[str, Any] = {"accuracy_vs_budget": None, "cost_vs_budget": None}
    if plot_accuracy(runs, references, out_dir / ACCURACY_PLOT):
        plots["accuracy_vs_budget"] = ACCURACY_PLOT
    if plot_costs(runs, out_dir / COST_PLOT):
        plots["cost_vs_budget"] = COST_PLOT
    names: set[str] = set()
    channel_plots = []
    for run, usage in _choose_channel_runs(runs, max_channel_plots):
        stem = _file_stem(f"channel_usage_{run.model_name}_{run.version}")
        name, k = f"{stem}.png", 2
        while name in names:
            name, k = f"{stem}-{k}.png", k + 1
        names.add(name)
        plot_channel_usage(run, usage, out_dir / name)
        run.channel_plot = name
        channel_plots.append(name)
    plots["channel_usage"] = channel_plots

    report = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [str(p) for p in inputs],
        "rows": [_row(r) for r in runs],
        "references": [
            {"label": r.label, "mean_test_accuracy": r.mean_test_accuracy, "source": r.source}
            for r in references
        ],
        "plots": plots,
        "budget_check": {
            status: sum(r.budget_status == status for r in runs)
            for status in ("ok", "over", "unchecked")
        },
    }
    _write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    _write_text(out_dir / "report.md", render_markdown(report))
    return report


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    rows: list[Mapping[str, Any]] = report["rows"]
    names = list(dict.fromkeys(n for row in rows for n in row["test_accuracy"]))
    lines = [
        "# Budget-aware multi-domain pruning: report",
        "",
        f"Created {report['created_at']} from: " + ", ".join(f"`{p}`" for p in report["inputs"]),
        "",
        "Accuracy is test top-1. `compact/backbone params` counts everything needed to serve all "
        "domains (compact shared convolutions + every domain's BN and head) over the "
        "single-domain backbone. `domain MACs` and `domain params` are each domain's "
        "subnetwork over the backbone (max over domains). `–`: not recorded.",
        "",
        "| budget | metric | sharing | run | "
        + "".join(f"{n} | " for n in names)
        + "mean acc | compact/backbone params | max domain params | max domain MACs "
        "| train s | budget check |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|---|---|",
    ]
    for row in rows:
        accuracy = "".join(f"{_fmt(row['test_accuracy'].get(n))} | " for n in names)
        budget = "–" if row["budget"] is None else f"{row['budget']:g}"
        wall = "–" if row["wall_time_s"] is None else f"{row['wall_time_s']:.0f}"
        lines.append(
            f"| {budget} | {row['budget_metric'] or '–'} | {row['sharing']} | "
            f"{row['model_name']}/{row['version']} | {accuracy}"
            f"{_fmt(row['mean_test_accuracy'], 4)} | {_fmt(row['compact_params_fraction'])} | "
            f"{_fmt(row['max_domain_params_fraction'])} | "
            f"{_fmt(row['max_domain_macs_fraction'])} | {wall} | "
            f"{'**OVER**' if row['budget_check'] == 'over' else row['budget_check']} |"
        )
    for reference in report["references"]:
        lines.append(
            f"| – | – | – | {reference['label']} | "
            + "– | " * len(names)
            + f"{reference['mean_test_accuracy']:.4f} | – | – | – | – | – |"
        )
    check = report["budget_check"]
    lines += [
        "",
        "## Budget check",
        "",
        f"Every domain's cost in the metric(s) its budget caps must be at or below the budget: "
        f"{check['ok']} ok, {check['over']} over, {check['unchecked']} unchecked.",
        "",
    ]
    for row in rows:
        status = {"ok": "ok", "over": "**OVER BUDGET**", "unchecked": "not checked"}[
            row["budget_check"]
        ]
        notes = "; ".join(row["budget_notes"])
        lines.append(f"- `{row['model_name']}/{row['version']}`: {status}: {notes}")
    plots = report["plots"]
    lines += ["", "## Figures", ""]
    for key, caption in (
        ("accuracy_vs_budget", "Mean test accuracy vs budget"),
        ("cost_vs_budget", "Params and MACs vs budget"),
    ):
        if plots.get(key):
            lines += [f"### {caption}", "", f"![{caption}]({plots[key]})", ""]
        else:
            lines += [f"### {caption}", "", "Not drawn: no run records both.", ""]
    if plots["channel_usage"]:
        lines += ["### Channel usage (which channels each domain uses, which survive pruning)", ""]
        for row in rows:
            if row["channel_usage_plot"]:
                label = f"{row['model_name']}/{row['version']}"
                lines += [f"![channel usage {label}]({row['channel_usage_plot']})", ""]
    return "\n".join(lines).rstrip() + "\n"
