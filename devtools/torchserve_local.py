"""Run a local TorchServe on 127.0.0.1 for tests and benchmarks, and stop it reliably.

``LocalTorchServe`` writes a ``config.properties`` (free ports, token auth off, Prometheus
metrics) into its work dir, starts ``torchserve --foreground`` from the running interpreter's
environment in a new session, and on ``stop`` signals the whole process group (the launcher,
the Java frontend and its Python workers) and waits until none of them is left. Logs, the pid
file, the unpacked models and Java's temp files all go under the work dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

from multidomain.serving import MAX_BODY_BYTES

__all__ = ["QUIET_LOG4J2", "LocalTorchServe", "Ports", "config_properties", "free_port"]

#: log4j2 config for ``quiet_logs``: warnings and errors only, no access log. TorchServe's
#: default logs every request several times (access log, frontend at debug level, console).
QUIET_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <File name="ts_log" fileName="${env:LOG_LOCATION:-logs}/ts_log.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </File>
    <File name="model_log" fileName="${env:LOG_LOCATION:-logs}/model_log.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="MODEL_LOG" level="warn" additivity="false">
      <AppenderRef ref="model_log"/>
    </Logger>
    <Root level="warn">
      <AppenderRef ref="ts_log"/>
    </Root>
  </Loggers>
</Configuration>
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    @classmethod
    def free(cls) -> Ports:
        """Five distinct free ports: TorchServe also opens gRPC ports (7070/7071 unless told
        otherwise), which collide when two instances run on one machine."""
        ports: set[int] = set()
        while len(ports) < 5:
            ports.add(free_port())
        return cls(*sorted(ports))


def config_properties(
    model_store: Path, ports: Ports, workers: int = 1, extra: Mapping[str, str] | None = None
) -> str:
    """A TorchServe ``config.properties`` binding 127.0.0.1 only."""
    props = {
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": f"http://127.0.0.1:{ports.management}",
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_port": str(ports.grpc_management),
        "metrics_mode": "prometheus",
        "disable_token_authorization": "true",
        "default_workers_per_model": str(workers),
        "model_store": str(Path(model_store).resolve()),
        "max_request_size": str(MAX_BODY_BYTES),
        "max_response_size": str(MAX_BODY_BYTES),
        "install_py_dep_per_model": "false",
        **(extra or {}),
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


class LocalTorchServe:
    """``with LocalTorchServe(store, {"tiny": "tiny.mar"}, workdir) as ts: ...``: started and
    ready (every model has a READY worker) inside the block, stopped after it, also on error.
    ``config`` adds or overrides ``config.properties`` entries; ``quiet_logs`` logs warnings and
    errors only (:data:`QUIET_LOG4J2`) instead of TorchServe's per-request logging."""

    def __init__(
        self,
        model_store: Path,
        models: Mapping[str, str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, str] | None = None,
        quiet_logs: bool = False,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.model_store = Path(model_store)
        self.models = dict(models)
        self.workdir = Path(workdir)
        self.env = dict(env or {})
        self.config = dict(config or {})
        self.quiet_logs = quiet_logs
        self.startup_timeout_s = startup_timeout_s
        self.ports = Ports.free()
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.properties"

    def start(self) -> None:
        tmp = self.workdir / "tmp"
        for folder in (self.workdir, self.log_dir, tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            config_properties(self.model_store, self.ports, extra=self.config), encoding="utf-8"
        )
        torchserve = Path(sys.executable).parent / "torchserve"
        command = [
            str(torchserve),
            "--start",
            "--foreground",
            "--ts-config",
            str(self.config_path),
            "--model-store",
            str(self.model_store.resolve()),
            "--disable-token-auth",
            "--ncs",
        ]
        if self.models:
            command += ["--models", *(f"{name}={mar}" for name, mar in self.models.items())]
        if self.quiet_logs:
            log_config = self.workdir / "log4j2.xml"
            log_config.write_text(QUIET_LOG4J2, encoding="utf-8")
            command += ["--log-config", str(log_config)]
        env = {
            **os.environ,
            # pid file (tempfile.gettempdir()), unpacked models and Java temp files (TEMP)
            "TMPDIR": str(tmp),
            "TEMP": str(tmp),
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            **self.env,
        }
        self._output = (self.workdir / "torchserve.out").open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=env,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        """Until every model has a READY worker; ``RuntimeError`` with the log tail otherwise."""
        deadline = time.monotonic() + self.startup_timeout_s
        pending = set(self.models)
        while pending:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited during start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"TorchServe not ready after {self.startup_timeout_s:.0f} s "
                    f"(waiting for {sorted(pending)}):\n{self.log_tail()}"
                )
            for name in list(pending):
                if self._model_ready(name):
                    pending.discard(name)
            if pending:
                time.sleep(0.25)

    def describe(self, name: str) -> dict[str, Any]:
        """The management API's description of a model (batch size, workers, ...)."""
        with urllib.request.urlopen(f"{self.management_url}/models/{name}", timeout=5) as reply:
            described: list[dict[str, Any]] = json.loads(reply.read())
        return described[0]

    def _model_ready(self, name: str) -> bool:
        try:
            workers = self.describe(name).get("workers", [])
        except (OSError, ValueError, urllib.error.URLError, IndexError):
            return False
        return any(worker.get("status") == "READY" for worker in workers)

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.workdir / "torchserve.out", self.log_dir / "model_log.log"):
            if path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()
                parts.append(f"--- {path.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def group_members(self) -> list[psutil.Process]:
        """Live (non-zombie) processes of the process group TorchServe was started in."""
        if self.process is None:
            return []
        members = []
        for proc in psutil.process_iter(["status"]):
            try:
                if (
                    os.getpgid(proc.pid) == self.process.pid
                    and proc.info["status"] != psutil.STATUS_ZOMBIE
                ):
                    members.append(proc)
            except (ProcessLookupError, psutil.Error):
                continue
        return members

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``grace_s``; returns when no
        process of the group is alive. Safe to call twice."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            process.poll()
            if process.returncode is not None and not self.group_members():
                break
            time.sleep(0.2)
        else:
            for member in self.group_members():
                with contextlib.suppress(psutil.Error):
                    member.kill()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            psutil.wait_procs(self.group_members(), timeout=10)
        if self._output is not None:
            self._output.close()
            self._output = None
        self.process = None

    def __enter__(self) -> LocalTorchServe:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
