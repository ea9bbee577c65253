"""deploy/kubernetes, checked offline: every overlay rendered (tests/kustomize.py, cross-checked
against a real kustomize where one is installed), validated against pinned Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail), and read against what it deploys: the
service's settings and routes (ports, probe paths, settings variables), the images (user, entry
point), the Prometheus Adapter rules and the service's metrics."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from service.routes import router
from service.settings import ServiceSettings, load_settings
from tests.kustomize import (
    KustomizeError,
    Resource,
    build,
    resource_id,
    strategic_merge,
)
from tests.unit.test_deploy_files import (
    SERVICE_DOCKERFILE,
    TRAINER_DOCKERFILE,
    compose_config,
    parse_dockerfile,
    require_tool,
    run_tool,
)

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
#: kubernetes-validate's version is pinned in pyproject.toml (dev extra); these are the
#: Kubernetes API versions the manifests must be valid for (oldest and newest supported).
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
OVERLAYS = ("base", "overlays/production", "overlays/production-prometheus")
NAMESPACE = "multidomain"
SERVICE_IMAGE = "multidomain-pruning/service"
TRAINER_IMAGE = "multidomain-pruning/trainer"
ADAPTER_VALUES = KUBERNETES / "components" / "hpa-request-rate" / "prometheus-adapter-values.yaml"

_RENDERED: dict[str, list[Resource]] = {}


def rendered(overlay: str) -> list[Resource]:
    if overlay not in _RENDERED:
        _RENDERED[overlay] = build(KUBERNETES / overlay)
    return copy.deepcopy(_RENDERED[overlay])


def find(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    matches = [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def pod_spec(resource: Resource) -> dict[str, Any]:
    spec: dict[str, Any] = resource["spec"]["template"]["spec"]
    return spec


def only_container(resource: Resource) -> dict[str, Any]:
    (container,) = pod_spec(resource)["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env: {names}"
    return {e["name"]: e["value"] for e in container.get("env", [])}


def service_get_routes() -> set[str]:
    """The paths the service answers GET on (its router: probes, metrics, the API)."""
    return {
        route.path
        for route in router.routes
        if "GET" in getattr(route, "methods", set()) and hasattr(route, "path")
    }


def image_user(dockerfile: Path) -> int:
    users = [i.args for i in parse_dockerfile(dockerfile) if i.keyword == "USER"]
    return int(users[-1].split(":")[0])


# --------------------------------------------------------------------------------------------
# Rendering and schema validation


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_validate_against_the_pinned_schema(overlay: str, version: str) -> None:
    custom = []
    for resource in rendered(overlay):
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except SchemaNotFoundError:
            custom.append(resource)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {resource_id(resource)} invalid for {version}: {exc}")
    # custom resources (no schema in Kubernetes itself) are checked in test_service_monitor
    assert {r["kind"] for r in custom} <= {"ServiceMonitor"}, custom


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["startupProbe", "httpGet", "paht"], "/readyz", "Additional properties"),
        (["ports", 0, "containerPort"], "8000", "is not of type 'integer'"),
        (["securityContext", "readOnlyRootFileSystem"], True, "Additional properties"),
    ],
)
def test_schema_validation_catches_mistakes(path: list[Any], value: Any, message: str) -> None:
    deployment = find(rendered("base"), "Deployment")
    node = only_container(deployment)
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError, match=re.escape(message)):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------------------------
# The service Deployment against the service itself


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports_match_the_service(overlay: str) -> None:
    resources = rendered(overlay)
    deployment = find(resources, "Deployment", "multidomain-service")
    container = only_container(deployment)
    defaults = ServiceSettings()
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", defaults.port)
    assert env_of(container)["MDP_PORT"] == str(defaults.port)

    get_routes = service_get_routes()
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/livez"
    for kind, probe in probes.items():
        assert probe["path"] in get_routes, f"{kind}: the service serves no GET {probe['path']}"
        assert probe["port"] == port["name"], kind
    # the model load may take minutes; readiness reacts within seconds once started
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 15

    service = find(resources, "Service", "multidomain-service")
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    assert service_port["name"] == "http"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(defaults.port)
    assert annotations["prometheus.io/path"] in get_routes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_env_is_valid_settings(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    container = only_container(find(rendered(overlay), "Deployment", "multidomain-service"))
    env = env_of(container)
    known = {f"MDP_{name.upper()}" for name in ServiceSettings.model_fields}
    unknown = sorted(set(env) - known)
    assert not unknown, f"not service settings: {unknown}"
    for name in [n for n in os.environ if n.startswith("MDP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()  # raises SettingsError on any invalid value
    assert settings.host == "0.0.0.0"
    # a version the Job exports reaches running replicas through the store, no restart
    assert settings.model_version == "latest" and settings.model_poll_s > 0
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert str(settings.model_store) == mounts["model-store"]["mountPath"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_fits_the_grace_period(overlay: str) -> None:
    deployment = find(rendered(overlay), "Deployment", "multidomain-service")
    container = only_container(deployment)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop = float(command[1])
    assert pre_stop >= 3, "endpoint removal needs a few seconds to reach every proxy"
    env = env_of(container)
    grace = float(env.get("MDP_SHUTDOWN_GRACE_S", ServiceSettings().shutdown_grace_s))
    drain = sum(float(v) for k, v in env.items() if "DRAIN" in k)  # readiness-off delay, if any
    total = pre_stop + drain + grace
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > total + 5


# --------------------------------------------------------------------------------------------
# Security, volumes and resources of every pod


def pods(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if r["kind"] in {"Deployment", "Job"}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_non_root_read_only_and_without_privileges(overlay: str) -> None:
    users = {"Deployment": image_user(SERVICE_DOCKERFILE), "Job": image_user(TRAINER_DOCKERFILE)}
    workloads = pods(rendered(overlay))
    assert {w["kind"] for w in workloads} == {"Deployment", "Job"}
    for workload in workloads:
        spec = pod_spec(workload)
        where = workload["metadata"]["name"]
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, where
        assert pod_security["runAsUser"] == users[workload["kind"]] != 0, where
        assert pod_security["runAsGroup"] != 0, where
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, f"{where}: <SERVICE>_* variables injected"
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            resources = container["resources"]
            for key in ("cpu", "memory"):
                assert key in resources["requests"], f"{where}: no {key} request"
            assert "memory" in resources["limits"], f"{where}: no memory limit"
            volumes = {v["name"]: v for v in spec["volumes"]}
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]["name"]], f"{where}: /tmp not writable"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_store_written_by_the_job_and_read_only_in_the_service(overlay: str) -> None:
    resources = rendered(overlay)
    claim = find(resources, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]

    def store_volume(workload: Resource) -> tuple[dict[str, Any], dict[str, Any]]:
        container = only_container(workload)
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
        (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
        return mount, volume

    mount, volume = store_volume(find(resources, "Deployment", "multidomain-service"))
    assert mount["readOnly"] is True
    assert volume["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"],
        "readOnly": True,
    }
    job = find(resources, "Job", "multidomain-train")
    mount, volume = store_volume(job)
    assert not mount.get("readOnly", False)
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert not volume["persistentVolumeClaim"].get("readOnly", False)
    # the trainer image exports into /models; the Job's arguments are pipeline options
    (entry,) = [i for i in parse_dockerfile(TRAINER_DOCKERFILE) if i.keyword == "ENTRYPOINT"]
    argv = entry.exec_form()
    assert argv[argv.index("--model-store") + 1] == "/models"
    assert pod_spec(job)["restartPolicy"] == "Never"
    import typer.main

    from mdprune.cli import app

    pipeline = typer.main.get_command(app).commands["pipeline"]  # type: ignore[attr-defined]
    known = {opt for param in pipeline.params for opt in (*param.opts, *param.secondary_opts)}
    for arg in only_container(job).get("args", []):
        if arg.startswith("--"):
            assert arg in known, f"`mdprune pipeline` has no option {arg}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_targets_agree(overlay: str) -> None:
    resources = rendered(overlay)
    deployment = find(resources, "Deployment", "multidomain-service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    service = find(resources, "Service", "multidomain-service")
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = find(resources, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (spread,) = pod_spec(deployment)["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    hpa = find(resources, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "a rollout must not reduce serving capacity"
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_images_are_the_ones_compose_builds() -> None:
    services = compose_config()["services"]
    resources = rendered("base")
    deployment = find(resources, "Deployment", "multidomain-service")
    job = find(resources, "Job", "multidomain-train")
    assert only_container(deployment)["image"] == services["service"]["image"]
    assert only_container(job)["image"] == services["trainer"]["image"]


# --------------------------------------------------------------------------------------------
# Overlays and components


def test_production_overlay() -> None:
    base = rendered("base")
    production = rendered("overlays/production")
    assert {resource_id(r) for r in production} == {resource_id(r) for r in base} | {
        ("", "Namespace", NAMESPACE)
    }
    namespace = find(production, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for resource in production:
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == NAMESPACE, resource_id(resource)
    deployment = find(production, "Deployment")
    job = find(production, "Job")
    for workload, image in ((deployment, SERVICE_IMAGE), (job, TRAINER_IMAGE)):
        reference = only_container(workload)["image"]
        assert reference.startswith(f"registry.example.com/{image}:"), reference
    env = env_of(only_container(deployment))
    base_env = env_of(only_container(find(base, "Deployment")))
    assert env["MDP_LOG_LEVEL"] == "warning" and base_env["MDP_LOG_LEVEL"] == "info"
    assert set(base_env) < set(env), "the env patch must merge, not replace"
    hpa, base_hpa = (
        find(production, "HorizontalPodAutoscaler"),
        find(base, "HorizontalPodAutoscaler"),
    )
    assert hpa["spec"]["maxReplicas"] > base_hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"] == base_hpa["spec"]["metrics"]


def test_service_monitor_scrapes_the_service() -> None:
    resources = rendered("overlays/production-prometheus")
    monitor = find(resources, "ServiceMonitor")
    service = find(resources, "Service", "multidomain-service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"] == NAMESPACE
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    routes = service_get_routes()
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}, endpoint
        assert endpoint["port"] in port_names
        assert endpoint["path"] in routes
        assert _seconds(endpoint["scrapeTimeout"]) < _seconds(endpoint["interval"])


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match[1])


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))
    rules: list[dict[str, Any]] = values["rules"]["custom"]
    return rules


def test_custom_metric_hpa_reads_what_the_prometheus_adapter_exposes() -> None:
    from service.metrics import ServiceMetrics

    hpa = find(rendered("overlays/production-prometheus"), "HorizontalPodAutoscaler")
    metrics = hpa["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Pods"}, "the CPU metric is replaced"
    wanted = {m["pods"]["metric"]["name"] for m in metrics}
    exposed = {rule["name"]["as"] for rule in adapter_rules()}
    assert wanted == exposed
    families = {family.name for family in ServiceMetrics().registry.collect()}
    for rule in adapter_rules():
        series = re.match(r"(\w+)\{", rule["seriesQuery"])
        assert series, rule["seriesQuery"]
        name = series[1]
        assert re.fullmatch(rule["name"]["matches"].strip("^$"), name)
        assert name.removesuffix("_total") in families, f"the service exposes no {name}"
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_prometheus_adapter_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "prometheus")
    expressions = []
    for rule in adapter_rules():
        query = rule["metricsQuery"]
        for placeholder, value in (
            ("<<.Series>>", re.match(r"(\w+)", rule["seriesQuery"])[1]),  # type: ignore[index]
            ("<<.LabelMatchers>>", 'namespace="multidomain",pod=~"multidomain-service-.*"'),
            ("<<.GroupBy>>", "pod"),
        ):
            query = query.replace(placeholder, value)
        assert "<<" not in query, query
        expressions.append(query)
    path = tmp_path / "adapter-rules.yml"
    rules = [{"record": f"adapter:q{i}", "expr": e} for i, e in enumerate(expressions)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    result = run_tool([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# The renderer itself


def real_kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        probe = subprocess.run(
            ["kubectl", "kustomize", "--help"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_agrees_with_real_kustomize(overlay: str) -> None:
    command = real_kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: renderer not cross-checked")
    done = subprocess.run(
        [*command, str(KUBERNETES / overlay)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    real = {resource_id(r): r for r in yaml.safe_load_all(done.stdout) if r}
    ours = {resource_id(r): r for r in rendered(overlay)}
    assert ours.keys() == real.keys()
    for key, resource in ours.items():
        assert resource == real[key], key


def test_strategic_merge() -> None:
    original = {
        "a": 1,
        "b": {"c": 2, "d": 3},
        "containers": [{"name": "x", "env": [{"name": "A", "value": "1"}], "args": ["p", "q"]}],
        "metrics": [{"type": "Resource"}],
    }
    patch = {
        "a": None,
        "b": {"c": 5},
        "containers": [{"name": "x", "env": [{"name": "B", "value": "2"}], "args": ["r"]}],
        "metrics": [{"type": "Pods"}],
    }
    assert strategic_merge(original, patch) == {
        "b": {"c": 5, "d": 3},
        "containers": [
            {"name": "x", "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}],
             "args": ["r"]}
        ],
        "metrics": [{"type": "Pods"}],
    }  # fmt: skip
    with pytest.raises(KustomizeError, match="directives"):
        strategic_merge(original, {"containers": [{"name": "x", "$patch": "delete"}]})


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\ncommonLabels: {team: ml}\n", encoding="utf-8"
    )
    with pytest.raises(KustomizeError, match="commonLabels"):
        build(tmp_path)
