"""Print what `pulumi up` from nothing to a verified endpoint costs on the local cloud where servers boot.

    .venv/bin/python bench/boot.py [--workdir DIR] [--topology single|berlin|both]

Per topology: `up` from nothing with `configure: true` and where its time goes (cloud resources, boot to
cloud-init done, converge, checks), a no-op `up`, and for single a VM replacement (an older image: the new VM
boots with the old data volume and is converged again). The cloud runs on its own ports (27500 on) and work
dir unless --workdir names a running one. Single runs on this machine: orders of magnitude, not a gate.
Not measured: restoring from the Manila share (this kernel has no NFS client; see the README).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openstack

from llmcloud.keys import ensure_ed25519
from llmcloud.progress import Progress
from testbed import external, hypervisor
from testbed.automation import CloudStack
from testbed.booted import (
    PUBLIC_GATEWAY,
    identity_provider,
    images,
    stack_settings,
    write_peer_settings,
)
from testbed.controlplane import Cloud
from testbed.pulumi_engine import ensure_engine

PORT_BASE = 27500
NODE = {"flavor": "gpu.medium", "imagePattern": r"^Ubuntu-24\.04.*$", "dataVolumeSize": 10, "gpu": False}
STEP = re.compile(
    r"✓ (wait for SSH and cloud-init|converge site\.yml|post-deploy checks \(tests/infra\)) \((\d+\.\d)s\)"
)


class Output(list):
    def __bool__(self) -> bool:  # Pulumi skips a falsy callback
        return True

    def __call__(self, line: str) -> None:
        self.append(line)


def phases(lines: list[str]) -> dict[str, float]:
    found = {}
    for line in lines:
        if match := STEP.search(line):
            found[match.group(1)] = float(match.group(2))
    return found


def boot_to_ready(cloud: Cloud, inventory_dir: Path, host: str) -> float | None:
    """Seconds from the container's start (hypervisor) to cloud-init's ready marker on the VM."""
    vms = (hypervisor.status(cloud.work) or {}).get("vms", [])
    ready = subprocess.run(
        [
            "ssh",
            "-F",
            str(inventory_dir / "ssh_config"),
            host,
            "stat -c %Y /var/lib/llmcloud/cloud-init.done",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    booted = [vm["booted_at"] for vm in vms if vm["name"].endswith(f"-{host}") and vm.get("booted_at")]
    return int(ready) - max(booted) if ready and booted else None


def run(cloud: Cloud, engine, key: Path, name: str, source: str, overrides: dict, idp_network: str) -> list:
    rows = []
    admin = openstack.connect(cloud="llmcloud-local-admin")
    root = Path(tempfile.mkdtemp(prefix="llmcloud-bench-inventory-"))
    stack = CloudStack(
        name,
        cloud=cloud,
        engine=engine,
        source=source,
        inventory_root=root,
        overrides=stack_settings(key, ensure_ed25519(key, "bench@llmcloud"), **overrides),
        secrets_={"llmcloud:oauthClientSecret": "bench-client-secret"},
    )
    stack.reset()
    with identity_provider(cloud, admin, idp_network) as idp:
        write_peer_settings(stack.inventory_dir, images(), idp)
        out = Output()
        began = time.monotonic()
        stack.up(on_output=out)
        total = time.monotonic() - began
        took = phases(out)
        rows.append((f"{name}: up from nothing to verified", total))
        rows.append(("  of which cloud resources and boot (until SSH answers)", total - sum(took.values())))
        ready = boot_to_ready(cloud, stack.inventory_dir, "llm1")
        if ready is not None:
            rows.append(("  container start to cloud-init done (llm1)", float(ready)))
        rows += [(f"  {phase}", seconds) for phase, seconds in took.items()]
        began = time.monotonic()
        stack.up(on_output=Output())
        rows.append((f"{name}: no-op up", time.monotonic() - began))
        if source == "example":
            stack.set_config(
                {"llmcloud:engineNode": {**NODE, "imagePattern": None, "image": "Ubuntu-24.04-20260901"}}
            )
            out = Output()
            began = time.monotonic()
            stack.up(on_output=out)
            rows.append(
                (f"{name}: VM replaced (older image), re-converged and verified", time.monotonic() - began)
            )
            rows += [(f"  {phase}", seconds) for phase, seconds in phases(out).items()]
    stack.reset()
    stack.remove()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="a running local cloud to use")
    parser.add_argument("--topology", choices=("single", "berlin", "both"), default="both")
    args = parser.parse_args()
    progress = Progress("bench boot")
    engine = ensure_engine(progress)
    cloud = Cloud(args.workdir or Path(tempfile.mkdtemp(prefix="llmcloud-bench-boot-")))
    started_here = not cloud.is_up()
    rows = []
    if started_here:
        began = time.monotonic()
        cloud.up(port_base=PORT_BASE, progress=progress)
        rows.append(("cloud up (warm venv, with the hypervisor)", time.monotonic() - began))
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.clouds_yaml)
    key = Path(tempfile.mkdtemp(prefix="llmcloud-bench-ssh-")) / "id_ed25519"
    ensure_ed25519(key, "bench@llmcloud")
    try:
        if args.topology in ("single", "both"):
            rows += run(
                cloud,
                engine,
                key,
                "bench-boot-single",
                "example",
                {
                    "llmcloud:adminCidrs": [f"{PUBLIC_GATEWAY}/32"],
                    "llmcloud:network": {"cidr": "10.63.0.0/24", "externalNetwork": "public"},
                    "llmcloud:engineNode": NODE,
                },
                "public",
            )
        if args.topology in ("berlin", "both"):
            rows += run(
                cloud,
                engine,
                key,
                "bench-boot-berlin",
                "denbi-berlin",
                {
                    "llmcloud:replicas": "2",
                    "llmcloud:adminCidrs": [f"{external.JUMP_HOST_ADDRESS}/32"],
                    "llmcloud:reach": {
                        "floatingIpPool": "dmz-int",
                        "jumpHost": f"alice@127.0.0.1:{cloud.settings().ports.jumphost}",
                    },
                    "llmcloud:engineNode": {**NODE, "flavor": "de.NBI GPU T4 medium"},
                    "llmcloud:backup": {"target": "none"},
                },
                "dmz-int",
            )
    finally:
        if started_here:
            cloud.down()
    print("\n`pulumi up` with servers that boot (seconds)")
    for label, seconds in rows:
        print(f"  {label:<70} {seconds:8.1f}")


if __name__ == "__main__":
    main()
