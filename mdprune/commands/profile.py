"""``profile``: measure this machine's latency table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mdprune.commands.common import GroupOpt, SizeOpt, clean_errors

if TYPE_CHECKING:
    from multidomain.arch import ArchSpec


def write_latency_table(
    arch: ArchSpec,
    group: int,
    batch_sizes: Sequence[int],
    threads: int | None,
    repeats: int,
    out: Path,
    clock: str = "wall",
) -> None:
    """Measure a latency table (``multidomain.latency.profile_latency``) with a progress bar
    and write it to ``out``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from multidomain.latency import profile_latency, timer
    from multidomain.serving import ServingSettings

    threads = ServingSettings.load(None).torch_threads if threads is None else threads
    timer(clock, threads)  # a clock that cannot time these threads is refused before any work
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeRemainingColumn(), transient=True) as progress:
        task = progress.add_task(f"profiling (groups of {group}, {threads} threads)")

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        table = profile_latency(arch, group, batch_sizes, threads, repeats, advance, clock)
    table.save(out)
    sizes = ", ".join(
        f"batch {b}: backbone {table.backbone_ms[b]:.3f} ms, fixed part {table.fixed_ms(b):.3f} ms"
        for b in table.batch_sizes
    )
    typer.echo(
        f"wrote {out} ({table.cpu_capability}, {threads} threads, {clock} clock; {sizes})", err=True
    )
    if any(table.fixed_ms(b) < 0 for b in table.batch_sizes):
        typer.echo(
            "warning: the blocks timed alone took longer than the whole network (was the machine "
            "busy?); the predictions are unreliable: profile again on an idle machine",
            err=True,
        )


BatchSizesOpt = Annotated[list[int], typer.Option(help="Batch sizes to measure, repeatable.")]


def profile(
    backbone: Annotated[
        Path | None,
        typer.Option(help="Take the architecture from this backbone run (else the options)."),
    ] = None,
    width_mult: Annotated[float, typer.Option(help="Width multiplier of 64/128/256.")] = 0.5,
    image_size: SizeOpt = 32,
    channel_group: GroupOpt = "auto",
    batch_size: BatchSizesOpt = [1, 32],  # noqa: B006
    threads: Annotated[
        int | None, typer.Option(help="torch threads (default: MDP_TORCH_THREADS, else 1).")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Alternating repeats (median).")] = 30,
    clock: Annotated[
        str,
        typer.Option(
            help="wall: elapsed time; cpu: the timing thread's CPU time (1 thread only), which "
            "other processes' load does not inflate: use it on a busy machine."
        ),
    ] = "wall",
    out: Annotated[Path, typer.Option("--out", "-o", help="The latency table (JSON).")] = Path(
        "runs/latency_table.json"
    ),
) -> None:
    """Measure this machine's latency table.

    Times the served network's every block for every number of kept channel groups, and the
    whole network, for --budget-metric latency."""
    with clean_errors():
        from multidomain.arch import ArchSpec
        from multidomain.groups import check_channel_group, resolve_channel_group

        if backbone is not None:
            from training.pretrain import backbone_record

            arch = ArchSpec.from_dict(backbone_record(backbone)["arch"])
        else:
            arch = ArchSpec(width_mult=width_mult, image_size=image_size)
        group = resolve_channel_group(channel_group)
        check_channel_group(arch, group)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        write_latency_table(arch, group, batch_size, threads, repeats, out, clock)
