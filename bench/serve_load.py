"""FastAPI service under closed-loop mixed-domain load: micro-batching vs batch size 1.

Starts two ``python -m service`` processes on 127.0.0.1 (by process group), one with
``MDP_MAX_BATCH_SIZE`` = ``--batch-size`` and one with 1 (an idle one costs no CPU). At each
concurrency a separate load process (``bench/loadgen.py``) drives them in ``--rounds``
alternating rounds, so that drifts in the shared machine's speed affect both alike; the rounds
are pooled: throughput, p50/p95/p99 overall and per domain. Writes
``bench/results/serve_load.{json,md}`` with the command and the settings.

    python bench/serve_load.py model_store/default/<version> [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _results import RESULTS, command, write_results
from loadgen import Run, Target, fastapi_server, make_requests, run_closed_loop, summarise


def _predict_path(request: Any) -> tuple[str, dict[str, str]]:
    return f"/v1/domains/{request.domain}/predict", {"Content-Type": "image/png"}


def _load(
    url: str, artifact: str, per_domain: int, concurrency: int, total: int, warmup: int
) -> Run:
    requests = make_requests(Path(artifact), per_domain, seed=0)
    target = Target("fastapi", url, _predict_path)
    return run_closed_loop(target, requests, concurrency, total, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--requests", type=int, default=600, help="measured answers per round and level"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per level")
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images-per-domain", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_load")
    args = parser.parse_args()
    artifact = args.artifact.resolve()
    rows = []
    settings_used = {}
    batches = (args.batch_size, 1)
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as scratch,
        ProcessPoolExecutor(1, mp_context=spawn) as pool,
        ExitStack() as servers,
    ):
        urls = {}
        for batch in batches:
            settings = {
                "MDP_MAX_BATCH_SIZE": str(batch),
                "MDP_MAX_WAIT_MS": str(args.max_wait_ms if batch > 1 else 0),
                "MDP_TORCH_THREADS": str(args.threads),
                "MDP_QUEUE_SIZE": "1024",
                "MDP_LOG_LEVEL": "warning",
            }
            settings_used[f"batch_{batch}"] = settings
            log = Path(scratch) / f"service-{batch}.log"
            urls[batch] = servers.enter_context(fastapi_server(artifact, settings, log))
        for concurrency in args.concurrency:
            runs: dict[int, list[Run]] = {batch: [] for batch in batches}
            for round_ in range(args.rounds):
                for batch in batches if round_ % 2 == 0 else batches[::-1]:
                    run = pool.submit(
                        _load, urls[batch], str(artifact), args.images_per_domain, concurrency,
                        args.requests, args.warmup,
                    ).result()  # fmt: skip
                    runs[batch].append(run)
            for batch in batches:
                row = {"max_batch_size": batch, **summarise(runs[batch])}
                print(json.dumps(row), flush=True)
                rows.append(row)
    by_key = {(r["max_batch_size"], r["concurrency"]): r for r in rows}
    summary = []
    for concurrency in args.concurrency:
        batched, single = by_key[(args.batch_size, concurrency)], by_key[(1, concurrency)]
        summary.append(
            {
                "concurrency": concurrency,
                "throughput_gain": round(batched["throughput_rps"] / single["throughput_rps"], 2),
                "batched_p99_over_p50": round(batched["p99_ms"] / batched["p50_ms"], 2),
            }
        )
    result = {
        "command": command(),
        "artifact": str(args.artifact),
        "settings": settings_used,
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "rows": rows,
        "summary": summary,
    }
    write_results(args.out, result, markdown(result))


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# FastAPI service: closed-loop mixed-domain load, micro-batching vs batch size 1",
        "",
        f"Command: `{result['command']}`; load from a separate process on 127.0.0.1, both servers "
        f"up, {result['rounds']} alternating rounds of {result['requests_per_round']} measured "
        f"answers per row, pooled; settings: `{json.dumps(result['settings'])}`",
        "",
        "| max batch | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors "
        "| per-domain p50/p95/p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        per = "; ".join(
            f"{d} {v['p50_ms']}/{v['p95_ms']}/{v['p99_ms']}" for d, v in r["per_domain"].items()
        )
        lines.append(
            f"| {r['max_batch_size']} | {r['concurrency']} | {r['throughput_rps']} | {r['p50_ms']} "
            f"| {r['p95_ms']} | {r['p99_ms']} | {r['errors']} | {per} |"
        )
    lines += [
        "",
        "| concurrency | throughput batched / batch 1 | batched p99 / p50 |",
        "|---|---|---|",
    ]
    lines += [
        f"| {s['concurrency']} | {s['throughput_gain']} | {s['batched_p99_over_p50']} |"
        for s in result["summary"]
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
