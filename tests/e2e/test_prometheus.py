"""A real Prometheus on loopback scrapes the four services: every dashboard and adapter query returns series."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ragline_cli.localstack import SERVICES, Stack, free_port
from tests.monitoring.promql import adapter_query, alert_groups, dashboard_queries, tool

pytestmark = pytest.mark.e2e

# Kubernetes gives every series namespace and pod labels (the PodMonitor); here they are target labels.
NAMESPACE = "ragline-e2e"
# Often enough for a short test, seldom enough for /metrics to answer in time on two busy cores.
SCRAPE_SECONDS = 2
DOC_ID = "e2e/prometheus-scrape"


def pod(service: str) -> str:
    return f"{service}-0"


def config(stack: Stack, rules: Path) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                # The job name the Prometheus Operator gives the PodMonitor's targets (<namespace>/<name>).
                "job_name": f"{NAMESPACE}/ragline",
                "scrape_timeout": f"{SCRAPE_SECONDS}s",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{stack.ports[s][0]}"],
                        "labels": {"namespace": NAMESPACE, "pod": pod(s)},
                    }
                    for s in SERVICES
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus on 127.0.0.1 and a free port, its data in a temporary folder, stopped by its PID."""
    try:
        binary = tool("prometheus")
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    root = tmp_path_factory.mktemp("prometheus")
    rules = root / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": alert_groups()}, sort_keys=False))
    (root / "prometheus.yml").write_text(yaml.safe_dump(config(stack, rules), sort_keys=False))
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603 - Debian's prometheus binary, arguments of our own
        [
            binary,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 30, "Prometheus ready", proc, root)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def wait_for(check: Any, seconds: float, what: str, proc: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited {proc.returncode}:\n{(root / 'prometheus.log').read_text()[-3000:]}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{what}: not after {seconds:.0f}s")


def query(url: str, promql: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    assert reply.status_code == 200, f"{promql}: {reply.text}"
    body = reply.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def poll(url: str, queries: list[str], seconds: float) -> dict[str, list[dict[str, Any]]]:
    """Each query's result, re-asked until all return series or the time is up."""
    results: dict[str, list[dict[str, Any]]] = {}
    deadline = time.monotonic() + seconds
    while True:
        results.update({q: query(url, q) for q in queries if not results.get(q)})
        if all(results.values()) or time.monotonic() > deadline:
            return results
        time.sleep(SCRAPE_SECONDS)


@pytest.fixture(scope="module")
def traffic(stack: Stack, prometheus: str) -> Iterator[str]:
    """Every target scraped once, then a little of every kind of traffic the dashboard shows."""
    deadline = time.monotonic() + 30
    while len(up := query(prometheus, "up == 1")) < len(SERVICES) and time.monotonic() < deadline:
        time.sleep(SCRAPE_SECONDS)
    assert sorted(s["metric"]["pod"] for s in up) == sorted(pod(s) for s in SERVICES), query(prometheus, "up")
    api = stack.api_url
    with httpx.Client(timeout=120) as client:
        doc = {"id": DOC_ID, "text": "Prometheus scrapes each service's metrics endpoint every second in this test."}
        r = client.post(f"{api}/v1/documents", json={"documents": [doc]})
        assert r.status_code == 200, r.text
        r = client.post(f"{api}/v1/search", json={"query": "how often are metrics scraped?", "k": 3})
        assert r.status_code == 200, r.text
        r = client.post(f"{api}/v1/query", json={"question": "How often are metrics scraped?", "max_tokens": 8})
        assert r.status_code == 200, r.text
        # A refusal at the edge, for the rejected-requests panel.
        r = client.post(f"{api}/v1/search", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        yield prometheus
        client.delete(f"{api}/v1/documents/{DOC_ID}")


def test_every_dashboard_query_returns_series(traffic: str) -> None:
    queries = dashboard_queries(NAMESPACE)
    assert len(queries) > 20
    results = poll(traffic, queries, 30)
    empty = [q for q, series in results.items() if not series]
    assert not empty, "dashboard queries with no series:\n" + "\n".join(empty)


def test_the_adapter_query_serves_the_generator_pod(traffic: str) -> None:
    """The HPA's metric from live series: llama.cpp has no vllm: series, which counts as 0 and hides nothing."""
    promql = adapter_query(NAMESPACE, [pod("generator")])
    (series,) = poll(traffic, [promql], 30)[promql]
    assert series["metric"] == {"pod": pod("generator")}
    assert float(series["value"][1]) >= 0
    assert query(traffic, f'vllm:num_requests_waiting{{namespace="{NAMESPACE}"}}') == []


def test_alert_rules_evaluate_and_stay_silent_on_a_healthy_stack(traffic: str) -> None:
    time.sleep(2 * SCRAPE_SECONDS)  # at least one evaluation after the traffic
    reply = httpx.get(f"{traffic}/api/v1/rules", timeout=10).json()
    rules = [r for g in reply["data"]["groups"] for r in g["rules"]]
    assert rules and len(rules) == sum(len(g["rules"]) for g in alert_groups())
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not unhealthy
    firing = {r["name"] for r in rules if r["state"] != "inactive"}
    assert not firing
