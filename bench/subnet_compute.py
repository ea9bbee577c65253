"""Compute time of each domain's compact subnetwork vs the full unpruned backbone.

For every domain of an artifact, at batch 1 and batch 32: the median forward time (inference
mode, fixed torch threads) of the domain's compact subnetwork and of the unpruned ResNet-26 with
the same head, both in the form the service runs (``serving_network``: uint8 input, BatchNorm
folded, channels-last), next to the MAC reduction. CPU convolution kernels compute output
channels in blocks of the SIMD width (16 fp32 lanes with AVX-512, 8 with AVX2), so a layer
with 5 channels costs about as much as one with 16; the last column gives the MAC reduction with
every pruned width rounded up to that block. Writes ``bench/results/subnet_compute.{json,md}``.

    python bench/subnet_compute.py model_store/default/<version> [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from _results import RESULTS, command, write_results

from multidomain.artifact import Artifact, load_artifact
from multidomain.costs import subnet_totals
from multidomain.fold import serving_network
from multidomain.network import ResNet26


def alternating_median_ms(
    runs: Sequence[tuple[torch.nn.Module, torch.Tensor]], repeats: int, warmup: int = 5
) -> list[float]:
    """Median forward time (ms, inference mode) of each network on its batch, the networks
    timed in turn so that drifts in the machine's speed affect all alike."""
    times: list[list[float]] = [[] for _ in runs]
    with torch.inference_mode():
        for _ in range(warmup):
            for network, batch in runs:
                network(batch)
        for _ in range(repeats):
            for (network, batch), samples in zip(runs, times, strict=True):
                start = time.perf_counter()
                network(batch)
                samples.append(time.perf_counter() - start)
    return [1000 * statistics.median(samples) for samples in times]


def paired_median_ms(
    first: torch.nn.Module, second: torch.nn.Module, batch: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """Median forward times of two networks on one batch, timed alternately."""
    first_ms, second_ms = alternating_median_ms([(first, batch), (second, batch)], repeats)
    return first_ms, second_ms


def served_forward_ms(artifact: Artifact, batch: int, repeats: int) -> dict[str, float]:
    """Median forward time (ms) of every domain's served network (the compact subnetwork as
    the servers run it) on a batch of ``batch`` uint8 images, at the current torch threads."""
    runs = [
        (
            artifact.served_network(entry.name),
            torch.randint(
                0, 256, (batch, 3, entry.image_size, entry.image_size), dtype=torch.uint8
            ),
        )
        for entry in artifact.domains
    ]
    times = alternating_median_ms(runs, repeats)
    return {entry.name: ms for entry, ms in zip(artifact.domains, times, strict=True)}


def simd_lanes() -> int:
    """fp32 lanes of the vector unit the CPU kernels use (oneDNN blocks channels by it)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return 16 if capability.startswith("AVX512") else 8 if capability.startswith("AVX") else 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (service default)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS / "subnet_compute")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    artifact = load_artifact(args.artifact)
    arch = artifact.arch
    rows = []
    lanes = simd_lanes()
    for entry in artifact.domains:
        compact = artifact.served_network(entry.name)
        full = serving_network(ResNet26(arch, [entry.num_classes]).eval(), entry.mean, entry.std)
        full_mids = arch.full_mid_channels()
        full_macs = subnet_totals(arch, full_mids, entry.num_classes).macs
        compact_macs = subnet_totals(arch, entry.mid_channels, entry.num_classes).macs
        padded = [
            min(f, math.ceil(m / lanes) * lanes)
            for m, f in zip(entry.mid_channels, full_mids, strict=True)
        ]
        padded_macs = subnet_totals(arch, padded, entry.num_classes).macs
        for batch_size in args.batches:
            size = (batch_size, 3, arch.image_size, arch.image_size)
            x = torch.randint(0, 256, size, dtype=torch.uint8)
            full_ms, compact_ms = paired_median_ms(full, compact, x, args.repeats)
            speedup = full_ms / compact_ms
            rows.append(
                {
                    "domain": entry.name,
                    "batch": batch_size,
                    "full_ms": round(full_ms, 3),
                    "compact_ms": round(compact_ms, 3),
                    "speedup": round(speedup, 3),
                    "mac_reduction": round(full_macs / compact_macs, 3),
                    "speedup_over_mac_reduction": round(speedup * compact_macs / full_macs, 3),
                    "lane_padded_mac_reduction": round(full_macs / padded_macs, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": command(),
        "artifact": str(args.artifact),
        "torch_threads": args.threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "simd_lanes_fp32": lanes,
        "rows": rows,
    }
    lines = [
        "# Compact subnetwork vs unpruned backbone: forward time",
        "",
        f"Command: `{result['command']}` (torch threads {args.threads}; median of "
        f"{args.repeats} alternating runs; both networks as served: uint8 input, BatchNorm folded, "
        f"channels-last; CPU capability {result['cpu_capability']}, {lanes} fp32 lanes)",
        "",
        "| domain | batch | full ms | compact ms | speedup | MAC reduction | speedup / MAC red. "
        f"| MAC red. with widths rounded up to {lanes} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['domain']} | {r['batch']} | {r['full_ms']} | {r['compact_ms']} | {r['speedup']} "
        f"| {r['mac_reduction']} | {r['speedup_over_mac_reduction']} "
        f"| {r['lane_padded_mac_reduction']} |"
        for r in rows
    ]
    write_results(args.out, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
