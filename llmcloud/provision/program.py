"""The Pulumi program: stack config → OpenStack resources → inventory/<stack>/ → configure.

Everything receives the validated StackConfig, never pulumi.Config. Tests call program() under
pulumi.runtime.set_mocks with a config of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi_openstack as openstack

from llmcloud import REPO_ROOT, inventory
from llmcloud.config import BackupTarget, ConfigError, StackConfig, TlsMode, Topology, from_pulumi
from llmcloud.provision import DATA_MOUNT, ENGINE_PORT, NFS_MOUNT, preflight
from llmcloud.provision.backup import BackupStorage
from llmcloud.provision.configure import Configure, configuration_digest
from llmcloud.provision.network import Network
from llmcloud.provision.nodes import DataVolume, Node
from llmcloud.provision.security import SecurityGroups

DEPLOY_USER = "deploy"


def group_vars(cfg: StackConfig) -> dict[str, Any]:
    """The stack's settings as the roles' variables (non-secret)."""
    return {
        "llmcloud_topology": cfg.topology,
        "llmcloud_domain": cfg.domain,
        "llmcloud_url": f"https://{cfg.domain}/",
        "admin_cidrs": list(cfg.admin_cidrs),
        "nvidia_required": cfg.engine_node.gpu,
        "llm_engine_kind": cfg.engine.kind,
        "llm_engine_model_id": cfg.engine.model_id,
        "llm_engine_revision": cfg.engine.revision,
        "llm_engine_quantize": cfg.engine.quantize,
        "llm_engine_max_input_tokens": cfg.engine.max_input_tokens,
        "llm_engine_max_total_tokens": cfg.engine.max_total_tokens,
        "llm_engine_port": ENGINE_PORT,
        **(cfg.engine.model_source.role_vars() if cfg.engine.model_source else {}),
        # More models: ports after the main engine's, on every engine VM (hosts added with the inventory).
        "llmcloud_extra_models": [
            {
                "model_id": m.model_id,
                "kind": m.kind,
                "port": ENGINE_PORT + i,
                **({"revision": m.revision} if m.revision else {}),
                **({"quantize": m.quantize} if m.quantize else {}),
                **({"max_input_tokens": m.max_input_tokens} if m.max_input_tokens else {}),
                **({"max_total_tokens": m.max_total_tokens} if m.max_total_tokens else {}),
                **(m.model_source.role_vars(prefix="") if m.model_source else {}),
            }
            for i, m in enumerate(cfg.models, start=1)
        ]
        or None,
        "llm_engine_data_dir": DATA_MOUNT,
        "certbot_mode": cfg.tls.mode,
        "certbot_email": cfg.tls.acme_email,
        "certbot_acme_directory": cfg.tls.acme_directory,
        "nginx_trusted_proxies": list(cfg.tls.trusted_proxies),
        "oauth2_proxy_provider": cfg.auth.provider,
        "oauth2_proxy_issuer_url": cfg.auth.issuer,
        "oauth2_proxy_client_id": cfg.auth.client_id,
        "oauth2_proxy_allowed_emails": list(cfg.auth.allowed_emails),
        "oauth2_proxy_allowed_email_domains": list(cfg.auth.allowed_email_domains),
        "oauth2_proxy_allowed_groups": list(cfg.auth.allowed_groups),
        "oauth2_proxy_github_org": cfg.auth.github_org,
        "restic_enabled": cfg.backup.target != BackupTarget.none,
        "restic_keep_daily": cfg.backup.keep_daily,
        "restic_keep_weekly": cfg.backup.keep_weekly,
        "restic_keep_monthly": cfg.backup.keep_monthly,
        "monitoring_enabled": cfg.monitoring.enabled,
        "monitoring_retention_time": f"{cfg.monitoring.retention_days}d",
        "monitoring_alert_email_to": cfg.monitoring.alert_email,
        "monitoring_alert_email_smarthost": cfg.monitoring.alert_smarthost,
        "nginx_admin_emails": list(cfg.monitoring.admins),
        "nginx_admin_groups": list(cfg.monitoring.admin_groups),
        "open_webui_enabled": cfg.chat_ui.enabled,
        **({"open_webui_admin_email": cfg.chat_ui.admin} if cfg.chat_ui.admin else {}),
        # Passed only when the user turned it on: the role's default (off) has one home.
        **({"open_webui_admin_chat_access": True} if cfg.chat_ui.admin_chat_access else {}),
        **({"open_webui_code_features": True} if cfg.chat_ui.code_features else {}),
    }


def _served_by(cfg: StackConfig, names: list[str]) -> dict[str, Any]:
    """More models run on every engine VM: their `hosts`, now that the VMs are known."""
    models = group_vars(cfg)["llmcloud_extra_models"]
    engines = [name for name in names if name != "edge1"]
    return {"llmcloud_extra_models": [{**m, "hosts": engines} for m in models]} if models else {}


def _backup_vars(target: BackupTarget, repository: str) -> dict[str, str]:
    """Where the restic role keeps each host's repository: one per host, below the share or container."""
    per_host = "{{ inventory_hostname }}"
    if target == BackupTarget.manila:
        return {"restic_nfs_export": repository, "restic_repository": f"{NFS_MOUNT}/{per_host}"}
    if target == BackupTarget.swift:
        # Swift also needs restic_backend_env (OS_AUTH_URL, OS_APPLICATION_CREDENTIAL_*): see README.
        return {"restic_repository": f"{repository.rstrip('/')}/{per_host}"}
    return {}


def _secret(value) -> pulumi.Output[str] | None:
    return pulumi.Output.secret(value.get_secret_value()) if value is not None else None


def _under_mocks() -> bool:
    from pulumi.runtime import mocks, settings

    return isinstance(settings.SETTINGS.monitor, mocks.MockMonitor)


def program(
    config: StackConfig | None = None,
    inventory_root: Path | None = None,
    check_cloud: bool | None = None,
) -> dict[str, Any]:
    """Declare the stack. Returns the exported outputs (also for tests).

    ``check_cloud``: ask the cloud whether it can build the stack before declaring anything (preflight.py);
    by default on, except under Pulumi's mocks, where there is no cloud to ask.
    """
    try:
        cfg = config or from_pulumi()
    except ConfigError as err:
        raise pulumi.RunError(str(err)) from None
    stack = pulumi.get_stack()
    prefix = f"{cfg.name_prefix}-{stack}"
    if check_cloud if check_cloud is not None else not _under_mocks():
        try:
            preflight.check(cfg, prefix, pulumi.Config("openstack").get("cloud"))
        except preflight.PreflightError as err:
            raise pulumi.RunError(
                "the cloud cannot build this stack; nothing was created:\n  " + "\n  ".join(err.problems)
            ) from None
    inventory_dir = (inventory_root or REPO_ROOT / "inventory") / stack
    split = cfg.topology == Topology.split

    network = Network(prefix, cfg.network)
    groups = SecurityGroups(
        prefix,
        cfg.admin_cidrs,
        [ENGINE_PORT + i for i in range(1, len(cfg.models) + 1)],
        web_sources=list(cfg.tls.trusted_proxies) if cfg.tls.mode == TlsMode.external else None,
    )
    if cfg.ssh_public_key:
        keypair = openstack.compute.Keypair(
            f"{prefix}-key", name=f"{prefix}-key", public_key=cfg.ssh_public_key
        )
        keypair_name, public_key = keypair.name, pulumi.Output.from_input(cfg.ssh_public_key)
    else:
        found = openstack.compute.get_keypair_output(name=cfg.keypair_name)
        keypair_name, public_key = found.name, found.public_key

    def node(name: str, node_cfg, sgs, *, public: bool, role: str, data: DataVolume | None = None) -> Node:
        return Node(
            f"{prefix}-{name}",
            stack=stack,
            cfg=node_cfg,
            network_id=network.network_id,
            security_group_ids=[g.id for g in sgs],
            keypair_name=keypair_name,
            deploy_public_key=public_key,
            floating_ip_pool=cfg.reach.floating_ip_pool if public else None,
            data_volume=data,
            routed=network.routed,
            addressed=network.addressed,
            role=role,
        )

    data = DataVolume(cfg.engine_node.data_volume_size, cfg.engine_node.data_volume_type, cfg.allow_data_loss)
    engine_groups = [groups.ssh, groups.engine] if split else [groups.ssh, groups.engine, groups.edge]
    engines = {
        f"llm{i}": node(
            f"llm{i}",
            cfg.engine_node,
            engine_groups,
            public=not split,
            role="llm" if split else "llm+edge",
            data=data,
        )
        for i in range(1, cfg.replicas + 1)
    }
    edge = (
        node("edge1", cfg.edge_node, [groups.ssh, groups.edge], public=True, role="edge") if split else None
    )
    all_nodes = {**({"edge1": edge} if edge else {}), **engines}

    backup = None
    if cfg.backup.target != BackupTarget.none:
        backup = BackupStorage(
            f"{prefix}-backup", cfg.backup, [n.private_ip for n in all_nodes.values()], cfg.allow_data_loss
        )

    # Without cookieSecret, the oauth2_proxy role makes one on the edge and keeps it (and backs it up).
    secrets = {
        "oauth2_proxy_client_secret": _secret(cfg.oauth_client_secret),
        "oauth2_proxy_cookie_secret": _secret(cfg.cookie_secret),
        "llm_engine_hf_token": _secret(cfg.hf_token),
        "restic_password": _secret(cfg.restic_password),
        "monitoring_alert_webhook": _secret(cfg.alert_webhook),
    }
    secrets = {k: v for k, v in secrets.items() if v is not None}

    names = list(all_nodes)
    addresses = pulumi.Output.all(
        [n.private_ip for n in all_nodes.values()],
        [n.public_ip if n.public_ip is not None else "" for n in all_nodes.values()],
        backup.repository if backup else "",
    )

    def build(args: list) -> tuple[inventory.Inventory, str]:
        private, public, repository = args
        private, public = dict(zip(names, private, strict=True)), dict(zip(names, public, strict=True))
        entry = "edge1" if split else "llm1"
        entry_address = public[entry] or private[entry]
        hosts = []
        for name in names:
            in_groups = ("edge",) if name == "edge1" else (("llm",) if split else ("llm", "edge"))
            proxy_jump, host_vars = None, {}
            cost = (cfg.edge_node if name == "edge1" else cfg.engine_node).cost_per_hour
            if cost is not None:
                host_vars["llmcloud_cost_per_hour"] = cost
            if split and name != "edge1":
                # Engine VMs have no public address: reach them through the edge.
                hop = f"{DEPLOY_USER}@{entry_address}"
                proxy_jump = f"{cfg.reach.jump_host},{hop}" if cfg.reach.jump_host else hop
                host_vars["admin_cidrs"] = [*cfg.admin_cidrs, f"{private['edge1']}/32"]
            hosts.append(
                inventory.InventoryHost(
                    name,
                    in_groups,
                    public[name] or private[name],
                    private[name],
                    public_ip=public[name] or None,
                    proxy_jump=proxy_jump,
                    vars=host_vars,
                )
            )
        extra = _backup_vars(cfg.backup.target, repository)
        inv = inventory.Inventory(
            stack=stack,
            hosts=hosts,
            ssh_user=DEPLOY_USER,
            ssh_private_key_file=cfg.ssh_private_key_file,
            ssh_config_file=str((inventory_dir / "ssh_config").resolve()),
            known_hosts_file=str((inventory_dir / "ssh" / "known_hosts").resolve()),
            strict_host_key_checking="accept-new",
            proxy_jump=cfg.reach.jump_host,
            vars={
                k: v
                for k, v in {**group_vars(cfg), **extra, **_served_by(cfg, names)}.items()
                if v is not None
            },
        )
        return inv, entry_address

    def write(inv: inventory.Inventory, secret_values: dict[str, str]) -> str:
        if pulumi.runtime.is_dry_run():
            rendered = inventory.render(inv)
        else:
            rendered = inventory.write(inv, inventory_dir, secret_values)
        # The user's own group_vars/host_vars files count too: changing one re-runs Ansible.
        return configuration_digest({**rendered, **inventory.user_settings(inventory_dir)}, secret_values)

    built = addresses.apply(build)
    digest = pulumi.Output.all(built, pulumi.Output.all(**secrets)).apply(lambda a: write(a[0][0], a[1]))
    entry_address = built.apply(lambda b: b[1])

    outputs: dict[str, Any] = {
        "url": f"https://{cfg.domain}/",
        "entry_address": entry_address,
        "private_ips": pulumi.Output.all(*[n.private_ip for n in all_nodes.values()]).apply(
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
        hosts = built.apply(
            lambda b: [
                {
                    "name": h.name,
                    "address": h.ansible_host,
                    "port": h.ansible_port,
                    "proxy_jump": h.proxy_jump or cfg.reach.jump_host,
                }
                for h in b[0].hosts
            ]
        )
        Configure(
            f"{prefix}-configure",
            {
                "digest": digest,
                "inventory_dir": str(inventory_dir),
                "hosts": hosts,
                # A replaced VM keeps its addresses but is a new machine: converge it, forget its host key.
                "servers": pulumi.Output.all(*[n.instance.id for n in all_nodes.values()]).apply(
                    lambda ids: dict(zip(names, ids, strict=True))
                ),
                "ssh_user": DEPLOY_USER,
                "ssh_key_file": cfg.ssh_private_key_file,
                "timeout": cfg.configure_timeout,
                "verify": True,
            },
            opts=pulumi.ResourceOptions(depends_on=[n.instance for n in all_nodes.values()]),
        )
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs
