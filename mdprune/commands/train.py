"""``data``, ``pretrain`` and ``train``: the offline commands, with the budget options and
the checks run before any data is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mdprune.commands.common import (
    CacheOpt,
    DeviceOpt,
    DomainsOpt,
    GroupOpt,
    SeedOpt,
    SizeOpt,
    SplitSeedOpt,
    WorkersOpt,
    clean_errors,
    load_data,
    make_runtime,
)
from mdprune.commands.profile import write_latency_table

if TYPE_CHECKING:
    from multidomain.arch import ArchSpec
    from training.budget_config import BudgetConfig
    from training.runtime import Runtime


def data(
    domains: DomainsOpt = ["embedded"],  # noqa: B006
    cache_dir: CacheOpt = Path("data_cache"),
    image_size: SizeOpt = 32,
    split_seed: SplitSeedOpt = 0,
    workers: WorkersOpt = 2,
) -> None:
    """Build or load the data; print its summary.

    Prints the table of domains and splits and the benchmark digest (sha256 over every
    domain's data digest: name, labels and each split's images and targets)."""
    with clean_errors():
        runtime = make_runtime("cpu", workers)
        with runtime.session():
            load_data(domains, cache_dir, image_size, split_seed, runtime)


def pretrain(
    domains: DomainsOpt = ["embedded"],  # noqa: B006
    run_dir: Annotated[Path, typer.Option(help="Where the backbone and checkpoints go.")] = Path(
        "runs/backbone"
    ),
    width_mult: Annotated[float, typer.Option(help="Width multiplier of 64/128/256.")] = 0.5,
    steps: Annotated[int, typer.Option(help="Optimizer steps (one batch per domain each).")] = 600,
    batch_size: Annotated[int, typer.Option(help="Images per domain per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak SGD learning rate (cosine decay).")] = 0.05,
    momentum: Annotated[float, typer.Option(help="SGD (Nesterov) momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = 5e-4,
    init_from: Annotated[
        Path | None, typer.Option(help="Start from another backbone run's shared weights.")
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="Steps between checkpoints (resume after an interruption).")
    ] = 100,
    cache_dir: CacheOpt = Path("data_cache"),
    image_size: SizeOpt = 32,
    seed: SeedOpt = 0,
    split_seed: SplitSeedOpt = 0,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 2,
) -> None:
    """Pre-train the backbone, resuming a checkpoint.

    The backbone is also the single-domain baseline. Its record (backbone.json) holds the
    data digest of every domain it trained on (and those of an --init-from backbone).
    Distributed: torchrun --nproc_per_node=N -m mdprune pretrain ... (--batch-size is per
    domain over all processes)."""
    with clean_errors():
        from multidomain.arch import ArchSpec
        from training.pretrain import PretrainConfig, backbone_record, pretrain_backbone

        runtime = make_runtime(device, workers)
        arch = ArchSpec(width_mult=width_mult, image_size=image_size)
        config = PretrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            seed=seed,
            split_seed=split_seed,
            checkpoint_every=checkpoint_every,
        )
        runtime.check_batch_size(config.batch_size)
        if init_from is not None:
            backbone_record(init_from)
        with runtime.session():
            loaded = load_data(domains, cache_dir, image_size, split_seed, runtime)
            pretrain_backbone(list(loaded.values()), arch, config, run_dir, init_from, runtime)


BudgetOpt = Annotated[
    list[str],
    typer.Option(
        help="Budget in (0, 1]: each domain's cost cap. Repeatable: a number sets every "
        "domain's, '<domain>=<number>' one domain's (--budget 0.5 --budget digits=0.3).",
    ),
]
NestedOpt = Annotated[
    list[float] | None,
    typer.Option(
        "--budgets",
        help="Nested budget levels from one training run, each in (0, 1] (--budgets 1.0 0.75 "
        "0.5 0.25, or repeated --budgets 1.0 --budgets 0.5): every domain gets a mask per "
        "level, each within the next larger; one artifact serves them all. Replaces --budget. "
        "Each step trains three levels: give four levels about three times the steps of one "
        "budget (--steps 900) to come near runs trained alone at each budget.",
    ),
]
LevelStateOpt = Annotated[
    str,
    typer.Option(
        help="With --budgets: 'private' (default) gives every level its own BatchNorm affines "
        "and classifier heads, trained with it (switchable BatchNorm); 'shared' makes the "
        "levels share the largest level's. BatchNorm statistics are per level either way.",
    ),
]
MetricOpt = Annotated[
    str,
    typer.Option(
        help="What the budget caps: params, macs, both (default), or latency (the time a "
        "--latency-table predicts)."
    ),
]
LatencyTableOpt = Annotated[
    Path | None,
    typer.Option(
        help="Latency table from 'mdprune profile': needed by --budget-metric latency; with "
        "another metric it only adds predicted times to the manifest."
    ),
]
LatencyBatchOpt = Annotated[
    int | None,
    typer.Option(
        help="Batch size whose predicted time the latency budget caps (default: the "
        "table's largest)."
    ),
]
SharingOpt = Annotated[
    str, typer.Option(help="Parameter-sharing loss: none, union, intersection or jaccard.")
]
SharingWeightOpt = Annotated[float, typer.Option(help="Weight gamma of the sharing loss.")]
LearnableOpt = Annotated[
    bool,
    typer.Option(help="Learn the sharing weight (uncertainty weighting) instead of fixing it."),
]
TrainStepsOpt = Annotated[int, typer.Option(help="Budget-aware training steps.")]
TrainBatchOpt = Annotated[
    int, typer.Option(help="Budget-aware training: images per domain per step (all processes).")
]
LrScoresOpt = Annotated[float, typer.Option(help="Adam learning rate of the switch scores.")]
LrDomainOpt = Annotated[
    float, typer.Option(help="Adam learning rate of each domain's BatchNorm and head.")
]
LrSharedOpt = Annotated[
    float,
    typer.Option(help="Adam learning rate of the shared convolutions (with --unfreeze-shared)."),
]
UnfreezeOpt = Annotated[
    bool,
    typer.Option(help="Also train the backbone's shared convolutions (default: frozen)."),
]
PenaltyOpt = Annotated[
    float, typer.Option(help="Weight rho of the budget penalty rho * relu(cost - target)^2.")
]
AnnealOpt = Annotated[
    float,
    typer.Option(help="Share of the steps over which the target falls from 1 to the budget."),
]
ScoreInitOpt = Annotated[
    float,
    typer.Option(help="Initial switch score scale (spread over 0.25-1.75 x by importance)."),
]
FinetuneOpt = Annotated[
    int,
    typer.Option(help="Steps fine-tuning BN and head of a domain the projection changed."),
]
HistoryOpt = Annotated[
    int,
    typer.Option(help="Steps per row of the manifest's training history (0: about 30 rows)."),
]
StoreOpt = Annotated[Path, typer.Option(help="Model store the artifact is exported into.")]
NameOpt = Annotated[str, typer.Option(help="Model name in the store.")]
VersionOpt = Annotated[
    str | None,
    typer.Option("--model-version", help="Version folder (default: UTC timestamp)."),
]


def _parse_budgets(values: list[str]) -> tuple[float, tuple[tuple[str, float], ...]]:
    """``--budget`` values: one plain number (every domain's), any ``<domain>=<number>``."""
    default: float | None = None
    per_domain: list[tuple[str, float]] = []
    for value in values or ["0.5"]:
        name, eq, number = value.partition("=")
        try:
            budget = float(number if eq else value)
        except ValueError:
            raise ValueError(
                f"--budget: expected a number or <domain>=<number>, got {value!r}"
            ) from None
        if eq:
            per_domain.append((name.strip(), budget))
        elif default is not None:
            raise ValueError(f"--budget: two budgets for every domain ({default:g}, {budget:g})")
        else:
            default = budget
    return (0.5 if default is None else default), tuple(per_domain)


def budget_config(
    budgets: list[str], channel_group: str, options: Mapping[str, Any]
) -> BudgetConfig:
    """The ``BudgetConfig`` of a command: ``--budget`` values parsed, the channel group resolved,
    and every other field from the command option of the same name (``train`` and ``pipeline``
    name their options after the fields, so that each field is settable)."""
    from dataclasses import fields

    from multidomain.groups import resolve_channel_group
    from training.budget_config import BudgetConfig

    budget, per_domain = _parse_budgets(budgets)
    settable = {f.name for f in fields(BudgetConfig)} - {
        "budget",
        "domain_budgets",
        "channel_group",
        "levels",
    }
    return BudgetConfig(
        levels=tuple(options.get("budgets") or ()),
        budget=budget,
        domain_budgets=per_domain,
        channel_group=resolve_channel_group(channel_group),
        **{name: value for name, value in options.items() if name in settable},
    )


def check_budget(
    arch: ArchSpec, config: BudgetConfig, domains: list[str], profile_to: Path | None = None
) -> None:
    """Everything about the budget that needs no data: every domain named in --budget is
    trained, the group divides every width, the latency table fits (profiled first into
    ``profile_to`` if given), no budget is below the floor."""
    from multidomain.groups import check_channel_group
    from training.budget_config import budget_costs
    from training.data import plan_domains

    config.check_domains([name for _, name, _ in plan_domains(domains, arch.image_size)])
    if profile_to is not None:
        check_channel_group(arch, config.group)
        write_latency_table(arch, config.group, (1, 32), None, 30, profile_to)
    budget_costs(arch, config)


def check_target(model_store: Path, model_name: str, version: str | None) -> None:
    """Refuse an existing or badly named artifact folder before training, not after."""
    from training.export import artifact_target

    artifact_target(model_store, model_name, version)


def train_and_export(
    loaded: dict[str, Any],
    backbone: Path,
    config: BudgetConfig,
    model_store: Path,
    model_name: str,
    version: str | None,
    runtime: Runtime,
) -> Path:
    from training.budget import train_budget_aware
    from training.export import export_artifact
    from training.nested import train_nested

    train = train_nested if config.levels else train_budget_aware
    trained = train(list(loaded.values()), backbone, config, runtime)
    path, _ = export_artifact(trained, model_store, model_name, version)
    return path


def train(
    backbone: Annotated[Path, typer.Option(help="Finished pre-training run directory.")] = Path(
        "runs/backbone"
    ),
    domains: DomainsOpt = ["embedded"],  # noqa: B006
    budget: BudgetOpt = ["0.5"],  # noqa: B006
    budgets: NestedOpt = None,
    level_state: LevelStateOpt = "private",
    budget_metric: MetricOpt = "both",
    channel_group: GroupOpt = "auto",
    latency_table: LatencyTableOpt = None,
    latency_batch: LatencyBatchOpt = None,
    sharing: SharingOpt = "union",
    sharing_weight: SharingWeightOpt = 5.0,
    learnable_sharing_weight: LearnableOpt = False,
    steps: TrainStepsOpt = 300,
    batch_size: TrainBatchOpt = 32,
    lr_scores: LrScoresOpt = 0.02,
    lr_domain: LrDomainOpt = 2e-3,
    lr_shared: LrSharedOpt = 2e-4,
    unfreeze_shared: UnfreezeOpt = False,
    penalty: PenaltyOpt = 100.0,
    anneal_fraction: AnnealOpt = 0.6,
    score_init: ScoreInitOpt = 1.0,
    finetune_steps: FinetuneOpt = 40,
    history_every: HistoryOpt = 0,
    model_store: StoreOpt = Path("model_store"),
    model_name: NameOpt = "default",
    version: VersionOpt = None,
    cache_dir: CacheOpt = Path("data_cache"),
    seed: SeedOpt = 0,
    split_seed: SplitSeedOpt = 0,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 2,
) -> None:
    """Budget-aware training, pruning and export.

    Learns each domain's channel switches over a finished backbone under the budget, removes
    the channels no domain uses and exports the compact artifact. Domains the backbone was not
    pre-trained on get a new head (the held-out protocol); a domain it was pre-trained on must
    have the same splits (data digest). Distributed: torchrun --nproc_per_node=N -m mdprune
    train ... (rank 0 exports)."""
    with clean_errors():
        from multidomain.arch import ArchSpec
        from training.pretrain import backbone_record

        runtime = make_runtime(device, workers)
        config = budget_config(budget, channel_group, locals())
        runtime.check_batch_size(config.batch_size)
        check_target(model_store, model_name, version)
        arch = ArchSpec.from_dict(backbone_record(backbone)["arch"])
        check_budget(arch, config, domains)
        with runtime.session():
            loaded = load_data(domains, cache_dir, arch.image_size, split_seed, runtime)
            train_and_export(loaded, backbone, config, model_store, model_name, version, runtime)
