"""Budget x sharing-variant grid on the embedded benchmark, plus the per-domain upper reference.

For each budget and sharing variant: budget-aware training from the same backbone, projection,
pruning and export (into a scratch model store), then per-domain and mean test accuracy,
compact params / backbone params (all domains' BN and heads included), each domain's MACs /
backbone MACs and training wall time. The upper reference fine-tunes the whole backbone on
each domain alone. Writes ``bench/results/budget_grid.{json,md}`` with the command used; the
markdown table is the report's (``reporting``). Each row also records a copy of its artifact's
manifest, so ``mdprune report bench/results/budget_grid.json`` draws the same report (channel
pictures included) on a clone without the scratch folder.

    python bench/budget_grid.py [--steps 300] [--budgets 1.0 0.75 0.5 0.25]

(``--pretrain-steps``/``--reference-steps`` of a few steps make a quick smoke run of the
whole path; its figures mean nothing.)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from _results import RESULTS, command, write_results

from multidomain.arch import ArchSpec
from reporting.checks import check_runs
from reporting.inputs import collect_grid
from reporting.render import TABLE_LEGEND, reference_row, render_table, run_row
from training.budget import BudgetConfig, train_budget_aware
from training.data import build_embedded_benchmark
from training.export import export_artifact
from training.pretrain import PretrainConfig, pretrain_backbone
from training.sharing import SHARING_VARIANTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    parser.add_argument("--sharing", nargs="+", default=list(SHARING_VARIANTS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reference-steps", type=int, default=300)
    parser.add_argument("--pretrain-steps", type=int, default=PretrainConfig().steps)
    parser.add_argument("--backbone", type=Path, default=Path("runs/backbone"))
    parser.add_argument("--scratch", type=Path, default=Path("runs/grid"))
    parser.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    parser.add_argument("--out", type=Path, default=RESULTS / "budget_grid")
    args = parser.parse_args()

    domains = list(build_embedded_benchmark(args.cache_dir).values())
    backbone = pretrain_backbone(
        domains, ArchSpec(), PretrainConfig(steps=args.pretrain_steps), args.backbone
    )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    rows = []
    for budget in args.budgets:
        for sharing in args.sharing:
            config = BudgetConfig(budget=budget, sharing=sharing, steps=args.steps)
            trained = train_budget_aware(domains, args.backbone, config)
            version = f"{stamp}-b{budget}-{sharing}"
            _, manifest = export_artifact(trained, args.scratch, "grid", version)
            rows.append(
                {
                    "budget": budget,
                    "budget_metric": config.budget_metric,
                    "sharing": sharing,
                    "mean_test_accuracy": manifest["mean_test_accuracy"],
                    "test_accuracy": {d["name"]: d["test_accuracy"] for d in manifest["domains"]},
                    "compact_params_fraction": manifest["compact"]["params_fraction"],
                    "domain_macs_fraction": {
                        d["name"]: d["macs_fraction"] for d in manifest["domains"]
                    },
                    "domain_params_fraction": {
                        d["name"]: d["params_fraction"] for d in manifest["domains"]
                    },
                    "max_compact_logit_diff": max(
                        d["max_compact_logit_diff"] for d in manifest["domains"]
                    ),
                    "wall_time_s": manifest["training"]["wall_time_s"],
                    "artifact": str(args.scratch / "grid" / version),
                    "manifest": manifest,
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "manifest"}), flush=True)

    reference = {}
    for data in domains:
        run = args.scratch / f"reference-{stamp}-{data.name}"
        config = PretrainConfig(steps=args.reference_steps, lr=0.01)
        started = time.perf_counter()
        record = pretrain_backbone([data], ArchSpec(), config, run, init_from=args.backbone)
        reference[data.name] = {
            "test_accuracy": record["test_accuracy"][data.name],
            "wall_time_s": round(time.perf_counter() - started, 1),
        }
    result = {
        "command": command(),
        "created_at": stamp,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "backbone": {
            "test_accuracy": backbone["test_accuracy"],
            "mean_test_accuracy": backbone["mean_test_accuracy"],
            "params": backbone["backbone_params"],
            "macs": backbone["backbone_macs"],
        },
        "grid": rows,
        "reference_finetuned_alone": reference,
    }
    write_results(args.out, result, render_markdown(result, args.out.with_suffix(".json")))


def render_markdown(result: dict[str, Any], results_json: Path) -> str:
    """Title, command and the report's table of the grid (runs, backbone, fine-tuned alone)."""
    runs, references = collect_grid(result, results_json)
    check_runs(runs)
    lines = [
        "# Budget x sharing grid (embedded benchmark)",
        "",
        f"Command: `{result['command']}` ({result['created_at']}, {result['machine']})",
        "",
        TABLE_LEGEND,
        "",
        *render_table([run_row(r) for r in runs], [reference_row(r) for r in references]),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
