"""Parameter and MAC counting for any set of active mid channels.

MACs count multiply-accumulates of convolutions and linear layers (BatchNorm, ReLU, pooling and
the residual additions are not counted), so ``2 * MACs`` equals the FLOPs that
``torch.utils.flop_counter`` reports for the same forward pass. Parameters count convolution
weights, BatchNorm affines (2 per channel; running statistics are buffers) and heads.

The *backbone* is the single-domain network without a head: every convolution plus one set of
BatchNorm affines. A domain's cost fraction, the quantity the budget caps, is the backbone part
of its subnetwork (shared convolutions it runs plus its BatchNorm) over the backbone; its head
is outside the budget (its size is fixed by the domain's classes) and counted apart.

``count_backbone`` and ``count_artifact`` count what a weights file holds from its tensor shapes
alone (a safetensors header, ``multidomain.files.safetensors_shapes``) and check the counts
against the per-layer formulas. No torch: ``reporting`` recounts with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, cast

from multidomain.arch import ArchSpec, domain_tensor_name

if TYPE_CHECKING:
    from torch import Tensor

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
        used = sum(c * a for c, a in zip(self.per_channel, channels, strict=True))
        return cast("Tensor", (used + self.fixed) / self.full)

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


Shapes = Mapping[str, Sequence[int]]


class WeightCountError(ValueError):
    """Tensor shapes that do not belong to the architecture they are counted for."""


def _conv_areas(arch: ArchSpec) -> dict[str, int]:
    """Output pixels of every convolution (its MACs per weight), by tensor name."""
    return {f"{c.name}.weight": c.macs // c.params for c in layer_costs(arch) if c.kind == "conv"}


def _affine(leaf: str) -> bool:
    """BatchNorm and head leaves that are parameters (running statistics are buffers)."""
    return leaf in ("weight", "bias")


@dataclass(frozen=True)
class BackboneCount:
    """A backbone weights file counted: the single-domain backbone (every convolution, one BN
    set, no head) and everything serving all its source domains takes (every BN set and head)."""

    totals: Totals
    all_domains_params: int
    num_domains: int


def count_backbone(arch: ArchSpec, shapes: Shapes) -> BackboneCount:
    """Count a multi-domain ``ResNet26`` state dict's shapes (a pre-trained backbone)."""
    areas = _conv_areas(arch)
    conv_params = conv_macs = bn0 = per_domain = 0
    sets: set[int] = set()
    for name, shape in shapes.items():
        size = math.prod(shape)
        parsed = domain_tensor_name(name)
        if parsed is not None:
            sets.add(parsed.domain)
            if _affine(parsed.leaf):
                per_domain += size
                bn0 += size if parsed.domain == 0 and not parsed.is_head else 0
            continue
        if name not in areas:
            raise WeightCountError(f"tensor {name} is not a convolution of {arch.to_dict()}")
        conv_params += size
        conv_macs += size * areas[name]
    counted = Totals(conv_params + bn0, conv_macs)
    if counted != backbone_totals(arch):
        raise WeightCountError(
            f"backbone tensors count {counted}, the architecture {backbone_totals(arch)}"
        )
    return BackboneCount(counted, conv_params + per_domain, len(sets))


@dataclass(frozen=True)
class DomainCount:
    """One domain of an artifact, counted from its tensors: the budgeted part (the shared
    convolutions it runs, its own mid channels only, and its BatchNorm) and its head apart."""

    name: str
    mid_channels: list[int]
    num_classes: int
    params: int
    macs: int
    head_params: int
    head_macs: int


@dataclass(frozen=True)
class ArtifactCount:
    """An artifact's weights counted: everything serving all domains takes (the compact shared
    convolutions, every domain's BatchNorm and head) and each domain's subnetwork."""

    compact_params: int
    domains: list[DomainCount]


def count_artifact(arch: ArchSpec, shapes: Shapes, names: Sequence[str]) -> ArtifactCount:
    """Count an artifact's weights file (``multidomain.artifact``'s tensor names) from its shapes:
    a domain's mid channels are the length of its ``bn1`` tensors, its conv slices are its share
    of the compact convolutions, its classes its head's rows. ``names``: the domains in order.
    A nested artifact is counted at its largest level (the exporter's ``compact`` params): the
    BatchNorm tensors of its lower levels (``levels.*``) are left out."""
    areas = _conv_areas(arch)
    shared = {n: list(s) for n, s in shapes.items() if not n.startswith(("domains.", "levels."))}
    for name in shared:
        if name not in areas:
            raise WeightCountError(f"tensor {name} is not a convolution of {arch.to_dict()}")
    compact = sum(math.prod(s) for s in shared.values())
    blocks = arch.blocks()
    domains = []
    for k, domain in enumerate(names):
        prefix = f"domains.{k}."
        own = {n.removeprefix(prefix): list(s) for n, s in shapes.items() if n.startswith(prefix)}
        try:
            mids = [own[f"{b.name}.bn1.weight"][0] for b in blocks]
            head_weight, head_bias = own["head.weight"], own["head.bias"]
        except (KeyError, IndexError) as exc:
            raise WeightCountError(f"domain {domain!r}: no tensor {exc} in the weights") from None
        affine = sum(math.prod(s) for n, s in own.items() if _affine(n.rsplit(".", 1)[-1]))
        compact += affine
        head = math.prod(head_weight) + math.prod(head_bias)
        params, macs = affine - head, 0
        for name, shape in shared.items():
            size = math.prod(shape)
            for b, mid in zip(blocks, mids, strict=True):
                if name == f"{b.name}.conv1.weight":
                    size = size // shape[0] * mid
                elif name == f"{b.name}.conv2.weight":
                    size = size // shape[1] * mid
            params += size
            macs += size * areas[name]
        counted = DomainCount(
            domain, mids, head_weight[0], params, macs, head, math.prod(head_weight)
        )
        formula = subnet_totals(arch, mids)
        if Totals(params, macs) != formula or counted.head_params != head_weight[0] * (
            arch.feature_channels + 1
        ):
            raise WeightCountError(
                f"domain {domain!r}: its tensors count {params:,} params and {macs:,} MACs, "
                f"the architecture with mid channels {mids} {formula.params:,} and "
                f"{formula.macs:,}"
            )
        domains.append(counted)
    return ArtifactCount(compact, domains)
