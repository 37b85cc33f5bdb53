"""The split topology with two engine VMs, reached only through the site jump host, from nothing to verified.

stacks/Pulumi.denbi-berlin.yaml as a Berlin user runs it: the project's existing network, floating IPs from
the private pool `dmz-int`, SSH through the jump host (here: the local cloud's jump host on `dmz-int`, which
holds the keys of alice's Nova keypairs). Two differences, both forced by this machine and said here: TLS is
self-signed instead of ending at Berlin's load balancer (there is none), and backups are off (this kernel has
no NFS client for the Manila share).
"""

from __future__ import annotations

import subprocess

import pytest

from testbed.booted import MODEL, deploy, identity_provider, stack_settings

JUMP_HOST = "172.16.102.5"


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
