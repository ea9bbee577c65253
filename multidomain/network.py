"""The ResNet-26 network in its two forms.

``ResNet26`` has shared convolutions, one BatchNorm set and one classifier head per domain (a
domain index selects them) and a configurable number of ``mid`` channels per block. It is:

* the training-time network (full widths, every domain), optionally masked per domain by
  ``ChannelSwitches``;
* a domain's compact subnetwork at serving time (one BN set, one head, only the domain's own
  mid channels), built from an artifact by ``multidomain.artifact``.

``domain_tensor_name`` (defined in the torch-free ``arch``, re-exported here) is the one rule
for telling a per-domain tensor (a BN set's, a head's) from a shared one by its state-dict name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from multidomain.arch import (
    ArchitectureError,
    ArchSpec,
    BlockSpec,
    DomainTensorName,
    domain_tensor_name,
)
from multidomain.groups import expand_groups

__all__ = [
    "BasicBlock",
    "ChannelSwitches",
    "DomainTensorName",
    "ResNet26",
    "Shortcut",
    "Stem",
    "domain_tensor_name",
    "split_state_dict",
    "ste_binarize",
]


def _bn_sets(channels: int, count: int) -> nn.ModuleList:
    return nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(count))


class Stem(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_bn_sets: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn = _bn_sets(out_channels, num_bn_sets)

    def forward(self, x: Tensor, domain: int) -> Tensor:
        return torch.relu(self.bn[domain](self.conv(x)))


class Shortcut(nn.Module):
    def __init__(self, spec: BlockSpec, num_bn_sets: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(spec.in_channels, spec.out_channels, 1, spec.stride, bias=False)
        self.bn = _bn_sets(spec.out_channels, num_bn_sets)

    def forward(self, x: Tensor, domain: int) -> Tensor:
        return self.bn[domain](self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, spec: BlockSpec, mid_channels: int, num_bn_sets: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(spec.in_channels, mid_channels, 3, spec.stride, 1, bias=False)
        self.bn1 = _bn_sets(mid_channels, num_bn_sets)
        self.conv2 = nn.Conv2d(mid_channels, spec.out_channels, 3, 1, 1, bias=False)
        self.bn2 = _bn_sets(spec.out_channels, num_bn_sets)
        self.shortcut = Shortcut(spec, num_bn_sets) if spec.has_projection else None

    def forward(self, x: Tensor, domain: int, mask: Tensor | None = None) -> Tensor:
        hidden = torch.relu(self.bn1[domain](self.conv1(x)))
        if mask is not None:
            hidden = hidden * mask.view(1, -1, 1, 1)
        out = self.bn2[domain](self.conv2(hidden))
        identity = x if self.shortcut is None else self.shortcut(x, domain)
        return torch.relu(out + identity)


class ResNet26(nn.Module):
    """ResNet-26 with per-domain BatchNorm and heads; ``forward(x, domain, masks)``."""

    def __init__(
        self,
        arch: ArchSpec,
        num_classes: Sequence[int],
        mid_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        specs = arch.blocks()
        mids = list(arch.full_mid_channels() if mid_channels is None else mid_channels)
        if len(mids) != len(specs):
            raise ArchitectureError(f"expected {len(specs)} mid widths, got {len(mids)}")
        if any(m < 1 for m in mids):
            raise ArchitectureError(f"every block needs at least one mid channel, got {mids}")
        if not num_classes or any(c < 2 for c in num_classes):
            raise ArchitectureError(f"every domain needs >= 2 classes, got {list(num_classes)}")
        self.arch = arch
        self.num_domains = len(num_classes)
        self.mid_channels = mids
        self.stem = Stem(arch.in_channels, arch.stem_channels, self.num_domains)
        self.blocks = nn.ModuleList(
            BasicBlock(spec, mid, self.num_domains) for spec, mid in zip(specs, mids, strict=True)
        )
        self.heads = nn.ModuleList(nn.Linear(arch.feature_channels, c) for c in num_classes)

    def features(self, x: Tensor, domain: int, masks: Sequence[Tensor] | None = None) -> Tensor:
        out = self.stem(x, domain)
        for i, block in enumerate(self.blocks):
            out = block(out, domain, None if masks is None else masks[i])
        return out.mean(dim=(2, 3))

    def forward(self, x: Tensor, domain: int = 0, masks: Sequence[Tensor] | None = None) -> Tensor:
        if not 0 <= domain < self.num_domains:
            raise IndexError(f"domain index {domain} out of range 0..{self.num_domains - 1}")
        return self.heads[domain](self.features(x, domain, masks))

    def block_list(self) -> list[BasicBlock]:
        return [b for b in self.blocks if isinstance(b, BasicBlock)]

    def domain_batchnorms(self, domain: int) -> list[nn.BatchNorm2d]:
        """Every BatchNorm layer of one domain."""
        sets = [m for m in self.modules() if isinstance(m, nn.ModuleList) and m is not self.heads]
        layers = [s[domain] for s in sets]
        return [layer for layer in layers if isinstance(layer, nn.BatchNorm2d)]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The convolution weights shared by all domains."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)]  # type: ignore[misc]

    def domain_parameters(self) -> list[nn.Parameter]:
        """Per-domain BatchNorm affines and heads."""
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]


def split_state_dict(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """Split a multi-domain ``ResNet26`` state dict into shared tensors and per-domain tensors
    (BN-set index removed from the names). ``num_batches_tracked`` is dropped."""
    shared: dict[str, Tensor] = {}
    per_domain: dict[int, dict[str, Tensor]] = {}
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        parsed = domain_tensor_name(name)
        if parsed is None:
            shared[name] = tensor
        else:
            key = f"head.{parsed.leaf}" if parsed.is_head else f"{parsed.prefix}.{parsed.leaf}"
            per_domain.setdefault(parsed.domain, {})[key] = tensor
    return shared, [per_domain[k] for k in sorted(per_domain)]


def ste_binarize(scores: Tensor) -> Tensor:
    """Hard 0/1 mask in the forward pass; sigmoid(scores)'s gradient in the backward pass."""
    soft = torch.sigmoid(scores)
    hard = (scores > 0).to(scores.dtype)
    return hard + soft - soft.detach()


class ChannelSwitches(nn.Module):
    """One real-valued score per (domain, block, group of ``group`` consecutive mid channels);
    a group is on iff its score > 0. ``group`` must divide every block's width."""

    def __init__(
        self, num_domains: int, mid_channels: Sequence[int], init: float = 1.0, group: int = 1
    ) -> None:
        super().__init__()
        if group < 1 or any(m % group for m in mid_channels):
            raise ArchitectureError(f"channel group {group} does not divide {list(mid_channels)}")
        self.group = group
        self.scores = nn.ParameterList(
            nn.Parameter(torch.full((num_domains, m // group), float(init))) for m in mid_channels
        )

    def masks(self, domain: int) -> list[Tensor]:
        """Straight-through masks of one domain per channel, one tensor per block."""
        return [expand_groups(ste_binarize(s[domain]), self.group) for s in self.scores]

    def group_masks(self) -> list[Tensor]:
        """Straight-through masks of every domain: per block a [domains, groups] tensor."""
        return [ste_binarize(s) for s in self.scores]

    @torch.no_grad()
    def hard_group_masks(self) -> list[Tensor]:
        """Boolean group masks per block, shape [domains, groups]."""
        return [(s > 0) for s in self.scores]

    @torch.no_grad()
    def hard_masks(self) -> list[Tensor]:
        """Boolean channel masks per block, shape [domains, channels]."""
        return [expand_groups(m, self.group) for m in self.hard_group_masks()]
