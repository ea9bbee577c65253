"""Latency tables: measured on this machine, written and read back unchanged, predictions
monotone in the kept groups and equal to the measured backbone at full width, a
differentiable cost, and tables of another network or machine refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from multidomain.arch import ArchSpec
from multidomain.groups import cpu_capability
from multidomain.latency import (
    LatencyTable,
    LatencyTableError,
    profile_latency,
    time_alternately,
    timer,
)

ARCH = ArchSpec(width_mult=0.125, image_size=16)  # mid widths 8/16/32
GROUP = 4


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    rounds: list[tuple[int, int]] = []
    measured = profile_latency(
        ARCH, GROUP, (4, 1), threads=1, repeats=3, on_round=lambda d, t: rounds.append((d, t))
    )
    assert rounds[-1] == (6, 6)  # progress over both batch sizes
    return measured


def test_a_table_records_what_it_was_made_for(table: LatencyTable) -> None:
    assert table.arch == ARCH and table.group == GROUP
    assert table.cpu_capability == cpu_capability() and table.torch_threads == 1
    assert table.batch_sizes == (1, 4)
    for batch in table.batch_sizes:
        assert table.backbone_ms[batch] > 0
        assert [len(c) for c in table.block_ms[batch]] == [2] * 4 + [4] * 4 + [8] * 4
        assert all(t > 0 for curve in table.block_ms[batch] for t in curve)
    assert table.info["torch_version"] == torch.__version__


def test_a_table_round_trips(table: LatencyTable, tmp_path: Path) -> None:
    table.save(tmp_path / "table.json")
    loaded = LatencyTable.load(tmp_path / "table.json")
    assert loaded == table
    assert loaded.to_dict() == json.loads((tmp_path / "table.json").read_text())


def test_predictions_are_monotone_and_exact_at_full_width(table: LatencyTable) -> None:
    full = ARCH.full_mid_channels()
    for batch in table.batch_sizes:
        assert table.predicted_ms(batch, full) == pytest.approx(table.backbone_ms[batch])
        cost = table.cost(batch)
        assert cost.fraction(full) == pytest.approx(1.0)
        for b, width in enumerate(full):
            previous = -1.0
            for kept in range(GROUP, width + 1, GROUP):
                channels = list(full)
                channels[b] = kept
                predicted = cost.fraction(channels)
                assert predicted >= previous
                previous = predicted
        assert cost.floor(GROUP) == pytest.approx(cost.fraction([GROUP] * len(full)))
        assert cost.floor(GROUP) < 1.0


def test_the_cost_is_differentiable_in_soft_group_counts(table: LatencyTable) -> None:
    cost = table.cost()
    assert cost.batch == 4 and cost.name == "latency@4"
    full = ARCH.full_mid_channels()
    counts = [torch.tensor([float(w), float(GROUP)], requires_grad=True) for w in full]
    soft = cost.soft_fraction(counts)
    assert soft[0].item() == pytest.approx(1.0, abs=1e-6)
    assert soft[1].item() == pytest.approx(cost.floor(GROUP), abs=1e-6)
    soft.sum().backward()
    for b, count in enumerate(counts):
        assert count.grad is not None
        curve = table.monotone(4, b)
        if curve[-1] > curve[-2]:  # full width: the slope of the last piece, not 0
            assert count.grad[0] > 0
    with pytest.raises(LatencyTableError, match="no batch size 32"):
        table.cost(32)
    with pytest.raises(LatencyTableError, match="channel groups of 4, not 8"):
        cost.floor(8)


def test_a_table_for_another_network_or_machine_is_refused(table: LatencyTable) -> None:
    table.check(ARCH, GROUP)
    for arch, group, capability, message in [
        (
            ArchSpec(width_mult=0.25, image_size=16),
            GROUP,
            None,
            r"width_mult 0.125 \(this run: 0.25\)",
        ),
        (ArchSpec(width_mult=0.125, image_size=32), GROUP, None, r"image_size 16 \(this run: 32\)"),
        (ARCH, 8, None, r"channel group 4 \(this run: 8\)"),
        (ARCH, GROUP, "NEON", r"CPU capability .* \(this machine: NEON\)"),
    ]:
        with pytest.raises(LatencyTableError, match=message):
            table.check(arch, group, capability)


def test_malformed_tables_are_refused(table: LatencyTable, tmp_path: Path) -> None:
    data = table.to_dict()
    cases = {
        "other.json": {"format": "something else"},
        "version.json": {**data, "format_version": 99},
        "short.json": {**data, "block_ms": {**data["block_ms"], "1": data["block_ms"]["1"][:-1]}},
        "missing.json": {k: v for k, v in data.items() if k != "backbone_ms"},
    }
    for name, body in cases.items():
        (tmp_path / name).write_text(json.dumps(body))
        with pytest.raises(LatencyTableError):
            LatencyTable.load(tmp_path / name)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LatencyTableError, match="not valid JSON"):
        LatencyTable.load(tmp_path / "bad.json")
    with pytest.raises(LatencyTableError, match="no latency table at"):
        LatencyTable.load(tmp_path / "none.json")


def test_the_cpu_clock_counts_only_the_timing_threads_work() -> None:
    """On a busy machine the cpu clock leaves out the time the core was taken away: a sleep
    costs wall time but (almost) no CPU time. It needs one torch thread."""
    assert timer("wall", 2) is time.perf_counter
    assert timer("cpu", 1) is time.thread_time
    with pytest.raises(ValueError, match="clock cpu needs 1 torch thread"):
        timer("cpu", 2)
    with pytest.raises(ValueError, match="clock must be one of wall, cpu, got 'gpu'"):
        timer("gpu", 1)
    wall, cpu = (
        time_alternately([lambda: time.sleep(0.02)], 3, warmup=0, clock=timer(clock, 1))[0]
        for clock in ("wall", "cpu")
    )
    assert wall >= 15.0 and cpu < 5.0
    cpu_table = profile_latency(ARCH, GROUP, (1,), threads=1, repeats=2, clock="cpu")
    assert cpu_table.info["clock"] == "cpu"
    assert LatencyTable.from_dict(json.loads(json.dumps(cpu_table.to_dict()))) == cpu_table
