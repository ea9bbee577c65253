"""Channel groups: the unit that switches, the budget, pruning and export work in.

CPU convolution kernels (oneDNN) compute channels in blocks of the SIMD width: 16 fp32 lanes on
AVX-512, 8 on AVX2. A pruned width saves time only when it drops below a multiple of the block,
so mid channels are switched in groups of ``g`` consecutive channels and every width a domain or
the compact union keeps is a multiple of ``g``. ``auto`` is the fp32 SIMD width torch reports
for this machine (:func:`simd_fp32_lanes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from multidomain.arch import ArchitectureError, ArchSpec

__all__ = [
    "CHANNEL_GROUPS",
    "check_channel_group",
    "cpu_capability",
    "expand_groups",
    "group_counts",
    "resolve_channel_group",
    "simd_fp32_lanes",
]

#: The group sizes ``--channel-group`` accepts besides ``auto``.
CHANNEL_GROUPS = (1, 4, 8, 16)


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here (``AVX512``, ``AVX2``, ...)."""
    return str(torch.backends.cpu.get_cpu_capability())


def simd_fp32_lanes(capability: str | None = None) -> int:
    """fp32 lanes of the vector unit: 16 for AVX-512, 8 for AVX2 (and AVX), 4 otherwise
    (NEON, SSE, the default kernels)."""
    capability = cpu_capability() if capability is None else capability
    if capability.startswith("AVX512"):
        return 16
    return 8 if capability.startswith("AVX") else 4


def resolve_channel_group(value: str | int) -> int:
    """``auto`` -> :func:`simd_fp32_lanes`; else one of :data:`CHANNEL_GROUPS`."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return simd_fp32_lanes()
    try:
        group = int(value)
    except (TypeError, ValueError):
        group = -1
    if group not in CHANNEL_GROUPS:
        choices = ", ".join(str(g) for g in CHANNEL_GROUPS)
        raise ArchitectureError(f"channel group must be auto or one of {choices}, got {value!r}")
    return group


def check_channel_group(arch: ArchSpec, group: int) -> None:
    """``group`` must divide the mid width of every block."""
    widths = sorted(set(arch.full_mid_channels()))
    bad = [w for w in widths if w % group]
    if group < 1 or bad:
        raise ArchitectureError(
            f"channel group {group} does not divide the mid width {bad[0] if bad else group} of "
            f"the architecture (widths {'/'.join(str(w) for w in widths)} at width multiplier "
            f"{arch.width_mult:g}); choose a group that divides every width"
        )


def expand_groups(mask: Tensor, group: int) -> Tensor:
    """Per-group values [..., G] -> per-channel values [..., G * group]."""
    return mask if group == 1 else mask.repeat_interleave(group, dim=-1)


def group_counts(widths: Sequence[int], group: int) -> list[int]:
    """Groups per block."""
    return [w // group for w in widths]
