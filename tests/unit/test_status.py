"""`llmcloud status`: the figures it derives from Prometheus's answers, and the screen it prints."""

from __future__ import annotations

import json
import subprocess

import pytest

from llmcloud import status
from llmcloud.errors import UserError


def sample(value: float, **labels: str) -> dict:
    return {"metric": labels, "value": [1700000000.0, str(value)]}


RAW = {
    "hosts_up": [sample(1, host="llm1"), sample(0, host="llm2"), sample(1, host="edge1")],
    "engines": [
        sample(1, host="llm1", engine="vllm", model="Qwen/Qwen2.5-7B-Instruct"),
        sample(0, host="llm2", engine="vllm", model="Qwen/Qwen2.5-7B-Instruct"),
    ],
    "requests_per_minute": [sample(120)],
    "errors_per_minute": [sample(6)],
    "latency_p50_seconds": [sample(0.8)],
    "latency_p95_seconds": [sample(2.5)],
    "tokens_per_second": [sample(500)],
    "gpu_utilization_percent": [sample(87, host="llm1")],
    "gpu_memory_used_mib": [sample(14000, host="llm1")],
    "gpu_memory_total_mib": [sample(16000, host="llm1")],
    "healthz": [sample(1, host="edge1")],
    "certificate_days_left": [sample(61.4)],
    "backup_age_hours": [sample(3.5, host="llm1"), sample(30, host="edge1")],
    "backup_failed": [sample(1700000000, host="edge1")],
    "reboot_required_since": [sample(1764806400, host="llm1")],
    "top_users_today": [sample(1200, principal="key:ci"), sample(45000, principal="person:alice@uni.de")],
}
ALERTS = [
    {"labels": {"alertname": "LlmcloudEngineDown"}, "state": "firing"},
    {"labels": {"alertname": "LlmcloudHostDown"}, "state": "pending"},
]
HOSTVARS = {
    "edge1": {"llmcloud_cost_per_hour": 0.1},
    "llm1": {"llmcloud_cost_per_hour": 1.5},
    "llm2": {"llmcloud_cost_per_hour": 1.5},
}


def test_figures_per_host_engine_and_totals():
    figures = status.summarize(RAW, ALERTS, HOSTVARS)
    hosts = {h["host"]: h for h in figures["hosts"]}
    assert [h["host"] for h in figures["hosts"]] == ["edge1", "llm1", "llm2"]
    assert hosts["llm2"]["up"] is False and hosts["llm1"]["up"] is True
    assert hosts["llm1"]["gpu_memory_total_mib"] == 16000 and hosts["edge1"]["gpu_memory_total_mib"] is None
    assert hosts["edge1"]["backup_failed"] is True and hosts["llm1"]["backup_failed"] is False
    assert hosts["llm2"]["backup_age_hours"] is None
    assert [(e["host"], e["ready"]) for e in figures["engines"]] == [("llm1", True), ("llm2", False)]
    assert figures["error_ratio"] == pytest.approx(0.05)
    assert figures["gpu"] is True and figures["healthz_ok"] is True
    # Only firing alerts count; pending ones may still clear.
    assert figures["alerts_firing"] == ["LlmcloudEngineDown"]


def test_cost_per_hour_and_per_million_generated_tokens():
    figures = status.summarize(RAW, [], HOSTVARS)
    assert figures["cost_per_hour"] == pytest.approx(3.1)
    # 3.1 per hour for 500 tokens/s = 1.8 million tokens per hour.
    assert figures["cost_per_million_tokens"] == pytest.approx(3.1 / 1.8)
    idle = status.summarize({**RAW, "tokens_per_second": [sample(0)]}, [], HOSTVARS)
    assert idle["cost_per_million_tokens"] is None
    assert status.summarize(RAW, [], {"llm1": {}})["cost_per_hour"] is None


def test_no_traffic_and_no_samples_read_as_unknown_not_zero():
    quiet = status.summarize(
        {"requests_per_minute": [sample(0)], "latency_p50_seconds": [sample(float("nan"))]}, [], {}
    )
    assert quiet["requests_per_minute"] == 0 and quiet["errors_per_minute"] == 0
    assert quiet["latency_p50_seconds"] is None and quiet["error_ratio"] is None
    assert quiet["healthz_ok"] is None and quiet["certificate_days_left"] is None


def test_one_screen_names_what_is_wrong():
    text = status.render(status.summarize(RAW, ALERTS, HOSTVARS), "demo")
    assert text.startswith("llmcloud status: demo")
    assert "llm2         DOWN" in text and "GPU 87 %, 14000/16000 MiB" in text
    assert "edge1        up    no GPU; last backup 30.0 h ago (LAST RUN FAILED)" in text
    assert "120.0 requests/min, 6.0 errors/min" in text and "p95 2.50 s" in text
    assert "certificate 61 days left" in text and "3.10/hour" in text
    assert "alerts firing     LlmcloudEngineDown" in text
    assert "llm1         up    GPU 87 %" in text and "WAITS FOR A REBOOT since 2025-12-04 00:00 UTC" in text
    assert "top users today   person:alice@uni.de 45000 tokens, key:ci 1200 tokens" in text
    assert len(text.splitlines()) < 25


def test_unreachable_prometheus_is_a_clear_error():
    with pytest.raises(UserError) as err:
        status.Prometheus("http://127.0.0.1:9/prometheus/", timeout=2).query("up")
    assert "does not answer" in str(err.value)


def test_target_follows_the_inventory(tmp_path, monkeypatch):
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    listing = {
        "_meta": {"hostvars": {"edge1": {"private_ip": "10.0.0.2"}, "mon1": {"private_ip": "10.0.0.9"}}},
        "edge": {"hosts": ["edge1"]},
    }

    def fake_inventory(listing):
        return lambda *a, **k: subprocess.CompletedProcess(a, 0, json.dumps(listing), "")

    monkeypatch.setattr(status.subprocess, "run", fake_inventory(listing))
    where = status.target(tmp_path)
    assert (where.host, where.address, where.port, where.path) == ("edge1", "127.0.0.1", 9090, "/prometheus/")
    for hv in listing["_meta"]["hostvars"].values():
        hv["llmcloud_monitor_host"] = "mon1"
    where = status.target(tmp_path)
    assert (where.host, where.address) == ("mon1", "10.0.0.9")
    for hv in listing["_meta"]["hostvars"].values():
        hv["monitoring_enabled"] = False
    with pytest.raises(UserError, match="monitoring_enabled: false"):
        status.target(tmp_path)
