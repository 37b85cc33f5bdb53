"""Check the stack's settings against the cloud before anything is created.

The provider's own errors name Terraform attributes or say "Your query returned no results", and a quota
that runs out half-way leaves some VMs made and others not. These checks run in `pulumi preview` and at the
start of `pulumi up`, ask the cloud once with the same credentials the provider uses, and report every
problem at once, each naming the setting and the fix. Nothing exists yet when they fail."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from llmcloud import contract
from llmcloud.config import BackupTarget, StackConfig, Topology


class PreflightError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Plan:
    """What the stack needs from the cloud: VMs by name (with their flavor) and volumes."""

    servers: dict[str, str]  # server name -> flavor name
    volume_gb: dict[str, int]  # data volume name -> size
    boot_gb: dict[str, int]  # server name -> size of the boot volume Nova makes with it (deleted with it)


def plan(cfg: StackConfig, prefix: str) -> Plan:
    hosts = contract.plan(cfg.topology, cfg.replicas)
    kind = {f"{prefix}-{h.name}": cfg.engine_node if h.is_engine else cfg.edge_node for h in hosts}
    servers = {name: node.flavor for name, node in kind.items()}
    volumes = {f"{prefix}-{h.name}-data": cfg.engine_node.data_volume_size for h in hosts if h.is_engine}
    boot = {name: node.boot_volume_size for name, node in kind.items() if node.boot_volume_size}
    return Plan(servers, volumes, boot)


def connect(cloud: str | None):
    """A connection with the provider's credentials: `openstack:cloud`, else OS_CLOUD, else the OS_* vars."""
    import openstack
    from keystoneauth1 import exceptions as auth_errors
    from openstack import exceptions

    name = cloud or os.environ.get("OS_CLOUD")
    where = f"openstack:cloud ({name})" if cloud else (f"OS_CLOUD ({name})" if name else "the OS_* variables")
    try:
        conn = openstack.connect(cloud=name) if name else openstack.connect()
        conn.authorize()
    except exceptions.ConfigException as exc:
        raise PreflightError(
            [
                f"{where.split(' (')[0]}: {exc}; fix: download clouds.yaml from Horizon (Identity → "
                "Application Credentials) to ~/.config/openstack/clouds.yaml and set openstack:cloud to "
                "its entry's name"
            ]
        ) from None
    except (auth_errors.ClientException, exceptions.SDKException) as exc:
        status = _http_status(exc)
        if status is None:
            raise PreflightError(
                [
                    f"{where}: cannot reach the cloud ({exc}); "
                    "fix: check auth_url in clouds.yaml and the network"
                ]
            ) from None
        cause = (
            "the cloud refused the credentials"
            if status in (401, 403)
            else "the cloud answered with an error"
        )
        raise PreflightError(
            [
                f"{where}: {cause} (HTTP {status}); fix: check the application credential in clouds.yaml "
                "(expired or deleted?) and make a new one in Horizon if needed"
            ]
        ) from None
    return conn


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an error (openstacksdk wraps keystoneauth's errors in a plain SDKException)."""
    seen: BaseException | None = exc
    while seen is not None:
        status = getattr(seen, "http_status", None) or getattr(seen, "status_code", None)
        if isinstance(status, int):
            return status
        seen = seen.__cause__ or seen.__context__
    found = re.search(r"\(HTTP (\d{3})\)", str(exc))
    return int(found.group(1)) if found else None


def check(cfg: StackConfig, prefix: str, cloud: str | None) -> None:
    """Raise PreflightError with every problem found; return quietly when the cloud can build the stack."""
    from openstack import exceptions

    conn = connect(cloud)
    problems: list[str] = []
    need = plan(cfg, prefix)

    flavors = {f.name: f for f in conn.compute.flavors(details=True)}
    nodes = [("engineNode", cfg.engine_node)]
    if cfg.topology == Topology.split:
        nodes.append(("edgeNode", cfg.edge_node))
    for key, node in nodes:
        if node.flavor not in flavors:
            problems.append(
                f"llmcloud:{key}.flavor: no flavor {node.flavor!r} in this project; "
                f"fix: one of {', '.join(sorted(flavors)) or '(none)'}"
            )
    images = [i.name for i in conn.image.images() if i.name]
    for key, node in nodes:
        if node.image and node.image not in images:
            problems.append(
                f"llmcloud:{key}.image: no image named {node.image!r}; fix: `openstack image list`"
            )
        elif node.image_pattern and not any(re.search(node.image_pattern, name) for name in images):
            problems.append(
                f"llmcloud:{key}.imagePattern: {node.image_pattern!r} matches none of the "
                f"{len(images)} images; "
                f"fix: a pattern for one of {', '.join(sorted(images)[:8]) or '(none)'}"
            )

    def network(key: str, name: str, external: bool) -> None:
        try:
            found = conn.network.find_network(name, ignore_missing=False)
        except exceptions.NotFoundException:
            externals = sorted(n.name for n in conn.network.networks(is_router_external=True))
            hint = (
                f"one of the external networks {', '.join(externals)}"
                if external
                else "`openstack network list`"
            )
            problems.append(f"llmcloud:{key}: no network {name!r} in this project; fix: {hint}")
            return
        if external and not found.is_router_external:
            problems.append(
                f"llmcloud:{key}: {name!r} is not an external network; fix: the cloud's public network"
            )

    if cfg.network.existing:
        network("network.existing", cfg.network.existing, external=False)
    elif cfg.network.external_network:
        network("network.externalNetwork", cfg.network.external_network, external=True)
    if cfg.reach.floating_ip_pool:
        network("reach.floatingIpPool", cfg.reach.floating_ip_pool, external=True)
    try:
        if cfg.keypair_name:
            conn.compute.find_keypair(cfg.keypair_name, ignore_missing=False)
    except exceptions.NotFoundException:
        problems.append(
            f"llmcloud:keypairName: no keypair {cfg.keypair_name!r}; fix: `openstack keypair list`"
        )
    if cfg.backup.target == BackupTarget.manila and not (
        conn.has_service("shared-file-system") or conn.has_service("sharev2")
    ):
        problems.append(
            "llmcloud:backup.target: manila, but this cloud has no shared file systems; fix: swift"
        )
    if cfg.backup.target == BackupTarget.swift and not conn.has_service("object-store"):
        problems.append(
            "llmcloud:backup.target: swift, but this cloud has no object storage; fix: manila or none"
        )

    if not problems:
        problems.extend(_quota(conn, need, flavors))
    if problems:
        raise PreflightError(problems)


def _quota(conn, need: Plan, flavors: dict) -> list[str]:
    """Headroom for what this run adds (servers and volumes that do not exist yet), not for what exists."""
    from openstack import exceptions

    existing_servers = {s.name for s in conn.compute.servers()}
    new = {name: flavor for name, flavor in need.servers.items() if name not in existing_servers}
    existing_volumes = {v.name for v in conn.block_storage.volumes()}
    new_data = {name: size for name, size in need.volume_gb.items() if name not in existing_volumes}
    new_boot = {name: size for name, size in need.boot_gb.items() if name in new}
    new_gb = sum(new_data.values()) + sum(new_boot.values())
    new_volumes = len(new_data) + len(new_boot)
    problems = []
    limits = conn.compute.get_limits().absolute

    def over(what: str, adds: int, used: int, limit: int) -> None:
        if limit >= 0 and adds and used + adds > limit:
            problems.append(
                f"quota: this run adds {adds} {what}, the project uses {used} of {limit}; "
                "fix: ask the cloud's operators for more quota (de.NBI: the project's resource request), "
                "or lower llmcloud:replicas / the node sizes"
            )

    over("instances", len(new), limits.instances_used, limits.instances)
    over("vCPUs", sum(flavors[f].vcpus for f in new.values()), limits.total_cores_used, limits.total_cores)
    over("MiB of RAM", sum(flavors[f].ram for f in new.values()), limits.total_ram_used, limits.total_ram)
    try:
        vol = conn.block_storage.get_limits().absolute
        over("volumes", new_volumes, vol.total_volumes_used, vol.max_total_volumes)
        over("GB of volume storage", new_gb, vol.total_gigabytes_used, vol.max_total_volume_gigabytes)
    except exceptions.SDKException:  # a cloud without Cinder's limits API: the provider will say more
        pass
    return problems
