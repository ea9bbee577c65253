"""``report``: tables and plots of runs (``reporting`` only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mdprune.commands.common import clean_errors


def report(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATH",
            help="Artifact folders, folders searched for manifest.json (a model store), "
            "or results JSONs of bench/budget_grid.py.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for report.md, report.json and the PNGs.")
    ] = Path("runs/report"),
    max_channel_plots: Annotated[
        int,
        typer.Option(help="Most channel-usage pictures (beyond it: only runs at budget 0.5)."),
    ] = 6,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a report in --out that shows more of the same runs (by default it is "
            "kept and the command fails).",
        ),
    ] = False,
) -> None:
    """Report runs: tables and plots.

    Writes report.md, report.json and plots (accuracy, cost, accuracy and S-score against
    params, channel usage). Every ratio is counted from the weights' tensor shapes; runs of a
    grid over seeds are also shown as mean ± std per setting.

    Prints a warning for each artifact folder not found and each field not recorded. Exits 1
    (after writing the report) if a domain exceeds its budget."""
    with clean_errors():
        from reporting.build import build_report

        result = build_report(
            inputs,
            out,
            max_channel_plots,
            replace_fuller=force,
            warn=lambda line: typer.echo(f"warning: {line}", err=True),
        )
    plots = result["plots"]
    count = sum(1 for k in ("accuracy_vs_budget", "cost_vs_budget", "score_vs_params") if plots[k])
    warned = f", {len(result['warnings'])} warnings (above)" if result["warnings"] else ""
    typer.echo(
        f"wrote {out / 'report.md'} and {out / 'report.json'}: {len(result['rows'])} runs, "
        f"{count + len(plots['channel_usage'])} plots{warned}"
    )
    over = [
        f"{r['model_name']}/{r['version']}" for r in result["rows"] if r["budget_check"] == "over"
    ]
    if over:
        typer.echo(f"error: over budget: {', '.join(over)}", err=True)
        raise typer.Exit(1)
