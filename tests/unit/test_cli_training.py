"""The training commands' options: every field of the training configurations is settable from
the command line with the configuration's default, the split seed is its own option, and bad
values are one-line errors before any data is loaded."""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mdprune.cli import app
from mdprune.commands import pipeline, train
from training.budget_config import BudgetConfig
from training.pretrain import PretrainConfig

runner = CliRunner()

# Fields a command sets otherwise: --budget (both budget fields), --channel-group; pipeline's
# pre-training options carry a prefix.
FROM_BUDGET = {"budget", "domain_budgets", "channel_group", "levels"}  # levels: --budgets
PIPELINE_PRETRAIN = {
    "steps": "pretrain_steps",
    "batch_size": "pretrain_batch_size",
    "lr": "pretrain_lr",
}


def defaults(command: object) -> dict[str, object]:
    return {
        name: p.default
        for name, p in inspect.signature(command).parameters.items()  # type: ignore[arg-type]
    }


@pytest.mark.parametrize("command", [train.train, pipeline.pipeline])
def test_every_budget_field_is_an_option_with_the_same_default(command: object) -> None:
    options = defaults(command)
    for field in fields(BudgetConfig):
        if field.name in FROM_BUDGET:
            continue
        assert field.name in options, f"{field.name} cannot be set"
        assert options[field.name] == field.default, field.name
    assert "budgets" in options


def test_every_pretrain_field_is_an_option_with_the_same_default() -> None:
    options = defaults(train.pretrain)
    for field in fields(PretrainConfig):
        assert field.default is not MISSING
        assert options[field.name] == field.default, field.name
    piped = defaults(pipeline.pipeline)
    for field, option in PIPELINE_PRETRAIN.items():
        assert piped[option] == getattr(PretrainConfig(), field)


def test_the_options_reach_the_configuration() -> None:
    config = train.budget_config(
        ["0.4", "digits=0.3"],
        "4",
        {
            "penalty": 7.0,
            "anneal_fraction": 0.3,
            "finetune_steps": 0,
            "unfreeze_shared": True,
            "lr_shared": 1e-3,
            "learnable_sharing_weight": True,
            "split_seed": 3,
            "seed": 2,
            "history_every": 4,
            "runtime": object(),  # other locals of the command are left out
        },
    )
    assert (config.budget, config.domain_budgets, config.channel_group) == (
        0.4,
        (("digits", 0.3),),
        4,
    )
    assert (config.penalty, config.anneal_fraction, config.finetune_steps) == (7.0, 0.3, 0)
    assert config.unfreeze_shared and config.learnable_sharing_weight
    assert (config.lr_shared, config.split_seed, config.seed, config.history_every) == (
        1e-3,
        3,
        2,
        4,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--penalty", "0"], "error: penalty must be > 0, got 0.0"),
        (["train", "--anneal-fraction", "1.5"], "error: anneal fraction must be in (0, 1]"),
        (["train", "--finetune-steps", "-1"], "fine-tune steps >= 0"),
        (["train", "--lr-scores", "0"], "error: score learning rate must be > 0"),
        (["pipeline", "--no-serve", "--lr-shared", "-1"], "error: shared learning rate"),
        (["pipeline", "--no-serve", "--history-every", "-2"], "error: history interval"),
        (["pretrain", "--momentum", "1"], "error: momentum must be in [0, 1), got 1.0"),
        (["pretrain", "--weight-decay", "-1"], "error: weight decay must be >= 0"),
        (["data", "-d", "embedded:letter"], "unknown embedded domain 'letter'; known: mnist"),
    ],
)
def test_bad_training_options_are_one_line_errors(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = runner.invoke(app, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("command", ["data", "pretrain", "train", "pipeline"])
def test_the_split_seed_is_its_own_option(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert "--split-seed" in text
    if command != "data":
        assert "not the splits: --split-seed" in text


def test_nested_budgets_reach_the_configuration() -> None:
    config = train.budget_config(["0.5"], "4", {"budgets": [0.5, 1.0, 0.75]})
    assert config.levels == (1.0, 0.75, 0.5)
    assert config.budget == 1.0


def test_nested_budgets_refuse_a_learnable_sharing_weight() -> None:
    with pytest.raises(ValueError, match="fixed sharing weight"):
        train.budget_config(["0.5"], "4", {"budgets": [1.0, 0.5], "learnable_sharing_weight": True})
