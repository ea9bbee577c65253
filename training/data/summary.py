"""The summary table of loaded domains (rich)."""

from __future__ import annotations

from typing import Any

from training.data.domain import DomainData

__all__ = ["print_summary"]


def print_summary(domains: dict[str, DomainData], digest: str, console: Any = None) -> None:
    """Print a table of the domains and the benchmark digest (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console if console is not None else Console()
    table = Table(title="Domains")
    for column, justify in (
        ("domain", "left"),
        ("classes", "right"),
        ("train", "right"),
        ("val", "right"),
        ("test", "right"),
        ("size", "right"),
        ("colour", "center"),
        ("source", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, d in domains.items():
        counts = d.counts()
        table.add_row(
            name,
            str(d.num_classes),
            str(counts["train"]),
            str(counts["val"]),
            str(counts["test"]),
            f"{d.image_size}x{d.image_size}",
            "yes" if d.is_colour else "no",
            d.source,
        )
    console.print(table)
    console.print(f"benchmark digest (sha256): {digest}")
