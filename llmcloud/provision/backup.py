"""Optional backup storage for restic: a Manila NFS share granted to the nodes, or a Swift container."""

from __future__ import annotations

import pulumi
import pulumi_openstack as openstack

from llmcloud.config import Backup, BackupTarget


class BackupStorage(pulumi.ComponentResource):
    #: The restic repository the restic role will use (an NFS export path, or `swift:<container>:/`).
    repository: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        cfg: Backup,
        client_ips: list[pulumi.Input[str]],
        allow_data_loss: bool,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("llmcloud:provision:BackupStorage", name, None, opts)
        keep = pulumi.ResourceOptions(parent=self, protect=not allow_data_loss)
        child = pulumi.ResourceOptions(parent=self)
        if cfg.target == BackupTarget.manila:
            share_network_id = None
            if cfg.share_network:
                share_network_id = openstack.sharedfilesystem.get_share_network_output(
                    name=cfg.share_network, opts=pulumi.InvokeOptions(parent=self)
                ).id
            share = openstack.sharedfilesystem.Share(
                f"{name}-share",
                name=f"{name}-share",
                share_proto="NFS",
                size=cfg.size,
                share_type=cfg.share_type,
                share_network_id=share_network_id,
                description="llmcloud restic repository",
                opts=keep,
            )
            for i, ip in enumerate(client_ips):
                openstack.sharedfilesystem.ShareAccess(
                    f"{name}-access-{i}",
                    share_id=share.id,
                    access_type="ip",
                    access_to=ip,
                    access_level="rw",
                    opts=child,
                )
            self.repository = share.export_locations.apply(lambda locations: locations[0]["path"])
        else:
            container = openstack.objectstorage.Container(f"{name}-container", name=cfg.container, opts=keep)
            self.repository = container.name.apply(lambda n: f"swift:{n}:/")
        self.register_outputs({"repository": self.repository})
