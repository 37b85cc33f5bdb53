"""The local stack's identity provider: oidc-provider-mock with the demo users, on the network's gateway."""

from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING

from llmcloud.errors import UserError
from llmcloud.local.hosts import require_free_port
from llmcloud.local.settings import DEMO_USERS

if TYPE_CHECKING:
    from llmcloud.local.stack import LocalStack

#: A container of the stack that is not a target host.
PEER_LABEL = "llmcloud.peer"


def container_name(stack: LocalStack) -> str:
    return f"llmcloud-{stack.name}-idp"


def url(stack: LocalStack, network) -> str:
    """On the stack network's gateway: one URL for a browser here and for oauth2-proxy on the edge."""
    network.reload()
    return f"http://{network.attrs['IPAM']['Config'][0]['Gateway']}:{stack.idp_port}"


def start(stack: LocalStack, client, idp_image: str, network) -> None:
    """Run it (once; started again when stopped) and wait until it answers."""
    from docker.errors import NotFound

    try:
        container = client.containers.get(container_name(stack))
        if container.status != "running":
            container.start()
        return
    except NotFound:
        pass
    require_free_port(stack.idp_port, "identity provider")
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    command = ["--host", gateway, "--port", str(stack.idp_port)]
    command += ["--token-max-age", str(stack.idp_token_max_age)]
    for user in DEMO_USERS:
        command += ["--user-claims", json.dumps(user)]
    client.containers.run(
        idp_image,
        command,
        name=container_name(stack),
        detach=True,
        network_mode="host",
        labels={**stack.labels(), PEER_LABEL: "idp"},
        restart_policy={"Name": "unless-stopped"},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((gateway, stack.idp_port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise UserError(
        f"the identity provider did not start on {gateway}:{stack.idp_port}",
        f"see `docker logs {container_name(stack)}`",
    )
