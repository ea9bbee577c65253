"""The served form's convolutions: plain ``conv2d`` (what ``multidomain.fold`` runs) against
oneDNN's fused pointwise kernels (``mkldnn._convolution_pointwise``: ReLU and the residual
addition fused into the convolution, the kernels inductor uses, which the served form used
before), on the same folded networks, alternating, 1 torch thread.

For an artifact: every domain's compact network and the unpruned backbone with its head, at
each batch size, whole forward passes; the speed-up over MAC reduction with either kernel.
Without one: unpruned backbones of random weights at width 0.5 / 32 px, width 1.0 / 32 px and
width 1.0 / 64 px (the paper's scale).

    python bench/served_kernels.py [ARTIFACT] [--clock cpu]
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _results import RESULTS, command, write_results
from torch import Tensor

from multidomain.arch import ArchSpec
from multidomain.artifact import load_artifact
from multidomain.costs import subnet_totals
from multidomain.fold import FoldedConv, FoldedNetwork, fold_network
from multidomain.groups import cpu_capability
from multidomain.latency import CLOCKS, time_alternately, timer
from multidomain.network import ResNet26

KERNELS = ("plain", "fused")


def _fused_conv(x: Tensor, conv: FoldedConv, relu: bool, other: Tensor | None = None) -> Tensor:
    pad, stride = [conv.padding] * 2, [conv.stride] * 2
    op = torch.ops.mkldnn._convolution_pointwise
    if other is not None:
        return op.binary(
            x, other, conv.weight, conv.bias, pad, stride, [1, 1], 1, "add", None, "relu", [], ""
        )
    return op(x, conv.weight, conv.bias, pad, stride, [1, 1], 1, "relu" if relu else "none", [], "")


def fused_forward(network: FoldedNetwork, images: Tensor) -> Tensor:
    """``network``'s forward pass with every convolution a fused oneDNN call."""
    x = torch.empty(images.shape, memory_format=torch.channels_last)
    torch.sub(images, network.input_shift, out=x)
    x = _fused_conv(x, network.stem, relu=True)
    for block in network.folded_blocks:
        identity = x if block.shortcut is None else _fused_conv(x, block.shortcut, relu=False)
        hidden = _fused_conv(x, block.conv1, relu=True)
        x = _fused_conv(hidden, block.conv2, relu=True, other=identity)
    return F.linear(x.mean(dim=(2, 3)), network.head_weight, network.head_bias)


def forward(kernel: str, network: FoldedNetwork, images: Tensor) -> Tensor:
    return network(images) if kernel == "plain" else fused_forward(network, images)


def time_kernels(
    networks: dict[str, FoldedNetwork], size: int, batch: int, repeats: int, clock: str
) -> dict[str, dict[str, float]]:
    """Median ms of every network with either kernel, all calls alternating."""
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    keys = [(name, kernel) for name in networks for kernel in KERNELS]
    with torch.inference_mode():
        for network in networks.values():  # the two forms compute the same logits
            torch.testing.assert_close(
                fused_forward(network, images), network(images), atol=1e-3, rtol=1e-3
            )
    calls = [partial(forward, kernel, networks[name], images) for name, kernel in keys]
    times = time_alternately(calls, repeats, clock=timer(clock, 1))
    out: dict[str, dict[str, float]] = {name: {} for name in networks}
    for (name, kernel), ms in zip(keys, times, strict=True):
        out[name][kernel] = round(ms, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, nargs="?")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=40, help="alternating runs (batch > 1)")
    parser.add_argument("--repeats-batch-1", type=int, default=200)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--out", type=Path, default=RESULTS / "served_kernels")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    load_start = [round(v, 2) for v in os.getloadavg()]
    rows: list[dict[str, Any]] = []
    if args.artifact is not None:
        artifact = load_artifact(args.artifact)
        arch = artifact.arch
        full = arch.full_mid_channels()
        for entry in artifact.domains:
            backbone = ResNet26(arch, [entry.num_classes]).eval()
            networks = {
                "backbone": fold_network(backbone, entry.mean, entry.std),
                "compact": artifact.served_network(entry.name),
            }
            mac_reduction = (
                subnet_totals(arch, full, entry.num_classes).macs
                / subnet_totals(arch, entry.mid_channels, entry.num_classes).macs
            )
            for batch in args.batches:
                repeats = args.repeats_batch_1 if batch == 1 else args.repeats
                ms = time_kernels(networks, arch.image_size, batch, repeats, args.clock)
                row: dict[str, Any] = {"network": entry.name, "batch": batch}
                for kernel in KERNELS:
                    full_ms, compact_ms = ms["backbone"][kernel], ms["compact"][kernel]
                    row[f"{kernel}_backbone_ms"] = full_ms
                    row[f"{kernel}_compact_ms"] = compact_ms
                    row[f"{kernel}_speedup_over_mac_reduction"] = round(
                        full_ms / compact_ms / mac_reduction, 3
                    )
                rows.append(row)
                print(row, flush=True)
    else:
        for width, size in ((0.5, 32), (1.0, 32), (1.0, 64)):
            arch = ArchSpec(width_mult=width, image_size=size)
            network = fold_network(ResNet26(arch, [10]).eval(), (0.5,) * 3, (0.25,) * 3)
            for batch in args.batches:
                repeats = args.repeats_batch_1 if batch == 1 else args.repeats
                ms = time_kernels({"backbone": network}, size, batch, repeats, args.clock)
                row = {"network": f"backbone width {width:g}, {size} px", "batch": batch}
                for kernel in KERNELS:
                    row[f"{kernel}_backbone_ms"] = ms["backbone"][kernel]
                rows.append(row)
                print(row, flush=True)
    result = {
        "command": command(),
        "artifact": None if args.artifact is None else str(args.artifact),
        "torch_version": torch.__version__,
        "cpu_capability": cpu_capability(),
        "torch_threads": 1,
        "clock": args.clock,
        "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
        "rows": rows,
    }
    write_results(args.out, result, render(result))


def render(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        "# Served form: plain conv2d vs oneDNN's fused pointwise kernels",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Torch {result['torch_version']}, CPU capability {result['cpu_capability']}, 1 torch "
        f"thread, {result['clock']} clock; medians of alternating runs, every network with "
        "both kernels in the same rounds (the two forms' logits checked equal first). Load "
        f"average {result['load_average']['start']} at start, {result['load_average']['end']} "
        "at end.",
        "",
    ]
    if any("plain_compact_ms" in r for r in rows):
        lines += [
            "| domain | batch | backbone ms plain / fused | compact ms plain / fused | "
            "speedup / MAC red. plain / fused |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['network']} | {r['batch']} | {r['plain_backbone_ms']} / "
                f"{r['fused_backbone_ms']} | {r['plain_compact_ms']} / {r['fused_compact_ms']} | "
                f"{r['plain_speedup_over_mac_reduction']} / "
                f"{r['fused_speedup_over_mac_reduction']} |"
            )
    else:
        lines += ["| network | batch | plain ms | fused ms |", "|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['network']} | {r['batch']} | {r['plain_backbone_ms']} | "
                f"{r['fused_backbone_ms']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
