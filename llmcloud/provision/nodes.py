"""A VM of the stack: its port, instance, optional data volume and optional floating IP."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from llmcloud.config import Node as NodeConfig
from llmcloud.contract import DATA_MOUNT
from llmcloud.inventory import template_environment


@dataclass(frozen=True)
class DataVolume:
    size: int
    volume_type: str | None
    #: False: `pulumi destroy` refuses to delete it (protect), so data survives a teardown.
    allow_data_loss: bool


def data_device(volume_id: str) -> str:
    """Where a virtio volume appears on the guest: its id, cut to 20 characters by the virtio serial."""
    return f"/dev/disk/by-id/virtio-{volume_id[:20]}"


def render_user_data(stack: str, hostname: str, deploy_public_key: str, volume_id: str | None) -> str:
    return (
        template_environment()
        .get_template("cloud-init/user-data.yaml.j2")
        .render(
            stack=stack,
            hostname=hostname,
            deploy_public_key=deploy_public_key,
            data_device=data_device(volume_id) if volume_id else None,
            data_mount=DATA_MOUNT,
        )
    )


def find_image(cfg: NodeConfig, parent: pulumi.Resource) -> pulumi.Output[str]:
    opts = pulumi.InvokeOptions(parent=parent)
    if cfg.image:
        return openstack.images.get_image_output(name=cfg.image, most_recent=True, opts=opts).id
    return openstack.images.get_image_output(name_regex=cfg.image_pattern, most_recent=True, opts=opts).id


class Node(pulumi.ComponentResource):
    private_ip: pulumi.Output[str]
    public_ip: pulumi.Output[str] | None
    instance: openstack.compute.Instance
    volume: openstack.blockstorage.Volume | None

    def __init__(
        self,
        name: str,
        *,
        stack: str,
        cfg: NodeConfig,
        network_id: pulumi.Input[str],
        security_group_ids: list[pulumi.Input[str]],
        keypair_name: pulumi.Input[str],
        deploy_public_key: pulumi.Input[str],
        floating_ip_pool: str | None,
        data_volume: DataVolume | None = None,
        routed: list[pulumi.Resource] | None = None,
        addressed: list[pulumi.Resource] | None = None,
        role: str,
        after: list[pulumi.Resource] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        """``after``: what must be done before this VM is created or replaced (rolling.py's chain)."""
        super().__init__("llmcloud:provision:Node", name, None, opts)
        image_id = find_image(cfg, self)
        port = openstack.networking.Port(
            f"{name}-port",
            name=f"{name}-port",
            network_id=network_id,
            security_group_ids=security_group_ids,
            admin_state_up=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=addressed or []),
        )
        boot = openstack.compute.InstanceBlockDeviceArgs(
            source_type="image",
            uuid=image_id,
            boot_index=0,
            destination_type="volume" if cfg.boot_volume_size else "local",
            volume_size=cfg.boot_volume_size,
            delete_on_termination=True,
        )
        self.volume = self._data_volume(name, stack, data_volume) if data_volume is not None else None
        volume_id: pulumi.Input[str | None] = self.volume.id if self.volume else None
        block_devices = [boot]
        if self.volume is not None:
            # Attached at boot, so cloud-init finds it; kept when the VM is deleted.
            block_devices.append(
                openstack.compute.InstanceBlockDeviceArgs(
                    source_type="volume",
                    destination_type="volume",
                    uuid=self.volume.id,
                    boot_index=-1,
                    delete_on_termination=False,
                )
            )
        user_data = pulumi.Output.all(deploy_public_key, volume_id).apply(
            lambda args: render_user_data(stack, name, args[0], args[1])
        )
        self.instance = openstack.compute.Instance(
            name,
            name=name,
            flavor_name=cfg.flavor,
            image_id=image_id,
            key_pair=keypair_name,
            networks=[openstack.compute.InstanceNetworkArgs(port=port.id)],
            block_devices=block_devices,
            user_data=user_data,
            metadata={"llmcloud-stack": stack, "llmcloud-role": role},
            # The replacement boots on the same port with the same data volume, which the old VM holds
            # until it is deleted: delete first (Pulumi's default is create first, which fails here).
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, depends_on=after or []),
        )
        self.private_ip = port.all_fixed_ips[0]
        self.public_ip = (
            self._floating_ip(name, stack, floating_ip_pool, port, routed) if floating_ip_pool else None
        )
        self.register_outputs({"private_ip": self.private_ip, "public_ip": self.public_ip})

    def _data_volume(self, name: str, stack: str, data: DataVolume) -> openstack.blockstorage.Volume:
        """The model cache: protected from `pulumi destroy` unless allowDataLoss."""
        return openstack.blockstorage.Volume(
            f"{name}-data",
            name=f"{name}-data",
            size=data.size,
            volume_type=data.volume_type,
            description=f"llmcloud {stack}: model cache of {name}, kept when the VM is replaced",
            opts=pulumi.ResourceOptions(parent=self, protect=not data.allow_data_loss),
        )

    def _floating_ip(self, name: str, stack: str, pool: str, port, routed) -> pulumi.Output[str]:
        fip = openstack.networking.FloatingIp(
            f"{name}-fip",
            pool=pool,
            description=f"llmcloud {stack}: {name}",
            opts=pulumi.ResourceOptions(parent=self),
        )
        openstack.networking.FloatingIpAssociate(
            f"{name}-fip-assoc",
            floating_ip=fip.address,
            port_id=port.id,
            opts=pulumi.ResourceOptions(parent=self, depends_on=routed or []),
        )
        return fip.address
