"""Security groups: SSH only from admin networks or the edge, web on the edge, the engine from the edge only.

Egress keeps the cloud's default rules.
"""

from __future__ import annotations

import ipaddress

import pulumi
import pulumi_openstack as openstack

from llmcloud.contract import DCGM_EXPORTER_PORT, ENGINE_PORT, NODE_EXPORTER_PORT


def _ethertype(cidr: str) -> str:
    return "IPv6" if ipaddress.ip_network(cidr, strict=False).version == 6 else "IPv4"


class SecurityGroups(pulumi.ComponentResource):
    ssh: openstack.networking.SecGroup
    edge: openstack.networking.SecGroup
    engine: openstack.networking.SecGroup

    def __init__(
        self,
        name: str,
        admin_cidrs: list[str],
        extra_engine_ports: list[int] | None = None,
        opts: pulumi.ResourceOptions | None = None,
        web_sources: list[str] | None = None,
    ):
        """``web_sources``: who may reach 80/443 on the edge; the world unless a load balancer terminates
        TLS (tls.mode external: its addresses only, so no client skips it to choose its X-Forwarded-For)."""
        super().__init__("llmcloud:provision:SecurityGroups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        def group(suffix: str, description: str) -> openstack.networking.SecGroup:
            return openstack.networking.SecGroup(
                f"{name}-{suffix}", name=f"{name}-{suffix}", description=description, opts=child
            )

        def rule(label: str, group_id, port: int, *, cidr: str | None = None, remote_group=None) -> None:
            openstack.networking.SecGroupRule(
                f"{name}-{label}",
                direction="ingress",
                ethertype=_ethertype(cidr) if cidr else "IPv4",
                protocol="tcp",
                port_range_min=port,
                port_range_max=port,
                remote_ip_prefix=cidr,
                remote_group_id=remote_group,
                security_group_id=group_id,
                description=label,
                opts=child,
            )

        self.ssh = group("ssh", "llmcloud: SSH from admin networks")
        for i, cidr in enumerate(admin_cidrs):
            rule(f"ssh-admin-{i}", self.ssh.id, 22, cidr=cidr)

        self.edge = group("edge", "llmcloud: public HTTP(S) on the edge")
        for port in (80, 443):
            if web_sources is None:
                for cidr in ("0.0.0.0/0", "::/0"):
                    rule(f"edge-{port}-{_ethertype(cidr).lower()}", self.edge.id, port, cidr=cidr)
            for i, cidr in enumerate(web_sources or []):
                rule(f"edge-{port}-proxy-{i}", self.edge.id, port, cidr=cidr)

        self.engine = group("engine", "llmcloud: inference engine, reachable from the edge only")
        rule("engine-from-edge", self.engine.id, ENGINE_PORT, remote_group=self.edge.id)
        # More models (`models:`): each engine container on a port of its own.
        for port in extra_engine_ports or []:
            rule(f"engine-{port}-from-edge", self.engine.id, port, remote_group=self.edge.id)
        # Prometheus runs on the edge (role monitoring) and scrapes the engine VMs' exporters.
        rule("node-exporter-from-edge", self.engine.id, NODE_EXPORTER_PORT, remote_group=self.edge.id)
        rule("dcgm-exporter-from-edge", self.engine.id, DCGM_EXPORTER_PORT, remote_group=self.edge.id)
        # Engine VMs without a public address are reached through the edge (ProxyJump).
        rule("ssh-from-edge", self.engine.id, 22, remote_group=self.edge.id)
        self.register_outputs({"ssh": self.ssh.id, "edge": self.edge.id, "engine": self.engine.id})
