"""Monitoring (roles node_exporter, monitoring; the edge's mtail): where each piece listens, who reaches it,
and whether Prometheus sees every target and loaded the alert rules."""

from __future__ import annotations

import json

import pytest
from conftest import in_group, reachable_from


def monitoring_on(hostvars: dict) -> bool:
    return str(hostvars.get("monitoring_enabled", True)).lower() not in ("false", "no", "0")


def monitor_host(runner, hostvars: dict) -> str:
    return hostvars.get("llmcloud_monitor_host") or sorted(runner.get_hosts("edge"))[0]


@pytest.fixture
def monitor(host, hostvars, runner):
    """This host when it is the monitoring host; the checks of Prometheus run there."""
    if not monitoring_on(hostvars):
        pytest.skip("monitoring_enabled is false")
    if host.backend.get_hostname() != monitor_host(runner, hostvars):
        pytest.skip("not the monitoring host")
    return host


def prometheus_api(host, hostvars, runner, path: str) -> dict:
    alone_at_the_edge = sorted(runner.get_hosts("edge")) == [host.backend.get_hostname()]
    address = hostvars.get("monitoring_prometheus_address") or (
        "127.0.0.1" if alone_at_the_edge else hostvars["private_ip"]
    )
    port = int(hostvars.get("monitoring_prometheus_port", 9090))
    prefix = hostvars.get("monitoring_prometheus_path", "/prometheus/")
    code = (
        "import urllib.request as u, sys; "
        f"sys.stdout.write(u.urlopen('http://{address}:{port}{prefix}{path}', timeout=10).read().decode())"
    )
    return json.loads(host.check_output("python3 -c %s", code))["data"]


def test_node_exporter_on_the_private_address_only(host, hostvars):
    if not monitoring_on(hostvars):
        pytest.skip("monitoring_enabled is false")
    port = int(hostvars.get("node_exporter_port", 9100))
    assert host.service("prometheus-node-exporter").is_running
    assert host.socket(f"tcp://{hostvars['private_ip']}:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://:::{port}").is_listening


def test_node_exporter_reachable_from_the_monitoring_host_only(host, hostvars, peers, runner):
    if not monitoring_on(hostvars):
        pytest.skip("monitoring_enabled is false")
    remote = [p for p in peers if p.remote is not None]
    if not remote:
        pytest.skip("a single host: nothing else to reach it from")
    port = int(hostvars.get("node_exporter_port", 9100))
    answers = reachable_from(remote, hostvars["private_ip"], port)
    monitor = monitor_host(runner, hostvars)
    assert answers == {p.name: p.name == monitor for p in remote}, answers


def test_prometheus_alertmanager_and_prober_on_loopback_only(monitor, hostvars):
    for service in ("prometheus", "prometheus-alertmanager"):
        assert monitor.service(service).is_running and monitor.service(service).is_enabled
    assert monitor.service("prometheus-blackbox-exporter").is_running
    for port in (9090, 9093, 9115):
        assert not monitor.socket(f"tcp://0.0.0.0:{port}").is_listening, port
        assert not monitor.socket(f"tcp://:::{port}").is_listening, port
    # No cluster gossip port.
    assert not monitor.socket("tcp://0.0.0.0:9094").is_listening
    assert monitor.socket("tcp://127.0.0.1:9093").is_listening


def test_prometheus_scrapes_every_target(monitor, hostvars, runner):
    targets = prometheus_api(monitor, hostvars, runner, "api/v1/targets")["activeTargets"]
    jobs = {}
    for target in targets:
        jobs.setdefault(target["labels"]["job"], []).append(target)
    assert {t["labels"]["host"] for t in jobs["node"]} == set(runner.get_hosts("all"))
    # Every engine host's main engine: scraped where it has metrics (TGI, vLLM), probed if not (Ollama, TEI).
    kinds = {h: runner.get_variables(h).get("llm_engine_kind", "tgi") for h in runner.get_hosts("llm")}
    probed = {h for h, kind in kinds.items() if kind in ("ollama", "tei")}
    assert {t["labels"]["host"] for t in jobs.get("engine", [])} >= set(kinds) - probed
    assert {t["labels"]["host"] for t in jobs.get("engine_health", [])} >= probed
    assert {t["labels"]["host"] for t in jobs["edge"]} == set(runner.get_hosts("edge"))
    assert jobs["healthz"]
    down = [(t["labels"]["job"], t["scrapeUrl"], t["lastError"]) for t in targets if t["health"] == "down"]
    assert not down, down


def test_alert_rules_loaded(monitor, hostvars, runner):
    groups = prometheus_api(monitor, hostvars, runner, "api/v1/rules")["groups"]
    alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert {
        "LlmcloudEngineDown",
        "LlmcloudEnginePoolDown",
        "LlmcloudHealthzFailing",
        "LlmcloudEdgeErrors",
        "LlmcloudEdgeSlow",
        "LlmcloudBackupFailed",
        "LlmcloudBackupStale",
        "LlmcloudCertificateExpiring",
        "LlmcloudDiskFull",
        "LlmcloudGpuMemoryFull",
        "LlmcloudGpuHot",
    } <= alerts


def test_edge_metrics_carry_no_client_or_prompt(host, hostvars):
    if not in_group(hostvars, "edge") or not monitoring_on(hostvars):
        pytest.skip("not an edge host")
    port = int(hostvars.get("nginx_metrics_port", 3903))
    assert host.service("mtail").is_running
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    url = f"http://{hostvars['private_ip']}:{port}/metrics"
    code = (
        f"import urllib.request as u, sys; sys.stdout.write(u.urlopen({url!r}, timeout=10).read().decode())"
    )
    text = host.check_output("python3 -c %s", code)
    series = [line for line in text.splitlines() if line.startswith("llmcloud_edge_")]
    labels = {
        part.split("=")[0]
        for line in series
        if "{" in line
        for part in line[line.index("{") + 1 :].split(",")
    }
    assert labels <= {"route", "code", "le"}, labels
