"""The cloud's outside: external subnets as Docker bridges (this machine is the router upstream), the site
jump host on ``dmz-int``, and the addresses of this machine that no bridge may hide."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
from pathlib import Path

from llmcloud.local.system import run_in, tar_of

JUMP_HOST_LABEL = "llmcloud.jumphost"
JUMP_HOST_NETWORK = "dmz-int"
JUMP_HOST_ADDRESS = "172.16.102.5"
SUBNET_LABEL = "llmcloud.subnet"
log = logging.getLogger("llmcloud.hypervisor")


class ExternalSide:
    """Hypervisor's part that faces outside (a mixin: it uses the hypervisor's clients and caches)."""

    def jump_host(self, accounts: bool = True) -> None:
        network = self.admin.network.find_network(JUMP_HOST_NETWORK)
        if network is None:
            return
        subnet = self.external_subnet(network.id, JUMP_HOST_ADDRESS)
        if subnet is None:
            return
        net = self.mark_external(subnet)
        name = f"llmcloud-{self.tag}-jumphost"
        found = self.docker.containers.list(all=True, filters={"name": f"^{name}$"})
        container = found[0] if found else self._start_jump_host(name, net)
        if container.status != "running":
            container.start()
        if accounts or not self.jump_keys:
            self._jump_accounts(container)

    def external_networks(self) -> None:
        """Every external subnet as a Docker network from the start: this machine is the router upstream."""
        if self.rounds % 15:
            return
        for network in self.admin.network.networks(is_router_external=True):
            for subnet_id in network.subnet_ids:
                self.mark_external(subnet_id)

    def mark_external(self, subnet_id: str):
        """The Docker network of an external subnet, labelled so floating IPs may use it."""
        import docker

        cached = self.external.get(subnet_id)
        if cached is not None:
            return cached
        net = self.network_for(subnet_id)
        if net.attrs["Labels"].get("llmcloud.external") == "true":
            self.external[subnet_id] = net
            return net
        if net.attrs.get("Containers"):
            raise RuntimeError(f"{net.name} is in use as a project network")
        net.remove()
        subnet = self.admin.network.get_subnet(subnet_id)
        pool = docker.types.IPAMPool(subnet=subnet.cidr, gateway=subnet.gateway_ip)
        self.external[subnet_id] = self.docker.networks.create(
            net.name,
            driver="bridge",
            ipam=docker.types.IPAMConfig(pool_configs=[pool]),
            labels=self.labels(**{SUBNET_LABEL: subnet_id, "llmcloud.external": "true"}),
        )
        return self.external[subnet_id]

    def _start_jump_host(self, name: str, net):
        from llmcloud.keys import ensure_ed25519
        from testbed.configs import Settings

        settings = Settings.from_dict(json.loads((self.work / "settings.json").read_text()))
        key = self.work / "data" / "jumphost" / "ssh_host_ed25519_key"
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        ensure_ed25519(key, f"root@{JUMP_HOST_NETWORK}-jumphost")
        container = self.docker.containers.create(
            self.jump_image,
            name=name,
            hostname="jumphost",
            detach=True,
            stop_signal="SIGRTMIN+3",
            labels=self.labels(**{JUMP_HOST_LABEL: "true"}),
            cap_add=capabilities(),
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            cgroupns="host",
            tmpfs={"/run": "", "/run/lock": ""},
            volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
            ports={"22/tcp": ("127.0.0.1", settings.ports.jumphost)},
            network=net.name,
            networking_config={
                net.name: self.docker.api.create_endpoint_config(ipv4_address=JUMP_HOST_ADDRESS)
            },
        )
        container.put_archive("/etc/ssh", tar_of({"ssh_host_ed25519_key": (key.read_bytes(), 0o600, 0)}))
        container.start()
        self.jump_keys.clear()
        log.info("jump host %s at %s, 127.0.0.1:%s", name, JUMP_HOST_ADDRESS, settings.ports.jumphost)
        return container

    def _jump_accounts(self, container) -> None:
        """An account per cloud user with keypairs, holding exactly those public keys."""
        wanted: dict[str, str] = {}
        for user in self.admin.identity.users():
            keys = [k.public_key for k in self.admin.compute.keypairs(user_id=user.id)]
            if keys:
                wanted[user.name] = "\n".join(sorted(keys)) + "\n"
        for user, keys in wanted.items():
            if self.jump_keys.get(user) == keys:
                continue
            if container.exec_run(["id", "-u", user]).exit_code != 0:
                container.exec_run(["useradd", "--create-home", "--shell", "/bin/bash", user])
            uid = int(run_in(container, ["id", "-u", user]).output.decode().strip())
            files = {".ssh": (None, 0o700, uid), ".ssh/authorized_keys": (keys.encode(), 0o600, uid)}
            container.put_archive(f"/home/{user}", tar_of(files))
            self.jump_keys[user] = keys
            log.info("jump host: account %s with %d key(s)", user, keys.count("\n"))


#: Names whose addresses this machine and its VMs need (packages, images); a bridge must not hide them.
NEEDED_NAMES = ("deb.debian.org", "security.debian.org", "pypi.org", "archive.ubuntu.com")


def machine_addresses() -> dict[str, str]:
    """{address: what} this machine depends on: its default gateway, its resolvers, its package mirrors."""
    out = {}
    for line in subprocess.run(
        ["ip", "-4", "route", "show", "default"], capture_output=True, text=True
    ).stdout.splitlines():
        parts = line.split()
        if "via" in parts:
            out[parts[parts.index("via") + 1]] = "the default gateway"
    resolv = Path("/etc/resolv.conf")
    for line in resolv.read_text().splitlines() if resolv.is_file() else []:
        if line.startswith("nameserver"):
            out[line.split()[1]] = "a DNS resolver"
    for name in NEEDED_NAMES:
        try:
            for info in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM):
                out.setdefault(info[4][0], name)
        except OSError:
            continue
    return out


def refuse_hiding(cidr: str, what: str) -> None:
    """A Docker bridge for ``cidr`` would route those addresses to itself: refuse, naming the clash."""
    network = ipaddress.ip_network(cidr)
    for address, role in machine_addresses().items():
        if ipaddress.ip_address(address) in network:
            raise RuntimeError(
                f"{what} ({cidr}) contains {address}, {role} of this machine; a bridge for it would cut "
                "that off. Give the subnet another range"
            )


def capabilities() -> list[str]:
    """Every capability but SYS_RESOURCE, as a local stack's hosts get (systemd, Docker, nftables inside)."""
    from llmcloud.local.stack import CAPABILITIES

    return CAPABILITIES
