"""Which backbone channels each domain of a run uses, per block, and which survive pruning, from
the channel lists of its manifest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multidomain.arch import ArchitectureError, ArchSpec
from reporting.inputs import as_mapping

__all__ = ["ChannelUsage", "channel_usage"]


@dataclass
class ChannelUsage:
    """Per block: the columns shown, which of them each domain uses and which are kept."""

    widths: list[int]
    used: list[list[set[int]]]  # [domain][block] -> column indices
    kept: list[set[int]]  # [block] -> column indices that survive pruning
    backbone_positions: bool  # False: columns are compact indices (origin unknown)
    backbone_widths: list[int] | None = None  # channels per block in the backbone, if known


def channel_usage(manifest: Mapping[str, Any]) -> ChannelUsage | None:
    """Which backbone channels each domain uses, per block; ``None`` if the manifest lacks the
    channel lists. Without ``compact_channel_origin`` the columns are compact indices unless
    nothing was pruned in a block (then compact and backbone indices coincide)."""
    domains = [d for d in manifest.get("domains", []) if isinstance(d, Mapping)]
    channels = [d.get("channels") for d in domains]
    if not domains or not all(isinstance(c, list) and c for c in channels):
        return None
    n_blocks = len(channels[0])  # type: ignore[arg-type]
    lists: list[list[list[int]]] = []
    for per_domain in channels:
        assert isinstance(per_domain, list)
        if len(per_domain) != n_blocks or not all(
            isinstance(b, list) and all(isinstance(i, int) and i >= 0 for i in b)
            for b in per_domain
        ):
            return None
        lists.append(per_domain)
    full: list[int] | None = None
    try:
        arch = ArchSpec.from_dict(dict(as_mapping(manifest.get("architecture"))))
        full = arch.full_mid_channels()
    except (ArchitectureError, TypeError, ValueError):
        full = None
    if full is not None and len(full) != n_blocks:
        full = None
    compact_raw = manifest.get("compact_mid_channels")
    origin_raw = manifest.get("compact_channel_origin")
    compact = [
        max((max(lists[d][b], default=-1) for d in range(len(lists))), default=-1) + 1
        for b in range(n_blocks)
    ]
    if isinstance(compact_raw, list) and len(compact_raw) == n_blocks:
        compact = [
            max(c, int(w)) if isinstance(w, int) else c
            for c, w in zip(compact, compact_raw, strict=True)
        ]
    origin: list[list[int]] | None = None
    if (
        full is not None
        and isinstance(origin_raw, list)
        and len(origin_raw) == n_blocks
        and all(
            isinstance(o, list)
            and len(o) == compact[b]
            and all(isinstance(i, int) and 0 <= i < full[b] for i in o)
            for b, o in enumerate(origin_raw)
        )
    ):
        origin = origin_raw
    elif full is not None and compact == full:
        origin = [list(range(w)) for w in full]  # nothing pruned: identity
    if origin is None or full is None:
        return ChannelUsage(
            widths=compact,
            used=[[set(b) for b in per_domain] for per_domain in lists],
            kept=[set(range(w)) for w in compact],
            backbone_positions=False,
            backbone_widths=full,
        )
    return ChannelUsage(
        widths=full,
        used=[[{origin[b][i] for i in idx} for b, idx in enumerate(d)] for d in lists],
        kept=[set(o) for o in origin],
        backbone_positions=True,
        backbone_widths=full,
    )
