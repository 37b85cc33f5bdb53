"""stacks/Pulumi.example.yaml (topology single) through its whole life on the local cloud, step by step:
preview, up, what exists, the inventory, a no-op up, configure failing clearly, destroy keeping the data,
and allowDataLoss removing everything. The steps run in file order and share one stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pulumi.automation import CommandError

from testbed.automation import Lines
from tests.integration.helpers import free_port
from tests.provision.readback import ingress_rules, inventory_view, newest_image, stack_resources, user_data

PREFIX = "llm-example"
SOURCE = yaml.safe_load(Path("stacks/Pulumi.example.yaml").read_text())["config"]


@pytest.fixture(scope="module")
def stack(make_stack):
    return make_stack("example", "example")


@pytest.fixture(scope="module")
def up_result(stack):
    preview = stack.preview(on_output=Lines())
    assert preview.change_summary.get("create", 0) >= 20, preview.change_summary
    return stack.up(on_output=Lines())


def test_up_creates_the_stack(up_result):
    assert up_result.summary.result == "succeeded"
    assert up_result.summary.resource_changes.get("create", 0) >= 20


def test_security_groups_as_promised(up_result, admin, project):
    found = stack_resources(admin, project.id, PREFIX)
    groups = found.security_groups
    assert set(groups) == {f"{PREFIX}-ssh", f"{PREFIX}-edge", f"{PREFIX}-engine"}
    # SSH only from adminCidrs; 80/443 from anywhere on the edge group; the engine port only from the edge.
    assert ingress_rules(admin, groups[f"{PREFIX}-ssh"]) == {
        ("tcp", 22, 22, c) for c in SOURCE["llmcloud:adminCidrs"]
    }
    assert ingress_rules(admin, groups[f"{PREFIX}-edge"]) == {
        ("tcp", port, port, cidr) for port in (80, 443) for cidr in ("0.0.0.0/0", "::/0")
    }
    assert ingress_rules(admin, groups[f"{PREFIX}-engine"]) == {
        ("tcp", 8080, 8080, f"{PREFIX}-edge"),
        ("tcp", 22, 22, f"{PREFIX}-edge"),
        # Prometheus runs on the edge and scrapes the node and GPU exporters of the engine VMs.
        ("tcp", 9100, 9100, f"{PREFIX}-edge"),
        ("tcp", 9400, 9400, f"{PREFIX}-edge"),
    }
    # single: the one VM is engine and edge.
    (port,) = found.ports.values()
    assert {g.id for g in groups.values()} == set(port.security_group_ids)


def test_server_flavor_image_and_user_data(up_result, admin, project, ssh_public_key):
    found = stack_resources(admin, project.id, PREFIX)
    server = found.servers[f"{PREFIX}-llm1"]
    assert server.status == "ACTIVE"
    assert server.flavor.original_name == SOURCE["llmcloud:engineNode"]["flavor"]
    assert "resources:VGPU" in server.flavor.extra_specs  # the GPU flavor
    pattern = SOURCE["llmcloud:engineNode"]["imagePattern"]
    assert server.image.id == newest_image(admin, pattern).id, "not the newest image matching imagePattern"
    cloud_init = user_data(server)
    (volume,) = found.volumes.values()
    assert cloud_init.startswith("#cloud-config")
    assert ssh_public_key in cloud_init and "deploy" in cloud_init
    assert f"/dev/disk/by-id/virtio-{volume.id[:20]}" in cloud_init
    assert server.metadata == {"llmcloud-stack": "example", "llmcloud-role": "llm+edge"}


def test_data_volume_attached_at_boot_and_kept_with_the_vm(up_result, admin, project):
    found = stack_resources(admin, project.id, PREFIX)
    server = found.servers[f"{PREFIX}-llm1"]
    volume = found.volumes[f"{PREFIX}-llm1-data"]
    assert volume.size == SOURCE["llmcloud:engineNode"]["dataVolumeSize"]
    (attached,) = server.attached_volumes
    assert attached["id"] == volume.id and attached["delete_on_termination"] is False
    # Attached at boot: the server's only action is its creation, no later attach.
    actions = [a.action for a in admin.compute.server_actions(server)]
    assert actions == ["create"]


def test_floating_ip_on_the_entry_vm(up_result, stack, admin, project):
    found = stack_resources(admin, project.id, PREFIX)
    (fip,) = found.floating_ips
    assert fip.port_id == found.ports[f"{PREFIX}-llm1-port"].id
    assert (
        admin.network.get_network(fip.floating_network_id).name == SOURCE["llmcloud:reach"]["floatingIpPool"]
    )
    assert stack.outputs()["entry_address"] == fip.floating_ip_address


def test_inventory_from_the_real_outputs(up_result, stack, admin, project):
    found = stack_resources(admin, project.id, PREFIX)
    fip = found.floating_ips[0].floating_ip_address
    private = found.ports[f"{PREFIX}-llm1-port"].fixed_ips[0]["ip_address"]
    view = inventory_view(stack.inventory_dir)
    host = view["_meta"]["hostvars"]["llm1"]
    assert host["ansible_host"] == fip and host["private_ip"] == private and host["public_ip"] == fip
    assert sorted(view["llm"]["hosts"]) == ["llm1"] and sorted(view["edge"]["hosts"]) == ["llm1"]
    assert host["ansible_user"] == "deploy"


def test_second_up_changes_nothing(up_result, stack):
    again = stack.up(on_output=Lines())
    assert set(again.summary.resource_changes) == {"same"}, again.summary.resource_changes


def test_configure_that_cannot_reach_the_vm_fails_clearly(up_result, stack):
    """The dynamic resource pickles and runs in the real engine; an unreachable VM gives our message.

    The VM is reached through a jump host on a closed port of 127.0.0.1, so no packet leaves this machine."""
    closed = free_port("127.0.0.1")
    reach = {**SOURCE["llmcloud:reach"], "jumpHost": f"nobody@127.0.0.1:{closed}"}
    stack.set_config(
        {"llmcloud:configure": "true", "llmcloud:configureTimeout": "10", "llmcloud:reach": reach}
    )
    out = Lines()
    try:
        with pytest.raises(CommandError):
            stack.up(on_output=out)
    finally:
        stack.set_config({"llmcloud:configure": "false", "llmcloud:reach": SOURCE["llmcloud:reach"]})
    assert "llm1: SSH not ready after 10s" in out.text, out.text[-2000:]
    assert "Traceback" not in out.text


def test_destroy_refuses_to_delete_protected_data(up_result, stack, admin, project):
    out = Lines()
    with pytest.raises(CommandError):
        stack.destroy(on_output=out)
    assert f"{PREFIX}-llm1-data" in out.text and "cannot be deleted" in out.text and "protected" in out.text
    assert f"{PREFIX}-llm1-data" in stack_resources(admin, project.id, PREFIX).volumes


def test_destroy_exclude_protected_leaves_exactly_the_data_volume(up_result, stack, admin, project):
    stack.destroy(exclude_protected=True, on_output=Lines())
    left = stack_resources(admin, project.id, PREFIX)
    assert left.names() == {"volumes": [f"{PREFIX}-llm1-data"]}
    assert left.volumes[f"{PREFIX}-llm1-data"].status == "available"


def test_allow_data_loss_then_destroy_leaves_nothing(up_result, stack, admin, project):
    kept = stack_resources(admin, project.id, PREFIX).volumes[f"{PREFIX}-llm1-data"]
    stack.set_config({"llmcloud:allowDataLoss": "true"})
    again = stack.up(on_output=Lines())
    # The kept volume is the one the new VM gets: it was never deleted.
    assert stack_resources(admin, project.id, PREFIX).volumes[f"{PREFIX}-llm1-data"].id == kept.id
    assert again.summary.resource_changes.get("create", 0) >= 20
    stack.destroy(on_output=Lines())
    assert stack_resources(admin, project.id, PREFIX).names() == {}
    stack.remove()
