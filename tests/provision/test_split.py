"""stacks/Pulumi.example.yaml as topology split with 2 replicas and Swift backups: the edge is the only way
in, more replicas leave the others alone, a replaced VM keeps its data volume, and `destroy --exclude-
protected` keeps exactly the data volumes and the backup container. The steps run in file order."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pulumi.automation import CommandError

from testbed.automation import Lines
from tests.provision.conftest import RESTIC_PASSWORD
from tests.provision.readback import ingress_rules, inventory_view, newest_image, stack_resources

PREFIX = "llm-example-split"
CONTAINER = "llmcloud-backup-split"
SOURCE = yaml.safe_load(Path("stacks/Pulumi.example.yaml").read_text())["config"]
OLDER_GPU_IMAGE = r"^Ubuntu-24\.04-20260901-gpu$"


@pytest.fixture(scope="module")
def stack(make_stack):
    stack = make_stack(
        "example-split",
        "example",
        overrides={
            "llmcloud:topology": "split",
            "llmcloud:replicas": "2",
            "llmcloud:backup": {"target": "swift", "container": CONTAINER},
        },
        secrets={"llmcloud:resticPassword": RESTIC_PASSWORD},
    )
    stack.up(on_output=Lines())
    return stack


def found(admin, project):
    return stack_resources(admin, project.id, PREFIX, container=CONTAINER)


def test_the_edge_is_the_only_way_in(stack, admin, project):
    now = found(admin, project)
    assert sorted(now.servers) == [f"{PREFIX}-edge1", f"{PREFIX}-llm1", f"{PREFIX}-llm2"]
    groups = {g.id: name.rsplit("-", 1)[1] for name, g in now.security_groups.items()}
    port_groups = {name: {groups[g] for g in p.security_group_ids} for name, p in now.ports.items()}
    assert port_groups == {
        f"{PREFIX}-edge1-port": {"ssh", "edge"},
        f"{PREFIX}-llm1-port": {"ssh", "engine"},
        f"{PREFIX}-llm2-port": {"ssh", "engine"},
    }
    # 80/443 only in the edge group: the engine VMs are not public.
    engine_rules = ingress_rules(admin, now.security_groups[f"{PREFIX}-engine"])
    assert {r[1] for r in engine_rules} == {
        8080,
        22,
        9100,
        9400,
    }  # engine, SSH, the exporters Prometheus scrapes
    assert all(r[3] == f"{PREFIX}-edge" for r in engine_rules)  # ... from the edge group only
    (fip,) = now.floating_ips
    assert fip.port_id == now.ports[f"{PREFIX}-edge1-port"].id
    edge = now.servers[f"{PREFIX}-edge1"]
    assert edge.flavor.original_name == SOURCE["llmcloud:edgeNode"]["flavor"]
    assert edge.image.id == newest_image(admin, SOURCE["llmcloud:edgeNode"]["imagePattern"]).id
    assert not edge.attached_volumes  # the edge has no model cache
    assert now.containers == [CONTAINER]


def test_inventory_reaches_the_engines_through_the_edge(stack, admin, project):
    fip = found(admin, project).floating_ips[0].floating_ip_address
    view = inventory_view(stack.inventory_dir)
    hosts = view["_meta"]["hostvars"]
    assert hosts["edge1"]["ansible_host"] == fip
    for name in ("llm1", "llm2"):
        assert hosts[name]["ansible_ssh_common_args"].endswith(f"-o ProxyJump=deploy@{fip}")
    assert hosts["llm1"]["restic_repository"] == f"swift:{CONTAINER}:/{{{{ inventory_hostname }}}}"


def test_more_replicas_add_vms_and_leave_the_others_alone(stack, admin, project):
    before = {name: s.id for name, s in found(admin, project).servers.items()}
    stack.set_config({"llmcloud:replicas": "3"})
    result = stack.up(on_output=Lines())
    assert (
        "delete" not in result.summary.resource_changes and "replace" not in result.summary.resource_changes
    )
    after = {name: s.id for name, s in found(admin, project).servers.items()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {f"{PREFIX}-llm3"}
    assert f"{PREFIX}-llm3-data" in found(admin, project).volumes


def test_replaced_vm_keeps_its_data_volume(stack, admin, project):
    """A new image for the engine VMs replaces them (README: which settings do); each data volume moves."""
    before = found(admin, project)
    volumes = {name: v.id for name, v in before.volumes.items()}
    old_ids = {name: s.id for name, s in before.servers.items()}
    stack.set_config(
        {"llmcloud:engineNode": {**SOURCE["llmcloud:engineNode"], "imagePattern": OLDER_GPU_IMAGE}}
    )
    result = stack.up(on_output=Lines())
    assert result.summary.resource_changes.get("replace", 0) >= 3
    after = found(admin, project)
    assert {name: v.id for name, v in after.volumes.items()} == volumes
    for i in (1, 2, 3):
        server = after.servers[f"{PREFIX}-llm{i}"]
        assert server.id != old_ids[f"{PREFIX}-llm{i}"]
        assert server.image.id == newest_image(admin, OLDER_GPU_IMAGE).id
        assert [a["id"] for a in server.attached_volumes] == [volumes[f"{PREFIX}-llm{i}-data"]]
    assert after.servers[f"{PREFIX}-edge1"].id == old_ids[f"{PREFIX}-edge1"]  # the edge is untouched


def test_destroy_keeps_exactly_the_data_volumes_and_the_backup_container(stack, admin, project):
    with pytest.raises(CommandError):
        stack.destroy(on_output=Lines())
    stack.destroy(exclude_protected=True, on_output=Lines())
    assert found(admin, project).names() == {
        "volumes": [f"{PREFIX}-llm{i}-data" for i in (1, 2, 3)],
        "containers": [CONTAINER],
    }
    # Clean up (test_single proves the allowDataLoss way): unprotect in the state, then destroy.
    stack.reset()
    assert found(admin, project).names() == {}
    stack.remove()
