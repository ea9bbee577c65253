"""Budget projection and physical pruning of the channels no domain uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from multidomain.costs import DomainCost
from multidomain.network import ResNet26, split_state_dict


def project_to_budget(
    scores: Sequence[Tensor],
    active: Sequence[Tensor],
    costs: Sequence[DomainCost],
    budget: float,
    group: int = 1,
) -> tuple[list[Tensor], int]:
    """Turn off a domain's lowest-scoring active groups of ``group`` channels until every cost
    in ``costs`` is at or below ``budget``; never the last group of a block (a block left with
    none gets its highest-scoring group back first). ``scores``/``active`` hold one domain's
    per-block group vectors. Returns the new group masks and how many groups were removed."""
    masks = [a.clone().bool() for a in active]
    for mask, score in zip(masks, scores, strict=True):
        if not bool(mask.any()):
            mask[int(score.argmax())] = True
    order = sorted(
        ((float(s[c]), b, c) for b, s in enumerate(scores) for c in range(s.numel())),
        key=lambda t: t[0],
    )

    def over() -> bool:
        channels = [group * float(m.sum()) for m in masks]
        return any(cost.fraction(channels) > budget + 1e-12 for cost in costs)

    removed = 0
    for _, block, index in order:
        if not over():
            break
        if masks[block][index] and int(masks[block].sum()) > 1:
            masks[block][index] = False
            removed += 1
    if over():
        raise below_floor(budget, costs, group)
    return masks, removed


def below_floor(budget: float, costs: Sequence[DomainCost], group: int) -> ValueError:
    """The error of a projection that cannot reach ``budget`` (``budget_costs`` refuses such
    budgets up front with the user-facing message)."""
    lowest = max(cost.floor(group) for cost in costs)
    return ValueError(
        f"budget {budget} is below the least a domain can cost with channel groups of "
        f"{group} ({lowest:.4f})"
    )


@dataclass
class CompactParts:
    shared: dict[str, Tensor]
    domain_tensors: list[dict[str, Tensor]]
    union_mid_channels: list[int]
    union_origin: list[list[int]]  # [block] -> backbone index of every compact channel
    channels: list[list[list[int]]]  # [domain][block] -> indices into the compact union


def prune_to_compact(
    model: ResNet26, masks: Sequence[Tensor], own_masks: Sequence[Tensor] | None = None
) -> CompactParts:
    """Remove every mid channel no domain uses. ``masks[b]`` is a bool ``[domains, channels]``
    tensor. Keeps for each domain only the BN entries of its own channels: those of
    ``own_masks`` when given (a nested level's, within ``masks``), else of ``masks``."""
    own_masks = masks if own_masks is None else own_masks
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    shared, per_domain = split_state_dict(state)
    union_indices: list[Tensor] = []
    for b, mask in enumerate(masks):
        if not bool(mask.any(dim=1).all()):
            raise ValueError(f"block {b}: a domain has no active channel")
        union = torch.nonzero(mask.any(dim=0)).flatten()
        union_indices.append(union)
        shared[f"blocks.{b}.conv1.weight"] = shared[f"blocks.{b}.conv1.weight"][union]
        shared[f"blocks.{b}.conv2.weight"] = shared[f"blocks.{b}.conv2.weight"][:, union]

    channels: list[list[list[int]]] = []
    for d, tensors in enumerate(per_domain):
        domain_channels = []
        for b, mask in enumerate(own_masks):
            if bool((mask[d] & ~masks[b][d]).any()):
                raise ValueError(f"block {b}: domain {d} uses a channel outside its largest mask")
            own = torch.nonzero(mask[d]).flatten()
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                key = f"blocks.{b}.bn1.{leaf}"
                tensors[key] = tensors[key][own]
            position = {int(c): i for i, c in enumerate(union_indices[b].tolist())}
            domain_channels.append([position[int(c)] for c in own.tolist()])
        channels.append(domain_channels)
    return CompactParts(
        shared,
        per_domain,
        [int(u.numel()) for u in union_indices],
        [u.tolist() for u in union_indices],
        channels,
    )
