"""Compute time of each domain's compact subnetwork vs the unpruned backbone, next to the MAC
reduction and the latency table's prediction.

For every domain of an artifact, at batch 1 and batch 32: the median forward time (inference
mode, fixed torch threads, alternating runs) of the domain's served network and of the
unpruned ResNet-26 with the same head, both in the served form (``multidomain.fold``: uint8
input, BatchNorm and normalisation folded, channels-last, flat ``conv2d`` forward), each
domain's network folded once (the ``MDP_MATERIALIZED_DOMAINS=all`` form: compute alone, no
per-batch fold). Per domain and batch: the MAC reduction, the measured speed-up, their ratio
(1.0: every MAC saved is time saved), the measured time fraction and the predicted one (the
manifest's, from the latency table used in training, or ``--latency-table``).

``--paper-scale`` first trains a width-1.0, 64x64 ResNet-26 briefly on the embedded benchmark
(short pre-training, budget-aware training at ``--budget``, export into ``--scratch``) and
measures that artifact: the figure where compute dominates.

    python bench/subnet_compute.py model_store/default/<version> [--threads 1]
    python bench/subnet_compute.py --paper-scale [--pretrain-steps 40 --steps 40]
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _results import RESULTS, command, write_results

from multidomain.artifact import Artifact, load_artifact
from multidomain.costs import subnet_totals
from multidomain.fold import fold_network
from multidomain.groups import cpu_capability
from multidomain.latency import LatencyTable, time_alternately, time_networks, timer
from multidomain.network import ResNet26
from multidomain.serving import ServedArtifact


def served_forward_ms(
    artifact: Artifact, batch: int, repeats: int, clock: str = "wall"
) -> dict[str, float]:
    """Median forward time (ms) of every domain's network as the servers run it
    (``ServedArtifact`` with its default settings) on a batch of ``batch`` uint8 images, the
    domains timed alternately, at the current torch threads, on ``clock``."""
    served = ServedArtifact.build(artifact)
    calls = []
    for entry in artifact.domains:
        size = (batch, 3, entry.image_size, entry.image_size)
        pixels = torch.randint(0, 256, size, dtype=torch.uint8)
        calls.append(partial(served.domains[entry.name].network, pixels))
    times = time_alternately(calls, repeats, clock=timer(clock, torch.get_num_threads()))
    return {entry.name: ms for entry, ms in zip(artifact.domains, times, strict=True)}


def train_paper_scale(args: argparse.Namespace) -> Path:
    """A width-1.0, 64x64 ResNet-26 trained briefly on the embedded benchmark; its artifact."""
    from multidomain.arch import ArchSpec
    from training.budget import BudgetConfig, train_budget_aware
    from training.data import build_embedded_benchmark
    from training.export import TimingConfig, export_artifact
    from training.pretrain import PretrainConfig, pretrain_backbone

    arch = ArchSpec(width_mult=1.0, image_size=64)
    domains = list(build_embedded_benchmark(args.cache_dir, image_size=64).values())
    run = args.scratch / "backbone-w1.0-s64"
    pretrain = PretrainConfig(steps=args.pretrain_steps, batch_size=args.batch_size)
    pretrain_backbone(domains, arch, pretrain, run)
    config = BudgetConfig(
        budget=args.budget,
        budget_metric=args.budget_metric,
        steps=args.steps,
        batch_size=args.batch_size,
        finetune_steps=10,
    )
    trained = train_budget_aware(domains, run, config)
    path, _ = export_artifact(
        trained,
        args.scratch / "store",
        "paper",
        None,
        TimingConfig(repeats=5, threads=args.threads),
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, nargs="?")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (service default)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=60, help="alternating runs (batch 32)")
    parser.add_argument("--repeats-batch-1", type=int, default=300)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the timing thread's CPU time (1 thread), not inflated by a busy machine",
    )
    parser.add_argument("--latency-table", type=Path, help="predict with this table instead")
    parser.add_argument("--paper-scale", action="store_true", help="train width 1.0 / 64 px first")
    parser.add_argument("--pretrain-steps", type=int, default=40)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16, help="images per domain and step")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--budget-metric", default="both")
    parser.add_argument("--scratch", type=Path, default=Path("runs/paper_scale"))
    parser.add_argument("--cache-dir", type=Path, default=Path("data_cache"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.paper_scale == (args.artifact is not None):
        parser.error("give an artifact folder or --paper-scale (not both)")
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1")
    path = train_paper_scale(args) if args.paper_scale else args.artifact
    out = args.out or RESULTS / ("subnet_compute_paper" if args.paper_scale else "subnet_compute")
    artifact = load_artifact(path)
    arch = artifact.arch
    table = None if args.latency_table is None else LatencyTable.load(args.latency_table)
    if table is not None:
        table.check(arch, int(artifact.manifest.get("channel_group", 1)))
    torch.manual_seed(0)
    full_mids = arch.full_mid_channels()
    rows: list[dict[str, Any]] = []
    for batch in args.batches:
        networks: dict[str, Any] = {}
        for entry in artifact.domains:
            backbone = ResNet26(arch, [entry.num_classes]).eval()
            networks[f"backbone:{entry.name}"] = fold_network(backbone, entry.mean, entry.std)
            networks[entry.name] = artifact.served_network(entry.name)
        repeats = args.repeats_batch_1 if batch == 1 else args.repeats
        times = time_networks(
            networks, arch.image_size, [batch], repeats, args.threads, args.clock
        )[batch]
        for entry in artifact.domains:
            full_ms, compact_ms = times[f"backbone:{entry.name}"], times[entry.name]
            full_macs = subnet_totals(arch, full_mids, entry.num_classes).macs
            compact_macs = subnet_totals(arch, entry.mid_channels, entry.num_classes).macs
            speedup = full_ms / compact_ms
            predicted = None
            if table is not None and batch in table.batch_sizes:
                predicted = table.predicted_ms(batch, entry.mid_channels) / table.backbone_ms[batch]
            elif table is None:
                recorded = (entry.info.get("latency") or {}).get("predicted_fraction") or {}
                predicted = recorded.get(str(batch))
            rows.append(
                {
                    "domain": entry.name,
                    "batch": batch,
                    "mid_channels": entry.mid_channels,
                    "full_ms": round(full_ms, 3),
                    "compact_ms": round(compact_ms, 3),
                    "mac_reduction": round(full_macs / compact_macs, 3),
                    "speedup": round(speedup, 3),
                    "speedup_over_mac_reduction": round(speedup * compact_macs / full_macs, 3),
                    "measured_time_fraction": round(compact_ms / full_ms, 3),
                    "predicted_time_fraction": None if predicted is None else round(predicted, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    manifest = artifact.manifest
    result = {
        "command": command(),
        "artifact": str(path),
        "architecture": arch.to_dict(),
        "channel_group": manifest.get("channel_group", 1),
        "budget": manifest.get("budget"),
        "budget_metric": manifest.get("budget_metric"),
        "mean_test_accuracy": manifest.get("mean_test_accuracy"),
        "torch_threads": args.threads,
        "clock": args.clock,
        "cpu_capability": cpu_capability(),
        "torch_version": torch.__version__,
        "rows": rows,
    }
    write_results(out, result, render(result, args))


CLOCK_WORDS = {
    "wall": "wall time",
    "cpu": "CPU time of the one timing thread: what other processes on the shared machine "
    "took of the core is not counted",
}


def render(result: dict[str, Any], args: argparse.Namespace) -> str:
    arch = result["architecture"]
    lines = [
        "# Compact subnetwork vs unpruned backbone: forward time",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Artifact `{result['artifact']}`: ResNet-26 width {arch['width_mult']}, "
        f"{arch['image_size']}x{arch['image_size']} px, channel group {result['channel_group']}, "
        f"budget {result['budget']} ({result['budget_metric']}), mean test accuracy "
        f"{result['mean_test_accuracy']}. Torch threads {result['torch_threads']}; CPU "
        f"capability {result['cpu_capability']}; torch {result['torch_version']}; median "
        f"of {args.repeats} (batch 32) / {args.repeats_batch_1} (batch 1) alternating runs "
        f"({CLOCK_WORDS[result['clock']]}); both "
        "networks in the served form, each domain's folded once.",
        "",
        "`speedup / MAC red.`: 1.0 when every MAC saved is time saved. `time fraction`: the "
        "domain's time over the backbone's, measured and as the latency table predicts it "
        "(`–`: no table).",
        "",
        "| domain | batch | mid channels | full ms | compact ms | MAC reduction | speedup "
        "| speedup / MAC red. | time fraction | predicted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        predicted = "–" if r["predicted_time_fraction"] is None else r["predicted_time_fraction"]
        lines.append(
            f"| {r['domain']} | {r['batch']} | {'/'.join(str(m) for m in r['mid_channels'])} "
            f"| {r['full_ms']} | {r['compact_ms']} | {r['mac_reduction']} | {r['speedup']} "
            f"| {r['speedup_over_mac_reduction']} | {r['measured_time_fraction']} | {predicted} |"
        )
    for batch in sorted({r["batch"] for r in result["rows"]}):
        ratios = [r["speedup_over_mac_reduction"] for r in result["rows"] if r["batch"] == batch]
        fractions = [r["measured_time_fraction"] for r in result["rows"] if r["batch"] == batch]
        lines.append(
            f"\nBatch {batch}: speedup / MAC reduction {min(ratios)}-{max(ratios)}; "
            f"time fraction {min(fractions)}-{max(fractions)}."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
