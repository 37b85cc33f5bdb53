"""Print the walking skeleton's wall times: cold and warm `make local`, no-op converges, `make test`.

    .venv/bin/python bench/timings.py [--cold] [--with-test]

--cold removes the cached base image first, so the first `make local` includes debootstrap.
--with-test also times `make test` (about 40 minutes). Uses its own stacks ("bench"; "bench-split", an edge
and two engines) and ports, so a running `make local` stack is left alone. Figures are single runs on this
machine: read them as orders of magnitude, not as a benchmark to gate on.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK = ["STACK=bench", "LOCAL_ARGS=--ssh-port 2260 --http-port 8094 --https-port 8454"]
SPLIT = [
    "STACK=bench-split",
    "TOPOLOGY=split",
    "LOCAL_ARGS=--ssh-port 2270 --http-port 8095 --https-port 8455 --engines 2",
]


def timed(label: str, *make_args: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    print(f"… {label}", file=sys.stderr, flush=True)
    began = time.monotonic()
    run = subprocess.run(
        ["make", "--no-print-directory", *make_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    took = time.monotonic() - began
    if run.returncode != 0:
        sys.exit(f"{label} failed (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return label, took


def yardstick() -> float:
    """Seconds for a fixed piece of pure-Python work (best of 3): the controller's speed on this machine now.
    A no-op converge is CPU-bound on the controller, so its figures scale with this one between machines."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        sum(i * i % 7 for i in range(3_000_000))
        best = min(best, time.perf_counter() - began)
    return best


def role_profile(
    strategy: str, template_cache: bool = True, threads: bool = True
) -> tuple[float, dict[str, float]]:
    """A no-op `ansible-playbook site.yml` on the bench stack: wall time and seconds per role; prints the
    controller's CPU and the cost per task and host. template_cache=False: without the strategy plugin's cache
    of compiled templates; threads=False: a forked worker per task and host instead of a thread
    (plugins/strategy/mitogen_linear.py)."""
    env = {
        **os.environ,
        "ANSIBLE_STRATEGY": strategy,
        "LLMCLOUD_TEMPLATE_CACHE": "on" if template_cache else "off",
        "LLMCLOUD_TASK_THREADS": "on" if threads else "off",
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_roles",
    }
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    run = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "inventory/bench", "site.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    took = time.monotonic() - began
    if run.returncode != 0 or "changed=0" not in run.stdout:
        sys.exit(f"no-op converge ({strategy}) failed or changed something:\n{run.stdout[-3000:]}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user = cpu_after.ru_utime - cpu_before.ru_utime
    kernel = cpu_after.ru_stime - cpu_before.ru_stime
    cpu = user + kernel
    tasks = sum(
        int(m.group(1)) + int(m.group(2)) for m in re.finditer(r" ok=(\d+) .* skipped=(\d+)", run.stdout)
    )
    print(
        f"no-op over {strategy}{'' if template_cache else ' (no template cache)'}"
        f"{'' if threads or strategy != 'mitogen_linear' else ' (forked workers)'}: {took:.1f}s wall, "
        f"{cpu:.1f}s controller CPU ({user:.1f}s user, {kernel:.1f}s kernel: forks and their page faults), "
        f"{tasks} task runs: "
        f"{1000 * took / tasks:.0f} ms wall and {1000 * cpu / tasks:.0f} ms controller CPU per task and host",
        file=sys.stderr,
        flush=True,
    )
    roles = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(\S+) -+ (\d+\.\d+)s$", run.stdout, re.MULTILINE)
        if m.group(1) != "total"
    }
    return took, roles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", action="store_true", help="remove the cached base image first")
    parser.add_argument("--with-test", action="store_true", help="also time `make test`")
    args = parser.parse_args()

    # The interpreter counts too: pyenv's build here (no profile-guided optimisation) took ~11 % more CPU per
    # Ansible task than Debian's /usr/bin/python3.11 on the same machine (4 % more on the yardstick).
    python = f"Python {sys.version.split()[0]} from {sys.base_prefix}"
    print(f"CPU yardstick (pure Python, best of 3, {python}): {yardstick():.2f}s", file=sys.stderr)
    subprocess.run(["make", "--no-print-directory", "down", *STACK], cwd=ROOT, capture_output=True)
    if args.cold:
        subprocess.run([".venv/bin/llmcloud", "local", "down", "--stack", "bench", "--purge-image"], cwd=ROOT)
    rows = [
        timed(
            "make local (" + ("cold: debootstrap + hosts" if args.cold else "image cached") + ")",
            "local",
            *STACK,
        ),
        timed("make local again (hosts up: re-converge)", "local", *STACK),
        timed("make converge (no-op)", "converge", *STACK),
        timed("  the same, forked workers", "converge", *STACK, env={"LLMCLOUD_TASK_THREADS": "off"}),
        timed("make verify", "verify", *STACK),
    ]
    # Where a no-op converge spends its time: over Mitogen (ansible.cfg), with forked workers instead of task
    # threads, without the compiled templates' cache, and over plain SSH (forked workers too).
    profiles = {
        "Mitogen": role_profile("mitogen_linear"),
        "forked": role_profile("mitogen_linear", threads=False),
        "no cache": role_profile("mitogen_linear", template_cache=False),
        "plain SSH": role_profile("linear"),
    }
    subprocess.run(["make", "--no-print-directory", "down", *STACK], cwd=ROOT, capture_output=True)
    rows.append(timed("make local (image cached, fresh hosts)", "local", *STACK))
    subprocess.run(["make", "--no-print-directory", "down", *STACK], cwd=ROOT, capture_output=True)
    # The split topology with two engines: an edge and two engine hosts, converged side by side.
    subprocess.run(["make", "--no-print-directory", "down", *SPLIT], cwd=ROOT, capture_output=True)
    rows.append(timed("make local, split with 2 engines", "local", *SPLIT))
    rows.append(timed("make converge, split with 2 engines (no-op)", "converge", *SPLIT))
    rows.append(
        timed(
            "  the same, forked workers (no task threads)",
            "converge",
            *SPLIT,
            env={"LLMCLOUD_TASK_THREADS": "off"},
        )
    )
    subprocess.run(["make", "--no-print-directory", "down", *SPLIT], cwd=ROOT, capture_output=True)
    if args.with_test:
        rows.append(timed("make test", "test"))
    print(f"\n{'step':<48} {'wall time':>10}")
    for label, took in rows:
        print(f"{label:<48} {took:>9.1f}s")
    print("\nno-op ansible-playbook site.yml, seconds per role" + "".join(f"{name:>11}" for name in profiles))
    roles = set().union(*(per_role for _, per_role in profiles.values()))
    for role in sorted(roles, key=lambda r: -profiles["plain SSH"][1].get(r, 0)):
        print(
            f"  {role:<44}" + "".join(f"{per_role.get(role, 0):>11.1f}" for _, per_role in profiles.values())
        )
    print(f"  {'wall time':<44}" + "".join(f"{took:>11.1f}" for took, _ in profiles.values()))


if __name__ == "__main__":
    main()
