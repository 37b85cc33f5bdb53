"""The private network: created (network, subnet, router to the external network) or reused."""

from __future__ import annotations

import pulumi
import pulumi_openstack as openstack

from llmcloud.config import Network as NetworkConfig


class Network(pulumi.ComponentResource):
    network_id: pulumi.Output[str]
    #: What must exist before a floating IP can be associated with a port of this network (the router's
    #: interface on its subnet; Neutron refuses the association until then).
    routed: list[pulumi.Resource]
    #: What must exist before a port of this network is made (its subnet; a port made first has no address).
    addressed: list[pulumi.Resource]

    def __init__(self, name: str, cfg: NetworkConfig, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llmcloud:provision:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.routed = []
        self.addressed = []
        if cfg.existing:
            # de.NBI projects come with a routed network, e.g. "<project>-network-2".
            found = openstack.networking.get_network_output(
                name=cfg.existing, opts=pulumi.InvokeOptions(parent=self)
            )
            self.network_id = found.id
        else:
            network = openstack.networking.Network(
                f"{name}-net", name=f"{name}-net", admin_state_up=True, opts=child
            )
            subnet = openstack.networking.Subnet(
                f"{name}-subnet",
                name=f"{name}-subnet",
                network_id=network.id,
                cidr=cfg.cidr,
                ip_version=4,
                dns_nameservers=cfg.dns_nameservers or None,
                opts=child,
            )
            self.addressed.append(subnet)
            if cfg.external_network:
                external = openstack.networking.get_network_output(
                    name=cfg.external_network, opts=pulumi.InvokeOptions(parent=self)
                )
                router = openstack.networking.Router(
                    f"{name}-router", name=f"{name}-router", external_network_id=external.id, opts=child
                )
                self.routed.append(
                    openstack.networking.RouterInterface(
                        f"{name}-router-if", router_id=router.id, subnet_id=subnet.id, opts=child
                    )
                )
            self.network_id = network.id
        self.register_outputs({"network_id": self.network_id})
