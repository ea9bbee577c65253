"""Serving every domain from one compact weight set: memory and throughput per
``MDP_MATERIALIZED_DOMAINS`` setting.

Compute (in this process, the servers' code: ``multidomain.serving.ServedArtifact``): for every
setting (0: fold the batch's domain from the shared weights every batch; ``k``: keep the ``k``
most recently used domains folded; ``all``: every domain folded once, i.e. per-domain dense
copies as the servers kept before), batches of 1 and of 32 images, timed alternately across
settings in every round, in two traffic patterns: ``round-robin`` (each batch another domain:
the worst case for a cache smaller than the number of domains) and ``one domain`` (always the
same: every cache hits). Throughput is images per second of the median batch.

Memory (real ``python -m service`` processes, one per setting, started by process group and
stopped): after one request to every domain, the weight bytes the service keeps between batches
(``resident_weight_bytes`` of ``GET /v1/domains``, counted over the distinct tensor storages the
served model holds) against the artifact's weights file, and the process's resident set size.

    python bench/compact_serving.py model_store/default/<version> [--settings 0 1 all]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import RESULTS, command, write_results
from loadgen import fastapi_process
from PIL import Image

from multidomain.artifact import load_artifact
from multidomain.groups import cpu_capability
from multidomain.latency import timer
from multidomain.serving import ALL_DOMAINS, ServedArtifact, ServingSettings, class_probabilities


def _setting(value: str) -> int:
    return ServingSettings.load(None, {"MDP_MATERIALIZED_DOMAINS": value}).materialized_domains


def _label(value: int) -> str:
    return "all" if value >= ALL_DOMAINS else str(value)


def measure_compute(
    path: Path,
    settings: list[int],
    batches: list[int],
    rounds: dict[int, int],
    threads: int,
    clock: str = "wall",
) -> list[dict[str, Any]]:
    read_clock = timer(clock, threads)
    artifact = load_artifact(path)
    served = {s: ServedArtifact.build(artifact, s) for s in settings}
    names = [d.name for d in artifact.domains]
    side = artifact.arch.image_size
    torch.set_num_threads(threads)
    rows = []
    for batch in batches:
        pixels = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
        for pattern, order in (("round-robin", names), ("one domain", names[:1] * len(names))):
            samples: dict[int, list[float]] = {s: [] for s in settings}
            for round_ in range(rounds[batch] + 2):
                for setting in settings:
                    model = served[setting]
                    for name in order:
                        network = model.domains[name].network
                        start = read_clock()
                        class_probabilities(network, pixels)
                        if round_ >= 2:  # two warm-up rounds
                            samples[setting].append(read_clock() - start)
            reference = statistics.median(samples[max(settings)])
            for setting in settings:
                median = statistics.median(samples[setting])
                rows.append(
                    {
                        "setting": _label(setting),
                        "batch": batch,
                        "pattern": pattern,
                        "batch_ms": round(1000 * median, 3),
                        "images_per_s": round(batch / median, 1),
                        "throughput_vs_all": round(reference / median, 3),
                        "resident_weight_bytes": served[setting].resident_weight_bytes(),
                        "artifact_weight_bytes": served[setting].artifact_weight_bytes,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def measure_memory(path: Path, settings: list[int], threads: int) -> list[dict[str, Any]]:
    artifact = load_artifact(path)
    body = _png(artifact.arch.image_size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="compact-serving-") as tmp:
        for setting in settings:
            env = {
                "MDP_MATERIALIZED_DOMAINS": _label(setting),
                "MDP_TORCH_THREADS": str(threads),
            }
            log = Path(tmp) / f"service-{_label(setting)}.log"
            with fastapi_process(path.resolve(), env, log) as (url, process):
                for entry in artifact.domains:
                    request = urllib.request.Request(
                        f"{url}/v1/domains/{entry.name}/predict",
                        data=body,
                        headers={"Content-Type": "image/png"},
                    )
                    with urllib.request.urlopen(request, timeout=30) as reply:
                        reply.read()
                with urllib.request.urlopen(f"{url}/v1/domains", timeout=30) as reply:
                    summary = json.loads(reply.read())
                rss = _rss_bytes(process.pid)
            resident, weights = summary["resident_weight_bytes"], summary["artifact_weight_bytes"]
            rows.append(
                {
                    "setting": _label(setting),
                    "resident_weight_bytes": resident,
                    "artifact_weight_bytes": weights,
                    "resident_over_artifact": round(resident / weights, 3),
                    "process_rss_bytes": rss,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--settings", nargs="+", default=["0", "1", "all"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=30, help="alternating rounds at batch 32")
    parser.add_argument("--rounds-batch-1", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the timing thread's CPU time (1 thread), not inflated by a busy machine",
    )
    parser.add_argument("--no-processes", action="store_true", help="skip the service processes")
    parser.add_argument("--out", type=Path, default=RESULTS / "compact_serving")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1")
    settings = sorted({_setting(s) for s in args.settings})
    rounds = {b: args.rounds_batch_1 if b == 1 else args.rounds for b in args.batches}
    compute = measure_compute(
        args.artifact, settings, args.batches, rounds, args.threads, args.clock
    )
    memory = [] if args.no_processes else measure_memory(args.artifact, settings, args.threads)
    result = {
        "command": command(),
        "artifact": str(args.artifact),
        "torch_threads": args.threads,
        "clock": args.clock,
        "cpu_capability": cpu_capability(),
        "compute": compute,
        "memory": memory,
    }
    write_results(args.out, result, render(result, rounds))


def render(result: dict[str, Any], rounds: dict[int, int]) -> str:
    mib = 2**20
    lines = [
        "# One compact weight set: memory and throughput per MDP_MATERIALIZED_DOMAINS",
        "",
        f"Command: `{result['command']}` (torch threads {result['torch_threads']}, "
        f"{result.get('clock', 'wall')} clock, CPU "
        f"capability {result['cpu_capability']}; medians of "
        + ", ".join(f"{n} rounds at batch {b}" for b, n in rounds.items())
        + ", settings alternating in every round)",
        "",
        "## Throughput (serving core, in process)",
        "",
        "| setting | batch | traffic | ms per batch | images/s | vs `all` | resident weights MiB "
        "| / artifact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["compute"]:
        lines.append(
            f"| {r['setting']} | {r['batch']} | {r['pattern']} | {r['batch_ms']} "
            f"| {r['images_per_s']} | {r['throughput_vs_all']} "
            f"| {r['resident_weight_bytes'] / mib:.2f} "
            f"| {r['resident_weight_bytes'] / r['artifact_weight_bytes']:.3f} |"
        )
    if result["memory"]:
        lines += [
            "",
            "## Memory (real `python -m service` processes, after one request per domain)",
            "",
            "| setting | resident weights MiB | artifact weights MiB | resident / artifact "
            "| process RSS MiB |",
            "|---|---|---|---|---|",
        ]
        for r in result["memory"]:
            lines.append(
                f"| {r['setting']} | {r['resident_weight_bytes'] / mib:.2f} "
                f"| {r['artifact_weight_bytes'] / mib:.2f} | {r['resident_over_artifact']} "
                f"| {r['process_rss_bytes'] / mib:.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
