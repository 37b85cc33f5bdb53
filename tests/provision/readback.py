"""What exists in the local cloud, read through the OpenStack API as its operator (never from Pulumi's
state)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from dataclasses import dataclass, field

import openstack


@dataclass
class Found:
    """Every resource of one stack (names start with its prefix) in the project."""

    servers: dict = field(default_factory=dict)
    ports: dict = field(default_factory=dict)
    networks: dict = field(default_factory=dict)
    routers: dict = field(default_factory=dict)
    security_groups: dict = field(default_factory=dict)
    floating_ips: list = field(default_factory=list)
    volumes: dict = field(default_factory=dict)
    keypairs: dict = field(default_factory=dict)
    shares: dict = field(default_factory=dict)
    containers: list = field(default_factory=list)

    def names(self) -> dict[str, list[str]]:
        out = {
            kind: sorted(getattr(self, kind))
            for kind in (
                "servers",
                "ports",
                "networks",
                "routers",
                "security_groups",
                "volumes",
                "keypairs",
                "shares",
            )
        }
        out["floating_ips"] = sorted(f.floating_ip_address for f in self.floating_ips)
        out["containers"] = sorted(self.containers)
        return {k: v for k, v in out.items() if v}


def server_api(admin: openstack.connection.Connection) -> openstack.connection.Connection:
    """The same operator with a compute microversion that shows user data and delete_on_termination."""
    return openstack.connect(cloud="llmcloud-local-admin", compute_api_version="2.96")


def stack_resources(admin, project_id: str, prefix: str, container: str | None = None) -> Found:
    found = Found()
    mine = re.compile(rf"^{re.escape(prefix)}-")
    compute = server_api(admin)
    for s in compute.compute.servers(all_projects=True, project_id=project_id):
        # DELETED: Nova has deleted the instance and not yet removed its row; the provider (and any client)
        # counts it as gone. Seen in a listing right after `destroy` on a loaded machine.
        if mine.match(s.name) and s.status != "DELETED":
            found.servers[s.name] = compute.compute.get_server(s.id)
    port_ids = set()
    for p in admin.network.ports(project_id=project_id):
        if mine.match(p.name or ""):
            found.ports[p.name] = p
            port_ids.add(p.id)
    for n in admin.network.networks(project_id=project_id):
        if mine.match(n.name):
            found.networks[n.name] = n
    for r in admin.network.routers(project_id=project_id):
        if mine.match(r.name):
            found.routers[r.name] = r
    for g in admin.network.security_groups(project_id=project_id):
        if mine.match(g.name):
            found.security_groups[g.name] = g
    for f in admin.network.ips(project_id=project_id):
        if (f.description or "").startswith(f"llmcloud {prefix.split('-', 1)[1]}:") or f.port_id in port_ids:
            found.floating_ips.append(f)
    for v in admin.block_storage.volumes(all_projects=True, project_id=project_id):
        if mine.match(v.name or ""):
            found.volumes[v.name] = v
    alice = admin.identity.find_user("alice", domain_id="default")
    for k in compute.compute.keypairs(user_id=alice.id):
        if mine.match(k.name):
            found.keypairs[k.name] = k
    try:
        for share in admin.shared_file_system.shares(all_tenants=True, project_id=project_id):
            if mine.match(share.name or ""):
                found.shares[share.name] = share
    except openstack.exceptions.SDKException:
        pass
    if container:
        user = openstack.connect(cloud="llmcloud-local")
        found.containers = [c.name for c in user.object_store.containers() if c.name == container]
    return found


def inventory_view(inventory_dir) -> dict:
    """The inventory as Ansible reads it (`ansible-inventory --list`)."""
    out = subprocess.run(
        ["ansible-inventory", "-i", str(inventory_dir), "--list"], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def user_data(server) -> str:
    return base64.b64decode(server.user_data).decode() if server.user_data else ""


def ingress_rules(admin, group) -> set[tuple]:
    """(protocol, port min, port max, remote CIDR or remote group name) of every ingress rule of a group."""
    names = {g.id: g.name for g in admin.network.security_groups(project_id=group.project_id)}
    rules = set()
    for rule in admin.network.security_group_rules(security_group_id=group.id, direction="ingress"):
        remote = rule.remote_ip_prefix or names.get(rule.remote_group_id) or rule.remote_group_id
        rules.add((rule.protocol, rule.port_range_min, rule.port_range_max, remote))
    return rules


def newest_image(admin, pattern: str):
    """The image `imagePattern` promises: the most recently created of those whose name matches."""
    matching = [i for i in admin.image.images() if i.name and re.search(pattern, i.name)]
    return max(matching, key=lambda i: i.created_at)
