"""The local cloud's hypervisor: every ACTIVE server boots as a target host, as a VM would.

Nova's fake virt driver makes servers ACTIVE without running anything. This process plays the hypervisor and
the dataplane beside it. It polls the cloud's APIs as the operator every POLL_SECONDS and reconciles:

- a server that is ACTIVE gets a container of the VM image (Debian 12, systemd, cloud-init; image.py) on a
  Docker network per Neutron subnet (same CIDR and gateway), at its port's fixed address;
- cloud-init receives the server's own user data and meta data (instance id, hostname) from Nova as a NoCloud
  seed, and really runs it;
- every volume attached to it (except a boot volume, which is the image's root here) appears as the device a
  KVM guest sees, ``/dev/disk/by-id/virtio-<first 20 characters of the volume id>``: a loop device over a file
  that belongs to the Cinder volume (``<workdir>/data/volumes/<id>.img``), so a volume moved to another server
  carries its data, and the file goes only when the volume is deleted;
- a floating IP associated with one of its ports becomes an address of the container on a Docker network of
  the external subnet: reachable from this machine as the entry address, from nowhere else (none published);
- a server that is deleted (or stops being ACTIVE) loses its container; its volumes keep their data;
- a site jump host sits on the external network ``dmz-int`` (de.NBI Berlin's private pool) at
  ``JUMP_HOST_ADDRESS``, published on 127.0.0.1 only; each cloud user with a Nova keypair has an account
  there with those keys, as LifeScience users have at the Berlin jump host.

Why polling, not notifications: one stateless reconcile of "what the API says" against "what runs" survives
a restart of this process and cannot miss an event; a poll every 2 s costs three API calls and adds at most
2 s to a boot that takes ten. Why a NoCloud seed, not a metadata service at 169.254.169.254: the seed carries
exactly what Nova's metadata service would (the user data and the instance's id and name, read from Nova's
API), cloud-init's NoCloud source is standard in cloud images, and it needs no link-local routing per network.

Not proven here: a real hypervisor (KVM, virtio drivers, the console log), GPUs, Neutron's dataplane
(security groups are not enforced; the hosts' own nftables rules are), quotas on disk I/O.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcloud.local.system import tar_of
from testbed.external import (
    SUBNET_LABEL,
    ExternalSide,
    capabilities,
    refuse_hiding,
)
from testbed.volumes import attach_loop, detach_loops, ensure_volume_file, virtio_name, volume_file

POLL_SECONDS = 2.0
RETRY_SECONDS = 30.0
CLOUD_LABEL = "llmcloud.cloud"
SERVER_LABEL = "llmcloud.server"
VOLUMES_LABEL = "llmcloud.volumes"
STATUS_FILE = "run/hypervisor.json"
COMPUTE_MICROVERSION = "2.96"  # user data and root device name in the server's details (operator only)
log = logging.getLogger("llmcloud.hypervisor")


def cloud_tag(workdir: Path) -> str:
    """Labels what belongs to the cloud in ``workdir``, so one cloud's teardown leaves another's alone.

    Two clouds can run on one machine, but only one can boot servers at a time: Docker bridges of the same
    subnets (the seeded networks) cannot overlap, and the second hypervisor reports that for each server.
    """
    return hashlib.sha256(str(Path(workdir).resolve()).encode()).hexdigest()[:10]


@dataclass
class VmRecord:
    server: str
    name: str
    project: str
    container: str
    state: str
    addresses: list[str] = field(default_factory=list)
    floating: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    booted_at: float | None = None
    error: str | None = None


class Hypervisor(ExternalSide):
    def __init__(self, workdir: Path):
        from llmcloud.local import image, system
        from llmcloud.progress import Progress

        self.work = Path(workdir).resolve()
        self.tag = cloud_tag(self.work)
        self.docker = system.docker_client()
        self.image = image.ensure_vm(self.docker, Progress("VM image"))  # built by `cloud up` already
        self.jump_image = image.image_ref()
        self.failed: dict[str, tuple[float, str]] = {}
        self.booted: dict[str, float] = {}
        self.jump_keys: dict[str, str] = {}
        self.rounds = 0
        self.external: dict[str, Any] = {}
        self._admin = None

    # ---------------------------------------------------------------- cloud API
    @property
    def admin(self):
        if self._admin is None:
            import openstack

            os.environ["OS_CLIENT_CONFIG_FILE"] = str(self.work / "clouds.yaml")
            self._admin = openstack.connect(cloud="llmcloud-local-admin")
        return self._admin

    def servers(self) -> list[dict[str, Any]]:
        response = self.admin.compute.get("/servers/detail?all_tenants=1", microversion=COMPUTE_MICROVERSION)
        response.raise_for_status()
        return response.json()["servers"]

    # ---------------------------------------------------------------- Docker objects
    def labels(self, **extra: str) -> dict[str, str]:
        return {CLOUD_LABEL: self.tag, **extra}

    def containers(self) -> dict[str, Any]:
        found = self.docker.containers.list(
            all=True, filters={"label": [f"{CLOUD_LABEL}={self.tag}", SERVER_LABEL]}
        )
        return {c.labels[SERVER_LABEL]: c for c in found}

    def network_for(self, subnet_id: str):
        """The Docker network that plays a Neutron subnet: same CIDR, Neutron's gateway on this machine."""
        import docker

        name = f"llmcloud-{self.tag}-{subnet_id[:12]}"
        existing = self.docker.networks.list(names=[name])
        if existing:
            return existing[0]
        subnet = self.admin.network.get_subnet(subnet_id)
        refuse_hiding(subnet.cidr, f"subnet {subnet.name or subnet_id}")
        pool = docker.types.IPAMPool(subnet=subnet.cidr, gateway=subnet.gateway_ip)
        return self.docker.networks.create(
            name,
            driver="bridge",
            ipam=docker.types.IPAMConfig(pool_configs=[pool]),
            labels=self.labels(**{SUBNET_LABEL: subnet_id}),
        )

    def external_subnet(self, network_id: str, address: str) -> str | None:
        for subnet in self.admin.network.subnets(network_id=network_id):
            if ipaddress.ip_address(address) in ipaddress.ip_network(subnet.cidr):
                return subnet.id
        return None

    # ---------------------------------------------------------------- reconcile
    def reconcile(self) -> list[VmRecord]:
        self.external_networks()
        servers = {s["id"]: s for s in self.servers()}
        active = {sid: s for sid, s in servers.items() if s["status"] == "ACTIVE"}
        running = self.containers()
        for sid, container in running.items():
            if sid not in active:
                self.shutdown(container, "deleted" if sid not in servers else servers[sid]["status"])
        running = {sid: c for sid, c in running.items() if sid in active}
        fips = self.floating_ips()
        records = []
        for sid, server in active.items():
            container = running.get(sid)
            if container is None:
                failed = self.failed.get(sid)
                if failed is None or time.monotonic() - failed[0] > RETRY_SECONDS:
                    try:
                        container = self.boot(server)
                        self.failed.pop(sid, None)
                    except Exception as exc:  # recorded, shown in `llmcloud-testbed status`, retried
                        log.exception("server %s (%s): boot failed", server["name"], sid)
                        self.failed[sid] = (time.monotonic(), f"{type(exc).__name__}: {exc}")
            if container is not None:
                try:
                    self.attach_floating(container, fips.get(sid, []))
                except Exception as exc:
                    log.exception("server %s: floating IPs", server["name"])
                    self.failed[sid] = (time.monotonic(), f"floating IP: {exc}")
            records.append(self.record(server, container))
        self.collect_garbage(servers)
        self.jump_host(accounts=self.rounds % 5 == 0)
        self.rounds += 1
        return records

    def record(self, server: dict[str, Any], container) -> VmRecord:
        record = VmRecord(
            server=server["id"],
            name=server["name"],
            project=server.get("tenant_id", ""),
            container=container.name if container is not None else "",
            state="booting",
            booted_at=self.booted.get(server["id"]),
            error=self.failed.get(server["id"], (0, None))[1],
        )
        if container is None:
            record.state = "failed" if record.error else "pending"
            return record
        container.reload()
        record.state = container.status
        for net_name, net in container.attrs["NetworkSettings"]["Networks"].items():
            target = record.floating if self._is_external(net_name) else record.addresses
            target.append(net.get("IPAddress", ""))
        record.volumes = [v for v in container.labels.get(VOLUMES_LABEL, "").split(",") if v]
        return record

    def _is_external(self, network_name: str) -> bool:
        net = self.docker.networks.get(network_name)
        return net.attrs["Labels"].get("llmcloud.external") == "true"

    # ---------------------------------------------------------------- boot
    def boot(self, server: dict[str, Any]):
        sid, name = server["id"], server["name"]
        hostname = server.get("OS-EXT-SRV-ATTR:hostname") or name
        ports = list(self.admin.network.ports(device_id=sid))
        if not ports:
            raise RuntimeError("the server has no port yet")
        endpoints = []
        for port in ports:
            fixed = port.fixed_ips[0]
            endpoints.append((self.network_for(fixed["subnet_id"]), fixed["ip_address"]))
        devices, volume_ids = self.volume_devices(server)
        disk = self.docker.volumes.create(
            f"llmcloud-vm-{sid}-disk", labels=self.labels(**{SERVER_LABEL: sid})
        )
        first, address = endpoints[0]
        container = self.docker.containers.create(
            self.image,
            name=f"llmcloud-vm-{sid[:13]}",
            hostname=hostname,
            detach=True,
            stop_signal="SIGRTMIN+3",
            labels=self.labels(
                **{SERVER_LABEL: sid, VOLUMES_LABEL: ",".join(volume_ids), "llmcloud.server-name": name}
            ),
            cap_add=capabilities(),
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            device_cgroup_rules=["a *:* rwm"],
            devices=devices,
            cgroupns="host",
            tmpfs={"/run": "", "/run/lock": ""},
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                # The VM's own disk for Docker's overlay2 (the container's root is an overlay already).
                disk.name: {"bind": "/var/lib/docker", "mode": "rw"},
            },
            network=first.name,
            networking_config={first.name: self.docker.api.create_endpoint_config(ipv4_address=address)},
        )
        try:
            for net, ip in endpoints[1:]:
                net.connect(container, ipv4_address=ip)
            container.put_archive("/var/lib/cloud/seed/nocloud", _seed(server, hostname))
            container.start()
        except Exception:
            container.remove(force=True)
            raise
        self.booted[sid] = time.time()
        log.info("server %s (%s): booted %s at %s", name, sid, container.name, address)
        return container

    def volume_devices(self, server: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Docker device mappings for the server's volumes, as a KVM guest would name them."""
        root = server.get("OS-EXT-SRV-ATTR:root_device_name") or "/dev/vda"
        devices, ids = [], []
        for attachment in self.admin.compute.volume_attachments(server["id"]):
            if attachment.device == root:
                continue  # the boot volume: the container's own root file system plays it
            volume = self.admin.block_storage.get_volume(attachment.volume_id)
            path = ensure_volume_file(volume_file(self.work, volume.id), volume.size)
            loop = attach_loop(path)
            devices += [f"{loop}:{loop}:rwm", f"{loop}:{virtio_name(volume.id)}:rwm"]
            ids.append(volume.id)
        return devices, ids

    # ---------------------------------------------------------------- floating IPs
    def floating_ips(self) -> dict[str, list[tuple[str, str]]]:
        """{server id: [(address, external subnet id)]} for every associated floating IP."""
        out: dict[str, list[tuple[str, str]]] = {}
        for fip in self.admin.network.ips():
            if not fip.port_id:
                continue
            port = self.admin.network.get_port(fip.port_id)
            if not port.device_id:
                continue
            subnet = self.external_subnet(fip.floating_network_id, fip.floating_ip_address)
            if subnet:
                out.setdefault(port.device_id, []).append((fip.floating_ip_address, subnet))
        return out

    def attach_floating(self, container, wanted: list[tuple[str, str]]) -> None:
        container.reload()
        attached = {
            name: net.get("IPAddress")
            for name, net in container.attrs["NetworkSettings"]["Networks"].items()
            if self._is_external(name)
        }
        wanted_nets = {}
        for address, subnet_id in wanted:
            net = self.mark_external(subnet_id)
            wanted_nets[net.name] = (net, address)
        for name, address in attached.items():
            if wanted_nets.get(name, (None, None))[1] != address:
                self.docker.networks.get(name).disconnect(container)
                log.info("%s: floating IP %s released", container.name, address)
        for name, (net, address) in wanted_nets.items():
            if attached.get(name) != address:
                net.connect(container, ipv4_address=address)
                log.info("%s: floating IP %s associated", container.name, address)

    # ---------------------------------------------------------------- shutdown and garbage
    def shutdown(self, container, why: str) -> None:
        sid = container.labels[SERVER_LABEL]
        log.info("server %s: %s, stopping %s", sid, why, container.name)
        try:
            container.stop(timeout=20)  # systemd unmounts the volumes
        finally:
            container.remove(force=True)
        for volume_id in filter(None, container.labels.get(VOLUMES_LABEL, "").split(",")):
            detach_loops(volume_file(self.work, volume_id))
        for volume in self.docker.volumes.list(filters={"label": f"{SERVER_LABEL}={sid}"}):
            volume.remove(force=True)
        self.booted.pop(sid, None)

    def collect_garbage(self, servers: dict[str, Any]) -> None:
        """Remove the backing file of a volume Cinder no longer has, and networks of deleted subnets."""
        directory = self.work / "data" / "volumes"
        if directory.is_dir():
            files = list(directory.glob("*.img"))
            if files:
                known = {v.id for v in self.admin.block_storage.volumes(all_projects=True)}
                for path in files:
                    if path.stem not in known:
                        detach_loops(path)
                        path.unlink(missing_ok=True)
                        log.info("volume %s deleted: its data is gone", path.stem)
        subnets = None
        for net in self.docker.networks.list(filters={"label": f"{CLOUD_LABEL}={self.tag}"}):
            net.reload()
            if net.attrs.get("Containers"):
                continue
            if subnets is None:
                subnets = {s.id for s in self.admin.network.subnets()}
            if net.attrs["Labels"].get(SUBNET_LABEL) not in subnets:
                self.external.pop(net.attrs["Labels"].get(SUBNET_LABEL), None)
                net.remove()


def _seed(server: dict[str, Any], hostname: str) -> bytes:
    """A NoCloud seed with what Nova's metadata service would hand the instance."""
    user_data = server.get("OS-EXT-SRV-ATTR:user_data")
    meta = f"instance-id: {server['id']}\nlocal-hostname: {hostname}\n"
    return tar_of(
        {
            "meta-data": (meta.encode(), 0o600, 0),
            "user-data": (base64.b64decode(user_data) if user_data else b"", 0o600, 0),
        }
    )


def teardown(workdir: Path) -> int:
    """Remove every VM, the jump host, their networks and disks, and detach the volumes' loop devices.

    The volume files themselves stay (the caller removes the cloud's data dir, or keeps it).
    """
    import docker
    from docker.errors import DockerException

    work = Path(workdir).resolve()
    tag = cloud_tag(work)
    removed = 0
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except DockerException:
        client = None
    if client is not None:
        for container in client.containers.list(all=True, filters={"label": f"{CLOUD_LABEL}={tag}"}):
            try:
                container.stop(timeout=10)
            finally:
                container.remove(force=True)
            removed += 1
        for volume in client.volumes.list(filters={"label": f"{CLOUD_LABEL}={tag}"}):
            volume.remove(force=True)
        for net in client.networks.list(filters={"label": f"{CLOUD_LABEL}={tag}"}):
            net.remove()
    for path in (work / "data" / "volumes").glob("*.img"):
        detach_loops(path)
    return removed


def status(workdir: Path) -> dict[str, Any] | None:
    path = Path(workdir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # The Docker and OpenStack clients log every request at INFO; the reconcile's own lines are enough.
    for noisy in ("openstack", "keystoneauth", "urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    hypervisor = Hypervisor(args.workdir)
    status_path = hypervisor.work / STATUS_FILE
    log.info(
        "watching the cloud in %s every %.0fs (VM image %s)", hypervisor.work, POLL_SECONDS, hypervisor.image
    )
    while not stop:
        started = time.monotonic()
        try:
            records = hypervisor.reconcile()
            state = {"updated": time.time(), "error": None, "vms": [r.__dict__ for r in records]}
        except Exception as exc:  # the cloud restarting, an API hiccup: log it and poll again
            log.exception("reconcile failed")
            state = {**(status(hypervisor.work) or {"vms": []}), "updated": time.time(), "error": str(exc)}
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(status_path)
        time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
