"""Parameter-sharing losses over the domains' straight-through masks.

``masks[b]`` is a ``[domains, channels]`` tensor (0/1 forward values, sigmoid gradients) and
``weights[b]`` the cost of one channel of block ``b``. Every loss is normalised by the
cost-weighted size of all switchable channels, so it lies in [0, 1]:

* ``union``: cost-weighted soft size of the union, ``sum_b w_b sum_c (1 - prod_d (1 - m_dbc))``;
* ``intersection``: the mean domain's size minus the intersection's,
  ``sum_b w_b sum_c (mean_d m_dbc - prod_d m_dbc)`` (zero when all masks agree);
* ``jaccard``: ``1 - |intersection|_w / |union|_w``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

SharingVariant = Literal["none", "union", "intersection", "jaccard"]
SHARING_VARIANTS: tuple[str, ...] = get_args(SharingVariant)


def check_variant(name: str) -> SharingVariant:
    if name not in SHARING_VARIANTS:
        raise ValueError(
            f"unknown sharing variant {name!r}; choose one of {', '.join(SHARING_VARIANTS)}"
        )
    return name  # type: ignore[return-value]


def _weighted(per_block: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    return sum((w * t.sum() for t, w in zip(per_block, weights, strict=True)), torch.zeros(()))


def sharing_loss(
    variant: SharingVariant, masks: Sequence[Tensor], weights: Sequence[float]
) -> Tensor:
    if variant == "none":
        return torch.zeros(())
    total = sum(w * m.shape[1] for m, w in zip(masks, weights, strict=True))
    union = _weighted([1 - torch.prod(1 - m, dim=0) for m in masks], weights)
    inter = _weighted([torch.prod(m, dim=0) for m in masks], weights)
    if variant == "union":
        return union / total
    if variant == "intersection":
        return (_weighted([m.mean(dim=0) for m in masks], weights) - inter) / total
    return 1 - inter / union.clamp_min(1e-8)
