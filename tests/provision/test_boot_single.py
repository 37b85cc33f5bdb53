"""`pulumi up` from nothing to a verified endpoint, on the local cloud where servers really boot.

stacks/Pulumi.example.yaml (single topology) with `configure: true`: the hypervisor boots the VM, cloud-init
runs our user data (deploy user, data volume formatted once and mounted, ready marker), `Configure` waits for
SSH and cloud-init, converges site.yml and runs the testinfra suite, all inside `up`. The steps run in file
order and share one stack.
"""

from __future__ import annotations

import subprocess

import pytest

from testbed.automation import Lines
from testbed.booted import (
    MODEL,
    PUBLIC_GATEWAY,
    deploy,
    identity_provider,
    stack_settings,
)

PREFIX = "llm-boot"


@pytest.fixture(scope="module")
def idp(cloud, admin):
    with identity_provider(cloud, admin) as url:
        yield url


@pytest.fixture(scope="module")
def stack(make_stack, ssh_private_key, ssh_public_key):
    made = make_stack(
        "boot",
        "example",
        stack_settings(
            ssh_private_key,
            ssh_public_key,
            **{
                "llmcloud:namePrefix": "llm",
                # SSH reaches the VM's floating IP from this machine's address on the public network.
                "llmcloud:adminCidrs": [f"{PUBLIC_GATEWAY}/32"],
                "llmcloud:network": {"cidr": "10.61.0.0/24", "externalNetwork": "public"},
                "llmcloud:engineNode": {
                    "flavor": "gpu.medium",
                    "imagePattern": r"^Ubuntu-24\.04.*$",
                    "dataVolumeSize": 10,
                    "gpu": False,  # no GPU here: the nvidia role skips instead of failing
                },
            },
        ),
        {"llmcloud:oauthClientSecret": "local-client-secret"},
    )
    yield made
    made.reset()  # its VM would hold memory and CPU through the rest of the suite


@pytest.fixture(scope="module")
def deployed(stack, idp):
    return deploy(stack, idp)


def ssh(stack, command: str) -> subprocess.CompletedProcess:
    """Run a command on the VM as its users do: `ssh -F inventory/<stack>/ssh_config llm1`."""
    return subprocess.run(
        ["ssh", "-F", str(stack.inventory_dir / "ssh_config"), "llm1", command],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_up_boots_configures_and_verifies(deployed, record_property):
    result, lines, _, took = deployed
    record_property("up_seconds", round(took))
    assert result.summary.result == "succeeded"
    text = lines.text
    # Progress of the configure step shows in `pulumi up` itself, task by task.
    assert "wait for SSH and cloud-init" in text
    assert "PLAY [" in text or "PLAY " in text
    assert "post-deploy checks" in text or "passed" in text


def test_cloud_init_ran_the_user_data(deployed, stack):
    checks = ssh(
        stack,
        "id -nG deploy; findmnt -n -o SOURCE,FSTYPE /srv/llmcloud;"
        " test -f /var/lib/llmcloud/cloud-init.done && echo ready",
    )
    assert checks.returncode == 0, checks.stderr
    groups, mount, ready = checks.stdout.strip().splitlines()
    assert "sudo" in groups or "deploy" in groups
    assert mount.startswith("/dev/disk/by-id/virtio-") and mount.endswith("ext4")
    assert ready == "ready"


def test_the_vm_is_the_server_nova_made(deployed, stack, admin):
    instance = ssh(stack, "sudo -n cloud-init query instance-id").stdout.strip()
    assert instance == admin.compute.find_server(f"{PREFIX}-llm1", all_projects=True, ignore_missing=False).id


def test_streamed_chat_through_the_edge_with_an_api_key_and_verified_tls(deployed, stack):
    from openai import DefaultHttpxClient, OpenAI

    _, _, key, _ = deployed
    entry = stack.outputs()["entry_address"]
    ca = stack.inventory_dir / "tls" / "ca.pem"
    assert ca.is_file()
    with DefaultHttpxClient(verify=str(ca), trust_env=False, timeout=30) as http:
        client = OpenAI(base_url=f"https://{entry}/v1", api_key=key, http_client=http)
        assert MODEL in [m.id for m in client.models.list().data]
        chunks = list(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=7, stream=True
            )
        )
        assert len(chunks) >= 7
        refused = OpenAI(base_url=f"https://{entry}/v1", api_key="llmc_wrong", http_client=http)
        with pytest.raises(Exception) as err:
            refused.models.list()
        assert "401" in str(err.value)


def test_second_up_changes_nothing_and_runs_no_ansible(deployed, stack):
    lines = Lines()
    result = stack.up(on_output=lines)
    assert set(result.summary.resource_changes) == {"same"}
    assert "PLAY" not in lines.text
