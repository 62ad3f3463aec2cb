"""Every metric a dashboard or alert queries is one the services export (no panel silently empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from ragline_api.metrics import ApiMetrics
from ragline_common.metrics import RequestMetrics
from ragline_embedder.metrics import EmbedderMetrics
from ragline_generator.metrics import GeneratorMetrics
from ragline_retriever.metrics import RetrieverMetrics
from tests.monitoring.promql import panel_exprs

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted(ROOT.glob("k8s/**/dashboards/*.json")) + sorted(ROOT.glob("deploy/**/dashboards/*.json"))
RULES = sorted(ROOT.glob("k8s/components/monitoring/*rule*.yaml"))
METRIC = re.compile(r"\b(ragline_[a-z0-9_]+)")


def exported() -> set[str]:
    registry = CollectorRegistry()
    RequestMetrics(registry, "any")
    ApiMetrics(registry)
    EmbedderMetrics(registry)
    GeneratorMetrics(registry)
    RetrieverMetrics(registry)
    # Labelled metrics have no samples until first used, so derive the series names from each family's type.
    series = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "summary": ("_sum", "_count")}
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in series.get(family.type, ()))
    return names


def queried(text: str) -> set[str]:
    return set(METRIC.findall(text))


def exprs(dashboard: dict) -> str:
    return "\n".join(panel_exprs(dashboard))


def test_there_is_a_dashboard_and_it_queries_ragline_metrics() -> None:
    assert DASHBOARDS
    for path in DASHBOARDS:
        assert queried(exprs(json.loads(path.read_text()))), path


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_dashboard_queries_only_exported_metrics(path: Path) -> None:
    missing = sorted(queried(exprs(json.loads(path.read_text()))) - exported())
    assert missing == []


@pytest.mark.parametrize("path", RULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_alert_rules_query_only_exported_metrics(path: Path) -> None:
    text = "\n".join(
        rule.get("expr", "")
        for doc in yaml.safe_load_all(path.read_text())
        if doc
        for group in doc.get("spec", {}).get("groups", [])
        for rule in group.get("rules", [])
    )
    missing = sorted(queried(text) - exported())
    assert missing == []
