"""Several worker processes on one port: ``MDP_WORKERS=N`` (``--workers N``) with N > 1.

``python -m service`` (or ``mdprune serve``) checks the settings and the artifact, then
replaces itself (same pid) with a lean supervisor (``python -m service.workers supervise ...``:
no torch, ~25 MiB). The supervisor reserves the address by binding a socket with
``SO_REUSEPORT`` that never listens (this also resolves port 0), then starts N workers
(``python -m service.workers``): each a whole service (its own uvicorn server, custom HTTP
protocol, engine and threads) listening on its own ``SO_REUSEPORT`` socket of the same address,
so that the kernel spreads new connections evenly over the workers (a shared listening socket
lets whichever worker wakes first take a whole burst of connections).

* Metrics: prometheus_client's multiprocess mode in a private temporary folder
  (``PROMETHEUS_MULTIPROC_DIR``, new at start, removed at exit); ``/metrics`` of any worker
  answers for all of them (see :mod:`service.metrics`).
* Signals: SIGTERM and SIGINT are passed on to every worker, each drains as a single process
  does (readiness 503 at once, ``drain_delay_s`` of serving, close, ``shutdown_grace_s``); the
  supervisor exits when all have, with status 0 when all ended cleanly. SIGHUP is passed on
  too: every worker checks the store for a new version (each rolls out on its own).
* A worker whose supervisor has gone (killed) stops by itself, as on SIGTERM.
* A worker that dies is started again (after ``RESTART_DELAY_S``); its counters stay in the
  totals. A worker that cannot load the model (status 3) stops them all: the supervisor exits
  with status 3, as a single process does.
* Bounds (``max_in_flight``, ``max_connections``, queues, ...) hold per worker.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from service.logs import flush_log_buffers, log_config

if TYPE_CHECKING:
    from service.settings import ServiceSettings

__all__ = ["STARTUP_FAILURE", "exec_supervisor", "listening_socket"]

#: exit status when the model cannot be loaded (uvicorn's own for a failed start-up)
STARTUP_FAILURE = 3
#: seconds between a worker's death and its replacement
RESTART_DELAY_S = 1.0
_POLL_S = 0.1

logger = logging.getLogger("service")


def _bound_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A worker's own listening socket on the shared address (``SO_REUSEPORT``)."""
    sock = _bound_socket(host, port)
    sock.listen(backlog)
    return sock


def exec_supervisor(settings: ServiceSettings, overrides: Mapping[str, Any]) -> None:
    """Replace this process with the lean supervisor of ``settings.workers`` workers; the
    workers get this environment plus ``overrides`` (settings given on the command line) as
    ``MDP_*`` variables."""
    from multidomain.serving import env_name

    flush_log_buffers()
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, **{env_name(key): str(value) for key, value in overrides.items()}}
    os.execve(
        sys.executable,
        [
            sys.executable,
            "-m",
            "service.workers",
            "supervise",
            f"--host={settings.host}",
            f"--port={settings.port}",
            f"--workers={settings.workers}",
            f"--log-level={settings.log_level}",
            f"--log-format={settings.log_format}",
        ],
        env,
    )


class _Supervisor:
    def __init__(self, host: str, port: int, metrics_dir: str) -> None:
        self._env = {
            **os.environ,
            "MDP_HOST": host,
            "MDP_PORT": str(port),
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        }
        self._metrics_dir = metrics_dir
        self.workers: list[subprocess.Popen[bytes]] = []
        self.stopping: int | None = None  # the signal that asked to stop

    def start(self, slot: int | None = None) -> None:
        # a process group of its own: a terminal's Ctrl-C reaches the workers once, from here
        process = subprocess.Popen(
            [sys.executable, "-m", "service.workers"],
            env={**self._env, "MDP_SUPERVISOR_PID": str(os.getpid())},
            process_group=0,
        )
        if slot is None:
            self.workers.append(process)
        else:
            self.workers[slot] = process
        number = len(self.workers) if slot is None else slot + 1
        logger.info("worker %d started (pid %d)", number, process.pid)

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stopping is None:
            self.stopping = sig
        self._signal_live_workers(sig)

    def on_reload(self, sig: int, frame: FrameType | None) -> None:
        """SIGHUP: every live worker checks the store for a new version."""
        self._signal_live_workers(signal.SIGHUP)

    def _signal_live_workers(self, sig: int) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(sig)

    def run(self) -> int:
        """Watch the workers until all have stopped; the exit status."""
        from prometheus_client import multiprocess

        restarts: dict[int, float] = {}  # slot -> when to start it again
        status = 0
        while True:
            now = time.monotonic()
            for slot, worker in enumerate(self.workers):
                code = worker.poll()
                if code is None or slot in restarts:
                    continue
                multiprocess.mark_process_dead(worker.pid, self._metrics_dir)
                if self.stopping is not None:
                    continue
                if code == STARTUP_FAILURE:
                    logger.error("worker pid %d could not load the model: stopping", worker.pid)
                    self.on_signal(signal.SIGTERM, None)
                    status = STARTUP_FAILURE
                    continue
                logger.error(
                    "worker pid %d exited with status %d; starting another in %g s",
                    worker.pid,
                    code,
                    RESTART_DELAY_S,
                )
                restarts[slot] = now + RESTART_DELAY_S
            for slot, when in list(restarts.items()):
                if self.stopping is not None:
                    del restarts[slot]
                elif now >= when:
                    del restarts[slot]
                    self.start(slot)
            if all(worker.poll() is not None for worker in self.workers) and not restarts:
                break
            flush_log_buffers()
            time.sleep(_POLL_S)
        if status == 0:
            codes = [worker.returncode for worker in self.workers]
            failed = [code for code in codes if code not in (0, -signal.SIGTERM, -signal.SIGINT)]
            status = failed[0] if failed else 0
        return status if status >= 0 else 128 - status


def _supervise(host: str, port: int, workers: int) -> None:
    """Run ``workers`` worker processes on one port until a shutdown signal and exit with the
    status described in the module's docstring."""
    try:
        reservation = _bound_socket(host, port)
    except OSError as exc:
        logger.error("cannot bind %s:%d: %s", host, port, exc)
        flush_log_buffers()
        sys.exit(1)
    port = reservation.getsockname()[1]
    status = 0
    with reservation, tempfile.TemporaryDirectory(prefix="mdp-metrics-") as metrics_dir:
        supervisor = _Supervisor(host, port, metrics_dir)
        previous = {
            sig: signal.signal(sig, supervisor.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, supervisor.on_reload)
        try:
            for _ in range(workers):
                supervisor.start()
            logger.info("serving on http://%s:%d with %d worker processes", host, port, workers)
            status = supervisor.run()
        finally:
            for worker in supervisor.workers:  # only after an error of the supervisor itself
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            logger.info("all workers stopped")
            flush_log_buffers()
    sys.exit(status)


def _worker() -> None:
    """One worker: the service on its own ``SO_REUSEPORT`` socket (settings from ``MDP_*``)."""
    from service.server import run
    from service.settings import load_settings

    supervisor = int(os.environ.pop("MDP_SUPERVISOR_PID"))
    settings = load_settings()
    with listening_socket(settings.host, settings.port) as sock:
        run(settings, sockets=[sock], supervisor_pid=supervisor)


def _main() -> None:
    if sys.argv[1:2] != ["supervise"]:
        _worker()
        return
    parser = argparse.ArgumentParser(prog="python -m service.workers supervise")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--log-level", required=True)
    parser.add_argument("--log-format", required=True)
    args = parser.parse_args(sys.argv[2:])
    logging.config.dictConfig(log_config(args.log_level, args.log_format))
    _supervise(args.host, args.port, args.workers)


if __name__ == "__main__":
    _main()
