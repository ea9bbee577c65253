"""``mdprune``: build data, pre-train, train under a budget, prune, export, report and serve.

Training commands import ``training``, ``report`` imports only ``reporting`` and ``serve`` only
``service``. Imports are lazy so that each command loads only what it needs.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from multidomain import __version__

if TYPE_CHECKING:
    from multidomain.arch import ArchSpec
    from training.budget import BudgetConfig
    from training.runtime import Runtime

__all__ = ["app", "clean_errors", "main"]


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

DomainsOpt = Annotated[
    list[str],
    typer.Option(
        "--domains",
        "-d",
        metavar="SPEC",
        help="Data to use, repeatable: 'embedded' (all embedded domains), 'embedded:<name>', "
        "'imagefolder:<name>=<path>' or 'decathlon:<name>=<path>'.",
    ),
]
CacheOpt = Annotated[
    Path,
    typer.Option(help="Cache folder: every domain's images, decoded once at the image size."),
]
SizeOpt = Annotated[int, typer.Option(help="Image side length every domain is resized to.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for splits, initialisation and batches.")]
DeviceOpt = Annotated[
    str,
    typer.Option(
        help="Where to compute: auto (CUDA when present), cpu or cuda; under torchrun each "
        "process takes the GPU of its local rank."
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        help="Worker processes that decode images into the cache and read training batches "
        "(0: the main process does it)."
    ),
]


def _package_errors() -> tuple[type[Exception], ...]:
    """Each package's error type for bad input. A package this install lacks is left out: the
    service image ships neither ``training`` nor ``reporting``."""
    from multidomain.arch import ArchitectureError
    from multidomain.artifact import ArtifactError

    errors: list[type[Exception]] = [ArchitectureError, ArtifactError]
    for module, name in (("training.errors", "TrainingError"), ("reporting.errors", "ReportError")):
        with suppress(ImportError):
            errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)


@contextmanager
def clean_errors() -> Iterator[None]:
    """Known bad input ends with a one-line message and exit code 2, not a traceback: each
    package's error type, ``ValueError`` (configuration validation), a missing file or key."""
    known: tuple[type[Exception], ...] = (
        *_package_errors(),
        ValueError,
        FileNotFoundError,
        KeyError,
    )
    try:
        yield
    except known as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        rank = os.environ.get("RANK", "0") or "0"
        if rank == "0":
            typer.echo(f"error: {message}", err=True)
        elif os.environ.get("LOCAL_RANK") == "0":  # the first process of another node
            typer.echo(f"error: rank {rank}: {message}", err=True)
        raise typer.Exit(2) from None


def _runtime(device: str = "cpu", workers: int = 0) -> Runtime:
    """Device, workers and torchrun's environment checked, before any data is loaded."""
    from training.runtime import Runtime

    return Runtime.from_environment(device, workers)


def _load(
    domains: list[str], cache_dir: Path, image_size: int, seed: int, runtime: Runtime
) -> dict[str, Any]:
    """The domains, through the cache; in a distributed run the first process of every node
    builds what is missing before the others read it."""
    from training.common import console
    from training.data import benchmark_digest, load_domains, print_summary

    with runtime.local_first():
        data = load_domains(domains, cache_dir, image_size, seed, runtime.workers)
    print_summary(data, benchmark_digest(data), console)
    return data


@app.command()
def data(
    domains: DomainsOpt = ["embedded"],  # noqa: B006
    cache_dir: CacheOpt = Path("data_cache"),
    image_size: SizeOpt = 32,
    seed: SeedOpt = 0,
    workers: WorkersOpt = 2,
) -> None:
    """Build or load the data; print its summary.

    Prints the table of domains and splits and the benchmark digest (sha256)."""
    with clean_errors():
        runtime = _runtime("cpu", workers)
        with runtime.session():
            _load(domains, cache_dir, image_size, seed, runtime)


@app.command()
def pretrain(
    domains: DomainsOpt = ["embedded"],  # noqa: B006
    run_dir: Annotated[Path, typer.Option(help="Where the backbone and checkpoints go.")] = Path(
        "runs/backbone"
    ),
    width_mult: Annotated[float, typer.Option(help="Width multiplier of 64/128/256.")] = 0.5,
    steps: Annotated[int, typer.Option(help="Optimizer steps (one batch per domain each).")] = 600,
    batch_size: Annotated[int, typer.Option(help="Images per domain per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak SGD learning rate (cosine decay).")] = 0.05,
    init_from: Annotated[
        Path | None, typer.Option(help="Start from another backbone run's shared weights.")
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="Steps between checkpoints (resume after an interruption).")
    ] = 100,
    cache_dir: CacheOpt = Path("data_cache"),
    image_size: SizeOpt = 32,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 2,
) -> None:
    """Pre-train the backbone, resuming a checkpoint.

    The backbone is also the single-domain baseline. Distributed: torchrun
    --nproc_per_node=N -m mdprune pretrain ... (--batch-size is per domain over all
    processes)."""
    with clean_errors():
        from multidomain.arch import ArchSpec
        from training.pretrain import PretrainConfig, backbone_record, pretrain_backbone

        runtime = _runtime(device, workers)
        arch = ArchSpec(width_mult=width_mult, image_size=image_size)
        config = PretrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            checkpoint_every=checkpoint_every,
        )
        runtime.check_batch_size(config.batch_size)
        if init_from is not None:
            backbone_record(init_from)
        with runtime.session():
            loaded = _load(domains, cache_dir, image_size, seed, runtime)
            pretrain_backbone(list(loaded.values()), arch, config, run_dir, init_from, runtime)


BudgetOpt = Annotated[
    list[str],
    typer.Option(
        help="Budget in (0, 1]: each domain's cost cap. Repeatable: a number sets every "
        "domain's, '<domain>=<number>' one domain's (--budget 0.5 --budget digits=0.3).",
    ),
]
MetricOpt = Annotated[
    str,
    typer.Option(
        help="What the budget caps: params, macs, both (default), or latency (the time a "
        "--latency-table predicts)."
    ),
]
GroupOpt = Annotated[
    str,
    typer.Option(
        help="Channels switched and pruned together: auto (the CPU's fp32 SIMD width: 16 on "
        "AVX-512, 8 on AVX2, else 4), 1, 4, 8 or 16. Must divide every block's width."
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


def _budget_config(
    budgets: list[str],
    metric: str,
    sharing: str,
    sharing_weight: float,
    steps: int,
    seed: int,
    learnable_sharing_weight: bool = False,
    channel_group: str = "auto",
    latency_table: Path | None = None,
    latency_batch: int | None = None,
) -> BudgetConfig:
    from multidomain.groups import resolve_channel_group
    from training.budget import BudgetConfig

    budget, per_domain = _parse_budgets(budgets)
    return BudgetConfig(
        budget=budget,
        domain_budgets=per_domain,
        budget_metric=metric,  # type: ignore[arg-type]
        channel_group=resolve_channel_group(channel_group),
        latency_table=latency_table,
        latency_batch=latency_batch,
        sharing=sharing,  # type: ignore[arg-type]
        sharing_weight=sharing_weight,
        learnable_sharing_weight=learnable_sharing_weight,
        steps=steps,
        seed=seed,
    )


def _check_budget(
    arch: ArchSpec, config: BudgetConfig, domains: list[str], profile_to: Path | None = None
) -> None:
    """Everything about the budget that needs no data: every domain named in --budget is
    trained, the group divides every width, the latency table fits (profiled first into
    ``profile_to`` if given), no budget is below the floor."""
    from multidomain.groups import check_channel_group
    from training.budget import budget_costs
    from training.data import plan_domains

    config.check_domains([name for _, name, _ in plan_domains(domains, arch.image_size)])
    if profile_to is not None:
        check_channel_group(arch, config.group)
        _profile(arch, config.group, (1, 32), None, 30, profile_to)
    budget_costs(arch, config)


def _profile(
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


@app.command()
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
        _profile(arch, group, batch_size, threads, repeats, out, clock)


def _check_target(model_store: Path, model_name: str, version: str | None) -> None:
    """Refuse an existing or badly named artifact folder before training, not after."""
    from training.export import artifact_target

    artifact_target(model_store, model_name, version)


def _train_and_export(
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

    trained = train_budget_aware(list(loaded.values()), backbone, config, runtime)
    path, _ = export_artifact(trained, model_store, model_name, version)
    return path


@app.command()
def train(
    backbone: Annotated[Path, typer.Option(help="Finished pre-training run directory.")] = Path(
        "runs/backbone"
    ),
    domains: DomainsOpt = ["embedded"],  # noqa: B006
    budget: BudgetOpt = ["0.5"],  # noqa: B006
    budget_metric: MetricOpt = "both",
    channel_group: GroupOpt = "auto",
    latency_table: LatencyTableOpt = None,
    latency_batch: LatencyBatchOpt = None,
    sharing: SharingOpt = "union",
    sharing_weight: SharingWeightOpt = 5.0,
    learnable_sharing_weight: LearnableOpt = False,
    steps: TrainStepsOpt = 300,
    model_store: StoreOpt = Path("model_store"),
    model_name: NameOpt = "default",
    version: VersionOpt = None,
    cache_dir: CacheOpt = Path("data_cache"),
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 2,
) -> None:
    """Budget-aware training, pruning and export.

    Learns each domain's channel switches over a finished backbone under the budget, removes
    the channels no domain uses and exports the compact artifact. Distributed: torchrun
    --nproc_per_node=N -m mdprune train ... (rank 0 exports)."""
    with clean_errors():
        from multidomain.arch import ArchSpec
        from training.pretrain import backbone_record

        runtime = _runtime(device, workers)
        config = _budget_config(
            budget,
            budget_metric,
            sharing,
            sharing_weight,
            steps,
            seed,
            learnable_sharing_weight,
            channel_group,
            latency_table,
            latency_batch,
        )
        runtime.check_batch_size(config.batch_size)
        _check_target(model_store, model_name, version)
        arch = ArchSpec.from_dict(backbone_record(backbone)["arch"])
        _check_budget(arch, config, domains)
        with runtime.session():
            loaded = _load(domains, cache_dir, arch.image_size, seed, runtime)
            _train_and_export(loaded, backbone, config, model_store, model_name, version, runtime)


@app.command()
def pipeline(
    domains: DomainsOpt = ["embedded"],  # noqa: B006
    budget: BudgetOpt = ["0.5"],  # noqa: B006
    budget_metric: MetricOpt = "both",
    channel_group: GroupOpt = "auto",
    latency_table: LatencyTableOpt = None,
    latency_batch: LatencyBatchOpt = None,
    sharing: SharingOpt = "union",
    sharing_weight: SharingWeightOpt = 5.0,
    steps: TrainStepsOpt = 300,
    pretrain_steps: Annotated[int, typer.Option(help="Backbone pre-training steps.")] = 600,
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
    is printed once the service is ready."""
    with clean_errors():
        from multidomain.arch import ArchSpec
        from training.pretrain import PretrainConfig, pretrain_backbone

        runtime = _runtime(device, workers)
        if serve and runtime.distributed:
            raise ValueError("--serve does not run under torchrun; add --no-serve")
        arch = ArchSpec(width_mult=width_mult, image_size=image_size)
        profile_to = None
        if budget_metric == "latency" and latency_table is None:
            profile_to = latency_table = run_dir / "latency_table.json"
        config = _budget_config(
            budget,
            budget_metric,
            sharing,
            sharing_weight,
            steps,
            seed,
            channel_group=channel_group,
            latency_table=latency_table,
            latency_batch=latency_batch,
        )
        pretrain_config = PretrainConfig(steps=pretrain_steps, seed=seed)
        for batch_size in (config.batch_size, pretrain_config.batch_size):
            runtime.check_batch_size(batch_size)
        existing = _verified_version(model_store, model_name, version) if if_missing else None
        if existing is not None:
            typer.echo(f"{existing} exists and verifies: not training (--if-missing)")
            if serve:
                _serve(["--model-store", str(model_store), "--model-name", model_name,
                        "--model-version", existing.name, "--port", str(port)])  # fmt: skip
            return
        _check_target(model_store, model_name, version)
        _check_budget(arch, config, domains, profile_to)
        with runtime.session():
            loaded = _load(domains, cache_dir, image_size, seed, runtime)
            pretrain_backbone(list(loaded.values()), arch, pretrain_config, run_dir, None, runtime)
            path = _train_and_export(
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
        _serve(["--model-store", str(model_store), "--model-name", model_name, "--port", str(port)])


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
    from multidomain.artifact import ArtifactError, load_artifact, resolve_artifact

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


ArtifactArg = Annotated[
    Path,
    typer.Argument(
        metavar="ARTIFACT",
        show_default=False,
        help="Artifact folder <store>/<name>/<version>, or <store>/<name> (or "
        "<store>/<name>/latest) for its newest version.",
    ),
]


@app.command()
def verify(path: ArtifactArg) -> None:
    """Verify an artifact and print what it holds.

    Checks the manifest's schema, the weights' hash and every tensor's shape."""
    with clean_errors():
        from multidomain.artifact import find_artifact, load_artifact

        artifact = load_artifact(find_artifact(path))
        group = artifact.manifest.get("channel_group", 1)
        typer.echo(f"{artifact.name} {artifact.version}: OK (channel group {group})")
        for entry in artifact.domains:
            info = entry.info
            measured = (info.get("latency") or {}).get("measured_fraction") or {}
            timed = "".join(f", time {v:.3f} at batch {b}" for b, v in measured.items())
            typer.echo(
                f"  {entry.name}: {entry.num_classes} classes, "
                f"mid channels {sum(entry.mid_channels)}"
                f", budget {info.get('budget', artifact.manifest.get('budget', float('nan')))}"
                f", params fraction {info.get('params_fraction', float('nan')):.3f}"
                f", MACs fraction {info.get('macs_fraction', float('nan')):.3f}"
                f"{timed}"
                f", test accuracy {info.get('test_accuracy', float('nan')):.4f}"
            )


@app.command("predict-decathlon")
def predict_decathlon(
    path: ArtifactArg,
    root: Annotated[
        Path,
        typer.Option(
            help="Decathlon root: annotations/<name>_test_stripped.json, <name>_train.json "
            "(category ids) and the images.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Results file: [{image_id, category_id}].")
    ] = Path("results.json"),
    domain: Annotated[
        list[str] | None,
        typer.Option(help="Domain to predict, repeatable (default: all of the artifact's)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    cache_dir: CacheOpt = Path("data_cache"),
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 2,
) -> None:
    """Predict the stripped Decathlon test sets.

    Writes the challenge's results file [{image_id, category_id}] from an artifact."""
    with clean_errors():
        from multidomain.artifact import find_artifact, load_artifact
        from multidomain.files import write_json
        from training.predict import predict_decathlon as predict

        runtime = _runtime(device, workers)
        if runtime.distributed:
            raise ValueError("predict-decathlon runs as one process; start it without torchrun")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if out.is_dir():
            raise ValueError(f"--out {out} is a directory; name the results file")
        artifact = load_artifact(find_artifact(path))
        names = domain or [d.name for d in artifact.domains]
        for name in names:
            artifact.domain(name)  # KeyError naming the known domains
        with runtime.session():
            results, counts = predict(artifact, root, names, cache_dir, runtime, batch_size)
        write_json(out, results)
    typer.echo(
        f"wrote {out}: {len(results)} predictions ("
        + ", ".join(f"{name} {count}" for name, count in counts.items())
        + ")"
    )


@app.command()
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

    Writes report.md, report.json and plots (accuracy, cost, channel usage).

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
    count = sum(1 for k in ("accuracy_vs_budget", "cost_vs_budget") if plots[k])
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


@app.command("torchserve-export")
def torchserve_export(
    path: ArtifactArg,
    model_store: Annotated[Path, typer.Option(help="Folder the .mar is written into.")] = Path(
        "model_store"
    ),
    name: Annotated[
        str | None, typer.Option(help="TorchServe model name (default: the artifact's).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="TorchServe batchSize.")] = 8,
    max_batch_delay_ms: Annotated[int, typer.Option(help="TorchServe maxBatchDelay (ms).")] = 5,
    workers: Annotated[int, typer.Option(help="TorchServe workers (processes).")] = 1,
    torch_threads: Annotated[int, typer.Option(help="torch threads per worker.")] = 1,
) -> None:
    """Package an artifact for TorchServe (.mar).

    Writes <model-store>/<name>.mar: the handler, the artifact and the code it needs."""
    with clean_errors():
        from multidomain.artifact import find_artifact, load_artifact
        from torchserving.export import TorchServeModelConfig, export_mar

        path = find_artifact(path)

        config = TorchServeModelConfig(
            batch_size=batch_size,
            max_batch_delay_ms=max_batch_delay_ms,
            workers=workers,
            torch_threads=torch_threads,
        )
        try:
            mar = export_mar(path, model_store, name or load_artifact(path).name, config)
        except RuntimeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"wrote {mar}")


def _serve(argv: list[str]) -> None:
    from service.server import main as serve_main

    serve_main(argv, prog="mdprune serve")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Serve an artifact with FastAPI + uvicorn.

    Options: see 'mdprune serve -h'."""
    _serve(list(ctx.args))


def main(argv: list[str] | None = None) -> None:
    command: Callable[..., Any] = app
    command(args=sys.argv[1:] if argv is None else argv, prog_name="mdprune")


if __name__ == "__main__":
    main()
