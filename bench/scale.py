"""Scale benchmark: ResNet-26 at width 1.0 on Decathlon-layout data generated at 64 and 72 px.

For each image size, in a temporary folder: ``--domains`` domains of ``--images`` labelled JPEG
images each (shorter side = the image size, as in the release), then

* cache (cold): decoding every image into the pre-resized cache with ``--workers`` processes:
  images/s and the peak resident set of the process (a fresh one);
* data loader alone: reading steps' images from the cache (the DataLoader's workers' part),
  whole training batches (``TrainBatches``: read in the workers, then augment and normalise in
  the training process) and what a loader without the cache would be bound by: decoding the
  JPEGs again (``decode_files``), all with ``--workers`` processes;
* training: pre-training steps (``train_steps``, all weights, SGD) at world size 1 (one process,
  all cores; and one thread, as each torchrun process gets) and 2 (``torchrun --standalone
  --nproc_per_node=2``, gloo, one thread each) in alternating rounds, with
  the cache already built, and once at world size 1 from a cold cache (built in that run);
  images/s over ``--steps`` timed steps after ``--warmup`` steps, and each process's peak
  resident set.

Every measurement runs in a fresh process. Writes ``bench/results/scale.{json,md}``.

    python bench/scale.py [--sizes 64 72] [--domains 2] [--images 3000] [--steps 6]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import RESULTS, command, write_results

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _domains_spec(root: Path, count: int) -> list[str]:
    return [f"decathlon:d{k}={root}" for k in range(count)]


# ---------------------------------------------------------------------------- measured processes


def measure_cache(args: argparse.Namespace) -> dict[str, Any]:
    from training.data import load_domains

    started = time.perf_counter()
    domains = load_domains(
        _domains_spec(args.data, args.domains), args.cache, args.size, 0, args.workers
    )
    seconds = time.perf_counter() - started
    images = sum(sum(d.counts().values()) for d in domains.values())
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "peak_rss": _peak_rss(),
    }


def measure_loader(args: argparse.Namespace) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from training.data import SplitDataset, StepSampler, TrainBatches, load_domains
    from training.data._images import decode_files
    from training.data.batches import StepDataset
    from training.data.decathlon import annotation_path

    domains = load_domains(_domains_spec(args.data, args.domains), args.cache, args.size, 0, 0)
    indexed = dict(enumerate(domains.values()))
    per_step = args.batch_size * len(indexed)
    # what the workers do: read each step's images from the cache, no augmentation
    sampler = StepSampler(
        {k: len(d.targets["train"]) for k, d in indexed.items()},
        args.batch_size,
        {k: k for k in indexed},
    )
    reader = DataLoader(
        StepDataset({k: SplitDataset(d) for k, d in indexed.items()}),
        sampler=sampler,
        batch_size=None,
        collate_fn=lambda step: step,
        num_workers=args.workers,
    )
    steps = iter(reader)
    for _ in range(args.warmup):
        next(steps)
    started = time.perf_counter()
    for _ in range(args.loader_steps):
        next(steps)
    read = args.loader_steps * per_step / (time.perf_counter() - started)
    del steps
    with TrainBatches(indexed, args.batch_size, {k: k for k in indexed}, workers=args.workers) as b:
        for _ in range(args.warmup):
            b.next()
        started = time.perf_counter()
        for _ in range(args.loader_steps):
            b.next()
        cached = args.loader_steps * per_step / (time.perf_counter() - started)
    document = json.loads(annotation_path(args.data, "d0", "train").read_text())
    files = [args.data / im["file_name"] for im in document["images"]][
        : args.loader_steps * per_step
    ]
    started = time.perf_counter()
    decoded = sum(len(chunk) for chunk in decode_files(files, args.size, args.workers))
    return {
        "cache_read_images_per_s": read,
        "cached_batches_images_per_s": cached,
        "decode_images_per_s": decoded / (time.perf_counter() - started),
        "peak_rss": _peak_rss(),
    }


def measure_training(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from multidomain.arch import ArchSpec
    from multidomain.network import ResNet26
    from training.data import TrainBatches, load_domains
    from training.loop import StepNetwork, train_steps
    from training.runtime import Runtime

    runtime = Runtime.from_environment("cpu", args.workers)
    with runtime.session():
        started = time.perf_counter()
        with runtime.local_first():
            spec = _domains_spec(args.data, args.domains)
            domains = load_domains(spec, args.cache, args.size, 0, args.workers)
        load_seconds = time.perf_counter() - started
        indexed = dict(enumerate(domains.values()))
        torch.manual_seed(0)
        model = ResNet26(
            ArchSpec(width_mult=1.0, image_size=args.size),
            [d.num_classes for d in indexed.values()],
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        network = runtime.wrap(StepNetwork(model))
        seeds = {k: k for k in indexed}
        with TrainBatches(indexed, args.batch_size, seeds, **runtime.loader_options()) as batches:
            train_steps(network, batches, optimizer, args.warmup, "warm-up", runtime=runtime)
            runtime.barrier()
            started = time.perf_counter()
            train_steps(network, batches, optimizer, args.steps, "timed", runtime=runtime)
            runtime.barrier()
            seconds = time.perf_counter() - started
    images = args.steps * args.batch_size * len(indexed)
    return {
        "rank": runtime.rank,
        "world_size": runtime.world_size,
        "torch_threads": torch.get_num_threads(),
        "load_seconds": load_seconds,
        "images_per_s": images / seconds,
        "peak_rss": _peak_rss(),
    }


MEASUREMENTS = {"cache": measure_cache, "loader": measure_loader, "train": measure_training}


def _child(args: argparse.Namespace) -> None:
    result = MEASUREMENTS[args.measure](args)
    rank = os.environ.get("RANK", "0")
    Path(f"{args.report}.{rank}.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------------- orchestration


def _run(
    measure: str,
    args: argparse.Namespace,
    data: Path,
    cache: Path,
    size: int,
    world: int,
    report: Path,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    launcher = TORCHRUN if world == 2 else [sys.executable]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    child = [
        str(Path(__file__).resolve()), "--measure", measure, "--data", str(data),
        "--cache", str(cache), "--size", str(size), "--report", str(report),
        "--domains", str(args.domains), "--workers", str(args.workers),
        "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--loader-steps", str(args.loader_steps),
    ]  # fmt: skip
    done = subprocess.run(
        [*launcher, *child], cwd=ROOT, capture_output=True, text=True, check=False, env=env
    )
    if done.returncode != 0:
        raise SystemExit(
            f"{measure} at {size}px, world size {world} failed:\n{done.stderr[-3000:]}"
        )
    return [json.loads(Path(f"{report}.{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 72])
    parser.add_argument("--domains", type=int, default=2)
    parser.add_argument("--images", type=int, default=3000, help="labelled images per domain")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32, help="per domain and step, global")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--loader-steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of world size 1 and 2"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "scale")
    parser.add_argument("--measure", choices=sorted(MEASUREMENTS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        _child(args)
        return

    from devtools.decathlon_layout import write_decathlon_domain

    load_start = _load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="scale-") as scratch:
        for size in args.sizes:
            data, work = Path(scratch) / f"data-{size}", Path(scratch) / f"work-{size}"
            work.mkdir()
            per_class = args.images // args.classes
            for k in range(args.domains):
                write_decathlon_domain(
                    data,
                    f"d{k}",
                    k + 1,
                    args.classes,
                    {"train": per_class, "val": per_class // 10},
                    10,
                    size,
                )
            cache = work / "cache"
            row: dict[str, Any] = {"image_size": size}
            row["cache_cold"] = _run("cache", args, data, cache, size, 1, work / "cache")[0]
            row["loader"] = _run("loader", args, data, cache, size, 1, work / "loader")[0]
            # one process (all cores, or one thread as each of torchrun's processes gets) and
            # two, in alternating rounds (order reversed every round): the shared machine's
            # drift falls on all
            configs = [("world1", 1, None), ("world2", 2, None), ("world1_1thread", 1, 1)]
            rounds: dict[str, list[list[dict[str, Any]]]] = {key: [] for key, _, _ in configs}
            for r in range(args.rounds):
                for key, world, threads in configs if r % 2 == 0 else configs[::-1]:
                    report = work / f"train-{key}-round{r}"
                    rounds[key].append(
                        _run("train", args, data, cache, size, world, report, threads)
                    )
            row["train"] = {key: _median_round(runs) for key, runs in rounds.items()}
            row["train_rounds"] = {
                key: [runs[0]["images_per_s"] for runs in per_round]
                for key, per_round in rounds.items()
            }
            row["train"]["world1_cold"] = _run(
                "train", args, data, work / "cold", size, 1, work / "cold"
            )
            row["decoded_bytes"] = row["cache_cold"]["images"] * size * size * 3
            rows.append(row)
            print(json.dumps(row), flush=True)
    import torch

    result = {
        "command": command(),
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "settings": {
            k: getattr(args, k)
            for k in (
                "domains",
                "images",
                "classes",
                "batch_size",
                "steps",
                "warmup",
                "loader_steps",
                "workers",
                "rounds",
            )
        },
        "rows": rows,
        "load_average": {"start": load_start, "end": _load_average()},
    }
    write_results(args.out, result, render_markdown(result))


def _median_round(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The round with the median training throughput (rank 0's; the lower median of an even
    count), as its ranks measured it."""
    ordered = sorted(rounds, key=lambda ranks: ranks[0]["images_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def render_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# Scale: ResNet-26 width 1.0 on Decathlon-layout data",
        "",
        f"Command: `{result['command']}` ({result['created_at']}, {result['machine']})",
        "",
        f"{s['domains']} domains x {s['images']} labelled JPEGs (shorter side = the image size), "
        f"{s['workers']} worker processes. Peak RSS: each process's VmHWM.",
        "",
        "## Data",
        "",
        "| size | images | pixels (MiB) | cache build, cold (img/s) | build peak RSS (MiB) "
        "| reading the cache (img/s) | training batches from the cache (img/s) "
        "| decoding the JPEGs (img/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        cold, loader = row["cache_cold"], row["loader"]
        lines.append(
            f"| {row['image_size']} | {cold['images']} | {_mib(row['decoded_bytes'])} "
            f"| {cold['images_per_s']:,.0f} | {_mib(cold['peak_rss'])} "
            f"| {loader['cache_read_images_per_s']:,.0f} "
            f"| {loader['cached_batches_images_per_s']:,.0f} "
            f"| {loader['decode_images_per_s']:,.0f} |"
        )
    lines += [
        "",
        "## Training",
        "",
        f"Batch {s['batch_size']} per domain and step over all processes; {s['steps']} timed "
        f"steps after {s['warmup']}. Data load: opening (cached) or building (cold) the cache. "
        f"World sizes 1 and 2 with the cache built: {s['rounds']} alternating rounds, the "
        "median round shown (of an even count, the slower one; every round's img/s below).",
        "",
        "| size | processes | cache | train img/s | data load (s) | peak RSS per process (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        for key, world, cache in (
            ("world1", 1, "built"),
            ("world1_1thread", 1, "built"),
            ("world2", 2, "built"),
            ("world1_cold", 1, "cold"),
        ):
            ranks = row["train"][key]
            rss = " + ".join(_mib(r["peak_rss"]) for r in ranks)
            lines.append(
                f"| {row['image_size']} | {world} ({ranks[0]['torch_threads']} thread(s) each) "
                f"| {cache} | {ranks[0]['images_per_s']:,.1f} | {ranks[0]['load_seconds']:,.1f} "
                f"| {rss} |"
            )
    lines += ["", "| size | processes | img/s per round |", "|---|---|---|"]
    for row in result["rows"]:
        for key, per_round in row["train_rounds"].items():
            values = ", ".join(f"{v:,.1f}" for v in per_round)
            processes = key.removeprefix("world").replace("_1thread", ", 1 thread")
            lines.append(f"| {row['image_size']} | {processes} | {values} |")
    load = result.get("load_average")
    if load:
        lines += [
            "",
            f"Machine shared with other work: load average {load['start']} at the start, "
            f"{load['end']} at the end.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
