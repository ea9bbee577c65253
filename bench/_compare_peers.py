"""The servers ``serve_compare.py`` compares, started at once and stopped (by process group)
with the script: the FastAPI service, TorchServe with the artifact as a ``.mar`` and LitServe
(``Peer``, ``start_peers``); the memory of each one's process tree (``tree_memory``,
``PeakRss``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from loadgen import fastapi_process, server_process

from devtools.torchserve_local import LocalTorchServe, free_port
from torchserving.export import TorchServeModelConfig, export_mar

MIB = 1 << 20


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Peer:
    """A running server: its base URL, the root of its process tree and its settings."""

    name: str
    url: str
    pid: int
    workers: int
    settings: dict[str, Any]
    alive: bool = True

    def running(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


@contextlib.contextmanager
def fastapi_peer(artifact: Path, args: argparse.Namespace, work: Path) -> Iterator[Peer]:
    settings = {
        "MDP_TORCH_THREADS": str(args.threads),
        "MDP_PREPROCESS_THREADS": str(args.threads),
        "MDP_MAX_BATCH_SIZE": str(args.batch_size),
        "MDP_MAX_WAIT_MS": str(args.max_wait_ms),
        "MDP_QUEUE_SIZE": str(args.queue_size),
        "MDP_LOG_LEVEL": "warning",  # no access log either
        "MDP_WORKERS": str(args.workers_of["fastapi"]),
        **dict(args.fastapi_env),
    }
    with fastapi_process(artifact, settings, work / "fastapi.log") as (url, process):
        yield Peer(
            "fastapi",
            url,
            process.pid,
            args.workers_of["fastapi"],
            {
                "server": f"python -m service (uvicorn, {args.workers_of['fastapi']} worker "
                "processes; more than 1: plus a supervisor)",
                "env": settings,
                "request_body": "raw image/png"
                if args.body == "raw"
                else "multipart/form-data, field file",
            },
        )


@contextlib.contextmanager
def torchserve_peer(artifact: Path, args: argparse.Namespace, work: Path) -> Iterator[Peer]:
    import ts

    workers = args.workers_of["torchserve"]
    config = TorchServeModelConfig(
        batch_size=args.batch_size,
        max_batch_delay_ms=round(args.max_wait_ms),
        workers=workers,
        torch_threads=args.threads,
    )
    mar = export_mar(artifact, work / "mars", "bench", config)
    server = LocalTorchServe(
        mar.parent,
        {"bench": mar.name},
        work / "torchserve",
        config={"job_queue_size": str(args.queue_size)},
        quiet_logs=not args.torchserve_default_logging,
    )
    with server:
        assert server.process is not None
        yield Peer(
            "torchserve",
            server.inference_url,
            server.process.pid,
            workers,
            {
                "version": ts.__version__,
                "workers": workers,
                "torch_threads": args.threads,
                "batch_size": config.batch_size,
                "max_batch_delay_ms": config.max_batch_delay_ms,
                "job_queue_size": args.queue_size,
                "netty_threads": "default (number of cores)",
                "jvm": "default options",
                "logging": "default" if args.torchserve_default_logging else "warnings only",
                "batching": "mixed domains per batch, grouped per domain in the handler",
                "request_body": "raw image/png + X-Domain"
                if args.body == "raw"
                else "multipart/form-data field file + X-Domain",
            },
        )


@contextlib.contextmanager
def litserve_peer(artifact: Path, args: argparse.Namespace, work: Path) -> Iterator[Peer]:
    workers = args.workers_of["litserve"]
    port = free_port()
    command = [
        sys.executable, "-m", "devtools.litserve_peer", str(artifact),
        "--port", str(port),
        "--workers", str(workers),
        "--max-batch-size", str(args.batch_size),
        "--batch-timeout-ms", str(args.max_wait_ms),
        "--log-level", "warning",
    ]  # fmt: skip
    if args.litserve_mp_queue:
        command.append("--no-fast-queue")
    url = f"http://127.0.0.1:{port}"
    env = {"MDP_TORCH_THREADS": str(args.threads)}
    with server_process("LitServe", command, f"{url}/health", work / "litserve.log", env) as proc:
        yield Peer(
            "litserve",
            url,
            proc.pid,
            workers,
            {
                "version": importlib.metadata.version("litserve"),
                "workers_per_device": workers,
                "api_servers": f"LitServe default ({workers}, one per inference worker)",
                "torch_threads": args.threads,
                "max_batch_size": args.batch_size,
                "batch_timeout_ms": args.max_wait_ms,
                "queue": "multiprocessing" if args.litserve_mp_queue else "ZeroMQ (fast_queue)",
                "batching": "mixed domains per batch, grouped per domain in predict",
                "request_body": "multipart/form-data, fields domain and file",
            },
        )


STARTERS: dict[str, Callable[[Path, argparse.Namespace, Path], AbstractContextManager[Peer]]] = {
    "fastapi": fastapi_peer,
    "torchserve": torchserve_peer,
    "litserve": litserve_peer,
}


def start_peers(
    stack: ExitStack, artifact: Path, args: argparse.Namespace, work: Path
) -> dict[str, Peer]:
    """Every server of ``args.servers`` started at once (their start-ups overlap); the stop of
    each one that came up pushed on ``stack``. ``RuntimeError`` naming those that failed."""
    managers = {name: STARTERS[name](artifact, args, work) for name in args.servers}
    pool = ThreadPoolExecutor(len(managers))
    futures = {name: pool.submit(manager.__enter__) for name, manager in managers.items()}
    try:
        failures = [f"{name}: {f.exception()}" for name, f in futures.items() if f.exception()]
    finally:  # also when interrupted: whatever has started is stopped with the stack
        pool.shutdown(wait=True)
        for name, future in futures.items():
            if future.exception() is None:
                stack.push(managers[name].__exit__)
    if failures:
        raise RuntimeError("; ".join(failures))
    return {name: futures[name].result() for name in args.servers}


# -- memory -----------------------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_memory(pid: int, with_pss: bool = False) -> dict[str, Any]:
    """RSS (and PSS: shared pages divided among their users) summed over a process tree."""
    rss = pss = 0
    names = []
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            if with_pss:
                info = proc.memory_full_info()
                pss += info.pss
            else:
                info = proc.memory_info()
            rss += info.rss
            names.append(f"{proc.name()}:{info.rss // MIB}MiB")
    out: dict[str, Any] = {"processes": len(names), "rss_mib": round(rss / MIB, 1)}
    if with_pss:
        out["pss_mib"] = round(pss / MIB, 1)
        out["members"] = names
    return out


class PeakRss:
    """Samples a process tree's summed RSS every ``interval_s`` while the block runs."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_mib = max(self.peak_mib, tree_memory(self.pid)["rss_mib"])
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
