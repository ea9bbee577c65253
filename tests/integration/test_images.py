"""The trainer and service images, built and run for real (`make images-test`).

Builds both images (classic builder, host network; base image and torch source as on a host
without a registry, see tests/docker_engine.py), trains on the embedded benchmark with few steps
in the trainer image, then serves the result from the service image: read-only root file system,
model store mounted read-only, published port, HEALTHCHECK, non-root user, SIGTERM within the
grace period. The trainer runs under another uid than the service (as a Kubernetes Job and
Deployment may), so the service can read the artifact only if it was published readable. A
second version trained while the service serves under load is rolled out with no failed
request; the docs assets and the Open Inference Protocol are served from the image.

Deselected from the plain test run (pytest's addopts); skipped with the reason only when no
Docker engine can run here.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.docker_engine import (
    BOOTSTRAP_BASE,
    ROOT,
    EngineUnavailable,
    build_image,
    docker,
    docker_engine,
    ensure_base_image,
    host_ca_for_builds,
    torch_build_args,
)
from tests.kustomize import build
from tests.unit.test_kubernetes import find, only_container

pytestmark = pytest.mark.images

#: Tags unique to this run: sessions sharing one engine (and its tags) must not run each
#: other's images. Removed at the end; the build cache stays.
RUN_TAG = f"images-test-{uuid.uuid4().hex[:8]}"
SERVICE_IMAGE = f"multidomain-pruning/service:{RUN_TAG}"
TRAINER_IMAGE = f"multidomain-pruning/trainer:{RUN_TAG}"
SERVICE_UID = "10001"  # USER of docker/service.Dockerfile
TRAINER_UID = 10003  # another uid, as a Kubernetes Job may run under
SHUTDOWN_GRACE_S = 10
TRAIN_ARGS = [
    "--domains", "embedded:digits", "--domains", "embedded:faces",
    "--pretrain-steps", "8", "--steps", "12", "--width-mult", "0.125", "--budget", "0.4",
]  # fmt: skip


def say(message: str) -> None:
    """Progress on the terminal (make images-test runs pytest with -s)."""
    print(f"[images] {message}", flush=True)


class Containers:
    """Names of the containers a test starts; all removed at the end, also on failure."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def name(self, role: str) -> str:
        name = f"mdp-images-test-{role}-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        return name

    def remove_all(self) -> None:
        for name in self.names:
            docker("rm", "--force", "--volumes", name, check=False, timeout=60)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("docker-logs")
    try:
        with docker_engine(logs) as how:
            say(f"engine: {how}")
            yield how
    except EngineUnavailable as exc:
        pytest.skip(f"SKIPPED: no Docker engine can run here: {exc}")


@pytest.fixture(scope="module")
def images(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    work = tmp_path_factory.mktemp("images")
    start = time.monotonic()
    base, how = ensure_base_image(work)
    say(f"base image {base}: {how} ({time.monotonic() - start:.0f} s)")
    build_args: dict[str, str] = {} if base != BOOTSTRAP_BASE else {"BASE_IMAGE": base}
    with torch_build_args(work) as torch_args, host_ca_for_builds() as ca:
        build_args.update(torch_args)
        say(f"build args {build_args}; extra CA for pip: {ca}")
        for dockerfile, tag in (
            ("docker/service.Dockerfile", SERVICE_IMAGE),
            ("docker/trainer.Dockerfile", TRAINER_IMAGE),
        ):
            log = work / f"{Path(dockerfile).stem}-build.log"
            seconds = build_image(str(ROOT / dockerfile), tag, build_args, log)
            size = int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)
            say(f"built {tag} in {seconds:.0f} s: {size / 1e6:.0f} MB")
    try:
        yield {"service": SERVICE_IMAGE, "trainer": TRAINER_IMAGE}
    finally:
        docker("image", "rm", SERVICE_IMAGE, TRAINER_IMAGE, check=False, timeout=120)


@pytest.fixture
def containers() -> Iterator[Containers]:
    started = Containers()
    try:
        yield started
    finally:
        started.remove_all()


def digit_png() -> bytes:
    """A real handwritten digit (scikit-learn's UCI digits), 32x32 grey PNG."""
    from sklearn.datasets import load_digits

    pixels = load_digits().images[0] * (255.0 / 16.0)
    image = Image.fromarray(pixels.astype(np.uint8), mode="L").resize((32, 32))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def run_trainer(containers: Containers, store: Path, *args: str) -> tuple[str, float]:
    """The trainer image as uid TRAINER_UID with a read-only root; returns (output, seconds)."""
    name = containers.name("trainer")
    start = time.monotonic()
    done = docker(
        "run", "--name", name, "--user", f"{TRAINER_UID}:{TRAINER_UID}", "--read-only",
        "--tmpfs", "/tmp", "--tmpfs", f"/work:rw,uid={TRAINER_UID},gid={TRAINER_UID}",
        "--env", "HOME=/work", "--volume", f"{store}:/models",
        TRAINER_IMAGE, *args,
        timeout=900, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"trainer exited {done.returncode}:\n{output[-4000:]}"
    return output, seconds


def state(name: str) -> dict:
    return json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)


def wait_healthy(name: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        current = state(name)
        if current["Status"] != "running":
            logs = docker("logs", name, check=False)
            pytest.fail(f"service exited ({current}):\n{(logs.stdout + logs.stderr)[-4000:]}")
        if current.get("Health", {}).get("Status") == "healthy":
            return time.monotonic() - start
        time.sleep(1)
    logs = docker("logs", name, check=False)
    pytest.fail(f"not healthy after {timeout} s:\n{(logs.stdout + logs.stderr)[-4000:]}")


def test_trained_in_the_trainer_image_served_by_the_service_image(
    images: dict[str, str], containers: Containers, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    os.chown(store, TRAINER_UID, TRAINER_UID)  # a volume the trainer's uid owns

    output, seconds = run_trainer(containers, store, *TRAIN_ARGS, "--model-version", "v1")
    say(f"trainer image trained and exported v1 in {seconds:.0f} s")
    assert "exported /models/default/v1" in output
    artifact = store / "default" / "v1"
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert [d["name"] for d in manifest["domains"]] == ["digits", "faces"]
    assert (artifact.stat().st_uid, artifact.stat().st_mode & 0o777) == (TRAINER_UID, 0o755)

    # compose's trainer: a complete version exists, so nothing is trained
    output, seconds = run_trainer(containers, store, *TRAIN_ARGS, "--if-missing")
    assert "not training (--if-missing)" in output
    assert sorted(p.name for p in (store / "default").iterdir()) == ["v1"]
    say(f"trainer image with --if-missing kept v1 in {seconds:.0f} s")

    name = containers.name("service")
    start = time.monotonic()
    docker(
        "run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp",
        "--volume", f"{store}:/models:ro", "--publish", "127.0.0.1::8000",
        "--env", f"MDP_SHUTDOWN_GRACE_S={SHUTDOWN_GRACE_S}", "--env", "MDP_MODEL_POLL_S=1",
        SERVICE_IMAGE,
    )  # fmt: skip
    healthy_after = wait_healthy(name, timeout=240)
    say(f"service container healthy after {time.monotonic() - start:.0f} s")
    assert healthy_after > 0
    host_port = docker("port", name, "8000/tcp").stdout.split()[0].rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{host_port}"

    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/readyz").status_code == 200
        answer = client.post(
            "/v1/domains/digits/predict",
            content=digit_png(),
            headers={"Content-Type": "image/png"},
            params={"top_k": 3},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["model"], body["version"], body["domain"]) == ("default", "v1", "digits")
        labels = manifest["domains"][0]["labels"]
        predictions = body["predictions"]
        assert len(predictions) == 3
        assert all(p["label"] == labels[p["index"]] for p in predictions)
        probabilities = [p["probability"] for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
        bad = client.post(
            "/v1/domains/digits/predict",
            content=b"not an image",
            headers={"Content-Type": "image/png"},
        )
        assert bad.status_code == 422, bad.text

        def counted() -> dict[tuple[str, str], float]:
            return {
                (sample.labels["domain"], sample.labels["status"]): sample.value
                for family in text_string_to_metric_families(client.get("/metrics").text)
                for sample in family.samples
                if sample.name == "mdp_requests_total"
            }

        # a response is counted as its handler returns, just after the client has it
        deadline = time.monotonic() + 10
        while counted().get(("digits", "422")) != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counted()[("digits", "200")] == 1 and counted()[("digits", "422")] == 1
        # the docs page's assets come from the image (no CDN); the inference protocol answers
        assert len(client.get("/docs/assets/swagger-ui-bundle.js").content) > 100_000
        oip = triton.InferenceServerClient(url.removeprefix("http://"))
        images_input = triton.InferInput("images", [1], "BYTES")
        images_input.set_data_from_numpy(np.array([digit_png()], dtype=np.object_))
        result = oip.infer("digits", [images_input], parameters={"top_k": 3})
        assert result.as_numpy("indices")[0].tolist() == [p["index"] for p in predictions]
        oip.close()

    # a version trained while the service runs is rolled out under load, without a restart
    answers: list[tuple[int, str | None, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                response = client.post(
                    "/v1/domains/digits/predict",
                    content=digit_png(),
                    headers={"Content-Type": "image/png"},
                )
                version = response.json().get("version") if response.status_code == 200 else None
                answers.append(
                    (response.status_code, response.headers.get("x-model-version"), version)
                )
                time.sleep(0.05)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        output, seconds = run_trainer(containers, store, *TRAIN_ARGS, "--model-version", "v2")
        say(f"trainer image exported v2 in {seconds:.0f} s while the service served v1")
        start = time.monotonic()
        while not any(version == "v2" for _, _, version in answers[-5:]):
            assert time.monotonic() - start < 60, "the service did not switch to v2"
            time.sleep(0.2)
        say(f"service switched to v2 {time.monotonic() - start:.1f} s after the export")
        count = len(answers)
        while len(answers) < count + 5:
            time.sleep(0.1)
    finally:
        stop.set()
        loader.join(60)
    assert all(status == 200 for status, _, _ in answers), answers
    assert all(header == version for _, header, version in answers)
    assert {version for _, _, version in answers} == {"v1", "v2"}
    say(f"{len(answers)} requests during the rollout, all 200")

    # non-root, read-only root file system, read-only model store, python as PID 1
    assert docker("exec", name, "id", "-u").stdout.strip() == SERVICE_UID
    assert docker("exec", name, "id", "-g").stdout.strip() == SERVICE_UID
    assert json.loads(
        docker("inspect", "--format", "{{json .HostConfig.ReadonlyRootfs}}", name).stdout
    )
    for path in ("/opt/venv/touched", "/models/touched", "/touched"):
        write = docker("exec", name, "touch", path, check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, path
    assert docker("exec", name, "touch", "/tmp/touched").returncode == 0  # the tmpfs
    pid1 = docker("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert pid1[:3] == ["python", "-m", "service"], pid1
    # the Kubernetes Deployment's preStop command exists in the image
    deployment = find(build(ROOT / "deploy" / "kubernetes" / "base"), "Deployment")
    pre_stop = only_container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert docker("exec", name, *pre_stop[:1], "0").returncode == 0

    # SIGTERM: readiness off, drain, exit 0 well within the grace period
    start = time.monotonic()
    docker("kill", "--signal", "SIGTERM", name)
    docker("wait", name, timeout=SHUTDOWN_GRACE_S + 20)
    stopped_after = time.monotonic() - start
    final = state(name)
    say(f"service stopped {stopped_after:.1f} s after SIGTERM, exit code {final['ExitCode']}")
    assert final["ExitCode"] == 0 and not final["OOMKilled"], final
    assert stopped_after < SHUTDOWN_GRACE_S
    logs = docker("logs", name)
    assert "stopped" in logs.stdout + logs.stderr
