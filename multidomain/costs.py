"""Parameter and MAC counting for any set of active mid channels.

MACs count multiply-accumulates of convolutions and linear layers (BatchNorm, ReLU, pooling and
the residual additions are not counted), so ``2 * MACs`` equals the FLOPs that
``torch.utils.flop_counter`` reports for the same forward pass. Parameters count convolution
weights, BatchNorm affines (2 per channel; running statistics are buffers) and heads.

The *backbone* is the single-domain network without a head: every convolution plus one set of
BatchNorm affines. A domain's cost fraction, the quantity the budget caps, is the backbone part
of its subnetwork (shared convolutions it runs plus its BatchNorm) over the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from multidomain.arch import ArchSpec

CostMetric = Literal["params", "macs"]


@dataclass(frozen=True)
class LayerCost:
    name: str
    params: int
    macs: int
    kind: Literal["conv", "bn", "head"]


def layer_costs(
    arch: ArchSpec,
    mid_channels: Sequence[int] | None = None,
    num_classes: Sequence[int] = (),
    num_bn_sets: int = 1,
) -> list[LayerCost]:
    """Per-layer cost of a network with the given mid widths, BN sets and heads."""
    mids = list(arch.full_mid_channels() if mid_channels is None else mid_channels)
    side = arch.image_size
    stem = arch.stem_channels
    costs = [
        LayerCost(
            "stem.conv", arch.in_channels * stem * 9, arch.in_channels * stem * 9 * side**2, "conv"
        ),
        LayerCost("stem.bn", 2 * stem * num_bn_sets, 0, "bn"),
    ]
    for block, mid, out_side in zip(arch.blocks(), mids, arch.spatial_sizes(), strict=True):
        area = out_side**2
        conv1 = block.in_channels * mid * 9
        conv2 = mid * block.out_channels * 9
        costs += [
            LayerCost(f"{block.name}.conv1", conv1, conv1 * area, "conv"),
            LayerCost(f"{block.name}.bn1", 2 * mid * num_bn_sets, 0, "bn"),
            LayerCost(f"{block.name}.conv2", conv2, conv2 * area, "conv"),
            LayerCost(f"{block.name}.bn2", 2 * block.out_channels * num_bn_sets, 0, "bn"),
        ]
        if block.has_projection:
            proj = block.in_channels * block.out_channels
            costs += [
                LayerCost(f"{block.name}.shortcut.conv", proj, proj * area, "conv"),
                LayerCost(
                    f"{block.name}.shortcut.bn", 2 * block.out_channels * num_bn_sets, 0, "bn"
                ),
            ]
    feat = arch.feature_channels
    for k, classes in enumerate(num_classes):
        costs.append(LayerCost(f"heads.{k}", feat * classes + classes, feat * classes, "head"))
    return costs


@dataclass(frozen=True)
class Totals:
    params: int
    macs: int

    def get(self, metric: CostMetric) -> int:
        return self.params if metric == "params" else self.macs


def totals(costs: Sequence[LayerCost], include_heads: bool = True) -> Totals:
    chosen = [c for c in costs if include_heads or c.kind != "head"]
    return Totals(sum(c.params for c in chosen), sum(c.macs for c in chosen))


def backbone_totals(arch: ArchSpec) -> Totals:
    """The single-domain backbone: all convolutions and one BN set, no head."""
    return totals(layer_costs(arch))


def subnet_totals(
    arch: ArchSpec, mid_channels: Sequence[int], num_classes: int | None = None
) -> Totals:
    """One domain's subnetwork (its BN, and its head if ``num_classes`` is given)."""
    heads = () if num_classes is None else (num_classes,)
    return totals(layer_costs(arch, mid_channels, heads))


class DomainCost(Protocol):
    """A domain's cost as a fraction of the backbone's, given its kept mid channels per block:
    ``fraction`` for counts, ``soft_fraction`` differentiable in soft counts (tensors, any
    shape, e.g. one entry per domain), ``floor`` with one group of channels per block."""

    @property
    def name(self) -> str: ...

    def fraction(self, channels: Sequence[float]) -> float: ...

    def soft_fraction(self, channels: Sequence[Tensor]) -> Tensor: ...

    def floor(self, group: int) -> float: ...


@dataclass(frozen=True)
class LinearCost:
    """Backbone cost of a domain as ``fixed + sum_b per_channel[b] * active[b]``."""

    fixed: float
    per_channel: tuple[float, ...]
    full: float
    metric: CostMetric = "params"

    @property
    def name(self) -> str:
        return self.metric

    def fraction(self, active: Sequence[float]) -> float:
        used = self.fixed + sum(c * a for c, a in zip(self.per_channel, active, strict=True))
        return used / self.full

    def soft_fraction(self, channels: Sequence[Tensor]) -> Tensor:
        used = sum(
            (c * a for c, a in zip(self.per_channel, channels, strict=True)),
            torch.zeros(()),
        )
        return (used + self.fixed) / self.full

    def floor(self, group: int) -> float:
        """Cost with one group of ``group`` channels per block: the least a domain can cost."""
        return (self.fixed + group * sum(self.per_channel)) / self.full

    @property
    def min_fraction(self) -> float:
        """Cost with one channel per block."""
        return self.floor(1)


def linear_cost(arch: ArchSpec, metric: CostMetric) -> LinearCost:
    """Exact linear decomposition of a domain's backbone cost in its active mid channels."""
    blocks = arch.blocks()
    zero = [0] * len(blocks)
    fixed = backbone_totals_for(arch, zero).get(metric)
    per_channel = []
    for i in range(len(blocks)):
        one = list(zero)
        one[i] = 1
        per_channel.append(float(backbone_totals_for(arch, one).get(metric) - fixed))
    full = float(backbone_totals(arch).get(metric))
    return LinearCost(float(fixed), tuple(per_channel), full, metric)


def backbone_totals_for(arch: ArchSpec, mid_channels: Sequence[int]) -> Totals:
    return totals(layer_costs(arch, mid_channels))


def compact_totals(
    arch: ArchSpec,
    union_mid_channels: Sequence[int],
    domain_mid_channels: Sequence[Sequence[int]],
    num_classes: Sequence[int],
) -> Totals:
    """Everything needed to serve all domains: the compact shared convolutions plus every
    domain's BatchNorm (its own channels only) and head. MACs are not additive across domains
    and are reported as 0 here; use ``subnet_totals`` per domain."""
    shared = sum(c.params for c in layer_costs(arch, union_mid_channels) if c.kind == "conv")
    per_domain = sum(
        c.params
        for mids, classes in zip(domain_mid_channels, num_classes, strict=True)
        for c in layer_costs(arch, mids, (classes,))
        if c.kind != "conv"
    )
    return Totals(shared + per_domain, 0)
