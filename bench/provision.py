"""Print what the local OpenStack cloud and a real `pulumi up` cost: cloud start (cold venv and warm),
`pulumi up` from empty per topology, a no-op `up`, `destroy`, and the control plane's memory.

    .venv/bin/python bench/provision.py [--cold]

--cold also times building the services' venv (into a scratch cache; the cached one is left alone). The
cloud runs on its own ports (27500 on) and work dir, so a running `llmcloud-testbed up` is left alone. The
Pulumi engine is built first if needed (`make cloud-prepare`). Single runs on this machine: orders of
magnitude, not a gate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from llmcloud.keys import ensure_ed25519
from llmcloud.progress import Progress
from testbed.automation import CloudStack
from testbed.controlplane import Cloud
from testbed.pulumi_engine import ensure_engine

PORT_BASE = 27500
TOPOLOGIES = {
    "single (example)": ("bench-single", "example", {}),
    "split, 2 replicas (example)": (
        "bench-split",
        "example",
        {"llmcloud:topology": "split", "llmcloud:replicas": "2"},
    ),
    "split + jump host (denbi-berlin)": ("bench-berlin", "denbi-berlin", {}),
}


def pss_mib(pids: set[int]) -> float:
    """Proportional set size of the cloud's process groups (shared pages counted once in total)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) not in pids and int(proc.name) not in pids:
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError):
            continue
    return total / 1024


def timed(rows: list, label: str, fn) -> object:
    print(f"… {label}", file=sys.stderr, flush=True)
    began = time.monotonic()
    result = fn()
    rows.append((label, time.monotonic() - began))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", action="store_true", help="also time the services' venv build")
    args = parser.parse_args()
    rows: list[tuple[str, float]] = []
    quiet = Progress("bench", out=open(os.devnull, "w"))  # noqa: SIM115
    engine = ensure_engine(quiet)
    with tempfile.TemporaryDirectory(prefix="llmcloud-bench-") as scratch:
        public_key = ensure_ed25519(Path(scratch) / "id_ed25519", "bench@llmcloud")
        if args.cold:
            os.environ["XDG_CACHE_HOME"] = str(Path(scratch) / "cache")
            cold = Cloud(Path(scratch) / "cold")
            timed(
                rows,
                "llmcloud-testbed up, cold (venv built: pip install of the services)",
                lambda: cold.up(PORT_BASE, quiet),
            )
            cold.down(quiet=True)
            del os.environ["XDG_CACHE_HOME"]
        cloud = Cloud(Path(scratch) / "warm")
        steps = Progress("warm up", out=quiet.out)
        timed(rows, "llmcloud-testbed up, warm (venv cached)", lambda: cloud.up(PORT_BASE, steps))
        rows.extend((f"  of which: {name}", took) for name, took in steps.steps)
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.clouds_yaml)
        memory = pss_mib({s.pid for s in cloud.services()})
        try:
            for label, (name, source, overrides) in TOPOLOGIES.items():
                stack = CloudStack.provisioning_only(
                    name,
                    ssh_public_key=public_key,
                    overrides={"llmcloud:allowDataLoss": "true", **overrides},
                    secrets_={"llmcloud:resticPassword": "bench-restic-password"},
                    cloud=cloud,
                    engine=engine,
                    source=source,
                    inventory_root=Path(scratch) / "inventory",
                )
                timed(rows, f"pulumi up from empty: {label}", lambda s=stack: s.up())
                if name == "bench-single":
                    timed(rows, "pulumi up again, no changes (single)", lambda s=stack: s.up())
                    memory = max(memory, pss_mib({s.pid for s in cloud.services()}))
                timed(rows, f"pulumi destroy: {label}", lambda s=stack: s.destroy())
        finally:
            cloud.down(quiet=True)
    print("\nlocal OpenStack cloud and pulumi up (one run, this machine)")
    for label, took in rows:
        print(f"  {took:7.1f}s  {label}")
    print(f"  {memory:7.0f} MiB  control plane memory (PSS of all its processes, after a stack was made)")


if __name__ == "__main__":
    main()
