"""The split topology with two engine VMs, reached only through the site jump host, from nothing to verified.

stacks/Pulumi.denbi-berlin.yaml as a Berlin user runs it: the project's existing network, floating IPs from
the private pool `dmz-int`, SSH through the jump host (here: the local cloud's jump host on `dmz-int`, which
holds the keys of alice's Nova keypairs). Two differences, both forced by this machine and said here: TLS is
self-signed instead of ending at Berlin's load balancer (there is none), and backups are off (this kernel has
no NFS client for the Manila share).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from testbed.automation import Lines
from testbed.booted import MODEL, deploy, identity_provider, stack_settings
from tests.clients import asking, tally
from tests.provision.readback import newest_image, stack_resources

JUMP_HOST = "172.16.102.5"
OLDER_GPU_IMAGE = r"^Ubuntu-24\.04-20260901-gpu$"


@pytest.fixture(scope="module")
def idp(cloud, admin):
    with identity_provider(cloud, admin, "dmz-int") as url:
        yield url


@pytest.fixture(scope="module")
def stack(make_stack, cloud, ssh_private_key, ssh_public_key):
    jump = f"alice@127.0.0.1:{cloud.settings().ports.jumphost}"
    settings = stack_settings(
        ssh_private_key,
        ssh_public_key,
        **{
            "llmcloud:replicas": "2",
            # SSH only from the jump host (the engines also from the edge, added by the program).
            "llmcloud:adminCidrs": [f"{JUMP_HOST}/32"],
            "llmcloud:reach": {"floatingIpPool": "dmz-int", "jumpHost": jump},
            "llmcloud:engineNode": {
                "flavor": "de.NBI GPU T4 medium",
                "imagePattern": r"^Ubuntu-24\.04-.*-gpu$",
                "dataVolumeSize": 10,
                "gpu": False,
            },
            "llmcloud:backup": {"target": "none"},
        },
    )
    made = make_stack("berlin-boot", "denbi-berlin", settings, {"llmcloud:oauthClientSecret": "y" * 24})
    yield made
    made.reset()


@pytest.fixture(scope="module")
def deployed(stack, idp):
    return deploy(stack, idp)


def test_up_converges_and_verifies_three_vms_through_the_jump_host(deployed, record_property):
    result, lines, _, took = deployed
    record_property("up_seconds", round(took))
    assert result.summary.result == "succeeded"
    text = lines.text
    assert "wait for SSH and cloud-init" in text
    for host in ("edge1", "llm1", "llm2"):
        assert f"changed: {host}" in text


def on(stack, host: str, command: str) -> subprocess.CompletedProcess:
    """``command`` on ``host`` as its users run it: `ssh -F inventory/<stack>/ssh_config <host>`."""
    config = str(stack.inventory_dir / "ssh_config")
    return subprocess.run(["ssh", "-F", config, host, command], capture_output=True, text=True, timeout=60)


def test_engines_answer_only_through_the_jump_host_and_the_edge(deployed, stack):
    config = str(stack.inventory_dir / "ssh_config")
    via_jump = subprocess.run(
        ["ssh", "-F", config, "llm2", "hostname"], capture_output=True, text=True, timeout=60
    )
    assert via_jump.returncode == 0, via_jump.stderr
    assert via_jump.stdout.strip().endswith("llm2")
    # The edge's floating IP directly from this machine (not the jump host): SSH is not in adminCidrs.
    entry = stack.outputs()["entry_address"]
    direct = subprocess.run(
        ["ssh", "-F", config, "-o", "ProxyJump=none", "-o", "ConnectTimeout=5", f"deploy@{entry}", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert direct.returncode != 0


def test_streamed_chat_through_the_edge_in_front_of_two_engines(deployed, stack):
    from openai import DefaultHttpxClient, OpenAI

    _, _, key, _ = deployed
    entry = stack.outputs()["entry_address"]
    with DefaultHttpxClient(
        verify=str(stack.inventory_dir / "tls" / "ca.pem"), trust_env=False, timeout=30
    ) as http:
        client = OpenAI(base_url=f"https://{entry}/v1", api_key=key, http_client=http)
        for _ in range(4):
            chunks = list(
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
                )
            )
            assert len(chunks) >= 5


def test_a_new_image_replaces_the_engine_vms_one_at_a_time_without_a_failed_request(
    deployed, stack, admin, project, record_property
):
    """An older image for the engine VMs (`engineNode.imagePattern`) while four clients (two streamed) ask
    through the edge: each engine VM leaves the edge's pools, is replaced, converged alone and back in the
    pools before the next is touched; the edge stays; each new VM has its data volume; no request fails."""
    _, _, key, _ = deployed
    prefix = "llm-berlin-boot"
    before = stack_resources(admin, project.id, prefix)
    engines = [f"{prefix}-llm1", f"{prefix}-llm2"]
    volumes = {name: [a["id"] for a in before.servers[name].attached_volumes] for name in engines}
    # What a replacement must keep or bring: the model cache on the data volume, and a setting of the user's
    # own in the inventory (that such a file alone re-runs Ansible is unit-tested: it is part of the digest).
    marker = f"cache-{time.time_ns()}"
    wrote = on(stack, "llm1", f"echo {marker} | sudo -n tee /srv/llmcloud/llmcloud-test-marker")
    assert wrote.returncode == 0, wrote.stderr
    (stack.inventory_dir / "group_vars" / "all" / "70-mine.yml").write_text(
        "common_journald_system_max_use: 300M\n"
    )
    settings = stack.stack.get_all_config()["llmcloud:engineNode"].value
    stack.set_config({"llmcloud:engineNode": {**json.loads(settings), "imagePattern": OLDER_GPU_IMAGE}})
    endpoint = {
        "openai_base_url": f"https://{stack.outputs()['entry_address']}/v1",
        "api_key": key,
        "ca_bundle": str(stack.inventory_dir / "tls" / "ca.pem"),
    }
    lines = Lines()
    with asking(endpoint, MODEL) as results:
        began = time.monotonic()
        result = stack.up(on_output=lines)
        took = time.monotonic() - began
    failed = [r for r in results if not r[1]]
    record_property("engine_vm_replacement_s", round(took))
    record_property("engine_vm_replacement_requests", len(results))
    record_property("engine_vm_replacement_failed", len(failed))
    summary = f"{took:.0f}s, {tally(results)}"
    print(f"\n  two engine VMs replaced one at a time: {summary}")
    assert result.summary.result == "succeeded"
    assert not failed, failed[:3]
    assert len(results) > 20
    text = lines.text
    # llm1 out, replaced, back in; only then llm2 out.
    order = [
        text.index("take llm1 out of the edge's pools"),
        text.index("converge llm1 alone"),
        text.index("put llm1 back into the edge's pools"),
        text.index("take llm2 out of the edge's pools"),
        text.index("put llm2 back into the edge's pools"),
    ]
    assert order == sorted(order), order
    after = stack_resources(admin, project.id, prefix)
    assert after.servers[f"{prefix}-edge1"].id == before.servers[f"{prefix}-edge1"].id  # the edge stays
    for name in engines:
        server = after.servers[name]
        assert server.id != before.servers[name].id
        assert server.image.id == newest_image(admin, OLDER_GPU_IMAGE).id
        assert [a["id"] for a in server.attached_volumes] == volumes[name]  # its model cache moved with it
    kept = on(
        stack,
        "llm1",
        "sudo -n cat /srv/llmcloud/llmcloud-test-marker; cat /etc/systemd/journald.conf.d/*.conf",
    )
    assert marker in kept.stdout and "300M" in kept.stdout, kept.stderr
    # The new VMs' host keys were learned, and every later connection checks them.
    config = str(stack.inventory_dir / "ssh_config")
    check = subprocess.run(
        ["ssh", "-F", config, "-o", "StrictHostKeyChecking=yes", "llm2", "true"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
