"""What a stack needs when its servers boot (testbed/hypervisor.py) and `pulumi up` configures them.

The roles run unchanged. What cannot come from the internet here is set the way a user sets their own
settings: a file beside the generated ones in the inventory (group_vars/all/50-local-peers.yml), which
provisioning never rewrites. It names the engine TEST DOUBLE and oauth2-proxy as preloaded images (no
registry), the identity provider that runs on the cloud's public network, and a self-signed certificate
whose CA comes back to this machine.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from llmcloud.keys import write_private
from llmcloud.local import image, peers, system
from llmcloud.local.artifacts import engine_double
from llmcloud.local.stack import CLIENT_ID, DEMO_USERS
from llmcloud.progress import Progress
from testbed import hypervisor
from testbed.automation import Lines

DOMAIN = "llm.example.test"
#: The identity provider's address on each external network: outside the floating-IP pools (.100-.250),
#: not the gateway (.1, this machine as the cloud's upstream router), not the Berlin jump host (.5).
IDP_ADDRESSES = {"public": "198.51.100.7", "dmz-int": "172.16.102.7"}
IDP_PORT = 9400
PUBLIC_GATEWAY = "198.51.100.1"
MODEL = "llmcloud/engine-test-double"


def external_docker_network(cloud, admin, name: str):
    """The Docker network that plays the cloud's external network ``name`` (made by the hypervisor)."""
    subnet_id = admin.network.find_network(name).subnet_ids[0]
    client = system.docker_client()
    labels = [
        f"{hypervisor.CLOUD_LABEL}={hypervisor.cloud_tag(cloud.work)}",
        f"{hypervisor.SUBNET_LABEL}={subnet_id}",
    ]
    deadline = time.monotonic() + 60
    while not (found := client.networks.list(filters={"label": labels})):
        assert time.monotonic() < deadline, f"the hypervisor made no Docker network for {name}"
        time.sleep(1)
    return found[0]


@contextmanager
def identity_provider(cloud, admin, network: str = "public"):
    """oidc-provider-mock on an external network, reachable from the VMs there and from this machine."""
    client = system.docker_client()
    progress = Progress("identity provider")
    ref = peers.oidc_mock(client, progress, image.ensure(progress))
    net = external_docker_network(cloud, admin, network)
    address = IDP_ADDRESSES[network]
    name = f"llmcloud-{hypervisor.cloud_tag(cloud.work)}-idp-{network}"
    for old in client.containers.list(all=True, filters={"name": f"^{name}$"}):
        old.remove(force=True)
    command = ["--host", "0.0.0.0", "--port", str(IDP_PORT), "--token-max-age", "3600"]
    for user in DEMO_USERS:
        command += ["--user-claims", json.dumps(user)]
    container = client.containers.run(
        ref,
        command,
        name=name,
        detach=True,
        network=net.name,
        networking_config={net.name: client.api.create_endpoint_config(ipv4_address=address)},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((address, IDP_PORT), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, container.logs()[-500:]
                time.sleep(0.3)
        yield f"http://{address}:{IDP_PORT}"
    finally:
        container.remove(force=True)


def images() -> dict[str, tuple[str, Path]]:
    client = system.docker_client()
    progress = Progress("images")
    cache = image.IMAGE_CACHE
    return {
        "engine": engine_double().ensure(client, progress, cache),
        "oauth2_proxy": peers.oauth2_proxy(client, progress, cache),
    }


def write_peer_settings(inventory_dir: Path, built: dict[str, tuple[str, Path]], idp_url: str) -> str:
    """The user's own settings for the local peers; returns the API key it configures."""
    (engine_ref, engine_tar), (proxy_ref, proxy_tar) = built["engine"], built["oauth2_proxy"]
    settings = {
        # A container must not steer the clock of the machine it runs on.
        "common_timesync_set_clock": False,
        # No registry: both images are delivered the air-gapped way. The engine is the TEST DOUBLE.
        "container_images_preload": [
            {"path": str(engine_tar), "name": engine_ref},
            {"path": str(proxy_tar), "name": proxy_ref},
        ],
        "llm_engine_image": engine_ref,
        "llm_engine_healthcheck_test": ["CMD", "/engine-double", "-healthcheck", "--port", "80"],
        "llm_engine_health_timeout": 300,
        "oauth2_proxy_image": proxy_ref,
        # The chat UI (role open_webui) is covered by the integration suite; here its 1.5 GB image would be
        # copied into every booted edge.
        "open_webui_enabled": False,
        "oauth2_proxy_issuer_url": idp_url,  # plain http: the local provider has no certificate
        # Self-signed (no public ACME CA here): the certificate names the domain and the entry address,
        # and its CA comes back to the inventory for clients.
        "certbot_selfsigned_ip_addresses": ["{{ public_ip | default(private_ip) }}"],
        "certbot_export_ca": str(inventory_dir / "tls" / "ca.pem"),
    }
    directory = inventory_dir / "group_vars" / "all"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "50-local-peers.yml").write_text(
        "# The local test bed's peers (testbed/booted.py).\n" + yaml.safe_dump(settings, sort_keys=True)
    )
    key = "llmc_" + secrets.token_urlsafe(32)
    write_private(
        directory / "60-api-keys.yml",
        yaml.safe_dump({"oauth2_proxy_api_keys": [{"name": "tests", "key": key}]}).encode(),
    )
    return key


def stack_settings(ssh_private_key: Path, ssh_public_key: str, **extra) -> dict:
    """Stack settings shared by the booted stacks (on top of the stack file they start from)."""
    return {
        "llmcloud:configure": "true",
        "llmcloud:configureTimeout": "900",
        "llmcloud:sshPublicKey": ssh_public_key,
        "llmcloud:sshPrivateKeyFile": str(ssh_private_key),
        "llmcloud:domain": DOMAIN,
        "llmcloud:engine": {"kind": "tgi", "modelId": MODEL},
        "llmcloud:auth": {
            "provider": "oidc",
            "issuerUrl": "https://idp.example.test",  # replaced by 50-local-peers.yml (plain http here)
            "clientId": CLIENT_ID,
            "allowedEmailDomains": ["example.org"],
        },
        "llmcloud:tls": {"mode": "selfsigned"},
        "llmcloud:allowDataLoss": "true",
        **extra,
    }


def deploy(stack, idp_url: str):
    """The peers' settings, then `pulumi up` from nothing: (result, output lines, API key, seconds)."""
    key = write_peer_settings(stack.inventory_dir, images(), idp_url)
    lines = Lines()
    began = time.monotonic()
    result = stack.up(on_output=lines)
    return result, lines, key, time.monotonic() - began
