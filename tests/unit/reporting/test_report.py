"""``mdprune report``: tables, plots and the budget check from small hand-written manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from mdprune.cli import app
from multidomain.arch import ArchSpec
from multidomain.costs import backbone_totals, compact_totals, subnet_totals
from multidomain.files import safetensors_shapes
from reporting.build import build_report
from reporting.channels import channel_usage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARCH = ArchSpec(width_mult=0.125, image_size=16)
DOMAINS = ("alpha", "beta", "gamma")


def fake_manifest(
    version: str,
    budget: float,
    sharing: str,
    accuracies: tuple[float, float, float],
    over_budget: bool = False,
) -> dict[str, Any]:
    """A consistent manifest: domain ``d`` uses every backbone channel ``c`` with
    ``(c + d) % 3 != 0`` of the first ``ceil(budget * width)`` channels of each block."""
    full = ARCH.full_mid_channels()
    used = [
        [
            list(range(w))
            if over_budget and d == 1
            else [c for c in range(max(1, round(budget * w))) if (c + d) % 3 != 0]
            for w in full
        ]
        for d in range(len(DOMAINS))
    ]
    origin = [sorted({c for d in used for c in d[b]}) for b in range(len(full))]
    backbone = backbone_totals(ARCH)
    domains = []
    for d, name in enumerate(DOMAINS):
        mids = [len(ch) for ch in used[d]]
        part = subnet_totals(ARCH, mids)
        lie = over_budget and d == 1  # the manifest claims less than its weights hold
        domains.append(
            {
                "name": name,
                "labels": ["a", "b"],
                "channels": [[origin[b].index(c) for c in used[d][b]] for b in range(len(full))],
                "mid_channels": mids,
                "params_fraction": budget - 0.1 if lie else part.params / backbone.params,
                "macs_fraction": budget - 0.1 if lie else part.macs / backbone.macs,
                "test_accuracy": accuracies[d],
                "val_accuracy": accuracies[d],
            }
        )
    compact = compact_totals(
        ARCH,
        [len(o) for o in origin],
        [d["mid_channels"] for d in domains],
        [len(d["labels"]) for d in domains],
    )
    return {
        "format": "multidomain-pruning-artifact",
        "format_version": 1,
        "model_name": "fake",
        "version": version,
        "architecture": ARCH.to_dict(),
        "compact_mid_channels": [len(o) for o in origin],
        "compact_channel_origin": origin,
        "budget": budget,
        "budget_metric": "both",
        "sharing": {"variant": sharing, "weight": 5.0, "learnable_weight": False},
        "backbone": {"params": backbone.params, "macs": backbone.macs},
        "compact": {"params": compact.params, "params_fraction": compact.params / backbone.params},
        "mean_test_accuracy": sum(accuracies) / len(accuracies),
        "training": {"config": {}, "wall_time_s": 12.5},
        "domains": domains,
    }


def artifact_shapes(manifest: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of the weights file ``multidomain.artifact`` writes for ``manifest``."""
    union = manifest["compact_mid_channels"]
    shapes: dict[str, tuple[int, ...]] = {"stem.conv.weight": (ARCH.stem_channels, 3, 3, 3)}
    for block, width in zip(ARCH.blocks(), union, strict=True):
        shapes[f"{block.name}.conv1.weight"] = (width, block.in_channels, 3, 3)
        shapes[f"{block.name}.conv2.weight"] = (block.out_channels, width, 3, 3)
        if block.has_projection:
            shapes[f"{block.name}.shortcut.conv.weight"] = (
                block.out_channels,
                block.in_channels,
                1,
                1,
            )
    for k, entry in enumerate(manifest["domains"]):
        layers = {"stem.bn": ARCH.stem_channels}
        for block, mid in zip(ARCH.blocks(), entry["mid_channels"], strict=True):
            layers[f"{block.name}.bn1"] = mid
            layers[f"{block.name}.bn2"] = block.out_channels
            if block.has_projection:
                layers[f"{block.name}.shortcut.bn"] = block.out_channels
        for layer, width in layers.items():
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"domains.{k}.{layer}.{leaf}"] = (width,)
        classes = len(entry["labels"])
        shapes[f"domains.{k}.head.weight"] = (classes, ARCH.feature_channels)
        shapes[f"domains.{k}.head.bias"] = (classes,)
    return shapes


def write_manifest(store: Path, manifest: dict[str, Any], weights: bool = True) -> Path:
    """The manifest and (unless ``weights`` is false) a weights file of the right shapes."""
    folder = store / manifest["model_name"] / manifest["version"]
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if weights:
        tensors = {n: np.zeros(s, dtype=np.float32) for n, s in artifact_shapes(manifest).items()}
        save_file(tensors, str(folder / "weights.safetensors"))
    return folder


def expected_fractions(manifest: dict[str, Any]) -> tuple[float, list[float], list[float]]:
    """Compact params fraction and each domain's params and MACs fractions, by the formulas."""
    backbone = backbone_totals(ARCH)
    mids = [d["mid_channels"] for d in manifest["domains"]]
    classes = [len(d["labels"]) for d in manifest["domains"]]
    compact = compact_totals(ARCH, manifest["compact_mid_channels"], mids, classes)
    parts = [subnet_totals(ARCH, m) for m in mids]
    return (
        compact.params / backbone.params,
        [p.params / backbone.params for p in parts],
        [p.macs / backbone.macs for p in parts],
    )


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC), path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    write_manifest(store, fake_manifest("b1", 1.0, "none", (0.9, 0.8, 0.7)))
    write_manifest(store, fake_manifest("b05-union", 0.5, "union", (0.85, 0.75, 0.65)))
    write_manifest(store, fake_manifest("b05-none", 0.5, "none", (0.8, 0.7, 0.6)))
    return store


def test_report_from_a_model_store(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "nested"
    report = build_report([store], out)

    rows = report["rows"]
    assert [(r["budget"], r["sharing"]) for r in rows] == [
        (1.0, "none"),
        (0.5, "none"),
        (0.5, "union"),
    ]
    union = rows[2]
    assert union["version"] == "b05-union"
    assert union["test_accuracy"] == {"alpha": 0.85, "beta": 0.75, "gamma": 0.65}
    assert union["mean_test_accuracy"] == pytest.approx(0.75)
    manifest = json.loads((store / "fake" / "b05-union" / "manifest.json").read_text())
    compact, params, macs = expected_fractions(manifest)
    assert union["compact_params_fraction"] == pytest.approx(compact, rel=1e-12)
    assert list(union["domain_params_fraction"].values()) == pytest.approx(params, rel=1e-12)
    assert list(union["domain_macs_fraction"].values()) == pytest.approx(macs, rel=1e-12)
    assert union["counted_from"]["weights"].endswith("b05-union/weights.safetensors")
    assert union["wall_time_s"] == 12.5
    assert set(union["domain_macs_fraction"]) == set(DOMAINS)
    assert all(r["budget_check"] == "ok" for r in rows)
    assert report["budget_check"] == {"ok": 3, "over": 0, "unchecked": 0}

    plots = report["plots"]
    assert plots["accuracy_vs_budget"] == "accuracy_vs_budget.png"
    assert plots["cost_vs_budget"] == "cost_vs_budget.png"
    assert sorted(plots["channel_usage"]) == [
        "channel_usage_fake_b05-none.png",
        "channel_usage_fake_b05-union.png",
        "channel_usage_fake_b1.png",
    ]
    for name in [plots["accuracy_vs_budget"], plots["cost_vs_budget"], *plots["channel_usage"]]:
        assert_png(out / name)
    assert json.loads((out / "report.json").read_text())["rows"] == rows
    markdown = (out / "report.md").read_text()
    assert "](accuracy_vs_budget.png)" in markdown and "](cost_vs_budget.png)" in markdown
    assert "](channel_usage_fake_b1.png)" in markdown
    assert markdown.count("every domain within budget") == 3
    assert "OVER" not in markdown
    assert not list(out.glob(".*.tmp"))


def test_channel_usage_maps_compact_indices_to_backbone_channels(store: Path) -> None:
    manifest = json.loads((store / "fake" / "b05-union" / "manifest.json").read_text())
    usage = channel_usage(manifest)
    assert usage is not None and usage.backbone_positions
    assert usage.widths == ARCH.full_mid_channels()
    # block 0 has 8 channels, budget 0.5 -> first 4; domain 0 skips c % 3 == 0
    assert usage.used[0][0] == {1, 2}
    assert usage.kept[0] == {0, 1, 2, 3}


def test_over_budget_domain_is_flagged(store: Path, tmp_path: Path) -> None:
    write_manifest(store, fake_manifest("bad", 0.5, "jaccard", (0.8, 0.8, 0.8), over_budget=True))
    report = build_report([store], tmp_path / "out")
    bad = next(r for r in report["rows"] if r["version"] == "bad")
    params = bad["domain_params_fraction"]["beta"]
    macs = bad["domain_macs_fraction"]["beta"]
    assert params > 0.9 and macs > 0.9  # beta uses every channel
    assert bad["budget_check"] == "over"
    notes = [
        f"beta params_fraction {params:.4f} > budget 0.5",
        f"beta macs_fraction {macs:.4f} > budget 0.5",
    ]
    assert bad["budget_notes"] == notes
    assert report["budget_check"]["over"] == 1
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert f"`fake/bad`: **OVER BUDGET**: {'; '.join(notes)}" in markdown
    # the manifest claimed 0.4: the check counted the weights, and the warning says so
    (warning,) = [w for w in report["warnings"] if w.startswith("fake/bad")]
    assert f"manifest records beta params_fraction 0.4000, the weights count {params:.4f}" in (
        warning
    )

    result = CliRunner().invoke(app, ["report", str(store), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 1
    assert "over budget: fake/bad" in result.output
    assert (tmp_path / "cli" / "report.md").is_file()


def test_each_domain_is_checked_against_its_own_budget_and_times_are_shown(
    tmp_path: Path,
) -> None:
    """A latency-budget run with a per-domain budget: its ``budget_costs`` are checked against
    each domain's own budget, and the measured and predicted time fractions are reported."""
    manifest = fake_manifest("lat", 0.5, "union", (0.8, 0.8, 0.8))
    manifest["budget_metric"] = "latency"
    costs = zip(manifest["domains"], (0.5, 0.3, 0.5), (0.45, 0.32, 0.5), strict=True)
    for entry, budget, cost in costs:
        entry["budget"] = budget
        entry["budget_costs"] = {"latency@32": cost}
        entry["latency"] = {
            "measured_fraction": {"1": cost + 0.2, "32": cost + 0.02},
            "predicted_fraction": {"1": cost + 0.1, "32": cost},
        }
    store = tmp_path / "store"
    write_manifest(store, manifest)
    report = build_report([store], tmp_path / "out")
    (row,) = report["rows"]
    assert row["domain_budgets"] == {"beta": 0.3}
    assert row["budget_check"] == "over"
    assert row["budget_notes"] == ["beta latency@32 0.3200 > budget 0.3"]
    assert row["time_batch"] == "32"
    assert row["max_domain_time_fraction"] == pytest.approx(0.52)
    assert row["max_domain_predicted_time_fraction"] == pytest.approx(0.5)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| 0.5 (beta 0.3) | latency | union |" in markdown
    assert "| 0.520 (0.500) @32 |" in markdown

    manifest["domains"][1]["budget_costs"] = {"latency@32": 0.29}
    (store / "fake" / "lat" / "manifest.json").write_text(json.dumps(manifest))
    (row,) = build_report([store], tmp_path / "again")["rows"]
    assert row["budget_check"] == "ok"
    assert row["budget_notes"] == [
        "every domain within budget 0.5, beta 0.3 (max latency@32 0.5000)"
    ]


def test_many_runs_draw_channel_usage_only_at_the_default_budget(
    store: Path, tmp_path: Path
) -> None:
    for k, budget in enumerate((0.75, 0.25, 0.25)):
        write_manifest(store, fake_manifest(f"extra{k}", budget, "union", (0.5, 0.5, 0.5)))
    report = build_report([store], tmp_path / "out", max_channel_plots=4)
    assert sorted(report["plots"]["channel_usage"]) == [
        "channel_usage_fake_b05-none.png",
        "channel_usage_fake_b05-union.png",
    ]


def test_grid_json_with_and_without_artifacts(store: Path, tmp_path: Path) -> None:
    rows = [
        {"artifact": str(store / "fake" / "b1"), "budget": 1.0, "sharing": "none"},
        {
            "artifact": "gone/grid/b0.25-union",
            "budget": 0.25,
            "sharing": "union",
            "mean_test_accuracy": 0.6,
            "test_accuracy": {"alpha": 0.6, "beta": 0.6, "gamma": 0.6},
            "compact_params_fraction": 0.3,
            "domain_macs_fraction": {"alpha": 0.2, "beta": 0.25, "gamma": 0.24},
            "domain_params_fraction": {"alpha": 0.2, "beta": 0.24, "gamma": 0.3},
            "wall_time_s": 40.0,
        },
    ]
    grid = {
        "backbone": {"mean_test_accuracy": 0.88, "test_accuracy": {}},
        "grid": rows,
        "reference_finetuned_alone": {
            "alpha": {"test_accuracy": 0.9},
            "beta": {"test_accuracy": 0.8},
            "gamma": {"test_accuracy": 1.0},
        },
    }
    grid_file = tmp_path / "budget_grid.json"
    grid_file.write_text(json.dumps(grid))
    # the store is named too: its b1 run must not appear twice
    report = build_report([grid_file, store], tmp_path / "out")
    versions = [(r["version"], r["budget_check"]) for r in report["rows"]]
    assert versions == [
        ("b1", "ok"),
        ("b05-none", "ok"),
        ("b05-union", "ok"),
        ("b0.25-union", "unchecked"),  # no weights: its recorded ratios are not used
    ]
    assert report["rows"][-1]["channel_usage_plot"] is None
    assert [(r["label"], r["mean_test_accuracy"]) for r in report["references"]] == [
        ("backbone (pre-trained, all domains)", 0.88),
        ("each domain fine-tuned alone", pytest.approx(0.9)),
    ]
    assert_png(tmp_path / "out" / "accuracy_vs_budget.png")


def test_tiny_artifact_without_optional_fields(tmp_path: Path) -> None:
    from tests.artifacts import write_tiny_artifact

    path = write_tiny_artifact(tmp_path / "store")
    manifest = json.loads((path / "manifest.json").read_text())
    assert "compact" not in manifest and "params_fraction" not in manifest["domains"][0]
    report = build_report([path], tmp_path / "out")
    (row,) = report["rows"]
    assert row["mean_test_accuracy"] == pytest.approx(0.5)
    # no fraction recorded: the weights are counted (random masks keeping about half of the
    # channels, over the budget of 0.5 the manifest claims once the fixed part is added)
    arch = ArchSpec.from_dict(manifest["architecture"])
    mids = [[len(c) for c in d["channels"]] for d in manifest["domains"]]
    classes = [len(d["labels"]) for d in manifest["domains"]]
    compact = compact_totals(arch, manifest["compact_mid_channels"], mids, classes)
    expected = compact.params / backbone_totals(arch).params
    assert row["compact_params_fraction"] == pytest.approx(expected, rel=1e-12)
    assert row["counted_from"]["backbone"] == "the architecture (backbone weights not found)"
    assert row["budget_check"] == "over"
    assert row["channel_usage_plot"] == "channel_usage_tiny_v1.png"
    assert_png(tmp_path / "out" / "channel_usage_tiny_v1.png")
    assert report["plots"]["cost_vs_budget"] == "cost_vs_budget.png"
    assert "**OVER BUDGET**" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("kind", ["missing", "empty", "not-json", "other-json"])
def test_bad_input_is_a_one_line_error(kind: str, tmp_path: Path) -> None:
    target = tmp_path / "input"
    if kind == "empty":
        target.mkdir()
    elif kind == "not-json":
        target.write_text("{nope")
    elif kind == "other-json":
        target.write_text(json.dumps({"hello": 1}))
    result = CliRunner().invoke(app, ["report", str(target), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and str(target) in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def grid_of(store: Path, versions: list[str], with_manifest: bool) -> dict[str, Any]:
    """A budget_grid.py result whose rows point at run folders that are gone; with or without
    the copy of each manifest that the grid records."""
    rows = []
    for version in versions:
        manifest = json.loads((store / "fake" / version / "manifest.json").read_text())
        row: dict[str, Any] = {
            "artifact": f"gone/fake/{version}",
            "budget": manifest["budget"],
            "sharing": manifest["sharing"]["variant"],
            "mean_test_accuracy": manifest["mean_test_accuracy"],
            "test_accuracy": {d["name"]: d["test_accuracy"] for d in manifest["domains"]},
            "compact_params_fraction": manifest["compact"]["params_fraction"],
            "domain_macs_fraction": {d["name"]: d["macs_fraction"] for d in manifest["domains"]},
            "domain_params_fraction": {
                d["name"]: d["params_fraction"] for d in manifest["domains"]
            },
            "wall_time_s": manifest["training"]["wall_time_s"],
        }
        if with_manifest:
            row["manifest"] = manifest
            row["weights_shapes"] = safetensors_shapes(
                store / "fake" / version / "weights.safetensors"
            )
        rows.append(row)
    return {"grid": rows}


VERSIONS = ["b1", "b05-union", "b05-none"]


def test_grid_with_recorded_manifests_reproduces_the_report_without_run_folders(
    store: Path, tmp_path: Path
) -> None:
    from_store = build_report([store], tmp_path / "from-store")
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps(grid_of(store, VERSIONS, with_manifest=True)))
    warnings: list[str] = []
    from_grid = build_report([grid_file], tmp_path / "from-grid", warn=warnings.append)

    assert warnings == [] and from_grid["warnings"] == []
    assert from_grid["plots"] == from_store["plots"]
    keep = lambda row: {  # noqa: E731
        k: v for k, v in row.items() if k not in ("source", "counted_from")
    }
    assert [keep(r) for r in from_grid["rows"]] == [keep(r) for r in from_store["rows"]]
    assert "Not found or not recorded" not in (tmp_path / "from-grid" / "report.md").read_text()


def test_grid_without_run_folders_names_what_it_could_not_use(store: Path, tmp_path: Path) -> None:
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps(grid_of(store, ["b05-union"], with_manifest=False)))
    result = CliRunner().invoke(app, ["report", str(grid_file), "--out", str(tmp_path / "out")])

    assert result.exit_code == 0, result.output
    warning = (
        "fake/b05-union: artifact folder gone/fake/b05-union not found, nor a copy of its "
        f"manifest in {grid_file}; not recorded: budget_metric, sharing weight, "
        "weights (no ratio counted), channel lists"
    )
    assert f"warning: {warning}" in result.output
    assert "1 runs, 1 plots, 1 warnings" in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["warnings"] == [warning]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert f"## Not found or not recorded\n\n- {warning}\n" in markdown


def test_a_fuller_report_is_kept_unless_forced_and_stale_pictures_go(
    store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    full = build_report([store], out)
    full_json = (out / "report.json").read_bytes()
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert len(full["plots"]["channel_usage"]) == 3
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps(grid_of(store, VERSIONS, with_manifest=False)))

    result = CliRunner().invoke(app, ["report", str(grid_file), "--out", str(out)])
    assert result.exit_code == 2
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"error: {out / 'report.json'} shows more of these runs")
    assert "channel-usage pictures 3" in error and "--force" in error
    assert result.output.count("warning: ") == 3
    assert (out / "report.json").read_bytes() == full_json
    assert sorted(p.name for p in out.glob("*.png")) == pictures

    result = CliRunner().invoke(app, ["report", str(grid_file), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    replaced = json.loads((out / "report.json").read_text())
    assert replaced["plots"]["channel_usage"] == []
    assert sorted(p.name for p in out.glob("*.png")) == ["accuracy_vs_budget.png"]


def test_a_report_of_other_runs_replaces_the_previous_one(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    build_report([store / "fake" / "b1"], out)
    assert (out / "channel_usage_fake_b1.png").is_file()
    report = build_report([store / "fake" / "b05-union"], out)
    assert report["plots"]["channel_usage"] == ["channel_usage_fake_b05-union.png"]
    assert not (out / "channel_usage_fake_b1.png").exists()


def test_nested_levels_are_plotted_next_to_models_trained_alone(
    store: Path, tmp_path: Path
) -> None:
    nested = fake_manifest("nested", 1.0, "none", (0.9, 0.8, 0.7))
    nested["budgets"] = [1.0, 0.5]
    nested["levels"] = [
        {"budget": 1.0, "mean_test_accuracy": 0.81},
        {"budget": 0.5, "mean_test_accuracy": 0.72},
    ]
    write_manifest(store, nested)
    out = tmp_path / "out"
    report = build_report([store], out)
    rows = {row["budget"]: row for row in report["nested"]}
    assert set(rows) == {1.0, 0.5}
    assert rows[0.5]["nested_mean_test_accuracy"] == pytest.approx(0.72)
    # the run of the same sharing variant (none: 0.7), not the best of all (union: 0.75)
    assert rows[0.5]["alone_mean_test_accuracy"] == pytest.approx(0.7)
    assert rows[0.5]["alone_runs"] == ["fake/b05-none"]
    assert rows[0.5]["difference"] == pytest.approx(0.02)
    assert rows[1.0]["alone_mean_test_accuracy"] == pytest.approx(0.8)
    # the nested run (budget 1.0, none) is not one of the budget-1.0 runs of the run table
    assert report["settings"] == []  # artifact folders: no seeds, no settings over seeds
    sizes = report["nested_sizes"]
    assert [s["alone_runs"] for s in sizes] == [{"1": "fake/b1", "0.5": "fake/b05-none"}]
    assert report["plots"]["nested_accuracy_vs_budget"] == "nested_accuracy_vs_budget.png"
    assert_png(out / "nested_accuracy_vs_budget.png")
    markdown = (out / "report.md").read_text()
    assert "## Nested levels vs trained alone" in markdown
    assert "](nested_accuracy_vs_budget.png)" in markdown
    # without a nested run there is no such plot or table
    plain = build_report([store / "fake" / "b1"], tmp_path / "plain")
    assert plain["nested"] == [] and "nested_accuracy_vs_budget" not in plain["plots"]


def nested_manifest(
    version: str,
    sharing: str,
    levels: dict[float, tuple[float, float, float]],
    level_state: str | None = None,
    steps: int = 300,
):
    """A nested manifest (levels largest first) whose largest level is ``fake_manifest``'s at
    budget 1.0, each level's mean and per-domain test accuracy recorded as the exporter does
    (``level_state`` None: made before the exporter recorded it)."""
    budgets = sorted(levels, reverse=True)
    manifest = fake_manifest(version, budgets[0], sharing, levels[budgets[0]])
    manifest["training"]["config"] = {"steps": steps}
    if level_state is not None:
        manifest["level_state"] = level_state
    manifest["budgets"] = budgets
    manifest["levels"] = [{"budget": b, "mean_test_accuracy": sum(levels[b]) / 3} for b in budgets]
    for k, domain in enumerate(manifest["domains"]):
        domain["levels"] = [{"budget": b, "test_accuracy": levels[b][k]} for b in budgets]
    return manifest


def nested_shapes(manifest: dict[str, Any]) -> dict[str, list[int]]:
    """``artifact_shapes`` plus every lower level's BatchNorm tensors (``levels.<j>.<k>.*``)."""
    shapes = {n: list(s) for n, s in artifact_shapes(manifest).items()}
    for j in range(1, len(manifest["budgets"])):
        for name, shape in list(shapes.items()):
            if name.startswith("domains.") and ".head." not in name:
                _, k, rest = name.split(".", 2)
                shapes[f"levels.{j}.{k}.{rest}"] = shape
    return shapes


def grid_row(manifest: dict[str, Any], protocol: str, seed: int) -> dict[str, Any]:
    nested = "levels" in manifest
    shapes = nested_shapes(manifest) if nested else artifact_shapes(manifest)
    row: dict[str, Any] = {
        "artifact": f"gone/fake/{manifest['version']}",
        "protocol": protocol,
        "seed": seed,
        "budget": manifest["budget"],
        "sharing": manifest["sharing"]["variant"],
        "manifest": manifest,
        "weights_shapes": {n: list(s) for n, s in shapes.items()},
    }
    if nested:
        row["nested"] = True
    return row


def fp32(shapes: dict[str, Any]) -> int:
    return 4 * sum(int(np.prod(s)) for s in shapes.values())


def test_grid_nested_levels_compare_same_protocol_seed_and_sharing(tmp_path: Path) -> None:
    held = [
        fake_manifest("s0-b1-union", 1.0, "union", (0.9, 0.8, 0.7)),
        fake_manifest("s0-b05-union", 0.5, "union", (0.8, 0.7, 0.6)),
        fake_manifest("s0-b05-none", 0.5, "none", (0.95, 0.95, 0.95)),  # best of all at 0.5
        nested_manifest("s0-nested-union", "union", {1.0: (0.9, 0.8, 0.72), 0.5: (0.8, 0.7, 0.63)}),
        fake_manifest("s1-b1-union", 1.0, "union", (0.88, 0.8, 0.7)),
        fake_manifest("s1-b05-union", 0.5, "union", (0.78, 0.7, 0.6)),
        nested_manifest("s1-nested-union", "union", {1.0: (0.88, 0.8, 0.7), 0.5: (0.7, 0.6, 0.5)}),
        # private level state, more steps: compared with the same alone runs, never averaged
        # with the shared runs above
        nested_manifest(
            "s0-nested-union-private",
            "union",
            {1.0: (0.9, 0.8, 0.7), 0.5: (0.8, 0.7, 0.6)},
            level_state="private",
            steps=900,
        ),
    ]
    rows = [grid_row(m, "held-out", int(m["version"][1])) for m in held]
    # the other protocol's run at 0.5 (seed 0, union) is better still: not compared either
    rows.append(
        grid_row(fake_manifest("s0-b05-union-sd", 0.5, "union", (1.0, 1.0, 1.0)), "same-domain", 0)
    )
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps({"grid": rows}))
    out = tmp_path / "report"
    report = build_report([grid_file], out)

    by_level = {
        (r["seed"], r["budget"]): r for r in report["nested"] if r["level_state"] == "shared"
    }
    assert set(by_level) == {(0, 1.0), (0, 0.5), (1, 1.0), (1, 0.5)}
    assert by_level[(0, 0.5)]["alone_runs"] == ["fake/s0-b05-union"]
    assert by_level[(0, 0.5)]["alone_mean_test_accuracy"] == pytest.approx(0.7)
    assert by_level[(0, 0.5)]["difference"] == pytest.approx(0.71 - 0.7)
    assert by_level[(1, 0.5)]["alone_mean_test_accuracy"] == pytest.approx(2.08 / 3)
    assert by_level[(1, 0.5)]["nested_test_accuracy"] == {
        "alpha": 0.7,
        "beta": 0.6,
        "gamma": 0.5,
    }

    # over seeds: mean ± std of the nested, the alone and the per-seed differences (points)
    levels = {r["budget"]: r for r in report["nested_levels"] if r["level_state"] == "shared"}
    low = levels[0.5]
    assert (low["protocol"], low["sharing"], low["seeds"]) == ("held-out", "union", [0, 1])
    differences = [100 * (0.71 - 0.7), 100 * (0.6 - 2.08 / 3)]
    assert low["difference_points"]["mean"] == pytest.approx(np.mean(differences))
    assert low["difference_points"]["std"] == pytest.approx(np.std(differences, ddof=1))
    assert low["nested_mean_test_accuracy"]["mean"] == pytest.approx((0.71 + 0.6) / 2)
    assert low["alone_mean_test_accuracy"]["mean"] == pytest.approx((0.7 + 2.08 / 3) / 2)
    assert low["within_tolerance"] is False
    assert levels[1.0]["within_tolerance"] is True
    (private,) = [
        r for r in report["nested_levels"] if r["level_state"] == "private" and r["budget"] == 0.5
    ]
    assert (private["steps"], private["seeds"]) == (900, [0])
    assert private["difference_points"]["mean"] == pytest.approx(100 * (0.7 - 0.7))

    # nested runs are not averaged into the one-budget settings
    settings = {(s["protocol"], s["budget"], s["sharing"]): s for s in report["settings"]}
    full = settings[("held-out", 1.0, "union")]
    assert full["seeds"] == [0, 1]
    assert full["mean_test_accuracy"]["mean"] == pytest.approx((0.8 + 2.38 / 3) / 2)

    # sizes: every tensor at 4 bytes, the nested artifact against the alone ones it replaces
    sizes = {s["seed"]: s for s in report["nested_sizes"]}
    assert sizes[0]["alone_runs"] == {"1": "fake/s0-b1-union", "0.5": "fake/s0-b05-union"}
    nested_bytes = fp32(rows[3]["weights_shapes"])
    summed = fp32(rows[0]["weights_shapes"]) + fp32(rows[1]["weights_shapes"])
    assert sizes[0]["nested_weight_bytes"] == nested_bytes
    assert sizes[0]["alone_weight_bytes_sum"] == summed
    assert sizes[0]["smaller"] is (nested_bytes < summed) is True
    nested_row = next(r for r in report["rows"] if r["version"] == "s0-nested-union")
    assert nested_row["nested"] and nested_row["compact_params_fraction"] is not None

    assert_png(out / "nested_accuracy_vs_budget.png")
    markdown = (out / "report.md").read_text()
    assert "## Nested levels vs trained alone" in markdown
    assert "| held-out | union | both | shared | 300 | 0.5 | 0,1 |" in markdown
    assert "| held-out | union | both | private | 900 | 0.5 | 0 |" in markdown
    assert "**no**" in markdown
    assert "| nested 1, 0.5 |" in markdown


def with_history(manifest: dict[str, Any], final_cost: float) -> dict[str, Any]:
    """``manifest`` with a three-row ``training.history`` whose costs fall to ``final_cost``."""
    costs = [1.0, (1.0 + final_cost) / 2, final_cost]
    manifest["training"]["history"] = {
        "every": 5,
        "step": [5, 10, 15],
        "ce": [1.2, 0.8, 0.5],
        "accuracy": [0.5, 0.7, 0.8],
        "sharing_loss": [1.0, 0.7, 0.5],
        "sharing_weight": [5.0, 5.0, 5.0],
        "budget_penalty": [0.3, 0.1, 0.0],
        "target": {name: [0.9, 0.7, 0.5] for name in DOMAINS},
        "cost": {
            "macs": {name: [c - 0.01 * k for c in costs] for k, name in enumerate(DOMAINS)},
            "params": {name: [c - 0.02 for c in costs] for name in DOMAINS},
        },
    }
    return manifest


def test_the_training_history_is_plotted(tmp_path: Path) -> None:
    from reporting.inputs import run_from_manifest
    from reporting.plots import _history_curves

    store = tmp_path / "store"
    for version, sharing, final in (("u", "union", 0.45), ("n", "none", 0.5)):
        write_manifest(
            store, with_history(fake_manifest(version, 0.5, sharing, (0.8, 0.7, 0.6)), final)
        )
    write_manifest(store, fake_manifest("b1", 1.0, "none", (0.9, 0.8, 0.7)))  # no history
    out = tmp_path / "out"
    report = build_report([store], out)
    assert report["plots"]["training_history"] == "training_history.png"
    assert_png(out / "training_history.png")
    assert "](training_history.png)" in (out / "report.md").read_text()
    manifest = json.loads((store / "fake" / "u" / "manifest.json").read_text())
    curves = _history_curves(run_from_manifest(manifest, "u"))
    assert curves["cost:macs"] == pytest.approx([1.0, 0.725, 0.45])  # largest over domains
    assert curves["target"] == [0.9, 0.7, 0.5] and curves["ce"] == [1.2, 0.8, 0.5]
    # runs without a recorded history: no such plot
    plain = build_report([store / "fake" / "b1"], tmp_path / "plain")
    assert plain["plots"]["training_history"] is None
    assert "training_history.png" not in (tmp_path / "plain" / "report.md").read_text()


def test_a_run_in_several_grid_files_is_counted_once(store: Path, tmp_path: Path) -> None:
    """A grid run in pieces records a shared run in each piece's file; without its folder the
    run is known by its artifact path and weights digest."""
    files = []
    for name, versions in (("a", ["b1", "b05-union"]), ("b", ["b05-union", "b05-none"])):
        grid = grid_of(store, versions, with_manifest=True)
        for row in grid["grid"]:
            row["manifest"]["weights_sha256"] = f"digest-of-{row['artifact']}"
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(grid))
    report = build_report(files, tmp_path / "out")
    assert sorted(row["version"] for row in report["rows"]) == ["b05-none", "b05-union", "b1"]
    # the same path with other weights (a scratch folder trained again) is another run
    again = grid_of(store, ["b05-union"], with_manifest=True)
    again["grid"][0]["manifest"]["weights_sha256"] = "digest-of-another-training"
    files.append(tmp_path / "c.json")
    files[-1].write_text(json.dumps(again))
    report = build_report(files, tmp_path / "out2")
    assert [row["version"] for row in report["rows"]].count("b05-union") == 2
