"""Budget x sharing-variant grid on the embedded benchmark, plus the per-domain upper reference.

For each budget and sharing variant: budget-aware training from the same backbone, projection,
pruning and export (into a scratch model store), then per-domain and mean test accuracy,
compact params / backbone params (all domains' BN and heads included), each domain's MACs /
backbone MACs and training wall time. The upper reference fine-tunes the whole backbone on
each domain alone. Writes ``bench/results/budget_grid.{json,md}`` with the command used.

    python bench/budget_grid.py [--steps 300] [--budgets 1.0 0.75 0.5 0.25]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from multidomain.arch import ArchSpec
from training.budget import BudgetConfig, train_budget_aware
from training.data import build_embedded_benchmark
from training.export import export_artifact
from training.pretrain import PretrainConfig, pretrain_backbone
from training.sharing import SHARING_VARIANTS

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    parser.add_argument("--sharing", nargs="+", default=list(SHARING_VARIANTS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reference-steps", type=int, default=300)
    parser.add_argument("--backbone", type=Path, default=Path("runs/backbone"))
    parser.add_argument("--scratch", type=Path, default=Path("runs/grid"))
    parser.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    parser.add_argument("--out", type=Path, default=RESULTS / "budget_grid")
    args = parser.parse_args()

    domains = list(build_embedded_benchmark(args.cache_dir).values())
    backbone = pretrain_backbone(domains, ArchSpec(), PretrainConfig(), args.backbone)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
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
                }
            )
            print(json.dumps(rows[-1]), flush=True)

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
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render_markdown(result))
    print(render_markdown(result))


def render_markdown(result: dict) -> str:
    names = list(result["backbone"]["test_accuracy"])
    lines = [
        "# Budget x sharing grid (embedded benchmark)",
        "",
        f"Command: `{result['command']}` ({result['created_at']}, {result['machine']})",
        "",
        "Accuracy is test top-1. `compact/backbone` counts everything needed to serve all "
        "domains (compact shared convolutions + every domain's BN and head) over the "
        "single-domain backbone (all convolutions + one BN set). `MACs/backbone` is each "
        "domain's subnetwork over the backbone.",
        "",
        "| budget | sharing | " + " | ".join(names) + " | mean acc | compact/backbone params "
        "| max domain MACs/backbone | train s |",
        "|---|---|" + "---|" * len(names) + "---|---|---|---|",
    ]
    for row in result["grid"]:
        accs = " | ".join(f"{row['test_accuracy'][n]:.3f}" for n in names)
        lines.append(
            f"| {row['budget']} | {row['sharing']} | {accs} | {row['mean_test_accuracy']:.4f} | "
            f"{row['compact_params_fraction']:.3f} | "
            f"{max(row['domain_macs_fraction'].values()):.3f} | {row['wall_time_s']:.0f} |"
        )
    backbone = result["backbone"]
    accs = " | ".join(f"{backbone['test_accuracy'][n]:.3f}" for n in names)
    lines.append(
        f"| backbone (pre-trained, all domains) | - | {accs} | "
        f"{backbone['mean_test_accuracy']:.4f} | 1.000 | 1.000 | - |"
    )
    ref = result["reference_finetuned_alone"]
    if ref:
        accs = " | ".join(f"{ref[n]['test_accuracy']:.3f}" for n in names)
        mean = sum(ref[n]["test_accuracy"] for n in names) / len(names)
        lines.append(
            f"| each domain fine-tuned alone | - | {accs} | {mean:.4f} | ~{len(names)} (one "
            f"backbone each) | 1.000 | {sum(ref[n]['wall_time_s'] for n in names):.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
