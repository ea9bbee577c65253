"""Inference-only rewrite of a one-domain ``ResNet26``: every BatchNorm folded into the
convolution before it (``w' = w * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma /
sqrt(var + eps)``), so a forward pass runs convolutions, ReLUs and additions only."""

from __future__ import annotations

import copy

import torch
from torch import nn

from multidomain.network import ResNet26


def _fold(conv: nn.Conv2d, bn: nn.Module) -> None:
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
    assert bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)


@torch.no_grad()
def fold_batchnorm(model: ResNet26) -> ResNet26:
    """A folded copy of a single-domain (one BN set) model, in eval mode."""
    if model.num_domains != 1:
        raise ValueError("fold_batchnorm expects a one-domain subnetwork")
    folded = copy.deepcopy(model).eval()
    pairs: list[tuple[nn.Conv2d, nn.ModuleList]] = [(folded.stem.conv, folded.stem.bn)]
    for block in folded.block_list():
        pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        if block.shortcut is not None:
            pairs.append((block.shortcut.conv, block.shortcut.bn))
    for conv, bns in pairs:
        _fold(conv, bns[0])
        bns[0] = nn.Identity()
    return folded
