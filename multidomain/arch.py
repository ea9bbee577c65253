"""Architecture description of the ResNet-26 backbone (Visual Decathlon layout).

A 3x3 stem, then 3 stages of 4 basic blocks each; every stage entry has stride 2. Each basic
block is ``conv1 (in -> mid, 3x3, stride) -> BN -> ReLU -> conv2 (mid -> out, 3x3) -> BN``
plus a shortcut (identity, or 1x1 conv + BN when the shape changes). The switchable channels
are the ``mid`` channels of every block: switching one off removes a conv1 filter, its BN
entry and the matching input slice of conv2.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

BASE_WIDTHS = (64, 128, 256)


class ArchitectureError(ValueError):
    """An architecture description that cannot be built."""


@dataclass(frozen=True)
class BlockSpec:
    index: int
    in_channels: int
    mid_channels: int
    out_channels: int
    stride: int

    @property
    def has_projection(self) -> bool:
        return self.stride != 1 or self.in_channels != self.out_channels

    @property
    def name(self) -> str:
        return f"blocks.{self.index}"


@dataclass(frozen=True)
class ArchSpec:
    """Enough to rebuild the network with no training code."""

    name: str = "resnet26"
    width_mult: float = 0.5
    blocks_per_stage: int = 4
    image_size: int = 32
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.name != "resnet26":
            raise ArchitectureError(f"unknown architecture {self.name!r}; only 'resnet26' exists")
        if not self.width_mult > 0:
            raise ArchitectureError(f"width multiplier must be > 0, got {self.width_mult}")
        if self.blocks_per_stage < 1:
            raise ArchitectureError(f"blocks per stage must be >= 1, got {self.blocks_per_stage}")
        if self.image_size < 8:
            raise ArchitectureError(f"image size must be >= 8, got {self.image_size}")

    @property
    def widths(self) -> tuple[int, int, int]:
        w = tuple(max(1, round(b * self.width_mult)) for b in BASE_WIDTHS)
        return (w[0], w[1], w[2])

    @property
    def stem_channels(self) -> int:
        return self.widths[0]

    @property
    def feature_channels(self) -> int:
        return self.widths[-1]

    def blocks(self) -> list[BlockSpec]:
        specs: list[BlockSpec] = []
        in_ch = self.stem_channels
        for width in self.widths:
            for k in range(self.blocks_per_stage):
                stride = 2 if k == 0 else 1
                specs.append(BlockSpec(len(specs), in_ch, width, width, stride))
                in_ch = width
        return specs

    def spatial_sizes(self) -> list[int]:
        """Output side length of every block (stride-2 convs with padding 1 use ceil)."""
        sizes = []
        side = self.image_size
        for block in self.blocks():
            side = (side + block.stride - 1) // block.stride
            sizes.append(side)
        return sizes

    def full_mid_channels(self) -> list[int]:
        return [b.mid_channels for b in self.blocks()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        known = {"name", "width_mult", "blocks_per_stage", "image_size", "in_channels"}
        unknown = set(data) - known
        if unknown:
            raise ArchitectureError(f"unknown architecture fields: {sorted(unknown)}")
        return cls(**data)


_BN_SET = re.compile(r"^(?P<prefix>.*\.bn[12]?)\.(?P<set>\d+)\.(?P<leaf>[a-z_]+)$")
_HEAD = re.compile(r"^heads\.(?P<set>\d+)\.(?P<leaf>weight|bias)$")


class DomainTensorName(NamedTuple):
    """A per-domain tensor of a multi-domain ``ResNet26`` state dict: ``<prefix>.<domain>.<leaf>``
    with prefix ``heads`` or a BatchNorm set (``blocks.3.bn1``, ``stem.bn``, ...)."""

    prefix: str
    domain: int
    leaf: str

    @property
    def is_head(self) -> bool:
        return self.prefix == "heads"

    def for_domain(self, domain: int) -> str:
        """The same tensor's name in another domain's BN set or head."""
        return f"{self.prefix}.{domain}.{self.leaf}"


def domain_tensor_name(name: str) -> DomainTensorName | None:
    """The BatchNorm or head tensor ``name`` of a multi-domain ``ResNet26`` state dict taken
    apart; ``None`` for a tensor every domain shares (a convolution)."""
    match = _BN_SET.match(name) or _HEAD.match(name)
    if match is None:
        return None
    prefix = match["prefix"] if match.re is _BN_SET else "heads"
    return DomainTensorName(prefix, int(match["set"]), match["leaf"])
