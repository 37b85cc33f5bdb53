"""A server whose cloud-init fails makes `pulumi up` fail soon, naming the host, the cause and the log.

The data volume is broken the way a person can break it: it holds another file system (here: swap) when the
VM boots. Our user data refuses to format a volume that holds data, so cloud-init fails; `Configure` must
report that within its timeout instead of hanging, and without a Python traceback.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from pulumi.automation import CommandError

from testbed import hypervisor
from testbed.automation import Lines
from testbed.booted import PUBLIC_GATEWAY, stack_settings

PREFIX = "llm-bootfail"
TIMEOUT = 300
NODE = {"flavor": "gpu.medium", "imagePattern": r"^Ubuntu-24\.04.*$", "dataVolumeSize": 10, "gpu": False}


@pytest.fixture(scope="module")
def stack(make_stack, ssh_private_key, ssh_public_key):
    settings = stack_settings(
        ssh_private_key,
        ssh_public_key,
        **{
            "llmcloud:configure": "false",
            "llmcloud:configureTimeout": str(TIMEOUT),
            "llmcloud:adminCidrs": [f"{PUBLIC_GATEWAY}/32"],
            "llmcloud:network": {"cidr": "10.62.0.0/24", "externalNetwork": "public"},
            "llmcloud:engineNode": NODE,
        },
    )
    made = make_stack("bootfail", "example", settings, {"llmcloud:oauthClientSecret": "x" * 24})
    yield made
    made.reset()


def wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_ssh_config_of_an_up_without_configure_works_without_a_warning(stack, cloud, admin):
    """`configure: false` writes the inventory and nothing else runs: its ssh_config must work on its own."""
    assert stack.up(on_output=Lines()).summary.result == "succeeded"
    known_hosts = stack.inventory_dir / "ssh" / "known_hosts"
    assert known_hosts.is_file(), "ssh_config names a known_hosts file that does not exist"
    assert known_hosts.stat().st_mode & 0o777 == 0o600 and known_hosts.parent.stat().st_mode & 0o777 == 0o700

    def ssh() -> subprocess.CompletedProcess:
        command = [
            "ssh",
            "-F",
            str(stack.inventory_dir / "ssh_config"),
            "-o",
            "ConnectTimeout=5",
            "llm1",
            "true",
        ]
        return subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)

    first = ssh()
    deadline = time.monotonic() + 240  # the VM boots and cloud-init makes the deploy user
    while first.returncode != 0 and time.monotonic() < deadline:
        assert "Failed to add" not in first.stderr, first.stderr
        time.sleep(3)
        first = ssh()
    assert first.returncode == 0, first.stderr
    assert "Failed to add" not in first.stderr, first.stderr
    assert known_hosts.read_text().strip(), "the VM's host key was not kept"
    again = ssh()
    assert again.returncode == 0 and not again.stderr.strip(), again.stderr


def test_broken_data_volume_fails_up_with_host_cause_and_log(stack, cloud, admin):
    assert stack.up(on_output=Lines()).summary.result == "succeeded"  # configure off: VM and volume only
    server = admin.compute.find_server(f"{PREFIX}-llm1", all_projects=True, ignore_missing=False)
    volume = admin.block_storage.find_volume(f"{PREFIX}-llm1-data", ignore_missing=False, all_projects=True)

    def booted() -> bool:  # as the hypervisor reports it (`llmcloud-testbed status`)
        vms = (hypervisor.status(cloud.work) or {}).get("vms", [])
        return any(vm["server"] == server.id and vm["state"] == "running" for vm in vms)

    wait_for(booted, "the first boot")
    # Stop the VM (its host goes, the volume's file is released), then put swap on the volume.
    admin.compute.stop_server(server)
    wait_for(lambda: not booted(), "the VM to stop")
    path = hypervisor.volume_file(cloud.work, volume.id)
    assert hypervisor.detach_loops(path, wait=60), "the stopped VM's volume is still in use"
    with open(path, "r+b") as disk:
        disk.write(b"\0" * (1 << 20))  # no ext4 signature left for blkid to find
    subprocess.run(["mkswap", str(path)], check=True, capture_output=True)

    # A replacement VM (an older image) with configure on: cloud-init meets the swap volume and fails.
    older = {**NODE, "imagePattern": None, "image": "Ubuntu-24.04-20260901"}
    stack.set_config({"llmcloud:configure": "true", "llmcloud:engineNode": older})
    lines = Lines()
    began = time.monotonic()
    with pytest.raises(CommandError):
        stack.up(on_output=lines)
    took = time.monotonic() - began
    text = lines.text
    assert took < TIMEOUT + 120, f"up took {took:.0f}s with configureTimeout {TIMEOUT}"
    assert "llm1: cloud-init failed" in text
    assert "holds a swap file system, not ext4" in text
    assert "/var/log/cloud-init-output.log" in text
    assert "Traceback" not in text
