"""The deployment files (docker/, docker-compose.yml, .dockerignore), checked without a Docker
engine: `docker-compose config` validates the stack, `promtool` the Prometheus config and every
dashboard expression, and the Dockerfiles are linted for their shape (layers, user, health)."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import load_settings
from tests.dashboard import (
    DASHBOARD_PATH,
    SERIES_NAME,
    SERVICE_SERIES,
    UNLABELLED_SERIES,
    dashboard_queries,
    dashboard_targets,
    iter_panels,
    load_dashboard,
    substitute,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SERVICE_DOCKERFILE = DOCKER / "service.Dockerfile"
TRAINER_DOCKERFILE = DOCKER / "trainer.Dockerfile"
DOCKERFILES = [SERVICE_DOCKERFILE, TRAINER_DOCKERFILE]
PACKAGES = (
    "multidomain",
    "training",
    "reporting",
    "service",
    "torchserving",
    "devtools",
    "mdprune",
)
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
EXPECTED_SERVICES = {"trainer", "service", "prometheus", "grafana", "mar-export", "torchserve"}


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed; it ships with the Debian package `{package}` "
            f"(`make system-deps` installs it)",
            pytrace=False,
        )
    return path


def run_tool(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, **kwargs)


# --------------------------------------------------------------------------------------------
# Dockerfiles


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + len("CMD") :]
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        keyword, _, args = " ".join(part for part in buffer if part).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = []
    assert not buffer, f"{path}: dangling line continuation"
    return instructions


def env_pairs(instruction: Instruction) -> list[tuple[str, str | None]]:
    """``(name, value)`` of an ENV or ARG instruction (value None: ARG without default)."""
    if instruction.keyword == "ARG":
        name, sep, value = instruction.args.partition("=")
        return [(name.strip(), value.strip() if sep else None)]
    if "=" not in instruction.args.split(" ", 1)[0]:  # legacy `ENV NAME value`
        name, _, value = instruction.args.partition(" ")
        return [(name, value.strip())]
    return [
        (name, value.strip("\"'"))
        for name, value in re.findall(r"(\w+)=(\"[^\"]*\"|'[^']*'|\S*)", instruction.args)
    ]


def index_of(instructions: list[Instruction], predicate: Any, what: str) -> int:
    for index, instruction in enumerate(instructions):
        if predicate(instruction):
            return index
    raise AssertionError(f"no {what}")


@pytest.fixture(params=DOCKERFILES, ids=lambda path: path.name)
def dockerfile(request: pytest.FixtureRequest) -> list[Instruction]:
    return parse_dockerfile(request.param)


def build_arg_defaults(dockerfile: list[Instruction]) -> dict[str, str | None]:
    return dict(pair for i in dockerfile if i.keyword == "ARG" for pair in env_pairs(i))


def test_base_image_is_pinned_slim_python(dockerfile: list[Instruction]) -> None:
    """Both stages start from BASE_IMAGE, by default a pinned python slim image of the Debian
    release that docker/bootstrap_base.sh bootstraps (and the same Python minor version)."""
    bases = [i.args.split()[0] for i in dockerfile if i.keyword == "FROM"]
    assert bases == ["${BASE_IMAGE}", "${BASE_IMAGE}"], bases
    assert dockerfile[0].keyword == "ARG", "BASE_IMAGE must be declared before the first FROM"
    default = build_arg_defaults(dockerfile)["BASE_IMAGE"]
    assert default is not None
    image, _, tag = default.partition(":")
    match = re.fullmatch(r"(3\.\d+)\.\d+-slim-(\w+)", tag)
    assert image == "python" and match, default
    bootstrap = (DOCKER / "bootstrap_base.sh").read_text(encoding="utf-8")
    assert f"python{match[1]}" in bootstrap and f" {match[2]} " in bootstrap


def test_torch_is_cpu_only_and_pinned(dockerfile: list[Instruction]) -> None:
    runs = [i.args for i in dockerfile if i.keyword == "RUN" and "torch==" in i.args]
    assert len(runs) == 1, "torch installed once, pinned"
    args = build_arg_defaults(dockerfile)
    assert args.get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    assert "--index-url" in runs[0] and "${TORCH_INDEX_URL}" in runs[0]
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"] or ""), args
    # the code does not need torchvision: none unless a version is asked for
    assert args["TORCHVISION_VERSION"] == "", args
    assert "${TORCHVISION_VERSION:+" in runs[0]


def test_torch_step_leaves_torchvision_out_when_empty(dockerfile: list[Instruction]) -> None:
    """The shell expansion of the torch step, run with and without a torchvision version."""
    run = next(i.args for i in dockerfile if i.keyword == "RUN" and "torch==" in i.args)
    line = next(part for part in run.split(";") if "builds=" in part).strip()
    for torchvision, expected in (
        ("0.29.1", "torch==2.14.1 torchvision==0.29.1"),
        ("", "torch==2.14.1"),
    ):
        result = run_tool(
            ["sh", "-c", f'{line}; printf %s "$builds"'],
            env={
                "TORCH_VERSION": "2.14.1",
                "TORCHVISION_VERSION": torchvision,
                "PATH": os.environ["PATH"],
            },
        )
        assert result.stdout == expected, result


def copied_sources(dockerfile: list[Instruction]) -> list[tuple[int, str]]:
    """(instruction index, source) of every COPY from the build context."""
    sources = []
    for index, instruction in enumerate(dockerfile):
        if instruction.keyword == "COPY" and not instruction.args.startswith("--from"):
            sources += [(index, source) for source in instruction.args.split()[:-1]]
    return sources


def test_dependencies_are_installed_before_the_code_is_copied(
    dockerfile: list[Instruction],
) -> None:
    sources = copied_sources(dockerfile)
    code = [index for index, source in sources if source.rstrip("/") in PACKAGES]
    assert code, "the packages are never copied"
    pyproject = index_of(
        dockerfile, lambda i: i.keyword == "COPY" and "pyproject.toml" in i.args, "COPY pyproject"
    )
    deps = index_of(
        dockerfile,
        lambda i: i.keyword == "RUN" and "pip install -r" in i.args and "requirements.py" in i.args,
        "dependency install from pyproject.toml",
    )
    wheel = index_of(
        dockerfile,
        lambda i: i.keyword == "RUN" and "pip wheel --no-deps" in i.args,
        "the project wheel",
    )
    final = [index for index, i in enumerate(dockerfile) if i.keyword == "FROM"][-1]
    install = index_of(
        dockerfile,
        lambda i: i.keyword == "RUN" and "pip install --no-deps --no-index" in i.args,
        "install of the project wheel",
    )
    assert pyproject < deps < min(code) <= max(code) < wheel < final < install
    # everything a COPY needs exists in the build context and is not excluded by .dockerignore
    ignored = dockerignore_patterns()
    for _, source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") not in ignored, f"{source} is in .dockerignore"


def test_final_stage_checks_its_imports(dockerfile: list[Instruction]) -> None:
    """A package missing from the image fails the build, not the first request: the final stage
    imports every copied package."""
    install = next(
        i.args
        for i in dockerfile
        if i.keyword == "RUN" and "pip install --no-deps --no-index" in i.args
    )
    check = install.split('python -c "import ', 1)[1].split('"', 1)[0]
    imported = {module.strip().split(".")[0] for module in check.split(",")}
    copied = {source.rstrip("/") for _, source in copied_sources(dockerfile)} & set(PACKAGES)
    assert copied and copied <= imported, (copied, imported)


def test_build_ca_is_trusted_only_in_the_build_stage(dockerfile: list[Instruction]) -> None:
    final = [index for index, i in enumerate(dockerfile) if i.keyword == "FROM"][-1]
    ca_copies = [i for i, source in copied_sources(dockerfile) if "build-ca" in source]
    assert ca_copies and all(index < final for index in ca_copies)
    env = {name for i in dockerfile[final:] if i.keyword == "ENV" for name, _ in env_pairs(i)}
    assert "PIP_CERT" not in env
    copies_from_build = [i.args for i in dockerfile[final:] if i.keyword == "COPY"]
    assert all(
        args.startswith("--from=build /opt/venv") or args.startswith("--from=build /dist")
        for args in copies_from_build
    ), copies_from_build
    assert (DOCKER / "build-ca" / "README.md").is_file()
    gitignore = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "docker/build-ca/*.crt" in gitignore


def test_requirements_are_read_from_pyproject(dockerfile: list[Instruction]) -> None:
    """Run the image's requirement extraction against the real pyproject.toml."""
    run = next(i.args for i in dockerfile if i.keyword == "RUN" and "requirements.py" in i.args)
    arguments = run.split("requirements.py", 1)[1].split(">", 1)[0].split()
    assert arguments[0] == "/src/pyproject.toml"
    result = run_tool(
        [
            sys.executable,
            str(DOCKER / "requirements.py"),
            str(ROOT / "pyproject.toml"),
            *arguments[1:],
        ]
    )
    assert result.returncode == 0, result.stderr
    requirements = result.stdout.split()
    names = {re.split(r"[<>=;!~ ]", r)[0] for r in requirements}
    assert "safetensors" in names
    assert not names & {"torch", "torchvision"}, "installed from TORCH_INDEX_URL, not PyPI"
    if "fastapi" in names:
        assert arguments[1:] == ["service"]
    else:
        assert arguments[1] == "training" and "torch-model-archiver" in names


def test_requirements_script_refuses_unknown_extras(tmp_path: Path) -> None:
    script = str(DOCKER / "requirements.py")
    pyproject = str(ROOT / "pyproject.toml")
    for arguments in (["nope"], ["torchserve:nope"]):
        result = run_tool([sys.executable, script, pyproject, *arguments])
        assert result.returncode == 2 and result.stderr.startswith("error: "), result


def test_runs_as_non_root_user(dockerfile: list[Instruction]) -> None:
    entry = index_of(dockerfile, lambda i: i.keyword == "ENTRYPOINT", "ENTRYPOINT")
    users = [(index, i.args) for index, i in enumerate(dockerfile) if i.keyword == "USER"]
    assert users, "no USER: the container would run as root"
    index, user = users[-1]
    assert index < entry, "USER must come before the entry point"
    name = user.split(":")[0]
    assert name not in {"root", "0"}, user
    group = user.split(":")[1] if ":" in user else ""
    assert group not in {"root", "0"}, user
    # nothing is installed after switching user (it would need root)
    assert not any(
        "pip install" in i.args or "apt-get" in i.args
        for i in dockerfile[index:]
        if i.keyword == "RUN"
    )


def test_no_secrets_in_env_or_args(dockerfile: list[Instruction]) -> None:
    for instruction in dockerfile:
        if instruction.keyword not in {"ENV", "ARG"}:
            continue
        for name, value in env_pairs(instruction):
            if SECRET_NAME.search(name):
                assert not value, f"line {instruction.line}: {name} has a literal value"


def test_secret_check_catches_literal_values() -> None:
    """The parser the secret check relies on sees every form of ENV/ARG."""
    assert env_pairs(Instruction("ENV", 'A=1 API_KEY="abc" B=2', 1)) == [
        ("A", "1"),
        ("API_KEY", "abc"),
        ("B", "2"),
    ]
    assert env_pairs(Instruction("ENV", "DB_PASSWORD hunter2", 1)) == [("DB_PASSWORD", "hunter2")]
    assert env_pairs(Instruction("ARG", "HF_TOKEN", 1)) == [("HF_TOKEN", None)]
    assert env_pairs(Instruction("ARG", "HF_TOKEN=x", 1)) == [("HF_TOKEN", "x")]


def test_service_image_shape() -> None:
    instructions = parse_dockerfile(SERVICE_DOCKERFILE)
    (entry,) = [i for i in instructions if i.keyword == "ENTRYPOINT"]
    assert entry.exec_form() == ["python", "-m", "service"]
    assert not any(i.keyword == "CMD" for i in instructions), "settings come from MDP_* env"
    assert any(i.keyword == "EXPOSE" and i.args.split() == ["8000"] for i in instructions)
    env = dict(pair for i in instructions if i.keyword == "ENV" for pair in env_pairs(i))
    assert env["MDP_MODEL_STORE"] == "/models"
    assert env["MDP_HOST"] == "0.0.0.0"
    assert env["MDP_PORT"] == "8000"
    (health,) = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    assert "/readyz" in " ".join(health.exec_form())
    # only what serving needs: the service never imports these
    copied = {source.rstrip("/") for _, source in copied_sources(instructions)}
    assert copied & set(PACKAGES) == {"multidomain", "service", "mdprune"}, copied


def test_trainer_entry_point_matches_the_cli() -> None:
    """Every option of the trainer's entry point is an option of `mdprune pipeline`."""
    import typer.main

    from mdprune.cli import app

    instructions = parse_dockerfile(TRAINER_DOCKERFILE)
    (entry,) = [i for i in instructions if i.keyword == "ENTRYPOINT"]
    argv = entry.exec_form()
    assert argv[:2] == ["mdprune", "pipeline"]
    assert argv[2:] == ["--model-store", "/models", "--model-name", "default", "--no-serve"]
    group = typer.main.get_command(app)
    pipeline = group.commands["pipeline"]  # type: ignore[attr-defined]
    known = {opt for param in pipeline.params for opt in (*param.opts, *param.secondary_opts)}
    for arg in argv[2:]:
        if arg.startswith("--"):
            assert arg in known, f"`mdprune pipeline` has no option {arg}"
    # the trainer's working directory (data cache, backbone run) is writable by its user
    workdirs = [i.args for i in instructions if i.keyword == "WORKDIR"]
    assert workdirs[-1] == "/work"
    chowns = " ".join(i.args for i in instructions if i.keyword == "RUN" and "chown" in i.args)
    assert "/work" in chowns and "/models" in chowns


def test_trainer_image_packages() -> None:
    """Training, reports and the TorchServe export (compose's `mar-export` runs
    `mdprune torchserve-export` in this image); neither the service nor the test tooling."""
    copied = {
        source.rstrip("/") for _, source in copied_sources(parse_dockerfile(TRAINER_DOCKERFILE))
    }
    assert copied & set(PACKAGES) == {
        "multidomain",
        "training",
        "reporting",
        "torchserving",
        "mdprune",
    }
    services = compose_config()["services"]
    assert services["mar-export"]["image"] == services["trainer"]["image"]
    assert services["mar-export"]["entrypoint"][:2] == ["mdprune", "torchserve-export"]


def dockerignore_patterns() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for heavy in (".git", ".venv", "data_cache", "runs", "model_store"):
        assert heavy in patterns, heavy


# --------------------------------------------------------------------------------------------
# Health checks: run the real command against a local HTTP server


class _ReadyHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[tuple[int, type[_ReadyHandler]]]:
    handler = type("Handler", (_ReadyHandler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def service_healthchecks() -> list[tuple[str, list[str]]]:
    (health,) = [i for i in parse_dockerfile(SERVICE_DOCKERFILE) if i.keyword == "HEALTHCHECK"]
    test = compose_config()["services"]["service"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [("Dockerfile", health.exec_form()), ("compose", test[1:])]


def test_healthcheck_passes_only_when_ready(
    readyz_server: tuple[int, type[_ReadyHandler]],
) -> None:
    port, handler = readyz_server
    env = {**os.environ, "MDP_PORT": str(port)}
    for where, argv in service_healthchecks():
        assert argv[0] == "python", where
        command = [sys.executable, *argv[1:]]
        handler.status = 200
        assert run_tool(command, env=env).returncode == 0, f"{where}: ready but unhealthy"
        handler.status = 503
        assert run_tool(command, env=env).returncode != 0, f"{where}: 503 but healthy"
    # nothing listening
    with_closed_port = {**os.environ, "MDP_PORT": "1"}
    for where, argv in service_healthchecks():
        result = run_tool([sys.executable, *argv[1:]], env=with_closed_port)
        assert result.returncode != 0, f"{where}: no server but healthy"


# --------------------------------------------------------------------------------------------
# docker-compose.yml


_COMPOSE_CACHE: dict[str, Any] = {}


#: What a user puts into .env (see .env.example), with stand-in values.
TEST_ENV_FILE = "GRAFANA_ADMIN_PASSWORD=stand-in-password\nMDP_API_KEYS=\n"


def run_compose_config(env_file: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with ``env_file`` as the .env file."""
    binary = require_tool("docker-compose", "docker-compose")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COMPOSE_") and k not in ("GRAFANA_ADMIN_PASSWORD", "MDP_API_KEYS")
    }
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "env"
        path.write_text(env_file)
        return run_tool(
            [binary, "--file", "docker-compose.yml", "--env-file", str(path), "config"],
            cwd=ROOT,
            env=env,
        )


def compose_config() -> dict[str, Any]:
    """`docker-compose config` output (the resolved, validated file), run once per session."""
    if "config" not in _COMPOSE_CACHE:
        result = run_compose_config(TEST_ENV_FILE)
        assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
        _COMPOSE_CACHE["config"] = yaml.safe_load(result.stdout)
    config: dict[str, Any] = _COMPOSE_CACHE["config"]
    return config


def test_compose_config_is_valid() -> None:
    config = compose_config()
    assert set(config["services"]) == EXPECTED_SERVICES
    assert {"models", "data-cache", "backbone-runs", "prometheus-data", "grafana-data"} <= set(
        config["volumes"]
    )


def test_compose_images_are_pinned_and_ports_local() -> None:
    for name, service in compose_config()["services"].items():
        image = service["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and tag and tag != "latest", f"{name}: unpinned image {image}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not bound to 127.0.0.1"


def test_compose_secrets_come_from_the_uncommitted_env_file() -> None:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    secrets = {}
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):  # never a literal: a variable of .env
                assert re.fullmatch(r"\$\{\w+(:?[-?][^}]*)?\}", str(value)), f"{name}: {key}"
                secrets[key] = value
    assert "GRAFANA_ADMIN_PASSWORD" in secrets["GF_SECURITY_ADMIN_PASSWORD"]
    assert "MDP_API_KEYS" in secrets["MDP_API_KEYS"]
    resolved = compose_config()["services"]
    assert resolved["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "stand-in-password"
    # without a password compose refuses to start, naming what to do
    refused = run_compose_config("MDP_API_KEYS=\n")
    assert refused.returncode != 0 and "set GRAFANA_ADMIN_PASSWORD in .env" in refused.stderr
    # .env is never committed nor sent to a Docker build; the template is committed
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in dockerignore_patterns()
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", example, re.MULTILINE)
    assert re.search(r"^MDP_API_KEYS=$", example, re.MULTILINE)


def test_compose_trainer_then_read_only_service() -> None:
    services = compose_config()["services"]
    trainer, service = services["trainer"], services["service"]
    assert trainer["build"]["dockerfile"] == "docker/trainer.Dockerfile"
    assert trainer["volumes"] == [
        "models:/models:rw",
        "data-cache:/work/data_cache:rw",
        "backbone-runs:/work/runs:rw",
    ]
    assert trainer["command"] == ["--if-missing"], "`up` must not train again"
    assert trainer["restart"] == "no"
    # fresh named volumes take the owner of the image's folders: the trainer's user
    chowns = " ".join(
        i.args
        for i in parse_dockerfile(TRAINER_DOCKERFILE)
        if i.keyword == "RUN" and "chown" in i.args
    )
    for volume in trainer["volumes"]:
        assert volume.split(":")[1] in chowns, volume
    assert service["build"]["dockerfile"] == "docker/service.Dockerfile"
    assert service["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert service["volumes"] == ["models:/models:ro"]
    assert service["ports"] == ["127.0.0.1:8000:8000/tcp"]
    assert service["environment"]["MDP_MODEL_STORE"] == "/models"
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert "profiles" not in service and "profiles" not in trainer


def host_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("/"):
            mounts[target] = Path(source)
    return mounts


def test_compose_monitoring_and_torchserve_mounts() -> None:
    services = compose_config()["services"]
    prometheus = host_mounts(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == DOCKER / "prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana = host_mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == DOCKER / "grafana" / "provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == DASHBOARD_PATH.parent
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    torchserve = services["torchserve"]
    assert torchserve["profiles"] == ["torchserve"]
    config_file = host_mounts(torchserve)["/home/model-server/config.properties"]
    assert config_file == DOCKER / "torchserve" / "config.properties"
    assert "models:/models:ro" in torchserve["volumes"]
    for service in services.values():
        for path in host_mounts(service).values():
            assert path.exists(), path


def test_torchserve_config() -> None:
    lines = (DOCKER / "torchserve" / "config.properties").read_text(encoding="utf-8").splitlines()
    props = dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    assert props["metrics_mode"] == "prometheus"
    assert props["model_store"] == "/models"
    assert props["inference_address"].endswith(":8080")
    assert props["metrics_address"].endswith(":8082")
    # the management API: inside the container only, and never published
    assert props["management_address"] == "http://127.0.0.1:8081"
    ports = compose_config()["services"]["torchserve"]["ports"]
    assert not [port for port in ports if "8081" in str(port)]


# --------------------------------------------------------------------------------------------
# Prometheus and Grafana provisioning


def test_prometheus_config_is_valid_and_scrapes_the_service() -> None:
    promtool = require_tool("promtool", "prometheus")
    path = DOCKER / "prometheus.yml"
    result = run_tool([promtool, "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["multidomain-service"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == ["service:8000"]  # compose service name and port
    assert job["scrape_interval"] == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_provisioning_matches_the_dashboard() -> None:
    provisioning = DOCKER / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "multidomain.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = load_dashboard()
    uids = {panel["datasource"]["uid"] for panel in iter_panels(dashboard["panels"])} | {
        target["datasource"]["uid"]
        for p in iter_panels(dashboard["panels"])
        for target in p["targets"]
    }
    assert uids == {source["uid"]}


# --------------------------------------------------------------------------------------------
# The dashboard


def test_dashboard_domain_variable() -> None:
    dashboard = load_dashboard()
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "domain"]
    assert variable["type"] == "query"
    assert variable["definition"] == "label_values(mdp_requests_total, domain)"
    assert variable["multi"] is True and variable["includeAll"] is True
    assert variable["allValue"] == ".*"


def test_every_panel_has_a_query() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"]
    panels = list(iter_panels(dashboard["panels"]))
    assert len(panels) >= 8
    titles = [panel["title"] for panel in panels]
    assert len(set(titles)) == len(titles), "duplicate panel titles"
    for panel in panels:
        exprs = [t.get("expr", "").strip() for t in panel.get("targets", [])]
        assert exprs and all(exprs), f"panel {panel['title']!r} has a target without a query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in iter_panels(load_dashboard()["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_dashboard_queries_substitute_every_variable() -> None:
    queries = dashboard_queries()
    assert len(queries) == len(dashboard_targets())
    for query in queries:
        assert "$" not in query and "[[" not in query, query
    assert substitute('x{domain=~"$domain"}[$__rate_interval]') == 'x{domain=~".*"}[30s]'
    assert substitute("x[${__interval}]") == "x[30s]"
    with pytest.raises(KeyError, match="nope"):
        substitute("x{a=~'$nope'}")


def test_dashboard_queries_use_known_series_and_the_domain_filter() -> None:
    for query in dashboard_targets():
        names = set(SERIES_NAME.findall(query.raw))
        assert names, f"{query.panel}: no service metric"
        unknown = names - SERVICE_SERIES
        assert not unknown, f"{query.panel}: unknown series {sorted(unknown)}"
        for selector in re.findall(rf"({SERIES_NAME.pattern})(\{{[^}}]*\}})?", query.raw):
            name, labels = selector
            if name not in UNLABELLED_SERIES:
                assert 'domain=~"$domain"' in labels, f"{query.panel}: {name} not filtered"
        ranges = re.findall(r"\[([^\]]+)\]", query.raw)
        assert all(r == "$__rate_interval" for r in ranges), f"{query.panel}: {ranges}"


def test_dashboard_covers_the_required_views() -> None:
    raw = [query.raw for query in dashboard_targets()]

    def has(*fragments: str) -> bool:
        return any(all(fragment in expr for fragment in fragments) for expr in raw)

    latency = "mdp_request_latency_seconds_bucket"
    for quantile in ("0.5", "0.95", "0.99"):
        assert has(f"histogram_quantile({quantile}, sum by (le, domain)", latency)
    assert has("sum by (domain)", "rate(mdp_requests_total")
    assert has("histogram_quantile(0.95", "mdp_queue_wait_seconds_bucket")
    assert has("histogram_quantile(0.95", "mdp_batch_compute_seconds_bucket")
    assert has("mdp_batch_size_sum", "/", "mdp_batch_size_count")
    assert has("mdp_queue_depth")
    # only the reasons that occur are drawn, not every domain x reason series from start-up
    assert has("sum by (domain, reason)", "mdp_rejections_total", ") > 0")
    # client and server errors apart, per domain too
    for status_class in ("4xx", "5xx"):
        assert has(f'class="{status_class}"', "mdp_requests_total", "sum by (domain)")
        assert has(f'class="{status_class}"', "mdp_requests_total", "sum(rate(")
    assert not has('status!~"2.."')
    assert has("mdp_in_flight_requests") and has("mdp_preprocess_pending_images")
    for series in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ):
        assert has(series)
    assert has("mdp_model_info")


def test_dashboard_series_exist_in_the_service_registry() -> None:
    """The series the dashboard reads are the ones the service exposes."""
    from prometheus_client.metrics_core import Metric

    from service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    exposed: set[str] = set()
    family: Metric
    for family in metrics.registry.collect():
        if family.type == "counter":
            exposed.add(f"{family.name}_total")
        elif family.type == "histogram":
            exposed.update(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count"))
        else:
            exposed.add(family.name)
    assert exposed >= SERVICE_SERIES, sorted(SERVICE_SERIES - exposed)


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression as the body of a recording rule."""
    promtool = require_tool("promtool", "prometheus")
    queries = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}:value", "expr": expr}
                    for index, expr in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    result = run_tool([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_promql_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The check above does fail on invalid PromQL."""
    promtool = require_tool("promtool", "prometheus")
    path = tmp_path / "broken.yml"
    broken = 'histogram_quantile(0.5, sum by (le (rate(x{domain=~".*"}[30s])))'
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r:x", "expr": broken}]}]})
    )
    assert run_tool([promtool, "check", "rules", str(path)]).returncode != 0


def test_torchserve_image_is_pinned_non_root_and_healthchecked() -> None:
    lines = [
        line.strip()
        for line in (DOCKER / "torchserve.Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM pytorch/torchserve:0.12.0-cpu"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert any(line.startswith("HEALTHCHECK") for line in lines)


def test_compose_service_settings_are_valid_and_pick_up_new_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service's environment is valid settings, and a version the trainer exports later is
    rolled out by the running service (it watches ``latest``), with no restart."""
    env = {k: str(v) for k, v in compose_config()["services"]["service"]["environment"].items()}
    for name in [n for n in os.environ if n.startswith("MDP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(api_keys=[])
    assert settings.model_version == "latest" and settings.model_poll_s > 0
