"""The Pulumi program: stack config → OpenStack resources → inventory/<stack>/ → configure.

Everything receives the validated StackConfig, never pulumi.Config. Tests call program() under
pulumi.runtime.set_mocks with a config of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi_openstack as openstack

from llmcloud import REPO_ROOT, contract, hostkeys, inventory
from llmcloud.config import BackupTarget, ConfigError, StackConfig, TlsMode, from_pulumi
from llmcloud.contract import DEPLOY_USER, ENGINE_PORT, PlannedHost
from llmcloud.provision import preflight
from llmcloud.provision.backup import BackupStorage
from llmcloud.provision.configure import Configure, configuration_digest
from llmcloud.provision.network import Network
from llmcloud.provision.nodes import DataVolume, Node
from llmcloud.provision.rolling import PoolMember
from llmcloud.provision.security import SecurityGroups


def _secret(value) -> pulumi.Output[str] | None:
    return pulumi.Output.secret(value.get_secret_value()) if value is not None else None


def _under_mocks() -> bool:
    from pulumi.runtime import mocks, settings

    return isinstance(settings.SETTINGS.monitor, mocks.MockMonitor)


def _checked_config(config: StackConfig | None) -> StackConfig:
    try:
        return config or from_pulumi()
    except ConfigError as err:
        raise pulumi.RunError(str(err)) from None


def _preflight(cfg: StackConfig, prefix: str) -> None:
    try:
        preflight.check(cfg, prefix, pulumi.Config("openstack").get("cloud"))
    except preflight.PreflightError as err:
        raise pulumi.RunError(
            "the cloud cannot build this stack; nothing was created:\n  " + "\n  ".join(err.problems)
        ) from None


def _keypair(cfg: StackConfig, prefix: str) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """The keypair the VMs get (made from sshPublicKey, or an existing one): its name and public key."""
    if cfg.ssh_public_key:
        keypair = openstack.compute.Keypair(
            f"{prefix}-key", name=f"{prefix}-key", public_key=cfg.ssh_public_key
        )
        return keypair.name, pulumi.Output.from_input(cfg.ssh_public_key)
    found = openstack.compute.get_keypair_output(name=cfg.keypair_name)
    return found.name, found.public_key


def _servers(
    cfg: StackConfig, prefix: str, stack: str, hosts: list[PlannedHost], inventory_dir: Path
) -> tuple[dict[str, Node], list[PoolMember]]:
    """One VM per planned host, in the plan's order (the edge first), and, where engine VMs are replaced one
    at a time (rolling.py: configure on, two or more engine VMs behind the edge), each one's pool member."""
    network = Network(prefix, cfg.network)
    groups = SecurityGroups(
        prefix,
        cfg.admin_cidrs,
        [ENGINE_PORT + i for i in range(1, len(cfg.models) + 1)],
        web_sources=list(cfg.tls.trusted_proxies) if cfg.tls.mode == TlsMode.external else None,
    )
    keypair_name, public_key = _keypair(cfg, prefix)
    data = DataVolume(cfg.engine_node.data_volume_size, cfg.engine_node.data_volume_type, cfg.allow_data_loss)
    servers: dict[str, Node] = {}
    members: list[PoolMember] = []
    rolling = cfg.configure and sum(1 for h in hosts if h.is_engine and not h.is_edge) > 1
    for host in hosts:
        # Rolling: the first engine VM after the edges, each next one once the previous one is in the pool.
        after = ([members[-1]] if members else [n.instance for n in servers.values()]) if rolling else []
        sgs = [
            groups.ssh,
            *([groups.engine] if host.is_engine else []),
            *([groups.edge] if host.is_edge else []),
        ]
        servers[host.name] = Node(
            f"{prefix}-{host.name}",
            stack=stack,
            cfg=cfg.engine_node if host.is_engine else cfg.edge_node,
            network_id=network.network_id,
            security_group_ids=[g.id for g in sgs],
            keypair_name=keypair_name,
            deploy_public_key=public_key,
            floating_ip_pool=cfg.reach.floating_ip_pool if host.is_edge else None,
            data_volume=data if host.is_engine else None,
            routed=network.routed,
            addressed=network.addressed,
            role=host.role,
            after=after if host.is_engine and not host.is_edge else [],
        )
        if rolling and host.is_engine and not host.is_edge:
            edges = {h.name: servers[h.name].instance.id for h in hosts if h.is_edge}
            members.append(_pool_member(cfg, prefix, host.name, servers[host.name], edges, inventory_dir))
    return servers, members


def _pool_member(
    cfg: StackConfig, prefix: str, name: str, node: Node, edges: dict, inventory_dir: Path
) -> PoolMember:
    """Engine VM ``name`` in the pools: left before its VM is replaced, joined when the new one runs."""
    instance = node.instance
    return PoolMember(
        f"{prefix}-{name}-pool",
        {
            "host": name,
            "server": instance.id,
            "edges": edges,
            "inventory_dir": str(inventory_dir),
            "timeout": cfg.configure_timeout,
        },
        opts=pulumi.ResourceOptions(replace_with=[instance], depends_on=[instance]),
    )


def _inventory_host(
    cfg: StackConfig, host: PlannedHost, private: dict[str, str], public: dict[str, str], entry: PlannedHost
) -> inventory.InventoryHost:
    """How the controller and the other hosts reach one VM, and what is its own (cost, wider SSH)."""
    proxy_jump, host_vars = None, {}
    cost = (cfg.engine_node if host.is_engine else cfg.edge_node).cost_per_hour
    if cost is not None:
        host_vars["llmcloud_cost_per_hour"] = cost
    if not host.is_edge:
        # Engine VMs behind an edge have no public address: reach them through it.
        hop = f"{DEPLOY_USER}@{public[entry.name] or private[entry.name]}"
        proxy_jump = f"{cfg.reach.jump_host},{hop}" if cfg.reach.jump_host else hop
        host_vars["admin_cidrs"] = [*cfg.admin_cidrs, f"{private[entry.name]}/32"]
    return inventory.InventoryHost(
        host.name,
        host.groups,
        public[host.name] or private[host.name],
        private[host.name],
        public_ip=public[host.name] or None,
        proxy_jump=proxy_jump,
        vars=host_vars,
    )


def inventory_of(
    cfg: StackConfig,
    stack: str,
    inventory_dir: Path,
    hosts: list[PlannedHost],
    addresses: tuple[list[str], list[str], str],
) -> inventory.Inventory:
    """The stack's inventory once the cloud has given the VMs their addresses: the hosts of the plan, and the
    stack's settings through the contract's mapping (contract.role_vars)."""
    private_ips, public_ips, repository = addresses
    names = [h.name for h in hosts]
    private, public = dict(zip(names, private_ips, strict=True)), dict(zip(names, public_ips, strict=True))
    entry = contract.entry_host(hosts)
    engines = [h.name for h in hosts if h.is_engine]
    return inventory.Inventory(
        stack=stack,
        hosts=[_inventory_host(cfg, h, private, public, entry) for h in hosts],
        ssh_user=DEPLOY_USER,
        ssh_private_key_file=cfg.ssh_private_key_file,
        ssh_config_file=str((inventory_dir / "ssh_config").resolve()),
        known_hosts_file=str((inventory_dir / "ssh" / "known_hosts").resolve()),
        strict_host_key_checking="accept-new",
        proxy_jump=cfg.reach.jump_host,
        vars={**contract.role_vars(cfg, engines), **contract.backup_vars(cfg.backup.target, repository)},
    )


def _write(inventory_dir: Path, inv: inventory.Inventory, secret_values: dict[str, str]) -> str:
    """Write the inventory (not in a preview) and return the digest that decides whether Ansible re-runs."""
    if pulumi.runtime.is_dry_run():
        rendered = inventory.render(inv)
    else:
        rendered = inventory.write(inv, inventory_dir, secret_values)
    # The user's own group_vars/host_vars files count too: changing one re-runs Ansible.
    return configuration_digest({**rendered, **inventory.user_settings(inventory_dir)}, secret_values)


def _configure(
    cfg: StackConfig,
    prefix: str,
    inventory_dir: Path,
    digest,
    servers: dict[str, Node],
    server_ids: pulumi.Output[dict[str, str]],
    members: list[PoolMember],
) -> None:
    """Converge and verify the VMs with Ansible once they exist, and again whenever the inventory changes."""
    Configure(
        f"{prefix}-configure",
        {
            "digest": digest,
            "inventory_dir": str(inventory_dir),
            # Reached as `ssh -F inventory/<stack>/ssh_config <name>` (the inventory's reach and host keys).
            "hosts": list(servers),
            # A replaced VM keeps its addresses but is a new machine: converge it, forget its host key.
            "servers": server_ids,
            "timeout": cfg.configure_timeout,
            "verify": True,
        },
        opts=pulumi.ResourceOptions(depends_on=[*(n.instance for n in servers.values()), *members]),
    )


def program(
    config: StackConfig | None = None,
    inventory_root: Path | None = None,
    check_cloud: bool | None = None,
) -> dict[str, Any]:
    """Declare the stack: the VMs of the topology plan, the backup storage, then the inventory (one step, once
    the addresses are known), then the converge. Returns the exported outputs (also for tests).

    ``check_cloud``: ask the cloud whether it can build the stack before declaring anything (preflight.py);
    by default on, except under Pulumi's mocks, where there is no cloud to ask.
    """
    cfg = _checked_config(config)
    stack = pulumi.get_stack()
    prefix = f"{cfg.name_prefix}-{stack}"
    if check_cloud if check_cloud is not None else not _under_mocks():
        _preflight(cfg, prefix)
    inventory_dir = (inventory_root or REPO_ROOT / "inventory") / stack
    hosts = contract.plan(cfg.topology, cfg.replicas)
    servers, members = _servers(cfg, prefix, stack, hosts, inventory_dir)
    # A VM replaced by this `up` (same address, new machine, new host keys): its old key goes as soon as the
    # new server exists, whoever connects first (Configure, a pool member, a person with ssh -F).
    names = list(servers)
    server_ids = pulumi.Output.all(*[n.instance.id for n in servers.values()]).apply(
        lambda ids: dict(zip(names, ids, strict=True))
    )
    server_ids.apply(
        lambda ids: None if pulumi.runtime.is_dry_run() else hostkeys.forget_replaced(inventory_dir, ids)
    )
    backup = None
    if cfg.backup.target != BackupTarget.none:
        backup = BackupStorage(
            f"{prefix}-backup", cfg.backup, [n.private_ip for n in servers.values()], cfg.allow_data_loss
        )
    # Without cookieSecret, the oauth2_proxy role makes one on the edge and keeps it (and backs it up).
    secrets = {var: _secret(value) for var, value in contract.secret_vars(cfg).items()}
    built = pulumi.Output.all(
        [n.private_ip for n in servers.values()],
        [n.public_ip if n.public_ip is not None else "" for n in servers.values()],
        backup.repository if backup else "",
    ).apply(lambda addresses: inventory_of(cfg, stack, inventory_dir, hosts, addresses))
    digest = pulumi.Output.all(built, pulumi.Output.all(**secrets)).apply(
        lambda a: _write(inventory_dir, a[0], a[1])
    )
    entry = contract.entry_host(hosts).name
    entry_address = built.apply(lambda inv: next(h.ansible_host for h in inv.hosts if h.name == entry))
    outputs: dict[str, Any] = {
        "url": f"https://{cfg.domain}/",
        "entry_address": entry_address,
        "private_ips": pulumi.Output.all(*[n.private_ip for n in servers.values()]).apply(
            lambda ips: dict(zip(names, ips, strict=True))
        ),
        "hostnames": {name: f"{prefix}-{name}" for name in names},
        "inventory": str(inventory_dir),
        "ssh_command": pulumi.Output.concat(
            "ssh ",
            f"-J {cfg.reach.jump_host} " if cfg.reach.jump_host else "",
            f"{DEPLOY_USER}@",
            entry_address,
        ),
        "configuration_digest": digest,
    }
    if backup:
        outputs["backup_repository"] = backup.repository
    if cfg.configure:
        _configure(cfg, prefix, inventory_dir, digest, servers, server_ids, members)
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs
