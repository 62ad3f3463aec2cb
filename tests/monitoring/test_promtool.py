"""promtool checks the shipped PromQL: every alert fires and stays silent when it should, every query parses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.promql import REPO, adapter_query, alert_groups, alert_names, dashboard_queries, tool

pytestmark = pytest.mark.k8s

TESTS = Path(__file__).parent / "alerts.test.yaml"


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        return tool("promtool")
    except FileNotFoundError as exc:
        pytest.fail(str(exc))


def run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def unit_test(promtool: str, tmp_path: Path, groups: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of alerts.test.yaml against these rule groups (written as rules.yaml beside it)."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copyfile(TESTS, tmp_path / TESTS.name)
    return run(promtool, "test", "rules", TESTS.name, cwd=tmp_path)


def with_exprs(expr: str) -> list[dict[str, Any]]:
    """The shipped groups with every alert's expression replaced."""
    groups = alert_groups()
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["expr"] = expr
    return groups


def test_alert_rules_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": alert_groups()}, sort_keys=False))
    proc = run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in proc.stdout


def test_alert_unit_tests_pass(promtool: str, tmp_path: Path) -> None:
    proc = unit_test(promtool, tmp_path, alert_groups())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = set(alert_names())
    assert alerts, "the PrometheusRule has no alert"
    assert alerts - fires == set(), "alerts without a case where they fire"
    assert alerts - silent == set(), "alerts without a case where they stay silent"
    assert (fires | silent) - alerts == set(), "cases for alerts the PrometheusRule does not have"


@pytest.mark.parametrize(
    ("expr", "broken"),
    [("vector(1) == 0", "firing"), ("vector(1)", "silent")],
    ids=["never-fires", "always-fires"],
)
def test_the_unit_tests_catch_a_broken_alert(promtool: str, tmp_path: Path, expr: str, broken: str) -> None:
    """With every expression replaced by one that never (always) fires, each alert's firing (silent) case fails."""
    proc = unit_test(promtool, tmp_path, with_exprs(expr))
    assert proc.returncode != 0
    failed = {name for name in alert_names() if f"alertname: {name}," in proc.stdout + proc.stderr}
    assert failed == set(alert_names()), f"alerts whose {broken} case did not fail:\n{proc.stdout}"


def queries_as_recording_rules(queries: list[str]) -> str:
    rules = [{"record": f"ragline_check:query{i}", "expr": q} for i, q in enumerate(queries)]
    return yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}, sort_keys=False)


def test_dashboard_and_adapter_queries_parse(promtool: str, tmp_path: Path) -> None:
    queries = [*dashboard_queries("ragline-prod"), adapter_query("ragline-prod", ["generator-a", "generator-b"])]
    assert len(queries) > 20
    (tmp_path / "queries.yaml").write_text(queries_as_recording_rules(queries))
    proc = run(promtool, "check", "rules", "queries.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout


def test_a_query_that_does_not_parse_fails_the_check(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "queries.yaml").write_text(queries_as_recording_rules(["sum by (pod (ragline_requests_in_flight)"]))
    assert run(promtool, "check", "rules", "queries.yaml", cwd=tmp_path).returncode != 0


def test_adapter_query_adds_vllms_queue_and_counts_it_as_zero_when_absent(promtool: str, tmp_path: Path) -> None:
    """Pod a: 3 waiting in ragline, 5 in vLLM -> 8. Pod b runs llama.cpp (no vllm: series) -> its own 2."""
    series = [
        ('ragline_generator_requests_waiting{namespace="ragline-prod",pod="generator-a"}', "3x5"),
        ('vllm:num_requests_waiting{namespace="ragline-prod",pod="generator-a",model_name="m",engine="0"}', "5x5"),
        ('ragline_generator_requests_waiting{namespace="ragline-prod",pod="generator-b"}', "2x5"),
        # Another namespace and vLLM's running gauge are not part of the signal.
        ('ragline_generator_requests_waiting{namespace="ragline-staging",pod="generator-a"}', "40x5"),
        ('vllm:num_requests_running{namespace="ragline-prod",pod="generator-a",model_name="m",engine="0"}', "9x5"),
    ]
    case = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [
                    {
                        "expr": adapter_query("ragline-prod", ["generator-a", "generator-b"]),
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": '{pod="generator-a"}', "value": 8},
                            {"labels": '{pod="generator-b"}', "value": 2},
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "adapter.test.yaml").write_text(yaml.safe_dump(case, sort_keys=False))
    proc = run(promtool, "test", "rules", "adapter.test.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_prometheus_config_is_valid(promtool: str, tmp_path: Path) -> None:
    """The observability profile's Prometheus (docker-compose) starts only with a config promtool accepts."""
    config = REPO / "deploy" / "compose" / "prometheus.yml"
    proc = run(promtool, "check", "config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "prometheus.yml"
    broken.write_text(config.read_text().replace("scrape_configs:", "scrape_config:"))
    assert run(promtool, "check", "config", str(broken), cwd=tmp_path).returncode != 0
