"""The PromQL that ragline ships (alerts, dashboard, adapter rule), made ready for promtool and a live Prometheus."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "k8s" / "components" / "monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboards" / "ragline.json"
ADAPTER_CONFIG = REPO / "k8s" / "cluster" / "prometheus-adapter" / "configmap.yaml"
INSTALL = "install Debian's prometheus package: apt-get install prometheus (make install does it as root)"

# Grafana's label_values(metric, label) is a template query, not PromQL: this is the PromQL it runs.
LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[^,]+),\s*(?P<label>\w+)\)$")


def tool(name: str) -> str:
    """Path of a Prometheus binary (promtool, prometheus); a missing one names its install."""
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found on PATH: {INSTALL}")
    return path


def alert_groups() -> list[dict[str, Any]]:
    """The rule groups of the PrometheusRule CR, as a Prometheus rules file holds them."""
    (rule,) = [d for d in yaml.safe_load_all(PROMETHEUS_RULE.read_text()) if d]
    return list(rule["spec"]["groups"])


def alert_names() -> list[str]:
    return [r["alert"] for g in alert_groups() for r in g["rules"] if "alert" in r]


def panel_exprs(dashboard: object) -> list[str]:
    """Every `expr` and `query` string of a Grafana dashboard, in document order."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return found


def dashboard_queries(namespace: str) -> list[str]:
    """Every query of the dashboard, its $namespace variable set, label_values() turned into PromQL."""
    queries = []
    for q in dict.fromkeys(panel_exprs(json.loads(DASHBOARD.read_text()))):
        if q == "prometheus":  # the datasource variable's plugin type, not a query
            continue
        m = LABEL_VALUES.match(q)
        queries.append(f"group by ({m['label']}) ({m['metric']})" if m else q.replace("$namespace", namespace))
    return queries


def adapter_rule() -> dict[str, Any]:
    """The one Prometheus Adapter rule ragline ships (k8s/cluster/prometheus-adapter)."""
    configmap = yaml.safe_load(ADAPTER_CONFIG.read_text())
    (rule,) = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    return dict(rule)


def adapter_query(namespace: str, pods: list[str]) -> str:
    """The adapter's metricsQuery as it sends it for the HPA: pods of one namespace, grouped by pod.

    The adapter fills <<.Series>> with the discovered series name, <<.LabelMatchers>> with the object's
    namespace and pod names, <<.GroupBy>> with the resource labels (prometheus-adapter's docs/config.md).
    """
    rule = adapter_rule()
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"].strip("'\""))
    assert series, f"no metric name at the start of the seriesQuery {rule['seriesQuery']!r}"
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series.group(0))
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "pod")
    )
