"""The console training writes its progress bars, tables and messages to (stderr, rich), and
the progress bar every long step uses.

In a distributed run every rank but rank 0 is quiet (``training.runtime``), so that a message or
a progress bar appears once."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["console", "training_progress"]

console = Console(stderr=True)


def training_progress() -> Progress:
    """Progress bar showing step, loss, accuracy, throughput and ETA (the ``stats`` field)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
