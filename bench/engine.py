"""Print the engine figures: role converge times (cold, no-op) and recovery after a kill and a host restart.

    .venv/bin/python bench/engine.py

Uses its own local stack ("bench-engine", single topology, its own ports) and removes it afterwards.
Role times come from Ansible's ansible.posix.profile_roles callback; recovery is timed from the fault
until /health answers 200 and a generation succeeds, polled every 0.25 s from inside the host.
Single runs: read them as orders of magnitude.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcloud.local import hosts, system  # noqa: E402
from llmcloud.local.stack import LocalStack  # noqa: E402
from llmcloud.progress import Progress  # noqa: E402

ROLES = ("common", "nvidia", "docker", "llm_engine")
PROBE = (
    "import urllib.request as u, json, time\n"
    "while True:\n"
    "    try:\n"
    "        u.urlopen('http://127.0.0.1:8080/health', timeout=1)\n"
    "        r = u.Request('http://127.0.0.1:8080/generate', data=json.dumps({'inputs': 'x'}).encode(),\n"
    "                      headers={'Content-Type': 'application/json'})\n"
    "        u.urlopen(r, timeout=5); break\n"
    "    except Exception:\n"
    "        time.sleep(0.25)\n"
)


def converge_roles(inventory: Path) -> dict[str, float]:
    env = {**os.environ, "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_roles", "ANSIBLE_NOCOLOR": "1"}
    run = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), "site.yml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        sys.exit(run.stdout[-3000:])
    times = {}
    for role in ROLES:
        match = re.search(rf"^{role} -+ (\d+\.\d+)s", run.stdout, re.M)
        times[role] = float(match.group(1)) if match else 0.0
    return times


def main() -> None:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    stack = LocalStack(name="bench-engine", ssh_port=2270, http_port=8096, https_port=8456)
    progress = Progress("bench")
    stack.down(progress)
    rows = []
    try:
        stack.up(progress)
        cold = converge_roles(stack.inventory_dir)
        noop = converge_roles(stack.inventory_dir)
        for role in ROLES:
            rows.append((f"role {role}: cold converge", cold[role]))
            rows.append((f"role {role}: no-op converge", noop[role]))
        container = system.docker_client().containers.get(stack.container_name("llm1"))
        began = time.monotonic()
        container.exec_run(["sh", "-c", 'kill -9 "$(docker inspect -f "{{.State.Pid}}" llm-engine)"'])
        container.exec_run(["python3", "-c", PROBE])
        rows.append(("engine serving again after kill -9", time.monotonic() - began))
        began = time.monotonic()
        container.restart(timeout=30)
        hosts.wait_ready(container, "llm1")
        container.exec_run(["python3", "-c", PROBE])
        rows.append(("host restart until engine serving", time.monotonic() - began))
    finally:
        stack.down(progress)
    print(f"\n{'measure':<44} {'seconds':>8}")
    for label, value in rows:
        print(f"{label:<44} {value:>8.1f}")


if __name__ == "__main__":
    main()
