"""``bench/budget_grid.py`` end to end at a tiny scale: two protocols (the held-out one adapts
a backbone to a domain it never saw), two seeds, the report's mean ± std and S-score from
counted weights, a grid that continues where an interrupted one stopped, and nested runs
(``--nested``) next to the runs trained alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reporting.build import build_report

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def grid(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The grid at the smallest scale; budget 1.0, so that no projection (and no fine-tuning
    after it) adds steps."""
    return run_grid(
        tmp_path,
        "--seeds", "0", "1", "--protocol", "same-domain", "held-out", "--budgets", "1.0", *extra
    )  # fmt: skip


def run_grid(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """The grid at tiny widths and steps; ``options`` come last (a later option wins)."""
    command = [
        sys.executable, str(ROOT / "bench" / "budget_grid.py"), "--sharing", "union",
        "--steps", "3", "--pretrain-steps", "3", "--reference-steps", "2",
        "--width", "0.125", "--image-size", "16", "--channel-group", "4",
        "--same-domain-domains", "embedded:digits", "embedded:faces",
        "--source-domains", "embedded:digits", "--target-domains", "embedded:faces",
        "--scratch", str(tmp_path / "scratch"), "--cache-dir", str(tmp_path / "cache"),
        "--out", str(tmp_path / "results" / "grid"), *options,
    ]  # fmt: skip
    env = {**os.environ, "MDP_TORCH_THREADS": "1"}
    return subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False, env=env
    )


def test_grid_over_seeds_and_protocols_resumes_and_counts(tmp_path: Path) -> None:
    done = grid(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "grid.json").read_text())
    assert result["protocols"]["held-out"]["sources"] == ["digits"]
    assert result["protocols"]["held-out"]["targets"] == ["faces"]
    rows = result["grid"]
    assert {(r["protocol"], r["seed"], r["budget"]) for r in rows} == {
        (p, s, 1.0) for p in ("same-domain", "held-out") for s in (0, 1)
    }
    assert all("fraction" not in key for row in rows for key in row)  # ratios are counted
    assert all(r["weights_shapes"] for r in rows)
    alone = result["reference_finetuned_alone"]
    assert {(r["protocol"], r["seed"], r["domain"]) for r in alone} == {
        ("same-domain", 0, "digits"), ("same-domain", 0, "faces"),
        ("same-domain", 1, "digits"), ("same-domain", 1, "faces"),
        ("held-out", 0, "faces"), ("held-out", 1, "faces"),
    }  # fmt: skip
    markdown = (tmp_path / "results" / "grid.md").read_text()
    assert "## Settings over seeds" in markdown and " ± " in markdown
    assert "load average" in markdown and "## What differs (by the rule)" in markdown

    # interrupted after one export, before its result was written: continues without training
    scratch = tmp_path / "scratch"
    (scratch / "held-out" / "results" / "s1-b1-union.json").unlink()
    weights = scratch / "held-out" / "store" / "grid" / "s1-b1-union" / "weights.safetensors"
    written = weights.stat().st_mtime_ns
    again = grid(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, reused") == 3
    assert weights.stat().st_mtime_ns == written
    assert json.loads((tmp_path / "results" / "grid.json").read_text())["grid"] == rows

    # other settings in the same scratch folder are refused, naming the file
    other = grid(tmp_path, "--steps", "4")
    assert other.returncode != 0
    assert "was run with other settings" in other.stderr and "use another --scratch" in other.stderr

    # the report counts the same figures from the recorded shapes once the run folders are gone
    (tmp_path / "scratch").rename(tmp_path / "moved")
    report = build_report([tmp_path / "results" / "grid.json"], tmp_path / "report")
    assert all("recorded" in r["counted_from"]["weights"] for r in report["rows"])
    assert all("recorded" in r["counted_from"]["backbone"] for r in report["rows"])
    held = [r for r in report["rows"] if r["protocol"] == "held-out"]
    assert len(held) == 2 and all(r["s_score"] is not None for r in held)
    assert all(r["budget_check"] == "ok" for r in report["rows"])
    settings = [s for s in report["settings"] if s["protocol"] == "held-out"]
    assert [s["seeds"] for s in settings] == [[0, 1]]
    assert all(s["compact_params_fraction"]["n"] == 2 for s in settings)
    references = {(r["protocol"], r["kind"]): r for r in report["references"]}
    backbone = references[("same-domain", "backbone")]
    assert backbone["params_fraction"] > 1.0  # every BN set and head of its two domains
    assert references[("held-out", "alone")]["params_fraction"] > 1.0
    assert report["plots"]["score_vs_params"] == "score_vs_params.png"


def nested_grid(tmp_path: Path, *budgets: str) -> subprocess.CompletedProcess[str]:
    """One protocol and seed, a nested run over two budgets next to a run at each budget."""
    return run_grid(
        tmp_path, "--seeds", "0", "--protocol", "held-out", "--budgets", *budgets, "--nested"
    )


def test_grid_nested_runs_next_to_runs_trained_alone(tmp_path: Path) -> None:
    refused = nested_grid(tmp_path, "1.0")
    assert refused.returncode == 2 and "--nested needs at least two different --budgets" in (
        refused.stderr
    )
    assert not (tmp_path / "scratch").exists() and not (tmp_path / "results").exists()

    done = nested_grid(tmp_path, "1.0", "0.75")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "grid.json").read_text())
    rows = result["grid"]
    nested = [r for r in rows if r.get("nested")]
    assert len(nested) == 1 and len(rows) == 3
    row = nested[0]
    assert (row["protocol"], row["seed"], row["sharing"], row["budget"]) == (
        "held-out", 0, "union", 1.0
    )  # fmt: skip
    assert [level["budget"] for level in row["levels"]] == [1.0, 0.75]
    assert all(set(level["test_accuracy"]) == {"faces"} for level in row["levels"])
    assert row["weights_shapes"] and row["manifest"]["levels"] and row["wall_time_s"] > 0
    for domain in row["manifest"]["domains"]:  # every lower level within the one above
        top, low = (level["channels"] for level in domain["levels"])
        assert all(set(b) <= set(a) for a, b in zip(top, low, strict=True))
        assert sum(map(len, low)) < sum(map(len, top))
    markdown = (tmp_path / "results" / "grid.md").read_text()
    assert "## Nested levels vs trained alone" in markdown
    assert "| held-out | union | both | private | 3 | 0.75 | 0 |" in markdown
    assert "0.75: `grid/s0-b0.75-union`" in markdown  # the run it replaces, for the size

    # a second invocation reuses every run: nothing is trained or exported again
    weights = tmp_path / "scratch" / "held-out" / "store" / "grid"
    written = {p: p.stat().st_mtime_ns for p in weights.glob("*/weights.safetensors")}
    assert len(written) == 3
    again = nested_grid(tmp_path, "1.0", "0.75")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, reused") == 3
    assert {p: p.stat().st_mtime_ns for p in weights.glob("*/weights.safetensors")} == written
    assert json.loads((tmp_path / "results" / "grid.json").read_text())["grid"] == rows

    # the report: the nested run is not a budget-1.0 run of the settings; its plot and table
    report = build_report([tmp_path / "results" / "grid.json"], tmp_path / "report")
    settings = {(s["budget"], s["sharing"]): s["seeds"] for s in report["settings"]}
    assert settings == {(1.0, "union"): [0], (0.75, "union"): [0]}
    assert [(r["budget"], r["alone_runs"]) for r in report["nested"]] == [
        (1.0, ["grid/s0-b1-union"]),
        (0.75, ["grid/s0-b0.75-union"]),
    ]
    assert report["nested_sizes"][0]["smaller"] is True
    assert report["plots"]["nested_accuracy_vs_budget"] == "nested_accuracy_vs_budget.png"
    assert (tmp_path / "report" / "nested_accuracy_vs_budget.png").stat().st_size > 1000
    assert "## Nested levels vs trained alone" in (tmp_path / "report" / "report.md").read_text()

    # a nested run of its own steps and level state is another run; the alone runs are reused
    other = nested_grid(tmp_path, "1.0", "0.75", "--nested-steps", "2", "--level-state", "shared")
    assert other.returncode == 0, other.stderr[-3000:]
    assert other.stdout.count("done before, reused") == 2
    assert (weights / "s0-nested-1_0.75-union-shared-2steps" / "weights.safetensors").is_file()
    markdown = (tmp_path / "results" / "grid.md").read_text()
    assert "| held-out | union | both | shared | 2 | 0.75 | 0 |" in markdown
