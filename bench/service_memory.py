"""What one service replica holds in memory: the resident set (RSS) of ``python -m service``.

Starts the service on 127.0.0.1 with its default settings on the given artifact and reads the
process's VmRSS / VmHWM (peak) from /proc once it is ready (model loaded, verified, every
domain warmed up), then after closed-loop mixed-domain load at each concurrency
(``bench/loadgen.py``). Writes ``bench/results/service_memory.{json,md}`` with the command.

    python bench/service_memory.py model_store/default/<version> [--concurrency 8 32]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from _results import RESULTS, command, write_results
from loadgen import Target, fastapi_process, make_requests, run_closed_loop, summarise

from multidomain.artifact import load_artifact
from service.settings import ServiceSettings


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--requests", type=int, default=1000, help="answers per level")
    parser.add_argument("--images-per-domain", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "service_memory")
    args = parser.parse_args()
    artifact_path = args.artifact.resolve()
    artifact = load_artifact(artifact_path)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "service.log"
        with fastapi_process(artifact_path, {}, log) as (url, process):
            rows.append({"phase": "ready (idle)", **memory_mib(process.pid)})
            requests = make_requests(artifact_path, args.images_per_domain, seed=0)
            target = Target(
                "fastapi",
                url,
                lambda r: (f"/v1/domains/{r.domain}/predict", {"Content-Type": "image/png"}),
            )
            for concurrency in args.concurrency:
                run = run_closed_loop(target, requests, concurrency, args.requests, warmup=32)
                summary = summarise([run])
                rows.append(
                    {
                        "phase": f"after {args.requests} requests at concurrency {concurrency}",
                        **memory_mib(process.pid),
                        "req_per_s": summary["throughput_rps"],
                        "errors": summary["errors"],
                    }
                )
    weights = artifact_path / "weights.safetensors"
    result = {
        "command": command(),
        "artifact": str(args.artifact),
        "weights_bytes": weights.stat().st_size,
        "domains": [entry.name for entry in artifact.domains],
        "settings": {k: str(v) for k, v in ServiceSettings().model_dump().items()},
        "rows": rows,
    }
    write_results(args.out, result, markdown(result))


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Service memory: resident set of one replica",
        "",
        f"Command: `{result['command']}`; default settings (1 torch thread, 2 preprocess "
        f"threads, batches up to 32); artifact `{result['artifact']}` "
        f"({result['weights_bytes'] / 1024:.0f} KiB of weights, domains "
        f"{', '.join(result['domains'])}).",
        "",
        "| phase | RSS MiB | peak RSS MiB | req/s | errors |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['phase']} | {row['VmRSS']} | {row['VmHWM']} | "
            f"{row.get('req_per_s', '')} | {row.get('errors', '')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
