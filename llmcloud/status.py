"""`llmcloud status -i inventory/<stack>`: the deployment on one screen, from its Prometheus.

Prometheus (role monitoring) listens on the monitoring host's loopback (or private) address only, so the
command reaches it through an SSH forward made with the inventory's own ``ssh_config``; ``--prometheus-url``
skips the forward.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmcloud import inventory
from llmcloud.errors import UserError

API = 'route="api"'
LATENCY = (
    "histogram_quantile({q}, sum by (le) (rate(llmcloud_edge_request_duration_seconds_bucket{{"
    + API
    + "}}[5m])))"
)
#: PromQL for each figure; engine-neutral where the edge measures it (mtail, role nginx).
QUERIES = {
    # Only this deployment's targets (they carry a host label; the package's first start scraped others).
    "hosts_up": 'up{job="node", host!=""}',
    "engines": "llmcloud:engine_up",
    "requests_per_minute": f"sum(rate(llmcloud_edge_requests_total{{{API}}}[5m])) * 60",
    "errors_per_minute": f'sum(rate(llmcloud_edge_requests_total{{{API}, code=~"5.."}}[5m])) * 60',
    "latency_p50_seconds": LATENCY.format(q=0.5),
    "latency_p95_seconds": LATENCY.format(q=0.95),
    # TGI's and vLLM's own counters of generated tokens (Ollama has none).
    "tokens_per_second": (
        "sum(rate(tgi_request_generated_tokens_sum[5m])) or sum(rate(vllm:generation_tokens_total[5m]))"
    ),
    "gpu_utilization_percent": 'avg by (host) (DCGM_FI_DEV_GPU_UTIL{job="gpu"})',
    "gpu_memory_used_mib": 'sum by (host) (DCGM_FI_DEV_FB_USED{job="gpu"})',
    "gpu_memory_total_mib": 'sum by (host) (DCGM_FI_DEV_FB_USED{job="gpu"} + DCGM_FI_DEV_FB_FREE{job="gpu"})',
    "healthz": 'probe_success{job="healthz"}',
    "certificate_days_left": 'min((probe_ssl_earliest_cert_expiry{job="healthz"} - time()) / 86400)',
    "backup_age_hours": "(time() - llmcloud_backup_last_success_timestamp_seconds) / 3600",
    "backup_failed": (
        "llmcloud_backup_last_failure_timestamp_seconds > llmcloud_backup_last_success_timestamp_seconds"
    ),
    # Hosts an upgrade left waiting for a reboot (role node_exporter's reboot check), and since when.
    "reboot_required_since": "llmcloud_reboot_required_since_timestamp_seconds > 0",
    # The edge's usage accounting (role nginx: llmcloud-usage), prompt and completion tokens today (UTC).
    "top_users_today": "topk(5, sum by (principal) (llmcloud_usage_tokens_today))",
}


@dataclass(frozen=True)
class Target:
    """Where Prometheus is, as the inventory (and the monitoring role's defaults) say."""

    host: str
    address: str
    port: int
    path: str
    hostvars: dict[str, dict[str, Any]]


def read_inventory(inventory_dir: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(hostvars, edge hosts) of an inventory, as Ansible reads it."""
    from llmcloud.converge import venv_on_path

    inventory.require(inventory_dir)
    venv_on_path()
    run = subprocess.run(
        ["ansible-inventory", "-i", str(inventory_dir), "--list"], capture_output=True, text=True, timeout=120
    )
    if run.returncode != 0:
        raise UserError(
            f"cannot read the inventory {inventory_dir}: {run.stderr.strip()[-500:]}", "fix the file it names"
        )
    data = json.loads(run.stdout)
    edge = data.get("edge", {}).get("hosts", [])
    if not edge:
        raise UserError(f"the inventory {inventory_dir} has no host in group edge", "provision the stack")
    return data.get("_meta", {}).get("hostvars", {}), edge


def cost_per_hour(hostvars: dict[str, dict[str, Any]]) -> float | None:
    """What the deployment's VMs cost per hour (costPerHour in the stack config), None when not set."""
    costs = [float(v["llmcloud_cost_per_hour"]) for v in hostvars.values() if v.get("llmcloud_cost_per_hour")]
    return sum(costs) if costs else None


def target(inventory_dir: Path) -> Target:
    hostvars, edge = read_inventory(inventory_dir)
    any_vars = next(iter(hostvars.values()), {})
    if str(any_vars.get("monitoring_enabled", True)).lower() in ("false", "no", "0"):
        raise UserError(
            "monitoring is off in this inventory (monitoring_enabled: false)",
            "remove monitoring_enabled: false, then `make converge INVENTORY=...`",
        )
    host = any_vars.get("llmcloud_monitor_host") or edge[0]
    if host not in hostvars:
        raise UserError(
            f"llmcloud_monitor_host is {host!r}, which is not a host of the inventory",
            "name one of its hosts",
        )
    mine = hostvars[host]
    default_address = "127.0.0.1" if edge == [host] else mine.get("private_ip", "127.0.0.1")
    return Target(
        host=host,
        address=str(mine.get("monitoring_prometheus_address") or default_address),
        port=int(mine.get("monitoring_prometheus_port") or 9090),
        path=str(mine.get("monitoring_prometheus_path") or "/prometheus/"),
        hostvars=hostvars,
    )


class Prometheus:
    def __init__(self, base_url: str, timeout: float = 15):
        self.base = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise UserError(
                f"Prometheus at {self.base} does not answer: {err}",
                "is the monitoring role applied (make converge)? "
                "See `systemctl status prometheus` on the monitoring host",
            ) from None
        if body.get("status") != "success":
            raise UserError(
                f"Prometheus refused {path}: {body.get('error')}", "report it as a bug of llmcloud"
            )
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self._get("api/v1/query", {"query": expr})["result"]

    def alerts(self) -> list[dict[str, Any]]:
        return self._get("api/v1/alerts")["alerts"]


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def _scalar(results: list[dict[str, Any]]) -> float | None:
    if not results:
        return None
    value = _value(results[0])
    return None if math.isnan(value) else value


def collect(prom: Prometheus, hostvars: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every figure of the screen, as plain data (what --json prints)."""
    raw = {name: prom.query(expr) for name, expr in QUERIES.items()}
    return summarize(raw, prom.alerts(), hostvars)


def summarize(raw: dict[str, list], alerts: list[dict], hostvars: dict[str, dict]) -> dict[str, Any]:
    def by_host(name: str) -> dict[str, float]:
        return {s["metric"].get("host", "?"): _value(s) for s in raw.get(name, [])}

    gpu_use, gpu_used = by_host("gpu_utilization_percent"), by_host("gpu_memory_used_mib")
    gpu_total = by_host("gpu_memory_total_mib")
    backups = by_host("backup_age_hours")
    failed = set(by_host("backup_failed"))
    reboots = by_host("reboot_required_since")
    hosts = []
    for s in sorted(raw.get("hosts_up", []), key=lambda s: s["metric"].get("host", "")):
        name = s["metric"].get("host", "?")
        hosts.append(
            {
                "host": name,
                "up": _value(s) == 1,
                "gpu_utilization_percent": gpu_use.get(name),
                "gpu_memory_used_mib": gpu_used.get(name),
                "gpu_memory_total_mib": gpu_total.get(name),
                "backup_age_hours": backups.get(name),
                "backup_failed": name in failed,
                "reboot_required_since": reboots.get(name),
            }
        )
    engines = [
        {
            "host": s["metric"].get("host", "?"),
            "engine": s["metric"].get("engine"),
            "model": s["metric"].get("model"),
            "ready": _value(s) == 1,
        }
        for s in sorted(
            raw.get("engines", []), key=lambda s: (s["metric"].get("host", ""), s["metric"].get("model", ""))
        )
    ]
    tokens = _scalar(raw.get("tokens_per_second", []))
    per_hour = cost_per_hour(hostvars)
    per_million = None
    if per_hour is not None and tokens:
        per_million = per_hour / (tokens * 3600) * 1_000_000
    requests = _scalar(raw.get("requests_per_minute", []))
    errors = _scalar(raw.get("errors_per_minute", []))
    if errors is None and requests is not None:
        errors = 0.0  # no 5xx counted yet
    return {
        "hosts": hosts,
        "engines": engines,
        "healthz_ok": all(_value(s) == 1 for s in raw.get("healthz", [])) if raw.get("healthz") else None,
        "requests_per_minute": requests,
        "errors_per_minute": errors,
        "error_ratio": (errors / requests) if (requests and errors is not None) else None,
        "latency_p50_seconds": _scalar(raw.get("latency_p50_seconds", [])),
        "latency_p95_seconds": _scalar(raw.get("latency_p95_seconds", [])),
        "tokens_per_second": tokens,
        "gpu": any(h["gpu_memory_total_mib"] for h in hosts),
        "certificate_days_left": _scalar(raw.get("certificate_days_left", [])),
        "cost_per_hour": per_hour,
        "cost_per_million_tokens": per_million,
        "top_users_today": [
            {"principal": s["metric"].get("principal", "?"), "tokens": round(_value(s))}
            for s in sorted(raw.get("top_users_today", []), key=lambda s: -_value(s))
        ],
        "alerts_firing": sorted({a["labels"]["alertname"] for a in alerts if a.get("state") == "firing"}),
    }


def _num(value: float | None, fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def render(status: dict[str, Any], stack: str) -> str:
    """One screen of text."""
    lines = [f"llmcloud status: {stack}"]
    healthz = {True: "ok", False: "FAILING", None: "not probed"}[status["healthz_ok"]]
    days = _num(status["certificate_days_left"], "{:.0f}")
    lines.append(f"  edge /healthz     {healthz}; certificate {days} days left")
    lines.append("  hosts")
    for h in status["hosts"]:
        gpu = "no GPU"
        if h["gpu_memory_total_mib"]:
            gpu = (
                f"GPU {_num(h['gpu_utilization_percent'], '{:.0f}')} %, "
                f"{_num(h['gpu_memory_used_mib'], '{:.0f}')}/{_num(h['gpu_memory_total_mib'], '{:.0f}')} MiB"
            )
        age = h["backup_age_hours"]
        backup = "no backup yet" if age is None else f"last backup {age:.1f} h ago"
        if h["backup_failed"]:
            backup += " (LAST RUN FAILED)"
        since = h.get("reboot_required_since")
        if since:
            backup += f"; WAITS FOR A REBOOT since {time.strftime('%Y-%m-%d %H:%M', time.gmtime(since))} UTC"
        lines.append(f"    {h['host']:<12} {'up' if h['up'] else 'DOWN':<5} {gpu}; {backup}")
    lines.append("  engines")
    for e in status["engines"] or [{"host": "-", "engine": None, "model": None, "ready": False}]:
        ready = "ready" if e["ready"] else "DOWN"
        lines.append(f"    {e['host']:<12} {ready:<5} {e['engine'] or '?'} {e['model'] or ''}")
    p50, p95 = status["latency_p50_seconds"], status["latency_p95_seconds"]
    lines.append(
        f"  traffic (5 min)   {_num(status['requests_per_minute'])} requests/min, "
        f"{_num(status['errors_per_minute'])} errors/min (5xx); latency p50 {_num(p50, '{:.2f}')} s, "
        f"p95 {_num(p95, '{:.2f}')} s"
    )
    lines.append(f"  tokens            {_num(status['tokens_per_second'])} generated/s")
    if status["cost_per_hour"] is None:
        lines.append("  cost              - (set costPerHour on the nodes in the stack config)")
    else:
        lines.append(
            f"  cost              {status['cost_per_hour']:.2f}/hour; "
            f"{_num(status['cost_per_million_tokens'], '{:.2f}', 'no tokens generated')} per million tokens"
        )
    top = status.get("top_users_today") or []
    lines.append(
        "  top users today   "
        + (
            ", ".join(f"{u['principal']} {u['tokens']} tokens" for u in top)
            if top
            else "- (no usage counted)"
        )
    )
    firing = status["alerts_firing"]
    lines.append(f"  alerts firing     {', '.join(firing) if firing else 'none'}")
    return "\n".join(lines)


def status(inventory_dir: Path, prometheus_url: str | None = None) -> dict[str, Any]:
    where = target(inventory_dir)
    if prometheus_url:
        return collect(Prometheus(prometheus_url), where.hostvars)
    with ExitStack() as cleanup:
        try:
            local = cleanup.enter_context(
                inventory.forward(inventory_dir, where.host, where.address, where.port)
            )
        except UserError as err:
            raise UserError(
                f"the monitoring host: {err.cause}", f"{err.fix}, or pass --prometheus-url"
            ) from None
        return collect(Prometheus(f"http://127.0.0.1:{local}{where.path}"), where.hostvars)
