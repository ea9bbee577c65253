"""Compute time of each domain's compact subnetwork vs the full unpruned backbone.

For every domain of an artifact, at batch 1 and batch 32: the median forward time (inference
mode, fixed torch threads) of the domain's compact subnetwork and of the unpruned ResNet-26 with
the same head, next to the MAC ratio. Writes ``bench/results/subnet_compute.{json,md}``.

    python bench/subnet_compute.py model_store/default/<version> [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from multidomain.artifact import load_artifact
from multidomain.costs import subnet_totals
from multidomain.fold import fold_batchnorm
from multidomain.network import ResNet26

RESULTS = Path(__file__).parent / "results"


def median_ms(model: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(5):
            model(batch)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS / "subnet_compute")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    artifact = load_artifact(args.artifact)
    arch = artifact.arch
    rows = []
    for entry in artifact.domains:
        # what the service runs: BatchNorm folded into the convolutions, for both networks
        compact = fold_batchnorm(artifact.subnet(entry.name))
        full = fold_batchnorm(ResNet26(arch, [entry.num_classes]).eval())
        mac_ratio = (
            subnet_totals(arch, entry.mid_channels, entry.num_classes).macs
            / subnet_totals(arch, arch.full_mid_channels(), entry.num_classes).macs
        )
        for batch_size in args.batches:
            x = torch.randn(batch_size, 3, arch.image_size, arch.image_size)
            full_ms = median_ms(full, x, args.repeats)
            compact_ms = median_ms(compact, x, args.repeats)
            speedup = full_ms / compact_ms
            rows.append(
                {
                    "domain": entry.name,
                    "batch": batch_size,
                    "full_ms": round(full_ms, 3),
                    "compact_ms": round(compact_ms, 3),
                    "speedup": round(speedup, 3),
                    "mac_reduction": round(1 / mac_ratio, 3),
                    "speedup_over_mac_reduction": round(speedup / (1 / mac_ratio), 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "artifact": str(args.artifact),
        "torch_threads": args.threads,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Compact subnetwork vs unpruned backbone: forward time",
        "",
        f"Command: `{result['command']}` (torch threads {args.threads}; median of "
        f"{args.repeats} runs)",
        "",
        "| domain | batch | full ms | compact ms | speedup | MAC reduction | speedup / MAC red. |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['domain']} | {r['batch']} | {r['full_ms']} | {r['compact_ms']} | {r['speedup']} "
        f"| {r['mac_reduction']} | {r['speedup_over_mac_reduction']} |"
        for r in rows
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
