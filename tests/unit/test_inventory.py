"""The inventory contract: the files Ansible reads, checked with Ansible itself."""

from __future__ import annotations

import json
import subprocess

import pytest

from llmcloud import inventory
from llmcloud.errors import UserError
from llmcloud.inventory import Inventory, InventoryHost


def split_inventory(**kwargs) -> Inventory:
    hosts = [
        InventoryHost("edge1", ("edge",), "203.0.113.10", "10.0.0.10", public_ip="203.0.113.10"),
        InventoryHost("llm1", ("llm",), "10.0.0.11", "10.0.0.11"),
        InventoryHost("llm2", ("llm",), "10.0.0.12", "10.0.0.12"),
    ]
    return Inventory("demo", hosts, vars={"admin_cidrs": ["192.0.2.0/24"]}, **kwargs)


def ansible_view(tmp_path, inv: Inventory) -> dict:
    inventory.write(inv, tmp_path)
    out = subprocess.run(
        ["ansible-inventory", "-i", str(tmp_path), "--list"], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def test_ansible_reads_groups_and_host_facts(tmp_path):
    view = ansible_view(tmp_path, split_inventory())
    assert sorted(view["edge"]["hosts"]) == ["edge1"]
    assert sorted(view["llm"]["hosts"]) == ["llm1", "llm2"]
    edge = view["_meta"]["hostvars"]["edge1"]
    assert edge["private_ip"] == "10.0.0.10"
    assert edge["public_ip"] == "203.0.113.10"
    assert edge["ansible_user"] == "deploy"
    assert edge["admin_cidrs"] == ["192.0.2.0/24"]
    assert edge["llmcloud_stack"] == "demo"


def test_single_host_is_in_both_groups(tmp_path):
    inv = Inventory("one", [InventoryHost("node1", ("llm", "edge"), "127.0.0.1", "172.18.0.2", 2222)])
    view = ansible_view(tmp_path, inv)
    assert view["edge"]["hosts"] == ["node1"] == view["llm"]["hosts"]
    assert view["_meta"]["hostvars"]["node1"]["ansible_port"] == 2222


def test_jump_host_goes_into_ssh_args_and_ssh_config(tmp_path):
    known = tmp_path / "k" / "known_hosts"
    inv = split_inventory(proxy_jump="alice@jump.example.org", known_hosts_file=str(known))
    view = ansible_view(tmp_path, inv)
    args = view["_meta"]["hostvars"]["llm1"]["ansible_ssh_common_args"]
    assert "-o ProxyJump=alice@jump.example.org" in args
    assert f"-o UserKnownHostsFile={known}" in args
    config = (tmp_path / "ssh_config").read_text()
    assert "Host llm2\n  HostName 10.0.0.12\n" in config
    assert "  ProxyJump alice@jump.example.org\n" in config


def test_without_jump_host_there_is_no_proxy(tmp_path):
    assert "ProxyJump" not in split_inventory().ssh_common_args()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda inv: inv.hosts.append(inv.hosts[0]), "duplicate host names"),
        (lambda inv: inv.hosts.pop(0), "no host in group 'edge'"),
        (lambda inv: inv.hosts.__setitem__(0, InventoryHost("Edge_1", ("edge",), "h", "10.0.0.1")), "Edge_1"),
        (
            lambda inv: inv.hosts.__setitem__(0, InventoryHost("edge1", ("web",), "h", "10.0.0.1")),
            "unknown groups",
        ),
        (
            lambda inv: inv.hosts.__setitem__(0, InventoryHost("edge1", ("edge",), "h", "10.0.0.x")),
            "10.0.0.x",
        ),
    ],
)
def test_invalid_inventory_is_refused(mutate, message):
    inv = split_inventory()
    mutate(inv)
    with pytest.raises(ValueError, match=message):
        inventory.render(inv)


def test_missing_inventory_names_the_fix(tmp_path):
    with pytest.raises(UserError) as err:
        inventory.require(tmp_path / "nope")
    assert "no inventory at" in err.value.cause
    assert "make local" in err.value.fix


def test_user_settings_are_the_users_own_files_only(tmp_path):
    from llmcloud.inventory import user_settings

    (tmp_path / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "group_vars" / "all" / "00-llmcloud.yml").write_text("generated: 1\n")
    (tmp_path / "group_vars" / "all" / "01-secrets.yml").write_text("secret: x\n")
    (tmp_path / "group_vars" / "all" / "50-mine.yml").write_text("mine: 1\n")
    (tmp_path / "host_vars" / "llm1.yml").write_text("gpu: 2\n")
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    assert user_settings(tmp_path) == {
        "group_vars/all/50-mine.yml": "mine: 1\n",
        "host_vars/llm1.yml": "gpu: 2\n",
    }
    assert user_settings(tmp_path / "missing") == {}


def test_the_known_hosts_file_ssh_config_names_exists_owner_only(tmp_path):
    """Before anything connected (`configure: false`), the first `ssh -F` can keep the host key."""
    known = tmp_path / "inv" / "ssh" / "known_hosts"
    inventory.write(split_inventory(known_hosts_file=str(known)), tmp_path / "inv")
    assert f"UserKnownHostsFile {known}" in (tmp_path / "inv" / "ssh_config").read_text()
    assert known.is_file() and known.read_text() == ""
    assert known.stat().st_mode & 0o777 == 0o600
    assert known.parent.stat().st_mode & 0o777 == 0o700
    known.write_text("[203.0.113.10]:22 ssh-ed25519 AAAA\n")
    inventory.write(split_inventory(known_hosts_file=str(known)), tmp_path / "inv")
    assert known.read_text() == "[203.0.113.10]:22 ssh-ed25519 AAAA\n", "a re-write must keep the keys"
