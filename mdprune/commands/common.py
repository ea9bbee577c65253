"""What every command shares: the options they have in common, bad input ended as one line
(``clean_errors``), the runtime and the data every training command loads."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from training.runtime import Runtime

DomainsOpt = Annotated[
    list[str],
    typer.Option(
        "--domains",
        "-d",
        metavar="SPEC",
        help="Data to use, repeatable: 'embedded' (the five default embedded domains), "
        "'embedded:<name>' (those five or letters), 'imagefolder:<name>=<path>' or "
        "'decathlon:<name>=<path>'.",
    ),
]
CacheOpt = Annotated[
    Path,
    typer.Option(help="Cache folder: every domain's images, decoded once at the image size."),
]
SizeOpt = Annotated[int, typer.Option(help="Image side length every domain is resized to.")]
SeedOpt = Annotated[
    int, typer.Option(help="Seed of initialisation and batch order (not the splits: --split-seed).")
]
SplitSeedOpt = Annotated[
    int,
    typer.Option(
        help="Seed of the train/val/test splits, fixed by default. Runs on one backbone must "
        "use its splits: train refuses a backbone pre-trained on other splits of a domain."
    ),
]
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

GroupOpt = Annotated[
    str,
    typer.Option(
        help="Channels switched and pruned together: auto (the CPU's fp32 SIMD width: 16 on "
        "AVX-512, 8 on AVX2, else 4), 1, 4, 8 or 16. Must divide every block's width."
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


def make_runtime(device: str = "cpu", workers: int = 0) -> Runtime:
    """Device, workers and torchrun's environment checked, before any data is loaded."""
    from training.runtime import Runtime

    return Runtime.from_environment(device, workers)


def load_data(
    domains: list[str], cache_dir: Path, image_size: int, split_seed: int, runtime: Runtime
) -> dict[str, Any]:
    """The domains with the splits of ``split_seed``, through the cache; in a distributed run
    the first process of every node builds what is missing before the others read it."""
    from training.common import console
    from training.data import benchmark_digest, load_domains, print_summary

    with runtime.local_first():
        data = load_domains(domains, cache_dir, image_size, split_seed, runtime.workers)
    print_summary(data, benchmark_digest(data), console)
    return data


ArtifactArg = Annotated[
    Path,
    typer.Argument(
        metavar="ARTIFACT",
        show_default=False,
        help="Artifact folder <store>/<name>/<version>, or <store>/<name> (or "
        "<store>/<name>/latest) for its newest version.",
    ),
]
