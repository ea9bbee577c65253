"""``mdprune``: build data, pre-train, train under a budget, prune, export, report and serve.

This module holds the typer app, ``--version`` on every command and ``main``; the commands live
in ``mdprune.commands``, one module per concern. Training commands import ``training``,
``report`` imports only ``reporting`` and ``serve`` only ``service``. Imports are lazy so that
each command loads only what it needs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from mdprune.commands import artifacts, pipeline, profile, report, serve, train
from mdprune.commands.common import clean_errors
from mdprune.commands.pipeline import _announce_when_ready, _verified_version
from multidomain import __version__

__all__ = ["_announce_when_ready", "_verified_version", "app", "clean_errors", "main"]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mdprune {__version__}")
        raise typer.Exit()


def _version_option() -> Any:
    """The ``--version`` option, built by typer from a one-command app."""
    probe = typer.Typer(add_completion=False)

    @probe.command()
    def version(
        show: Annotated[
            bool,
            typer.Option(
                "--version",
                callback=_print_version,
                is_eager=True,
                expose_value=False,
                help="Show the version and exit.",
            ),
        ] = False,
    ) -> None: ...

    return next(p for p in typer.main.get_command(probe).params if p.name == "show")


class _Commands(TyperGroup):
    """``mdprune`` and each of its commands, present and future, answer ``--version``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        option = _version_option()
        for command in [self, *self.commands.values()]:
            command.params.append(option)


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    # click's plain help: full option names at any width (rich's table cuts them at 80 columns)
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Budget-aware pruning for multi-domain learning: train offline, serve online.",
)


# Each command lives in the module of its concern (mdprune/commands/); they are registered here,
# on the one app, in the order ``mdprune --help`` lists them. The command modules import nothing
# from this one, so ``python -m mdprune.cli`` builds a single app.
app.command()(train.data)
app.command()(train.pretrain)
app.command()(profile.profile)
app.command()(train.train)
app.command()(pipeline.pipeline)
app.command()(artifacts.verify)
app.command("predict-decathlon")(artifacts.predict_decathlon)
app.command()(report.report)
app.command("torchserve-export")(artifacts.torchserve_export)
app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(serve.serve)


def _spread_budgets(args: list[str]) -> list[str]:
    """``--budgets 1.0 0.5 0.25`` -> ``--budgets 1.0 --budgets 0.5 --budgets 0.25``: the
    numbers after ``--budgets`` (click options take one value per occurrence)."""
    out: list[str] = []
    after = 0  # 1: the value of --budgets comes next; 2: more numbers may follow it
    for arg in args:
        if after == 2 and _is_number(arg):
            out += ["--budgets", arg]
            continue
        after = 2 if after == 1 else (1 if arg == "--budgets" else 0)
        out.append(arg)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    command: Callable[..., Any] = app
    args = sys.argv[1:] if argv is None else argv
    command(args=_spread_budgets(args), prog_name="mdprune")


if __name__ == "__main__":
    main()
