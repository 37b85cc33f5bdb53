"""One contract: the local stack and `pulumi up` get hosts and role variables from one plan and mapping.

The local stack's flags become a stack config (llmcloud/local/settings.py); the same config, given to the
Pulumi program under mocks, must give the same hosts and the same role variables, but for the local overlay.
"""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pytest
import yaml

from llmcloud import contract
from llmcloud.inventory import InventoryHost
from llmcloud.local import settings
from llmcloud.local.stack import Images, LocalStack
from tests.unit.test_provision import GOLDEN, Mocks

NETWORK = settings.LocalNetwork("172.30.0.1", "172.30.0.0/16", "http://172.30.0.1:9400")
DEPLOY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHfM4yWq5c4D3R1lDXRQ8+0Ww7nXbPqk1mAcI2fX2V1C deploy@test"
#: What a local stack may set beyond the mapping. A new key here is a new way for `make local` to differ from
#: a real deployment: argue it in review, and prefer a stack setting that the mapping turns into it.
OVERLAY = {
    "llmcloud_private_cidr",
    "common_timesync_set_clock",
    "container_images_preload",
    "llm_engine_image",
    "llm_engine_healthcheck_test",
    "llm_engine_health_timeout",
    "oauth2_proxy_image",
    "open_webui_image",
    "nginx_public_https_port",
    "certbot_selfsigned_ip_addresses",
    "certbot_export_ca",
    "monitoring_scrape_interval",
    "monitoring_evaluation_interval",
    "restic_enabled",
    "restic_repository",
}
#: What the local stack adds to each of llmcloud_extra_models: they are engine TEST DOUBLEs.
MODEL_OVERLAY = {"image", "healthcheck_test", "health_timeout"}


def local_stack(tmp_path: Path, **flags) -> LocalStack:
    stack = LocalStack(inventory_root=tmp_path / "local", **flags)
    cache = tmp_path / "cache"
    stack._built = Images(
        base="llmcloud/debian12-systemd:x",
        idp="llmcloud/oidc-mock:x",
        double=("llmcloud/engine-double:x", cache / "double.tar"),
        oauth2_proxy=("llmcloud/oauth2-proxy:x", cache / "oauth2-proxy.tar"),
        open_webui=("llmcloud/open-webui:x", cache / "open-webui.tar"),
    )
    return stack


def local_inventory(stack: LocalStack):
    reached = [
        InventoryHost(name, groups, "127.0.0.1", f"172.30.0.{10 + i}", 2222 + i)
        for i, (name, groups) in enumerate(stack.hosts())
    ]
    return stack.inventory_of(reached, NETWORK, DEPLOY_KEY)


def provisioned(tmp_path: Path, stack: LocalStack):
    """The same stack config through `pulumi up`'s program (under mocks): its hosts and group variables."""
    from llmcloud.provision.program import program

    cfg = settings.stack_config(stack, stack._built, NETWORK, DEPLOY_KEY, stack._secrets())
    pulumi.runtime.set_mocks(Mocks(), project="llmcloud", stack=stack.name, preview=False)

    @pulumi.runtime.test
    def run():
        outputs = program(cfg, inventory_root=tmp_path / "cloud", check_cloud=False)
        return pulumi.Output.all(**outputs)

    run()
    inv = tmp_path / "cloud" / stack.name
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())
    group_vars = yaml.safe_load((inv / "group_vars" / "all" / "00-llmcloud.yml").read_text())
    return hosts, {
        k: v for k, v in group_vars.items() if not k.startswith("ansible_") and k != "llmcloud_stack"
    }


def groups_of(hosts_yml: dict) -> dict[str, list[str]]:
    return {group: sorted(body.get("hosts", {})) for group, body in hosts_yml["all"]["children"].items()}


FLAGS = {
    "single": {},
    "split-2-engines-2-models": {
        "topology": "split",
        "engines": 2,
        "extra_models": ("llmcloud/embeddings-double",),
    },
}


@pytest.mark.parametrize("case", sorted(FLAGS))
def test_local_and_provisioned_inventories_of_one_config_differ_only_by_the_overlay(tmp_path, case, request):
    stack = local_stack(tmp_path, name=f"contract-{case.split('-')[0]}", **FLAGS[case])
    local, _ = local_inventory(stack)
    cloud_hosts, cloud_vars = provisioned(tmp_path, stack)

    # The same hosts, by the same names, in the same groups.
    assert [(h.name, h.groups) for h in local.hosts] == [
        (h.name, h.groups) for h in contract.plan(stack.topology, stack.engines)
    ]
    assert {g: sorted(h.name for h in local.group(g)) for g in ("edge", "llm")} == groups_of(cloud_hosts)
    # The same variables, but for the overlay.
    assert set(local.vars) - set(cloud_vars) <= OVERLAY, "local/ writes a role variable the mapping does not"
    for key, value in cloud_vars.items():
        if key in OVERLAY:
            continue
        if key == "llmcloud_extra_models":
            assert [{k: v for k, v in m.items() if k not in MODEL_OVERLAY} for m in local.vars[key]] == value
            assert all(set(m) - set(value[0]) <= MODEL_OVERLAY for m in local.vars[key])
            continue
        assert local.vars.get(key) == value, key

    side_by_side = json.dumps(
        {
            "hosts": {
                "local": {g: sorted(h.name for h in local.group(g)) for g in ("edge", "llm")},
                "provisioned": groups_of(cloud_hosts),
            },
            "vars": {"local": local.vars, "provisioned": cloud_vars},
        },
        indent=2,
        sort_keys=True,
    ).replace(str(tmp_path), "<root>")
    golden = GOLDEN / f"contract-{case}.json"
    if request.config.getoption("--update-golden", default=False) or not golden.exists():
        golden.write_text(side_by_side + "\n")
        if not request.config.getoption("--update-golden", default=False):
            pytest.fail(f"wrote missing golden file {golden.name}; review and commit it")
    assert side_by_side + "\n" == golden.read_text()


def test_the_overlay_is_exactly_the_reviewed_list():
    assert set(settings.LOCAL_ONLY) == OVERLAY


def test_the_shared_ports_are_the_roles_own_defaults():
    assert contract.ENGINE_PORT == contract.role_default("llm_engine", "llm_engine_port") == 8080
    assert contract.NODE_EXPORTER_PORT == 9100 and contract.DCGM_EXPORTER_PORT == 9400


def test_the_single_host_has_one_name_on_every_target():
    assert [h.name for h in contract.plan("single")] == ["llm1"]
    assert [h.role for h in contract.plan("split", 2)] == ["edge", "llm", "llm"]
    assert contract.entry_host(contract.plan("single")).role == "llm+edge"
