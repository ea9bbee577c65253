"""Inference-only rewrite of a one-domain ``ResNet26``: every BatchNorm folded into the
convolution before it (``w' = w * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma /
sqrt(var + eps)``), so a forward pass runs convolutions, ReLUs and additions only."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from multidomain.network import ResNet26
from multidomain.preprocess import Normalize


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


def serving_network(model: ResNet26, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """What serving runs (eval mode): uint8 [N, 3, S, S] pixels -> normalisation -> ``model``
    with BatchNorm folded into the convolutions, its weights in channels-last layout (faster
    CPU convolutions, same results)."""
    network = nn.Sequential(Normalize(mean, std), fold_batchnorm(model))
    return network.to(memory_format=torch.channels_last).eval()
