"""The local stack's target hosts: Debian 12 systemd containers on the stack's own Docker network.

Each is a real host for Ansible (systemd, sshd, apt, nftables, Docker inside), reached over SSH on 127.0.0.1
through Docker's port forwarding, with its own SSH host key and the deploy user's key put in before it boots.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llmcloud.errors import UserError
from llmcloud.local import image, system
from llmcloud.local.artifacts import IMAGE_CACHE, IMAGES_MOUNT
from llmcloud.local.settings import BACKUP_MOUNT

if TYPE_CHECKING:
    from llmcloud.local.stack import LocalStack

# Every capability Docker 20.10 knows except SYS_RESOURCE, which this machine's bounding set lacks
# (that is why --privileged fails here). systemd, nftables and Docker inside the host need the rest.
CAPABILITIES = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
]


def network(stack: LocalStack, client):
    """The stack's private network (made once)."""
    existing = client.networks.list(names=[stack.network_name])
    if existing:
        return existing[0]
    return client.networks.create(stack.network_name, driver="bridge", labels=stack.labels())


def start(
    stack: LocalStack, client, ref: str, net, index: int, name: str, groups, deploy_pub: str, host_key: Path
):
    """The host's container, created and started (or started again, when it is there)."""
    from docker.errors import NotFound

    try:
        container = client.containers.get(stack.container_name(name))
    except NotFound:
        container = None
    if container is not None:
        if container.status != "running":
            container.start()
        return container
    ports = stack.ports(index, groups)
    for container_port, (_, host_port) in ports.items():
        require_free_port(host_port, f"{name} {container_port}")
    volume = client.volumes.create(f"llmcloud-{stack.name}-{name}-docker", labels=stack.labels(name))
    if not client.volumes.list(filters={"name": stack.backup_volume}):
        client.volumes.create(stack.backup_volume, labels=stack.labels())
    container = client.containers.create(
        ref,
        name=stack.container_name(name),
        hostname=name,
        detach=True,
        stop_signal="SIGRTMIN+3",  # systemd's clean shutdown
        # A reboot inside (systemctl reboot, reboot.yml) comes back as a VM does; `docker stop` stays stopped.
        restart_policy={"Name": "unless-stopped"},
        labels=stack.labels(name),
        cap_add=CAPABILITIES,
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        device_cgroup_rules=["a *:* rwm"],
        cgroupns="host",
        tmpfs={"/run": "", "/run/lock": ""},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            # Docker inside the host needs a real file system for overlay2.
            volume.name: {"bind": "/var/lib/docker", "mode": "rw"},
            # Plays the part of a Manila share: shared by the hosts, it outlives any one of them.
            stack.backup_volume: {"bind": BACKUP_MOUNT, "mode": "rw"},
            str(IMAGE_CACHE): {"bind": IMAGES_MOUNT, "mode": "ro"},
        },
        ports=ports,
        network=net.name,
    )
    container.put_archive("/", first_boot_files(deploy_pub, host_key))
    container.start()
    return container


def wait_ready(container, name: str, timeout: float = 120) -> None:
    """Until systemd has booted and sshd answers on the published port."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = container.exec_run(["systemctl", "is-system-running"]).output.decode().strip()
        if state in ("running", "degraded"):
            break
        time.sleep(0.5)
    else:
        raise UserError(
            f"host {name}: systemd did not finish booting within {timeout:.0f}s ({state or 'no answer'})",
            f"inspect it with `docker exec {container.name} systemctl --failed`",
        )
    container.reload()
    port = int(container.ports["22/tcp"][0]["HostPort"])
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                if sock.recv(64).startswith(b"SSH-2.0"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise UserError(
                f"host {name}: sshd does not answer on 127.0.0.1:{port}",
                f"inspect it with `docker exec {container.name} journalctl -u ssh`",
            )
        time.sleep(0.5)


def address_of(container, network_name: str) -> str | None:
    """The host's address on the stack's private network."""
    return container.attrs["NetworkSettings"]["Networks"].get(network_name, {}).get("IPAddress")


def require_free_port(port: int, what: str) -> None:
    if system.port_taken(port):
        raise UserError(
            f"port 127.0.0.1:{port} (for {what}) is already in use by another program",
            "stop that program, or pick other ports with --ssh-port/--http-port/--https-port",
        )


def first_boot_files(deploy_pub: str, host_key_path: Path) -> bytes:
    """A tar with this host's own SSH host key and the deploy user's authorized key."""
    pub = host_key_path.with_name(host_key_path.name + ".pub").read_bytes()
    return system.tar_of(
        {
            "etc/ssh/ssh_host_ed25519_key": (host_key_path.read_bytes(), 0o600, 0),
            "etc/ssh/ssh_host_ed25519_key.pub": (pub, 0o644, 0),
            "home/deploy/.ssh": (None, 0o700, image.DEPLOY_UID),
            "home/deploy/.ssh/authorized_keys": ((deploy_pub + "\n").encode(), 0o600, image.DEPLOY_UID),
        }
    )
