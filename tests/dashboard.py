"""The Grafana dashboard's PromQL, ready to send to a real Prometheus.

Shared by the unit test of the deployment files (syntax, metric names) and the integration test
that runs every expression against a Prometheus which scraped a real service under load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = REPO_ROOT / "docker" / "grafana" / "dashboards" / "multidomain.json"

#: What Grafana's variables become when a query is run outside Grafana: every domain (the
#: dashboard's "All" value is the regex ``.*``) and a range that holds several 5 s scrapes.
SUBSTITUTIONS: dict[str, str] = {
    "domain": ".*",
    "__rate_interval": "30s",
    "__interval": "30s",
}

#: Every series name the service exposes (histograms as their _bucket/_sum/_count series).
SERVICE_SERIES: frozenset[str] = frozenset(
    [
        f"{histogram}{suffix}"
        for histogram in (
            "mdp_request_latency_seconds",
            "mdp_queue_wait_seconds",
            "mdp_preprocess_seconds",
            "mdp_batch_compute_seconds",
            "mdp_batch_size",
        )
        for suffix in ("_bucket", "_sum", "_count")
    ]
    + [
        "mdp_queue_depth",
        "mdp_in_flight_requests",
        "mdp_preprocess_pending_images",
        "mdp_open_connections",
        "mdp_requests_total",
        "mdp_rejections_total",
        "mdp_model_info",
        "mdp_level_images_total",
        "mdp_degradation_level",
    ]
    # prometheus_client's process collector, on the service's registry
    + ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"]
)
#: Series without a ``domain`` label: the dashboard's domain filter does not apply to them.
UNLABELLED_SERIES: frozenset[str] = frozenset(
    name
    for name in SERVICE_SERIES
    if name.startswith("process_")
    or name
    in {
        "mdp_model_info",
        "mdp_preprocess_pending_images",
        "mdp_open_connections",
        "mdp_degradation_level",
    }
)
#: A series name of the service in a PromQL expression.
SERIES_NAME = re.compile(r"\b(?:mdp|process)_\w+")

# $name, ${name}, ${name:format} and the deprecated [[name]]
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class DashboardQuery:
    panel: str
    ref_id: str
    raw: str  # as written in the dashboard, with Grafana variables
    expr: str  # variables substituted: plain PromQL


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """``expr`` with every Grafana variable replaced; ``KeyError`` names one that is unknown."""
    values = SUBSTITUTIONS if values is None else values

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name not in values:
            raise KeyError(f"no substitution for Grafana variable {match.group(0)!r} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows; rows themselves are skipped."""
    for panel in panels:
        if panel.get("type") == "row":
            yield from iter_panels(panel.get("panels", []))
        else:
            yield panel


def load_dashboard(path: Path = DASHBOARD_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        dashboard: dict[str, Any] = json.load(handle)
    return dashboard


def dashboard_targets(path: Path = DASHBOARD_PATH) -> list[DashboardQuery]:
    """Every non-hidden panel target that has a PromQL ``expr``, with its panel title."""
    queries = []
    for panel in iter_panels(load_dashboard(path).get("panels", [])):
        for target in panel.get("targets", []):
            raw = target.get("expr", "")
            if target.get("hide") or not raw.strip():
                continue
            queries.append(
                DashboardQuery(panel["title"], target.get("refId", "?"), raw, substitute(raw))
            )
    return queries


def dashboard_queries(path: Path = DASHBOARD_PATH) -> list[str]:
    """The dashboard's PromQL expressions with ``$domain`` -> ``.*`` and
    ``$__rate_interval``/``$__interval`` -> ``30s``, in panel order."""
    return [query.expr for query in dashboard_targets(path)]
