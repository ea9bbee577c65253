"""Hot-path cost of the service's own Python: ``wrk`` against two versions of the code, alternating.

Each round starts ``python -m service`` from the working tree and from a baseline git revision
(exported with ``git archive`` into a temporary folder, run with the same interpreter), each
serving the same tiny test artifact (``tests/artifacts.py``: compute is negligible, so the
figure is the per-request cost of HTTP parsing, routing, admission, metrics, logging and the
engine), and drives it with ``wrk`` (keep-alive, one PNG ``POST .../predict``) after a warm-up.
Versions alternate round by round so that drifts of the shared machine affect both alike.
Besides requests/s (which the machine's other load moves by +-20%), each round records the
server's CPU time per request (user + system, all its threads, from ``/proc/<pid>/stat``): the
cost of the code itself, steadier than throughput. Writes ``bench/results/hotpath.{json,md}``
with the command.

    python bench/hotpath.py --baseline HEAD~3 [--rounds 4 --duration 8 --connections 32]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
from _results import write_results
from loadgen import export_revision, fastapi_server
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from tests.artifacts import write_tiny_artifact  # noqa: E402

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""


def _cpu_seconds(pid: int) -> float:
    """CPU time of a server and its worker processes (user + system, all threads)."""
    process = psutil.Process(pid)
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def _wrk(url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            f"{url}/v1/domains/shapes/predict",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]

    def percentile(label: str) -> float:
        value, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    return {
        "rps": rps,
        "requests": requests,
        "p50_ms": percentile("50"),
        "p99_ms": percentile("99"),
        "non_2xx": int(errors[1]) if errors else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per round")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds per round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for both servers (repeatable)"
    )
    parser.add_argument(
        "--working-env",
        action="append",
        default=[],
        help="NAME=VALUE for the working tree's server only (repeatable), e.g. MDP_WORKERS=2",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "hotpath")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.env)
    working_settings = {**settings, **dict(item.split("=", 1) for item in args.working_env)}
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "working tree": []}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        baseline = export_revision(args.baseline, scratch / "baseline")
        artifact = write_tiny_artifact(scratch / "store")
        body = scratch / "image.png"
        buffer = io.BytesIO()
        Image.effect_noise((16, 16), 60).convert("RGB").save(buffer, "PNG")
        body.write_bytes(buffer.getvalue())
        script = scratch / "post.lua"
        script.write_text(_WRK_SCRIPT.format(body=body))
        roots = {"baseline": baseline, "working tree": ROOT}
        for round_ in range(args.rounds):
            order = list(roots) if round_ % 2 == 0 else list(reversed(roots))
            for name in order:
                log = scratch / f"{name.replace(' ', '_')}-{round_}.log"
                processes: list[subprocess.Popen[bytes]] = []
                env = working_settings if name == "working tree" else settings
                with fastapi_server(
                    artifact, env, log, root=roots[name], started=processes.append
                ) as url:
                    pid = processes[0].pid
                    _wrk(url, script, args.connections, args.warmup)
                    cpu = _cpu_seconds(pid)
                    result = _wrk(url, script, args.connections, args.duration)
                    result["cpu_us_per_request"] = round(
                        (_cpu_seconds(pid) - cpu) / result["requests"] * 1e6, 1
                    )
                runs[name].append(result)
                print(f"round {round_ + 1} {name}: {result}", flush=True)
    summary: dict[str, dict[str, Any]] = {
        name: {
            "median_rps": round(statistics.median(r["rps"] for r in results), 1),
            "rounds_rps": [r["rps"] for r in results],
            "median_p50_ms": round(statistics.median(r["p50_ms"] for r in results), 3),
            "median_p99_ms": round(statistics.median(r["p99_ms"] for r in results), 3),
            "median_cpu_us_per_request": round(
                statistics.median(r["cpu_us_per_request"] for r in results), 1
            ),
            "rounds_cpu_us_per_request": [r["cpu_us_per_request"] for r in results],
            "non_2xx": sum(int(r["non_2xx"]) for r in results),
        }
        for name, results in runs.items()
    }
    ratio = summary["working tree"]["median_rps"] / summary["baseline"]["median_rps"]
    cpu_ratio = (
        summary["working tree"]["median_cpu_us_per_request"]
        / summary["baseline"]["median_cpu_us_per_request"]
    )
    command = "python " + shlex.join(sys.argv)
    record: dict[str, Any] = {
        "command": command,
        "baseline": args.baseline,
        "working_tree_commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "settings": settings,
        "working_tree_settings": working_settings,
        "connections": args.connections,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "results": summary,
        "ratio_working_tree_to_baseline": round(ratio, 3),
        "cpu_ratio_working_tree_to_baseline": round(cpu_ratio, 3),
    }
    lines = [
        "# Hot path: wrk against the service, baseline vs working tree",
        "",
        f"Command: `{command}`",
        "",
        f"Tiny artifact, `wrk -t1 -c{args.connections} -d{args.duration}s` keep-alive PNG "
        f"POST, {args.rounds} alternating rounds, fresh server per round; settings "
        f"{settings or 'defaults'}, working tree {working_settings or 'defaults'}; load "
        f"average at start {load_start}, at end {os.getloadavg()}.",
        "",
        "| version | median req/s | rounds req/s | median CPU us/request | rounds CPU "
        "us/request | median p50 ms | median p99 ms | non-2xx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        rounds = ", ".join(f"{v:.0f}" for v in row["rounds_rps"])
        cpu_rounds = ", ".join(f"{v:.0f}" for v in row["rounds_cpu_us_per_request"])
        lines.append(
            f"| {name} | {row['median_rps']:.0f} | {rounds} | "
            f"{row['median_cpu_us_per_request']:.0f} | {cpu_rounds} | {row['median_p50_ms']} | "
            f"{row['median_p99_ms']} | {row['non_2xx']} |"
        )
    lines += [
        "",
        f"Working tree / baseline: req/s {ratio:.3f}, CPU per request {cpu_ratio:.3f}",
        "",
    ]
    write_results(args.out, record, "\n".join(lines))


if __name__ == "__main__":
    main()
