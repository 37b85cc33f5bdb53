"""What monitoring costs and how fast it tells: memory and CPU of its processes on the edge and on an engine
host, the time it adds to a first and to a no-op converge, and the time from stopping the engine to the alert
reaching a webhook.

    .venv/bin/python bench/monitoring.py

Uses its own split stack ("bench-mon": an edge and one engine host; ports 2280/8096/8456), torn down after.
Single runs on this machine: orders of magnitude, not a gate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcloud import converge  # noqa: E402
from llmcloud.local import system  # noqa: E402
from llmcloud.local.stack import LocalStack  # noqa: E402
from llmcloud.progress import Progress  # noqa: E402

PROCESSES = {
    "edge1": [
        "prometheus",
        "prometheus-alertmanager",
        "prometheus-blackbox-exporter",
        "prometheus-node-exporter",
        "mtail",
    ],
    "llm1": ["prometheus-node-exporter"],
}
RECEIVER = """
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open("/tmp/bench-alerts.jsonl", "ab") as out:
            out.write(str(time.time()).encode() + b" " + body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", 9099), H).serve_forever()
"""


def playbook(inventory: Path, *extra: str) -> float:
    began = time.monotonic()
    run = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), "site.yml", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        sys.exit(run.stdout[-3000:])
    return time.monotonic() - began


def usage(container, names: list[str], window: float = 30) -> dict[str, tuple[float, float]]:
    """{process: (RSS MiB, CPU % of one core over the window)}."""

    def sample() -> dict[str, tuple[int, int]]:
        out = system.run_in(container, ["ps", "-eo", "comm:40,rss,times", "--no-headers"]).output.decode()
        found = {}
        for line in out.splitlines():
            comm, rss, cpu = line.split()
            # The kernel keeps 15 characters of a command's name.
            for name in names:
                if comm == name[:15]:
                    found[name] = (int(rss), int(cpu))
        return found

    first = sample()
    time.sleep(window)
    second = sample()
    return {
        name: (second[name][0] / 1024, 100 * (second[name][1] - first[name][1]) / window)
        for name in names
        if name in first and name in second
    }


def main() -> None:
    stack = LocalStack(
        name="bench-mon",
        topology="split",
        engines=1,
        ssh_port=2280,
        http_port=8096,
        https_port=8456,
        idp_port=8097,
    )
    progress = Progress("bench monitoring")
    stack.down(progress)
    try:
        stack.up(progress)
        off = stack.inventory_dir / "group_vars" / "all" / "90-bench.yml"
        off.write_text("monitoring_enabled: false\n")
        began = time.monotonic()
        converge.converge_or_fail(stack.inventory_dir, progress)
        first_off = time.monotonic() - began
        noop_off = min(playbook(stack.inventory_dir) for _ in range(2))
        off.unlink()
        adding = playbook(stack.inventory_dir)
        noop_on = min(playbook(stack.inventory_dir) for _ in range(2))
        client = system.docker_client()
        time.sleep(60)  # let Prometheus settle into its steady state
        rows = []
        for host, names in PROCESSES.items():
            container = client.containers.get(stack.container_name(host))
            for name, (rss, cpu) in usage(container, names).items():
                rows.append((host, name, rss, cpu))

        # Engine stopped → webhook, with the role's default durations (2 min `for`, 30 s scrape and
        # evaluation, 30 s grouping), not the local stack's 5 s scrape.
        edge = client.containers.get(stack.container_name("edge1"))
        engine_host = client.containers.get(stack.container_name("llm1"))
        edge.exec_run(["python3", "-c", RECEIVER], detach=True)
        webhook = stack.inventory_dir / "group_vars" / "all" / "91-bench-webhook.yml"
        webhook.write_text(
            'monitoring_alert_webhooks: ["http://127.0.0.1:9099/alerts"]\n'
            "monitoring_scrape_interval: 30s\nmonitoring_evaluation_interval: 30s\n"
        )
        playbook(stack.inventory_dir, "--limit", "edge1")
        stopped = time.time()
        engine_host.exec_run(["docker", "stop", "llm-engine"])
        alert_after = None
        while time.time() - stopped < 420 and alert_after is None:
            out = edge.exec_run(
                ["sh", "-c", "cat /tmp/bench-alerts.jsonl 2>/dev/null || true"]
            ).output.decode()
            for line in out.splitlines():
                at, body = line.split(" ", 1)
                if any(a["labels"]["alertname"] == "LlmcloudEngineDown" for a in json.loads(body)["alerts"]):
                    alert_after = float(at) - stopped
            time.sleep(2)
        engine_host.exec_run(["docker", "start", "llm-engine"])
    finally:
        stack.down(progress)

    print("\n== monitoring: cost (split: edge1 = edge and monitoring host, llm1 = engine host) ==")
    print(f"{'host':<7} {'process':<32} {'RSS MiB':>8} {'CPU % (30 s)':>13}")
    for host, name, rss, cpu in rows:
        print(f"{host:<7} {name:<32} {rss:8.1f} {cpu:13.2f}")
    for host in PROCESSES:
        total = [r for r in rows if r[0] == host]
        print(f"{host:<7} {'total':<32} {sum(r[2] for r in total):8.1f} {sum(r[3] for r in total):13.2f}")
    print("\n== monitoring: converge time (split, 2 hosts) ==")
    print(f"first converge without monitoring        {first_off:7.1f} s")
    print(f"converge adding monitoring               {adding:7.1f} s")
    print(f"no-op converge without / with monitoring {noop_off:7.1f} s / {noop_on:.1f} s")
    print("\n== monitoring: engine stopped → alert at the webhook (role defaults) ==")
    print(f"LlmcloudEngineDown after {alert_after:.0f} s" if alert_after else "no alert within 7 minutes")


if __name__ == "__main__":
    main()
