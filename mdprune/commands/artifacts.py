"""``verify``, ``predict-decathlon`` and ``torchserve-export``: what is done with an exported
artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mdprune.commands.common import (
    ArtifactArg,
    CacheOpt,
    DeviceOpt,
    WorkersOpt,
    clean_errors,
    make_runtime,
)


def verify(path: ArtifactArg) -> None:
    """Verify an artifact and print what it holds.

    Checks the manifest's schema, the weights' hash and every tensor's shape."""
    with clean_errors():
        from multidomain.artifact import load_artifact
        from multidomain.store import find_artifact

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
        from multidomain.artifact import load_artifact
        from multidomain.files import write_json
        from multidomain.store import find_artifact
        from training.predict import predict_decathlon as predict

        runtime = make_runtime(device, workers)
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
        from multidomain.artifact import load_artifact
        from multidomain.store import find_artifact
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
