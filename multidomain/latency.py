"""Latency tables: measured forward time of the served network as a function of the kept mid
channel groups of every block, and the latency cost the budget caps.

A domain's served forward pass (``multidomain.fold``) is the stem, the shortcuts, the pooling
and head (the *fixed* part, which pruning does not touch) plus every block's mid path
(``conv1 + ReLU``, ``conv2 + shortcut + ReLU``), whose time depends on the block's kept groups
``k``. :func:`profile_latency` measures, in the served form (BN folded, channels-last, flat
``conv2d`` forward, the service's thread count), the mid path of every distinct block shape for
every ``k = 1..G`` and the whole unpruned network, alternately, and takes medians; the fixed part is
the whole network minus the blocks' full mid paths, so that

    predicted(domain) = fixed + sum_b T_b(k_b)      and      predicted(backbone) = measured.

``T_b`` is made monotone (running maximum over ``k``): a wider block is never predicted to be
faster. :class:`LatencyCost` is the predicted time as a fraction of the backbone's, piecewise
linear in a (soft) group count so that training can differentiate it.

The table is JSON (:meth:`LatencyTable.save`); :meth:`LatencyTable.check` refuses a table made
for another architecture, width, image size, channel group or CPU capability.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multidomain.arch import ArchitectureError, ArchSpec
from multidomain.files import read_json, write_json
from multidomain.fold import FoldedConv, fold_network, mid_path
from multidomain.groups import check_channel_group, cpu_capability
from multidomain.network import ResNet26

__all__ = [
    "CLOCKS",
    "TABLE_FORMAT",
    "LatencyCost",
    "LatencyTable",
    "LatencyTableError",
    "profile_latency",
    "time_alternately",
    "time_networks",
    "timer",
]

TABLE_FORMAT = "multidomain-pruning-latency-table"
TABLE_VERSION = 1


class LatencyTableError(ValueError):
    """A latency table that is unreadable or made for another network or machine."""


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def timer(clock: str, threads: int) -> Callable[[], float]:
    """The clock a timing reads: ``wall`` (elapsed time) or ``cpu`` (the calling thread's CPU
    time). With one torch thread every operator runs in the calling thread, so ``cpu`` is the
    compute time without the time other processes took the core away: the figure to measure
    on a shared, busy machine. It needs ``threads == 1``."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and threads != 1:
        raise ValueError(
            f"clock cpu needs 1 torch thread (other threads' time is not counted), got {threads}"
        )
    return CLOCKS[clock]


def time_alternately(
    calls: Sequence[Callable[[], object]],
    repeats: int,
    warmup: int = 3,
    on_round: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Median time in ms (``clock``: wall time by default) of every call, timed in turn
    ``repeats`` times (so that the machine's drift affects all alike), under
    ``torch.inference_mode``."""
    samples: list[list[float]] = [[] for _ in calls]
    with torch.inference_mode():
        for _ in range(warmup):
            for call in calls:
                call()
        for round_ in range(repeats):
            for call, times in zip(calls, samples, strict=True):
                start = clock()
                call()
                times.append(clock() - start)
            if on_round is not None:
                on_round(round_ + 1)
    return [1000.0 * statistics.median(times) for times in samples]


def time_networks(
    networks: Mapping[str, Callable[[Tensor], object]],
    image_size: int,
    batch_sizes: Sequence[int],
    repeats: int,
    threads: int,
    clock: str = "wall",
) -> dict[int, dict[str, float]]:
    """Median forward time in ms of served networks (uint8 pixels in) at every batch size, all
    networks timed alternately, with ``threads`` torch threads (restored afterwards), on
    ``clock`` (:func:`timer`)."""
    read_clock = timer(clock, threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[int, dict[str, float]] = {}
    try:
        generator = torch.Generator().manual_seed(0)
        for batch in batch_sizes:
            size = (batch, 3, image_size, image_size)
            pixels = torch.randint(0, 256, size, generator=generator).to(torch.uint8)
            calls = [partial(net, pixels) for net in networks.values()]
            times = time_alternately(calls, repeats, clock=read_clock)
            out[batch] = dict(zip(networks, times, strict=True))
    finally:
        torch.set_num_threads(previous)
    return out


@dataclass(frozen=True)
class LatencyTable:
    """Per batch size: the unpruned backbone's time, the fixed part's and every block's mid
    path time for ``k = 1..G_b`` kept groups (``block_ms[batch][b][k - 1]``, raw medians)."""

    arch: ArchSpec
    group: int
    cpu_capability: str
    torch_threads: int
    batch_sizes: tuple[int, ...]
    backbone_ms: Mapping[int, float]
    block_ms: Mapping[int, Sequence[Sequence[float]]]
    info: Mapping[str, Any]

    def monotone(self, batch: int, block: int) -> list[float]:
        """``T_b(k)`` for ``k = 0..G_b`` as predicted: 0 at ``k = 0``, then the running maximum
        of the medians."""
        out = [0.0]
        for value in self.block_ms[batch][block]:
            out.append(max(out[-1], value))
        return out

    def fixed_ms(self, batch: int) -> float:
        full = sum(self.monotone(batch, b)[-1] for b in range(len(self.block_ms[batch])))
        return self.backbone_ms[batch] - full

    def predicted_ms(self, batch: int, channels: Sequence[int]) -> float:
        """Predicted time of a subnetwork keeping ``channels[b]`` mid channels per block."""
        groups = [c // self.group for c in channels]
        curves = [self.monotone(batch, b) for b in range(len(groups))]
        return self.fixed_ms(batch) + sum(c[k] for c, k in zip(curves, groups, strict=True))

    def check(self, arch: ArchSpec, group: int, capability: str | None = None) -> None:
        """Refuse a table made for another network, group size or CPU capability."""
        capability = cpu_capability() if capability is None else capability
        mismatches = []
        for field in ("name", "width_mult", "blocks_per_stage", "image_size", "in_channels"):
            mine, theirs = getattr(arch, field), getattr(self.arch, field)
            if mine != theirs:
                mismatches.append(f"{field} {theirs} (this run: {mine})")
        if self.group != group:
            mismatches.append(f"channel group {self.group} (this run: {group})")
        if self.cpu_capability != capability:
            mismatches.append(f"CPU capability {self.cpu_capability} (this machine: {capability})")
        if mismatches:
            raise LatencyTableError(
                "the latency table was made for another setting: "
                + ", ".join(mismatches)
                + "; profile again with 'mdprune profile'"
            )

    def cost(self, batch: int | None = None) -> LatencyCost:
        """The latency cost at ``batch`` (default: the largest batch size profiled)."""
        batch = max(self.batch_sizes) if batch is None else batch
        if batch not in self.batch_sizes:
            sizes = ", ".join(str(b) for b in self.batch_sizes)
            raise LatencyTableError(f"the latency table has no batch size {batch} (it has {sizes})")
        return LatencyCost(self, batch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "format_version": TABLE_VERSION,
            "architecture": self.arch.to_dict(),
            "channel_group": self.group,
            "cpu_capability": self.cpu_capability,
            "torch_threads": self.torch_threads,
            "batch_sizes": list(self.batch_sizes),
            "backbone_ms": {str(b): v for b, v in self.backbone_ms.items()},
            "block_ms": {str(b): [list(c) for c in v] for b, v in self.block_ms.items()},
            **dict(self.info),
        }

    def save(self, path: Path) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, where: str = "latency table") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise LatencyTableError(f"{where}: not a {TABLE_FORMAT} file")
        if data.get("format_version") != TABLE_VERSION:
            raise LatencyTableError(
                f"{where}: format_version {data.get('format_version')!r} is not supported"
            )
        try:
            arch = ArchSpec.from_dict(data["architecture"])
            group = int(data["channel_group"])
            batch_sizes = tuple(int(b) for b in data["batch_sizes"])
            backbone = {b: float(data["backbone_ms"][str(b)]) for b in batch_sizes}
            blocks = {
                b: [[float(t) for t in curve] for curve in data["block_ms"][str(b)]]
                for b in batch_sizes
            }
            table = cls(
                arch,
                group,
                str(data["cpu_capability"]),
                int(data["torch_threads"]),
                batch_sizes,
                backbone,
                blocks,
                {k: v for k, v in data.items() if k not in _TABLE_FIELDS},
            )
        except (KeyError, TypeError, ValueError, ArchitectureError) as exc:
            raise LatencyTableError(f"{where}: malformed latency table ({exc!r})") from None
        check_channel_group(arch, group)
        expected = [m // group for m in arch.full_mid_channels()]
        for b in batch_sizes:
            if [len(curve) for curve in blocks[b]] != expected:
                raise LatencyTableError(
                    f"{where}: batch {b} does not hold {expected} group counts per block"
                )
        return table

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"no latency table at {path}")
        return cls.from_dict(read_json(path, LatencyTableError), str(path))


_TABLE_FIELDS = {
    "format",
    "format_version",
    "architecture",
    "channel_group",
    "cpu_capability",
    "torch_threads",
    "batch_sizes",
    "backbone_ms",
    "block_ms",
}


@dataclass(frozen=True)
class LatencyCost:
    """Predicted time of a domain over the unpruned backbone's, at one batch size."""

    table: LatencyTable
    batch: int

    @property
    def name(self) -> str:
        return f"latency@{self.batch}"

    def fraction(self, channels: Sequence[float]) -> float:
        return self.table.predicted_ms(self.batch, [int(c) for c in channels]) / self.full_ms

    @property
    def full_ms(self) -> float:
        return self.table.backbone_ms[self.batch]

    def soft_fraction(self, channels: Sequence[Tensor]) -> Tensor:
        """Piecewise-linear in the soft group count ``channels[b] / g`` between the table's
        points (its gradient is the slope to the next point)."""
        total = torch.zeros(())
        for b, count in enumerate(channels):
            curve = torch.tensor(self.table.monotone(self.batch, b), dtype=count.dtype)
            top = curve.numel() - 1
            k = count / self.table.group  # in [0, top]; not clamped, which would cut the gradient
            low = k.detach().floor().clamp(0, top - 1)
            index = low.long()
            total = total + curve[index] + (k - low) * (curve[index + 1] - curve[index])
        return (total + self.table.fixed_ms(self.batch)) / self.full_ms

    def floor(self, group: int) -> float:
        if group != self.table.group:
            raise LatencyTableError(
                f"the latency table is for channel groups of {self.table.group}, not {group}"
            )
        return self.fraction([group] * len(self.table.arch.full_mid_channels()))


def _random_conv(out_ch: int, in_ch: int, kernel: int, stride: int, padding: int) -> FoldedConv:
    weight = torch.randn(out_ch, in_ch, kernel, kernel) * (2.0 / (in_ch * kernel * kernel)) ** 0.5
    weight = weight.contiguous(memory_format=torch.channels_last)
    return FoldedConv(weight, torch.randn(out_ch) * 0.1, stride, padding)


def profile_latency(
    arch: ArchSpec,
    group: int,
    batch_sizes: Sequence[int] = (1, 32),
    threads: int = 1,
    repeats: int = 30,
    on_round: Callable[[int, int], None] | None = None,
    clock: str = "wall",
) -> LatencyTable:
    """Measure a latency table on this machine (see the module docstring) on ``clock``
    (:func:`timer`). ``on_round(done, total)`` reports progress. Restores torch's thread count
    afterwards."""
    check_channel_group(arch, group)
    read_clock = timer(clock, threads)
    if not batch_sizes or min(batch_sizes) < 1 or repeats < 1 or threads < 1:
        raise ValueError("batch sizes, repeats and threads must be >= 1")
    batch_sizes = tuple(sorted(set(batch_sizes)))
    torch.manual_seed(0)
    backbone = fold_network(ResNet26(arch, [10]).eval(), [0.5] * 3, [0.25] * 3)
    specs = arch.blocks()
    sides = [arch.image_size, *arch.spatial_sizes()]
    shapes: dict[tuple[int, int, int, int], list[int]] = {}
    for b, spec in enumerate(specs):
        key = (spec.in_channels, spec.out_channels, spec.stride, sides[b])
        shapes.setdefault(key, []).append(b)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    total = repeats * len(batch_sizes)
    done = 0
    backbone_ms: dict[int, float] = {}
    block_ms: dict[int, list[list[float]]] = {}
    try:
        for batch in batch_sizes:
            pixels = torch.randint(0, 256, (batch, 3, arch.image_size, arch.image_size))
            pixels = pixels.to(torch.uint8)
            calls: list[Callable[[], object]] = [partial(backbone, pixels)]
            entries: list[tuple[tuple[int, int, int, int], int]] = []
            for key in shapes:
                in_ch, out_ch, stride, side = key
                out_side = (side + stride - 1) // stride
                x = torch.randn(batch, in_ch, side, side).relu()
                x = x.contiguous(memory_format=torch.channels_last)
                identity = torch.randn(batch, out_ch, out_side, out_side)
                identity = identity.contiguous(memory_format=torch.channels_last)
                mid = specs[shapes[key][0]].mid_channels
                for k in range(1, mid // group + 1):
                    conv1 = _random_conv(k * group, in_ch, 3, stride, 1)
                    conv2 = _random_conv(out_ch, k * group, 3, 1, 1)
                    calls.append(partial(mid_path, x, identity, conv1, conv2))
                    entries.append((key, k))

            def report(round_: int, base: int = done) -> None:
                if on_round is not None:
                    on_round(base + round_, total)

            medians = time_alternately(calls, repeats, on_round=report, clock=read_clock)
            done += repeats
            backbone_ms[batch] = medians[0]
            curves = [[0.0] * (m // group) for m in arch.full_mid_channels()]
            for (key, k), value in zip(entries, medians[1:], strict=True):
                for b in shapes[key]:
                    curves[b][k - 1] = value
            block_ms[batch] = curves
    finally:
        torch.set_num_threads(previous)
    info = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "repeats": repeats,
        "clock": clock,
        "statistic": "median of alternating repeats; blocks of one shape measured once",
    }
    return LatencyTable(
        arch, group, cpu_capability(), threads, batch_sizes, backbone_ms, block_ms, info
    )
