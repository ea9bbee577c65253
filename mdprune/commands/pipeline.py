"""``pipeline``: from the data to a served model, and what it prints once the service is
ready."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path
from typing import Annotated, Any

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
from mdprune.commands.serve import run_server
from mdprune.commands.train import (
    AnnealOpt,
    BudgetOpt,
    FinetuneOpt,
    HistoryOpt,
    LatencyBatchOpt,
    LatencyTableOpt,
    LearnableOpt,
    LevelStateOpt,
    LrDomainOpt,
    LrScoresOpt,
    LrSharedOpt,
    MetricOpt,
    NameOpt,
    NestedOpt,
    PenaltyOpt,
    ScoreInitOpt,
    SharingOpt,
    SharingWeightOpt,
    StoreOpt,
    TrainBatchOpt,
    TrainStepsOpt,
    UnfreezeOpt,
    VersionOpt,
    budget_config,
    check_budget,
    check_target,
    train_and_export,
)

PretrainDomainsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--pretrain-domains",
        metavar="SPEC",
        help="Data the backbone is pre-trained on, as --domains (default: the --domains). "
        "Others than --domains: the held-out protocol.",
    ),
]


def pipeline(
    domains: DomainsOpt = ["embedded"],  # noqa: B006
    pretrain_domains: PretrainDomainsOpt = None,
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
    pretrain_steps: Annotated[int, typer.Option(help="Backbone pre-training steps.")] = 600,
    pretrain_batch_size: Annotated[
        int, typer.Option(help="Backbone pre-training: images per domain per step.")
    ] = 32,
    pretrain_lr: Annotated[
        float, typer.Option(help="Backbone pre-training: peak SGD learning rate.")
    ] = 0.05,
    width_mult: Annotated[float, typer.Option(help="Width multiplier of 64/128/256.")] = 0.5,
    run_dir: Annotated[Path, typer.Option(help="Backbone run directory.")] = Path("runs/backbone"),
    model_store: StoreOpt = Path("model_store"),
    model_name: NameOpt = "default",
    version: VersionOpt = None,
    serve: Annotated[bool, typer.Option(help="Serve the exported model at the end.")] = True,
    port: Annotated[int, typer.Option(help="Port of the service.")] = 8000,
    cache_dir: CacheOpt = Path("data_cache"),
    image_size: SizeOpt = 32,
    seed: SeedOpt = 0,
    split_seed: SplitSeedOpt = 0,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 2,
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing",
            help="Train only when the store holds no complete, verified version of the model "
            "(of --model-version, if given); otherwise keep the newest one.",
        ),
    ] = False,
) -> None:
    """The main job: from the data to a served model.

    data -> backbone -> budget-aware training -> prune -> export -> serve; the curl example
    is printed once the service is ready. The backbone is pre-trained on --pretrain-domains
    (default: --domains)."""
    with clean_errors():
        from multidomain.arch import ArchSpec
        from training.data import plan_domains
        from training.pretrain import PretrainConfig, pretrain_backbone

        runtime = make_runtime(device, workers)
        if serve and runtime.distributed:
            raise ValueError("--serve does not run under torchrun; add --no-serve")
        arch = ArchSpec(width_mult=width_mult, image_size=image_size)
        profile_to = None
        if budget_metric == "latency" and latency_table is None:
            profile_to = latency_table = run_dir / "latency_table.json"
        config = budget_config(budget, channel_group, locals())
        pretrain_config = PretrainConfig(
            steps=pretrain_steps,
            batch_size=pretrain_batch_size,
            lr=pretrain_lr,
            seed=seed,
            split_seed=split_seed,
        )
        for size in (config.batch_size, pretrain_config.batch_size):
            runtime.check_batch_size(size)
        existing = _verified_version(model_store, model_name, version) if if_missing else None
        if existing is not None:
            typer.echo(f"{existing} exists and verifies: not training (--if-missing)")
            if serve:
                run_server(["--model-store", str(model_store), "--model-name", model_name,
                            "--model-version", existing.name, "--port", str(port)])  # fmt: skip
            return
        check_target(model_store, model_name, version)
        check_budget(arch, config, domains, profile_to)
        if pretrain_domains:
            plan_domains(pretrain_domains, image_size)
        with runtime.session():
            loaded = load_data(domains, cache_dir, image_size, split_seed, runtime)
            sources = loaded
            if pretrain_domains:
                sources = load_data(pretrain_domains, cache_dir, image_size, split_seed, runtime)
            pretrain_backbone(list(sources.values()), arch, pretrain_config, run_dir, None, runtime)
            path = train_and_export(
                loaded, run_dir, config, model_store, model_name, version, runtime
            )
    if serve:
        sample = _write_sample_image(next(iter(loaded.values())), run_dir)
        url = f"http://127.0.0.1:{port}"
        typer.echo(f"serving {path} on {url} (Ctrl-C stops it); loading the model")
        _announce_when_ready(
            f"{url}/readyz",
            f"ready on {url}; try:\n"
            f"  curl -s -X POST -H 'Content-Type: image/png' --data-binary @{sample} "
            f"{url}/v1/domains/{sample.stem.split('-', 1)[1]}/predict",
        )
        run_server(
            ["--model-store", str(model_store), "--model-name", model_name, "--port", str(port)]
        )


def _announce_when_ready(ready_url: str, message: str, interval_s: float = 0.2) -> threading.Event:
    """Print ``message`` once ``ready_url`` (the service's ``/readyz``) answers 200, from a
    daemon thread (it ends with the process if the service never gets ready). Setting the
    returned event stops the wait."""
    stop = threading.Event()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def wait() -> None:
        while not stop.is_set():
            try:
                with opener.open(ready_url, timeout=2) as response:
                    if response.status == 200:
                        typer.echo(message)
                        return
            except OSError:  # not listening yet, or 503 (HTTPError) while the model loads
                pass
            stop.wait(interval_s)

    threading.Thread(target=wait, name="announce-ready", daemon=True).start()
    return stop


def _verified_version(model_store: Path, model_name: str, version: str | None) -> Path | None:
    """The newest complete version (or ``version``) if it loads and verifies, else None."""
    from multidomain.artifact import ArtifactError, load_artifact
    from multidomain.store import resolve_artifact

    try:
        path = resolve_artifact(model_store, model_name, version or "latest")
    except ArtifactError:
        return None
    try:
        load_artifact(path)
    except ArtifactError as exc:
        typer.echo(f"warning: {path} does not verify ({exc}); training a new version", err=True)
        return None
    return path


def _write_sample_image(domain: Any, folder: Path) -> Path:
    """The domain's first test image as a PNG, for the curl example."""
    from PIL import Image

    target = folder / f"sample-{domain.name}.png"
    Image.fromarray(domain.images["test"][0]).save(target)
    return target
