"""The serving comparison end to end: ``bench/serve_compare.py --quick`` against a tiny artifact
with the FastAPI service and LitServe (TorchServe has its own integration test), and the wrk Lua
script of ``bench/wrkload.py`` against a local HTTP server that records what it receives."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import product
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import psutil
import pytest

from tests.artifacts import write_tiny_artifact

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BENCH_TIMEOUT_S = 240


def bench_module(name: str) -> ModuleType:
    """A module of ``bench/`` (scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def stop_tree(process: subprocess.Popen[bytes], descendants: set[psutil.Process]) -> None:
    """SIGTERM the bench (it stops its servers), then kill whatever of it is left, by pid."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    for proc in descendants:
        if proc.is_running():
            proc.kill()
    psutil.wait_procs(list(descendants), timeout=10)


def test_quick_comparison_fastapi_and_litserve(tmp_path: Path) -> None:
    artifact = write_tiny_artifact(tmp_path / "store")
    out = tmp_path / "result" / "serve_compare"
    log = tmp_path / "bench.log"
    command = [
        sys.executable, "bench/serve_compare.py", str(artifact), "--quick",
        "--servers", "fastapi", "litserve", "--out", str(out),
    ]  # fmt: skip
    descendants: set[psutil.Process] = set()
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + BENCH_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            with_children = psutil.Process(process.pid).children(recursive=True)
            descendants.update(with_children)
            time.sleep(0.5)
        finished = process.poll() is not None
    finally:
        stop_tree(process, descendants)
    text = log.read_text()
    assert finished, f"not done after {BENCH_TIMEOUT_S} s\n{text[-4000:]}"
    assert process.returncode == 0, text[-4000:]
    assert len(descendants) >= 3, "the servers were not children of the bench"
    assert not [p for p in descendants if p.is_running()], "a server outlived the bench"

    result = json.loads(out.with_suffix(".json").read_text())
    assert result["quick"] and result["servers"] == ["fastapi", "litserve"]
    points = {(r["client"], r["load"], r["concurrency"], r["server"]) for r in result["rows"]}
    assert points == set(product(["wrk", "python"], ["single", "mixed"], [1, 8], result["servers"]))
    for row in result["rows"]:
        assert not row["failed_rounds"], row
        assert row["ok"] > 0 and row["non_2xx"] == 0 and row["errors"] == 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["rss_peak_mib"] > 100, row
        assert 0 < row["over_compute_limit"] < 1, row
        assert "throughput_vs_torchserve" not in row  # no TorchServe in this run
    limit = result["compute_limit"]["1"]
    assert set(limit["images_per_s"]) == set(result["artifact"]["domains"])
    assert limit["mixed_images_per_s"] > 0
    memory = result["memory"]
    assert memory["fastapi"]["start"]["processes"] == 1
    assert memory["litserve"]["start"]["processes"] >= 2  # API server + inference worker
    assert memory["litserve"]["start"]["pss_mib"] < memory["litserve"]["start"]["rss_mib"]
    markdown = out.with_suffix(".md").read_text()
    assert f"Command: `python bench/serve_compare.py {artifact} --quick" in markdown
    assert "## wrk, mixed-domain load" in markdown and "## python, single-domain load" in markdown


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    seen: ClassVar[list[tuple[str, str, bytes]]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.seen.append((self.path, self.headers.get("X-Domain", ""), body))
        status = 200 if self.path == "/ok" else 404
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_wrk_script_rotates_through_binary_requests_and_counts_non_2xx(
    recorder: str, tmp_path: Path
) -> None:
    wrkload = bench_module("wrkload")
    # bodies with what could break a Lua literal or a text read: NUL, quotes, ]], CR LF
    bodies = [bytes(range(256)) * 3, b'"]]\r\n\x00--[[', b"\x89PNG\r\n\x1a\n" + b"\xff" * 999]
    requests = [
        wrkload.WireRequest("/ok", {"Content-Type": "image/png", "X-Domain": "a"}, bodies[0]),
        wrkload.WireRequest("/ok", {"Content-Type": "image/png", "X-Domain": "b"}, bodies[1]),
        wrkload.WireRequest("/missing", {"Content-Type": "image/png"}, bodies[2]),
    ]
    script = wrkload.write_script(requests, tmp_path / "wrk")
    run = wrkload.run_wrk(recorder, script, connections=4, duration_s=1, threads=2)
    seen = list(_Recorder.seen)
    assert run.requests >= 30 and run.errors == 0
    assert {(path, domain, body) for path, domain, body in seen} == {
        ("/ok", "a", bodies[0]), ("/ok", "b", bodies[1]), ("/missing", "", bodies[2]),
    }  # fmt: skip
    missing = sum(1 for path, _, _ in seen if path == "/missing")
    assert abs(missing - len(seen) / 3) <= 8  # in turn, each thread from its own offset
    # received but not answered when wrk stopped: at most one per connection
    assert 0 <= missing - run.non_2xx <= 4
    assert len(seen) - 4 <= run.requests <= len(seen)
    assert 0 < run.percentiles_ms[50] <= run.percentiles_ms[99] <= run.max_ms
