"""A Docker engine for the image tests, and what their builds need on a host without a registry.

``docker_engine()`` uses a running engine, or starts ``dockerd`` (as root) and stops it by pid
afterwards; when no engine can run it raises ``EngineUnavailable`` with the reason.
``ensure_base_image()`` uses the Dockerfiles' registry base image where it is present or can be
pulled, and otherwise bootstraps one from Debian packages (docker/bootstrap_base.sh, cached as an
image between runs). ``torch_build_args()`` serves a local CPU torch wheel to the build as a
package index, so that a build does not download a multi-GB CUDA torch.
"""

from __future__ import annotations

import functools
import glob
import http.server
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGISTRY_BASE = "python:3.11.10-slim-bookworm"  # the Dockerfiles' BASE_IMAGE default
BOOTSTRAP_BASE = "multidomain-pruning/base:bookworm-python3.11"
BUILD_CA_DIR = ROOT / "docker" / "build-ca"
#: A CPU-only torch wheel for the base image's Python (3.11), where one lies on local disk.
LOCAL_TORCH_WHEELS = "/opt/wheels/torch-*+cpu-cp311-cp311-manylinux*_x86_64.whl"
#: Port the local wheel is served on when free (a fixed build argument keeps the layer cache).
TORCH_INDEX_PORT = 47311


class EngineUnavailable(RuntimeError):
    """No Docker engine is running and none can be started here."""


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        )
    return result


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False


@contextmanager
def docker_engine(log_dir: Path, start_timeout: float = 60) -> Iterator[str]:
    """Yield a description of the engine in use; stop dockerd afterwards if it was started here."""
    if engine_answers():
        yield "running engine"
        return
    dockerd = shutil.which("dockerd")
    if shutil.which("docker") is None or dockerd is None:
        raise EngineUnavailable("docker/dockerd are not installed (Debian package docker.io)")
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine is running and starting dockerd needs root")
    log = log_dir / "dockerd.log"
    # --iptables=false: the host's firewall is left alone; published ports go through
    # docker-proxy, and builds use the host network.
    with log.open("wb") as out:
        process = subprocess.Popen(
            [dockerd, "--iptables=false"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + start_timeout
        while not engine_answers():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise EngineUnavailable(f"dockerd did not start (exit {process.poll()}):\n{tail}")
            time.sleep(0.5)
        yield f"dockerd started by the test (pid {process.pid})"
    finally:
        stop_dockerd(process)


def stop_dockerd(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM (dockerd stops its containerd too), SIGKILL to the group if it does not exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


def ensure_base_image(log_dir: Path) -> tuple[str, str]:
    """``(image, how)``: the registry base image if present or pullable, else a bootstrapped one."""
    if image_exists(REGISTRY_BASE):
        return REGISTRY_BASE, "registry image, present"
    pulled = docker("pull", REGISTRY_BASE, timeout=600, check=False)
    if pulled.returncode == 0:
        return REGISTRY_BASE, "registry image, pulled"
    if image_exists(BOOTSTRAP_BASE):
        return BOOTSTRAP_BASE, "bootstrapped from Debian packages (cached image)"
    log = log_dir / "bootstrap_base.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [str(ROOT / "docker" / "bootstrap_base.sh"), BOOTSTRAP_BASE],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(
            f"cannot pull {REGISTRY_BASE} ({pulled.stderr.strip()}) nor bootstrap a base image:\n"
            + log.read_text(errors="replace")[-3000:]
        )
    return BOOTSTRAP_BASE, "bootstrapped from Debian packages (debootstrap, now cached)"


def local_torch_wheel() -> Path | None:
    wheels = sorted(glob.glob(LOCAL_TORCH_WHEELS))
    return Path(wheels[-1]) if wheels else None


@contextmanager
def torch_build_args(tmp_dir: Path) -> Iterator[dict[str, str]]:
    """Build arguments for the torch step: a local CPU wheel served on 127.0.0.1 as a package
    index (no torchvision: there is no CPU build of it beside the wheel), or the Dockerfiles'
    defaults (the PyTorch CPU index, torchvision included) where there is no local wheel."""
    wheel = local_torch_wheel()
    if wheel is None:
        yield {}
        return
    version = re.match(r"torch-([^-]+)-", wheel.name)
    assert version is not None, wheel
    index = tmp_dir / "torch-index"
    (index / "simple" / "torch").mkdir(parents=True, exist_ok=True)
    link = index / "simple" / "torch" / wheel.name
    if not link.exists():
        link.symlink_to(wheel)
    href = wheel.name.replace("+", "%2B")
    (index / "simple" / "torch" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{href}">{wheel.name}</a></body></html>\n'
    )
    handler = functools.partial(_QuietHandler, directory=str(index))
    try:  # the URL is a build argument: the same one next time keeps the builds' layer cache
        server = http.server.ThreadingHTTPServer(("127.0.0.1", TORCH_INDEX_PORT), handler)
    except OSError:  # taken: any free port, at the price of rebuilding from the torch layer on
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "TORCH_INDEX_URL": f"http://127.0.0.1:{server.server_address[1]}/simple",
            "TORCH_VERSION": version[1],
            "TORCHVISION_VERSION": "",
        }
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def host_ca_for_builds() -> Iterator[Path | None]:
    """Put the host's CA bundle into docker/build-ca/ for the builds' pip (a TLS-inspecting
    proxy between the host and PyPI), and remove it afterwards."""
    bundle = os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().cafile
    if not bundle or not Path(bundle).is_file():
        yield None
        return
    target = BUILD_CA_DIR / "host-ca-bundle.crt"
    shutil.copyfile(bundle, target)
    try:
        yield target
    finally:
        target.unlink(missing_ok=True)


def build_image(
    dockerfile: str, tag: str, build_args: dict[str, str], log: Path, timeout: float = 1800
) -> float:
    """``docker build`` with the classic builder on the host network; returns the seconds taken."""
    command = ["docker", "build", "--force-rm", "--network", "host", "-f", dockerfile, "-t", tag]
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    start = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run(
            [*command, str(ROOT)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        text = log.read_text(errors="replace")
        hint = ""
        if "No module named 'torchvision'" in text and build_args.get("TORCHVISION_VERSION") == "":
            hint = (
                "\nThe image is built without torchvision (there is no CPU build of it beside the "
                "local CPU torch wheel, and PyPI's fails to import next to it): the code the image "
                "imports must not need torchvision at run time."
            )
        raise RuntimeError(f"{' '.join(command)} failed:\n{text[-4000:]}{hint}")
    return time.monotonic() - start
