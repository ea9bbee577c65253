"""How ``serve_compare.py`` reports: ratios to TorchServe, the machine and versions, and the
markdown of a result."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil
import torch
from wrkload import wrk_version

REFERENCE = "torchserve"


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's throughput and p99 over TorchServe's at the same point."""
    reference = {
        (r["client"], r["load"], r["concurrency"]): r for r in rows if r["server"] == REFERENCE
    }
    for row in rows:
        ref = reference.get((row["client"], row["load"], row["concurrency"]))
        if row["server"] == REFERENCE or not (ref and ref.get("throughput_rps")):
            continue
        if row.get("throughput_rps") is not None:
            row["throughput_vs_torchserve"] = round(
                row["throughput_rps"] / ref["throughput_rps"], 3
            )
            row["p99_vs_torchserve"] = round(row["p99_ms"] / ref["p99_ms"], 3)


# -- report -----------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _java_version() -> str:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    return (done.stderr or done.stdout).splitlines()[0].strip()


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
    }


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{
            name: _version(name)
            for name in ("fastapi", "starlette", "uvicorn", "torchserve", "litserve", "pyzmq")
        },
        "wrk": wrk_version(),
        "java": _java_version(),
    }


def _fmt(value: Any) -> str:
    return "–" if value is None else str(value)


def markdown(result: dict[str, Any]) -> str:
    method = result["method"]
    lines = [
        "# Serving side by side: FastAPI service, TorchServe, LitServe",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Started {result['started_at']}, {result['wall_s']:.0f} s. Machine: "
        f"{result['machine']['cpu']}, {result['machine']['cpus']} CPUs "
        f"({result['machine']['cpu_capability']}), {result['machine']['memory_gib']} GiB; "
        f"load average {result['load_average']['start']} at the start, "
        f"{result['load_average']['end']} at the end. Versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        "",
        f"Artifact `{result['artifact']['path']}` ({result['artifact']['name']} "
        f"{result['artifact']['version']}; domains "
        + ", ".join(f"{d} {s}px" for d, s in result["artifact"]["domains"].items())
        + f"). Single-domain load: `{method['domain']}`; mixed: every domain in turn, "
        f"{method['images_per_domain']} random PNGs each.",
        "",
        f"Method: all servers up at once; at each point {method['rounds']} round(s), each "
        f"measuring the servers in turn ({', '.join(result['servers'])}) while the others "
        f"idle. wrk ({method['wrk_threads']} thread(s)): {method['warmup_s']} s unmeasured, then "
        f"{method['duration_s']} s measured per round; Python client (bench/loadgen.py): "
        f"{method['python_warmup']} unmeasured, then {method['python_requests']} measured "
        "answers per round. Throughput: 2xx answers/s over all rounds; p50/p90/p99: median "
        "over rounds of each round's percentile; RSS: peak sum over the server's process tree "
        "during the runs (PSS, idle only: each shared page divided among its processes).",
        "",
        "Settings (same for all where the server has it):",
    ]
    lines += [f"- {name}: `{json.dumps(s)}`" for name, s in result["settings"].items()]
    lines += [
        "",
        f"## Compute-only limit (batch {result['common']['batch_size']} forward of the served "
        "subnetwork, images/s)",
        "",
        "Median forward time of each domain's served network (as bench/subnet_compute.py times "
        "it) at the server's total torch threads (threads x workers), in this process while the "
        "servers idle, in every round after the servers; here the mean over all rounds, in the "
        "load tables the mean over that point's rounds (the last column divides throughput by "
        "it). Mixed: every domain in equal shares.",
        "",
        "| torch threads | " + " | ".join(result["artifact"]["domains"]) + " | mixed |",
        "|---|" + "---|" * (len(result["artifact"]["domains"]) + 1),
    ]
    for threads, limit in result["compute_limit"].items():
        lines.append(
            f"| {threads} | "
            + " | ".join(
                f"{limit['images_per_s'][d]} ({limit['forward_ms'][d]} ms)"
                for d in result["artifact"]["domains"]
            )
            + f" | {limit['mixed_images_per_s']} |"
        )
    lines += [
        "",
        "## Memory (sum over each server's processes, MiB)",
        "",
        "| server | processes | RSS idle after start | PSS idle after start | RSS idle at end "
        "| PSS idle at end | peak RSS under load | members at end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, memory in result["memory"].items():
        start, end = memory["start"], memory.get("end", {})
        lines.append(
            f"| {name} | {start['processes']} | {start['rss_mib']} | {start['pss_mib']} "
            f"| {_fmt(end.get('rss_mib'))} | {_fmt(end.get('pss_mib'))} "
            f"| {_fmt(memory.get('peak_rss_mib'))} | {', '.join(end.get('members', []))} |"
        )
    for client in method["clients"]:
        for load in method["loads"]:
            rows = [r for r in result["rows"] if r["client"] == client and r["load"] == load]
            if not rows:
                continue
            lines += [
                "",
                f"## {client}, {load}-domain load",
                "",
                "| concurrency | server | 2xx req/s | per round | p50 ms | p90 ms | p99 ms "
                "| non-2xx | errors | peak RSS MiB | req/s vs TorchServe | p99 vs TorchServe "
                "| req/s / compute limit |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                if "throughput_rps" not in r:
                    lines.append(
                        f"| {r['concurrency']} | {r['server']} | failed: "
                        f"{'; '.join(r['failed_rounds'])} |" + " |" * 10
                    )
                    continue
                lines.append(
                    f"| {r['concurrency']} | {r['server']} | {r['throughput_rps']} "
                    f"| {', '.join(str(t) for t in r['round_throughputs_rps'])} "
                    f"| {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['non_2xx']} "
                    f"| {r['errors']} | {r['rss_peak_mib']} "
                    f"| {_fmt(r.get('throughput_vs_torchserve'))} "
                    f"| {_fmt(r.get('p99_vs_torchserve'))} | {r['over_compute_limit']} |"
                )
    return "\n".join(lines) + "\n"
