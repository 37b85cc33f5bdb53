"""stacks/Pulumi.denbi-berlin.yaml on a cloud seeded like a de.NBI Berlin project: the project's existing
network, floating IPs from the private pool `dmz-int`, SSH through the site jump host, GPU images picked by
pattern, and backups on a Manila share granted to every VM."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from testbed.automation import Lines
from tests.provision.conftest import RESTIC_PASSWORD
from tests.provision.readback import inventory_view, newest_image, stack_resources

PREFIX = "llm-denbi-berlin"
SOURCE = yaml.safe_load(Path("stacks/Pulumi.denbi-berlin.yaml").read_text())["config"]
JUMP = SOURCE["llmcloud:reach"]["jumpHost"]
BOOT_GB = 60


@pytest.fixture(scope="module")
def stack(make_stack):
    # allowDataLoss from the start: this module is about the topology; test_single covers protection.
    # The engine boots from a volume made from its image (bootVolumeSize), as GPU VMs with big images do.
    stack = make_stack(
        "denbi-berlin",
        "denbi-berlin",
        overrides={
            "llmcloud:allowDataLoss": "true",
            "llmcloud:engineNode": {**SOURCE["llmcloud:engineNode"], "bootVolumeSize": BOOT_GB},
        },
        secrets={"llmcloud:resticPassword": RESTIC_PASSWORD},
    )
    preview = stack.preview(on_output=Lines())
    assert preview.change_summary.get("create", 0) > 0
    stack.up(on_output=Lines())
    yield stack
    stack.destroy(on_output=Lines())
    stack.remove()


def test_vms_on_the_projects_network_with_de_nbi_flavors_and_images(stack, admin, project):
    now = stack_resources(admin, project.id, PREFIX)
    assert not now.networks and not now.routers  # the project's own network, not a new one
    network = admin.network.find_network(SOURCE["llmcloud:network"]["existing"])
    assert {p.network_id for p in now.ports.values()} == {network.id}
    llm, edge = now.servers[f"{PREFIX}-llm1"], now.servers[f"{PREFIX}-edge1"]
    assert llm.flavor.original_name == "de.NBI GPU T4 medium"
    data = now.volumes[f"{PREFIX}-llm1-data"]
    assert data.size == SOURCE["llmcloud:engineNode"]["dataVolumeSize"]
    # The engine boots from a volume made from the image (deleted with the VM); the data volume stays.
    attached = {a["id"]: a["delete_on_termination"] for a in llm.attached_volumes}
    (boot_id,) = set(attached) - {data.id}
    boot = admin.block_storage.get_volume(boot_id)
    assert boot.is_bootable and boot.size == BOOT_GB and attached == {boot_id: True, data.id: False}
    engine_image = boot.volume_image_metadata["image_id"]
    assert engine_image == newest_image(admin, SOURCE["llmcloud:engineNode"]["imagePattern"]).id
    assert edge.image.id == newest_image(admin, SOURCE["llmcloud:edgeNode"]["imagePattern"]).id
    assert admin.image.get_image(engine_image).name.endswith("-gpu")
    assert not admin.image.get_image(edge.image.id).name.endswith("-gpu")


def test_floating_ip_from_the_private_pool_on_the_edge(stack, admin, project):
    now = stack_resources(admin, project.id, PREFIX)
    (fip,) = now.floating_ips
    assert admin.network.get_network(fip.floating_network_id).name == "dmz-int"
    assert fip.port_id == now.ports[f"{PREFIX}-edge1-port"].id


def test_manila_share_granted_to_every_vm(stack, admin, project):
    now = stack_resources(admin, project.id, PREFIX)
    (share,) = now.shares.values()
    assert share.share_protocol == "NFS" and share.size == SOURCE["llmcloud:backup"]["size"]
    rules = {r.access_to for r in admin.shared_file_system.access_rules(share) if r.access_type == "ip"}
    private = {p.fixed_ips[0]["ip_address"] for p in now.ports.values()}
    assert rules == private and len(rules) == 2
    paths = [e.path for e in admin.shared_file_system.export_locations(share.id)]
    assert stack.outputs()["backup_repository"] in paths


def test_inventory_goes_through_the_jump_host(stack, admin, project):
    fip = stack_resources(admin, project.id, PREFIX).floating_ips[0].floating_ip_address
    view = inventory_view(stack.inventory_dir)
    hosts = view["_meta"]["hostvars"]
    assert hosts["edge1"]["ansible_host"] == fip
    assert hosts["edge1"]["ansible_ssh_common_args"].endswith(f"-o ProxyJump={JUMP}")
    assert hosts["llm1"]["ansible_ssh_common_args"].endswith(f"-o ProxyJump={JUMP},deploy@{fip}")
    assert hosts["llm1"]["restic_nfs_export"] == stack.outputs()["backup_repository"]
    assert stack.outputs()["ssh_command"] == f"ssh -J {JUMP} deploy@{fip}"
