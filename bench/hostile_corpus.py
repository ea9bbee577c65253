"""The hostile image corpus (``tests/hostile_images.py``) against the FastAPI service under an
address-space limit: per case the status, the error type, the latency and the server's resident
memory before and after.

The service (``python -m service`` on 127.0.0.1) starts under ``prlimit --as``
(``--start-limit-gib``), and once the model is loaded the limit is lowered to the loaded address
space plus ``--headroom-gib``, so that the headroom is the same whatever torch maps at start-up.
Cases are posted one at a time to one domain. With ``--before-source DIR`` the same corpus then
runs against a second service started from the checkout ``DIR`` (e.g. the code before a
change), under the same limits. Writes ``bench/results/hostile_corpus.{json,md}`` with the command.

    python bench/hostile_corpus.py model_store/<name>/<version> [--before-source DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _results import RESULTS, command, write_results
from loadgen import ROOT, fastapi_process

from multidomain.artifact import load_artifact

sys.path.insert(0, str(ROOT))
from tests.hostile_images import hostile_corpus, post_corpus, status_bytes

EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*)?(?:Error|Exception)\b.*$", re.MULTILINE)
MIB, GIB = 1 << 20, 1 << 30


def run(
    label: str, source: Path, artifact: Path, domain: str, args: argparse.Namespace, scratch: Path
) -> dict[str, Any]:
    settings = {"MDP_TORCH_THREADS": "1", "MDP_LOG_LEVEL": "warning"}
    prefix = ["prlimit", f"--as={int(args.start_limit_gib * GIB)}", "--"]
    log = scratch / f"service-{label}.log"
    with fastapi_process(artifact, settings, log, prefix, source) as (url, process):
        pid = process.pid  # prlimit execs the service
        loaded = status_bytes(pid, "VmSize")
        limit = loaded + int(args.headroom_gib * GIB)
        subprocess.run(["prlimit", f"--pid={pid}", f"--as={limit}"], check=True)
        rss_start = status_bytes(pid, "VmRSS")
        cases = []
        for result in post_corpus(url, pid, domain, hostile_corpus()):
            cases.append(asdict(result))
            print(label, json.dumps(cases[-1]), flush=True)
        alive = process.poll() is None
        summary = {
            "label": label,
            "source": str(source),
            "settings": settings,
            "address_space_limit_mib": round(limit / MIB),
            "address_space_loaded_mib": round(loaded / MIB),
            "cases": len(cases),
            "statuses": dict(sorted(Counter(str(c["status"]) for c in cases).items())),
            "server_errors": sum(1 for c in cases if c["status"] is None or c["status"] >= 500),
            "unexpected": sum(1 for c in cases if c["status"] != c["expected_status"]),
            "alive_at_end": alive,
            "rss_start_mib": round(rss_start / MIB, 1),
            "rss_end_mib": round(status_bytes(pid, "VmRSS") / MIB, 1),
            "rss_peak_mib": round(max(c["rss_peak"] for c in cases) / MIB, 1),
            "max_latency_s": round(max(c["latency_s"] for c in cases), 3),
        }
    log_text = log.read_text(errors="replace")
    summary["log_errors"] = sorted(set(EXCEPTION_LINE.findall(log_text)))
    print(json.dumps(summary), flush=True)
    return {"summary": summary, "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--domain", help="domain to post to (default: the first)")
    parser.add_argument("--start-limit-gib", type=float, default=8.0)
    parser.add_argument("--headroom-gib", type=float, default=1.5)
    parser.add_argument("--before-source", type=Path, help="a checkout to run the corpus on too")
    parser.add_argument("--before-label", default="before")
    parser.add_argument("--out", type=Path, default=RESULTS / "hostile_corpus")
    args = parser.parse_args()
    artifact = args.artifact.resolve()
    domains = load_artifact(artifact).domains
    domain = args.domain or domains[0].name
    image_size = next(d.image_size for d in domains if d.name == domain)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        runs.append(run("this checkout", ROOT, artifact, domain, args, Path(scratch)))
        if args.before_source:
            source = args.before_source.resolve()
            runs.append(run(args.before_label, source, artifact, domain, args, Path(scratch)))
    result = {
        "command": command(),
        "artifact": str(args.artifact),
        "domain": domain,
        "image_size": image_size,
        "runs": runs,
    }
    write_results(args.out, result, markdown(result))


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = [
        "# Hostile image corpus against the service under an address-space limit",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Artifact `{result['artifact']}`, domain `{result['domain']}` (input "
        f"{result['image_size']}x{result['image_size']}); one `python -m service` per run on "
        "127.0.0.1, started under `prlimit --as`, the limit lowered to the loaded address space "
        "plus the headroom once ready; cases posted one at a time (tests/hostile_images.py).",
        "",
        "| run | source | AS limit MiB (loaded + headroom) | cases | statuses | 5xx or no answer "
        "| not as expected | alive at end | RSS start / end / peak MiB | slowest s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run_ in runs:
        s = run_["summary"]
        statuses = ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())
        lines.append(
            f"| {s['label']} | `{s['source']}` | {s['address_space_limit_mib']} "
            f"({s['address_space_loaded_mib']} + headroom) | {s['cases']} | {statuses} "
            f"| {s['server_errors']} | {s['unexpected']} | {s['alive_at_end']} "
            f"| {s['rss_start_mib']} / {s['rss_end_mib']} / {s['rss_peak_mib']} "
            f"| {s['max_latency_s']} |"
        )
    for run_ in runs:
        if run_["summary"]["log_errors"]:
            lines += ["", f"Errors in the {run_['summary']['label']} log: "]
            lines += [f"- `{e}`" for e in run_["summary"]["log_errors"]]
    labels = [r["summary"]["label"] for r in runs]
    lines += [
        "",
        "Per case: status (error type), latency ms, server RSS before -> after MiB (highest "
        "while handling it), for each run.",
        "",
        "| case | category | bytes | expected | " + " | ".join(labels) + " |",
        "|---|---|---|---|" + "---|" * len(labels),
    ]
    by_name = [{c["name"]: c for c in r["cases"]} for r in runs]
    for case in runs[0]["cases"]:
        cells = []
        for cases in by_name:
            c = cases.get(case["name"])
            if c is None:
                cells.append("not sent (server gone)")
                continue
            error = f" ({c['error_type']})" if c["error_type"] else ""
            cells.append(
                f"{c['status']}{error}, {1000 * c['latency_s']:.0f} ms, "
                f"{c['rss_before'] / MIB:.0f} -> {c['rss_after'] / MIB:.0f} "
                f"({c['rss_peak'] / MIB:.0f})" + ("" if c["alive"] else ", DIED")
            )
        note = f" ({case['note']})" if case["note"] else ""
        lines.append(
            f"| {case['name']}{note} | {case['category']} | {case['bytes']} "
            f"| {case['expected_status']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
