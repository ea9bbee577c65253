"""Nested budgets: accuracy and size against models trained alone, graceful
degradation under open-loop overload, and what switching levels allocates.

Three parts, each writing ``bench/results/nested_<part>.{json,md}`` with the command and the
load average at start and end (the machine is shared):

* ``accuracy``: ``mdprune train --budgets B1 B2 ...`` once, and ``mdprune train --budget B`` for
  every ``B`` (same backbone, data, seed, steps and sharing); each level's mean test accuracy
  next to the model trained alone at its budget, and the one nested artifact's weight bytes
  next to the separate artifacts' summed.
* ``load``: the nested artifact served by ``python -m service`` twice, with
  ``MDP_DEGRADE=on`` and off (shedding only), the same settings otherwise. The largest level's
  capacity is measured closed-loop on the shedding-only server, then Poisson arrivals at
  ``--multiplier`` x that capacity for ``--duration`` seconds hit each server, alternating for
  ``--rounds`` rounds: goodput (200 answers within the deadline per second), statuses, 5xx,
  the level mix, and the mean accuracy over answered requests (each answer counted at its
  domain's test accuracy at the level that computed it, from the manifest).
* ``switch``: in-process, a domain's served networks run batches at one level and alternating
  between levels; the bytes torch allocates per batch (profiler memory events) and the folds
  (``fold_weights`` calls) in both sequences, with every level's network cached
  (``MDP_MATERIALIZED_DOMAINS=all``) and folded per batch (``0``).

    python bench/nested.py accuracy --backbone runs/backbone --steps 100
    python bench/nested.py load --artifact model_store/nested/<version>
    python bench/nested.py switch --artifact model_store/nested/<version>
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import command, write_results
from loadgen import fastapi_server
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from devtools.http_load import closed_loop, open_loop, raw_request  # noqa: E402


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def _train(args: list[str], store: Path, version: str) -> Path:
    cmd = [sys.executable, "-m", "mdprune", "train", *args, "--model-store", str(store)]
    cmd += ["--model-name", "bench", "--model-version", version]
    print("+", shlex.join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    return store / "bench" / version


def accuracy(options: argparse.Namespace) -> None:
    load_start = _load()
    store = Path(options.workdir) / "store"
    common = ["--backbone", str(options.backbone), "--steps", str(options.steps)]
    common += ["--seed", str(options.seed), "--channel-group", options.channel_group]
    common += ["--cache-dir", str(options.cache_dir)]
    budgets = sorted(options.budgets, reverse=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    nested = _train([*common, "--budgets", *map(str, budgets)], store, f"nested-{stamp}")
    alone = {
        b: _train([*common, "--budget", str(b)], store, f"alone-{b:g}-{stamp}") for b in budgets
    }
    manifest = _manifest(nested)
    rows = []
    for level in manifest["levels"]:
        budget = level["budget"]
        other = _manifest(alone[budget])
        rows.append(
            {
                "budget": budget,
                "nested_mean_test_accuracy": round(level["mean_test_accuracy"], 4),
                "alone_mean_test_accuracy": round(other["mean_test_accuracy"], 4),
                "difference_points": round(
                    100 * (level["mean_test_accuracy"] - other["mean_test_accuracy"]), 2
                ),
                "nested_shared_bn": round(
                    level.get("mean_test_accuracy_shared_bn", float("nan")), 4
                )
                if "mean_test_accuracy_shared_bn" in level
                else None,
            }
        )
    nested_bytes = (nested / "weights.safetensors").stat().st_size
    alone_bytes = {f"{b:g}": (p / "weights.safetensors").stat().st_size for b, p in alone.items()}
    result = {
        "command": command(),
        "load_average_start": load_start,
        "load_average_end": _load(),
        "steps": options.steps,
        "seed": options.seed,
        "nested_artifact": str(nested),
        "alone_artifacts": {f"{b:g}": str(p) for b, p in alone.items()},
        "nested_training_wall_s": manifest["training"]["wall_time_s"],
        "alone_training_wall_s": {
            f"{b:g}": _manifest(p)["training"]["wall_time_s"] for b, p in alone.items()
        },
        "levels": rows,
        "nested_weight_bytes": nested_bytes,
        "alone_weight_bytes": alone_bytes,
        "alone_weight_bytes_sum": sum(alone_bytes.values()),
    }
    lines = [
        "# Nested budgets: accuracy and size against models trained alone",
        "",
        f"`{result['command']}`",
        "",
        f"{options.steps} training steps per run (fewer than the default 300: shared 2-core "
        f"machine), seed {options.seed}; load average {load_start} at start, "
        f"{result['load_average_end']} at end (the machine was shared).",
        "",
        "| budget | nested (one run) | trained alone | nested - alone (points) | nested, "
        "largest level's BN statistics |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        shared = "–" if row["nested_shared_bn"] is None else f"{row['nested_shared_bn']:.4f}"
        lines.append(
            f"| {row['budget']:g} | {row['nested_mean_test_accuracy']:.4f} | "
            f"{row['alone_mean_test_accuracy']:.4f} | {row['difference_points']:+.2f} | {shared} |"
        )
    lines += [
        "",
        f"Weights: one nested artifact {nested_bytes:,} bytes; the {len(alone)} separate "
        f"artifacts {result['alone_weight_bytes_sum']:,} bytes together "
        f"({nested_bytes / result['alone_weight_bytes_sum']:.2f}x).",
        "",
        f"Training wall time: nested {result['nested_training_wall_s']} s; alone "
        + ", ".join(f"{b}: {s} s" for b, s in result["alone_training_wall_s"].items())
        + ".",
    ]
    write_results(RESULTS / options.out, result, "\n".join(lines) + "\n")


def _png(seed: int, side: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def load(options: argparse.Namespace) -> None:
    load_start = _load()
    artifact = Path(options.artifact)
    manifest = _manifest(artifact)
    domains = [d["name"] for d in manifest["domains"]]
    level_accuracy = {
        (d["name"], f"{level['budget']:g}"): level["test_accuracy"]
        for d in manifest["domains"]
        for level in d["levels"]
    }
    deadline = options.deadline
    settings = {
        "MDP_REQUEST_TIMEOUT_S": str(deadline),
        "MDP_QUEUE_SIZE": str(options.queue_size),
        "MDP_MAX_BATCH_IMAGES": str(min(64, options.queue_size)),
        "MDP_MAX_BATCH_SIZE": str(options.max_batch_size),
        "MDP_MAX_IN_FLIGHT": "4096",
        "MDP_MAX_IN_FLIGHT_PER_DOMAIN": "4096",
        "MDP_MAX_CONNECTIONS": "4096",
        "MDP_MATERIALIZED_DOMAINS": "all",
        "MDP_LOG_LEVEL": "warning",
        "MDP_DEGRADE_HIGH": str(options.high),
        "MDP_DEGRADE_LOW": str(options.low),
        "MDP_DEGRADE_HOLD_MS": str(options.hold_ms),
    }
    logs = Path(options.workdir)
    logs.mkdir(parents=True, exist_ok=True)
    modes = {"degrade": {"MDP_DEGRADE": "on"}, "shed_only": {"MDP_DEGRADE": "off"}}
    rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    with (
        fastapi_server(artifact, {**settings, **modes["degrade"]}, logs / "degrade.log") as on,
        fastapi_server(artifact, {**settings, **modes["shed_only"]}, logs / "shed.log") as off,
    ):
        urls = {"degrade": on, "shed_only": off}

        def payloads(url: str) -> list[bytes]:
            host, port = url.removeprefix("http://").split(":")
            return [
                raw_request(
                    host,
                    int(port),
                    "POST",
                    f"/v1/domains/{domains[i % len(domains)]}/predict",
                    _png(i, 32),
                    {"Content-Type": "image/png"},
                )
                for i in range(4 * len(domains))
            ]

        def host_port(url: str) -> tuple[str, int]:
            host, port = url.removeprefix("http://").split(":")
            return host, int(port)

        async def capacity() -> float:
            host, port = host_port(off)
            requests = payloads(off)
            await closed_loop(*host_port(on), payloads(on), 16, 200)  # warm-up both
            await closed_loop(host, port, requests, 16, 200)
            started = time.perf_counter()
            shots = await closed_loop(host, port, requests, 16, options.capacity_requests)
            return sum(s.status == 200 for s in shots) / (time.perf_counter() - started)

        largest = asyncio.run(capacity())
        rate = options.multiplier * largest
        for round_index in range(options.rounds):
            order = list(modes) if round_index % 2 == 0 else list(reversed(modes))
            for mode in order:
                url = urls[mode]
                started = time.perf_counter()
                shots = asyncio.run(
                    open_loop(
                        *host_port(url),
                        payloads(url),
                        rate,
                        options.duration,
                        deadline + 5,
                        poisson_seed=round_index,
                    )
                )
                wall = time.perf_counter() - started
                statuses: dict[str, int] = {}
                mix: dict[str, int] = {}
                good = 0
                accuracies = []
                for shot in shots:
                    statuses[str(shot.status)] = statuses.get(str(shot.status), 0) + 1
                    if shot.status != 200:
                        continue
                    answer = json.loads(shot.body)
                    level = f"{answer['budget']:g}"
                    mix[level] = mix.get(level, 0) + 1
                    accuracies.append(level_accuracy[(answer["domain"], level)])
                    good += shot.latency_s <= deadline
                rounds[mode].append(
                    {
                        "requests": len(shots),
                        "wall_s": round(wall, 2),
                        "statuses": dict(sorted(statuses.items())),
                        "server_errors": sum(n for s, n in statuses.items() if s.startswith("5")),
                        "goodput_rps": round(good / options.duration, 1),
                        "level_mix": dict(sorted(mix.items(), reverse=True)),
                        "mean_accuracy_answered": round(float(np.mean(accuracies)), 4)
                        if accuracies
                        else None,
                    }
                )
                print(mode, rounds[mode][-1], flush=True)
    goodput = {m: float(np.mean([r["goodput_rps"] for r in rs])) for m, rs in rounds.items()}
    result = {
        "command": command(),
        "load_average_start": load_start,
        "load_average_end": _load(),
        "artifact": str(artifact),
        "settings": settings,
        "largest_level_capacity_rps": round(largest, 1),
        "offered_rps": round(rate, 1),
        "deadline_s": deadline,
        "rounds": rounds,
        "goodput_rps_mean": {m: round(v, 1) for m, v in goodput.items()},
        "goodput_ratio": round(goodput["degrade"] / max(goodput["shed_only"], 1e-9), 2),
    }
    lines = [
        "# Nested budgets: graceful degradation under open-loop overload",
        "",
        f"`{result['command']}`",
        "",
        f"Artifact `{artifact}`; largest level's capacity {largest:.1f} req/s (closed loop, 16 "
        f"clients, shedding-only server); Poisson arrivals at {options.multiplier:g}x = "
        f"{rate:.1f} req/s for {options.duration:g} s per round, {options.rounds} rounds "
        f"alternating; deadline {deadline:g} s. Load average {load_start} at start, "
        f"{result['load_average_end']} at end (the machine was shared; the load generator runs "
        "on the same 2 cores).",
        "",
        "| mode | round | goodput (req/s within deadline) | statuses | 5xx | level mix | mean "
        "accuracy over answered |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, rs in rounds.items():
        for k, r in enumerate(rs):
            lines.append(
                f"| {mode} | {k} | {r['goodput_rps']} | {r['statuses']} | {r['server_errors']} "
                f"| {r['level_mix']} | {r['mean_accuracy_answered']} |"
            )
    if manifest.get("command") == "tests":
        lines += [
            "",
            "The artifact is synthetic (random weights, the tests' nested fixture): its "
            "per-level accuracies are placeholders, so the accuracy column measures nothing.",
        ]
    lines += [
        "",
        f"Goodput with degradation / shedding only: **{result['goodput_ratio']}x** "
        f"({result['goodput_rps_mean']['degrade']} vs {result['goodput_rps_mean']['shed_only']} "
        "req/s, mean over rounds).",
    ]
    write_results(RESULTS / options.out, result, "\n".join(lines) + "\n")


def switch(options: argparse.Namespace) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import multidomain.compact as compact
    from multidomain.artifact import load_artifact
    from multidomain.serving import ServedArtifact, class_probabilities

    load_start = _load()
    torch.set_num_threads(1)
    artifact = load_artifact(Path(options.artifact))
    folds = 0
    original = compact.fold_weights

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal folds
        folds += 1
        return original(*args, **kwargs)

    compact.fold_weights = counting  # type: ignore[assignment]
    rows = []
    size = artifact.arch.image_size
    images = torch.zeros(options.batch, 3, size, size, dtype=torch.uint8)
    for materialized in (1_000_000, 0):
        served = ServedArtifact.build(artifact, materialized)
        domain = next(iter(served.domains.values()))
        count = len(domain.networks)
        sequences = {
            "same level": [0] * options.batches,
            "alternating levels": [k % count for k in range(options.batches)],
        }
        for network in domain.networks:  # warm-up: every level once
            class_probabilities(network, images)
        for name, levels in sequences.items():
            folds = 0
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                for level in levels:
                    class_probabilities(domain.networks[level], images)
            # what each operator allocated and kept past its end (outputs: activations,
            # folded weights), summed over the operators
            allocated = sum(max(event.self_cpu_memory_usage, 0) for event in prof.events())
            rows.append(
                {
                    "materialized": "all" if materialized else "0",
                    "sequence": name,
                    "batches": len(levels),
                    "allocated_bytes_per_batch": round(allocated / len(levels)),
                    "folds": folds,
                }
            )
            print(rows[-1], flush=True)
    compact.fold_weights = original  # type: ignore[assignment]
    result = {
        "command": command(),
        "load_average_start": load_start,
        "load_average_end": _load(),
        "artifact": options.artifact,
        "batch": options.batch,
        "rows": rows,
    }
    lines = [
        "# Nested budgets: what switching levels allocates",
        "",
        f"`{result['command']}`",
        "",
        f"One domain's served networks, batches of {options.batch}, {options.batches} batches "
        "at one level and alternating over every level; bytes torch allocates per batch "
        "(the profiler's per-operator memory: activations, and folded weights when folding) and "
        f"fold_weights calls. Load average {load_start} / {result['load_average_end']}.",
        "",
        "| MDP_MATERIALIZED_DOMAINS | sequence | bytes allocated per batch | folds |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['materialized']} | {row['sequence']} | {row['allocated_bytes_per_batch']:,} "
            f"| {row['folds']} |"
        )
    write_results(RESULTS / options.out, result, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = parser.add_subparsers(dest="part", required=True)
    acc = parts.add_parser("accuracy", help="nested levels vs models trained alone; size")
    acc.add_argument("--backbone", type=Path, default=ROOT / "runs" / "backbone")
    acc.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.35])
    acc.add_argument("--steps", type=int, default=300)
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--channel-group", default="auto")
    acc.add_argument("--cache-dir", type=Path, default=ROOT / "data_cache")
    acc.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench_nested")
    acc.add_argument("--out", default="nested_accuracy")
    acc.set_defaults(run=accuracy)
    ld = parts.add_parser("load", help="open-loop overload: degradation vs shedding only")
    ld.add_argument("--artifact", required=True)
    ld.add_argument("--multiplier", type=float, default=2.0)
    ld.add_argument("--duration", type=float, default=20.0)
    ld.add_argument("--rounds", type=int, default=2)
    ld.add_argument("--deadline", type=float, default=1.0)
    ld.add_argument(
        "--queue-size",
        type=int,
        default=128,
        help="MDP_QUEUE_SIZE of both servers. It must hold --high x --deadline of the largest "
        "level's work (about 100 images here), else the queue sheds before the queue delay can "
        "reach the degradation threshold",
    )
    ld.add_argument("--max-batch-size", type=int, default=8)
    ld.add_argument("--capacity-requests", type=int, default=600)
    ld.add_argument("--high", type=float, default=0.2)
    ld.add_argument("--low", type=float, default=0.05)
    ld.add_argument("--hold-ms", type=float, default=200)
    ld.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench_nested")
    ld.add_argument("--out", default="nested_load")
    ld.set_defaults(run=load)
    sw = parts.add_parser("switch", help="allocation and folds when switching levels")
    sw.add_argument("--artifact", required=True)
    sw.add_argument("--batch", type=int, default=8)
    sw.add_argument("--batches", type=int, default=40)
    sw.add_argument("--out", default="nested_switch")
    sw.set_defaults(run=switch)
    options = parser.parse_args()
    options.run(options)


if __name__ == "__main__":
    main()
