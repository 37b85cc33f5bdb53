"""The configure-on-up resource, called directly as Pulumi's engine would."""

from __future__ import annotations

import pickle

import pytest

from llmcloud import verify
from llmcloud.provision import configure, rolling
from llmcloud.provision.configure import ConfigureError, ConfigureProvider

PROPS = {
    "digest": "a" * 64,
    "inventory_dir": "/nonexistent/inventory/test",
    "hosts": ["llm1"],
    "servers": {"llm1": "server-1"},
    "timeout": 5,
    "verify": True,
}


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Replace SSH, Ansible and testinfra with recorders; tests set what they answer."""
    record = {"waited": [], "converged": 0, "verified": 0, "converge_failure": None, "verify_rc": 0}

    def fake_converge(inventory_dir):
        record["converged"] += 1
        return record["converge_failure"]

    def fake_verify(inventory_dir, extra=None):
        record["verified"] += 1
        return record["verify_rc"]

    monkeypatch.setattr(configure, "wait_for_host", lambda _inv, name, *a: record["waited"].append(name))
    monkeypatch.setitem(PROPS, "inventory_dir", str(tmp_path))
    monkeypatch.setattr(configure, "converge_in_child", fake_converge)
    monkeypatch.setattr(verify, "verify", fake_verify)
    return record


def test_provider_pickles_without_clients():
    # Pulumi pickles the provider into the resource's state: it must hold no connections.
    assert pickle.loads(pickle.dumps(ConfigureProvider())).__class__ is ConfigureProvider


def test_create_waits_converges_and_verifies(calls):
    result = ConfigureProvider().create(dict(PROPS))
    assert calls["waited"] == ["llm1"]
    assert (calls["converged"], calls["verified"]) == (1, 1)
    assert result.id == "configure-" + "a" * 16
    assert result.outs["digest"] == PROPS["digest"]


def test_failed_playbook_surfaces_the_ansible_error(calls):
    calls["converge_failure"] = "llm1: Install packages: No package matching 'nvidia-driver'"
    with pytest.raises(ConfigureError) as err:
        ConfigureProvider().create(dict(PROPS))
    assert "No package matching 'nvidia-driver'" in str(err.value)
    assert f"ansible-playbook -i {PROPS['inventory_dir']} site.yml" in str(err.value)
    assert calls["verified"] == 0


def test_converge_runs_in_a_child_and_brings_back_its_error(tmp_path, capfd):
    # The real `llmcloud converge` in its own process: here it stops at once, naming the missing inventory.
    failure = configure.converge_in_child(tmp_path / "nowhere")
    assert failure is not None and "no inventory at" in failure
    assert "no inventory at" in capfd.readouterr().err  # its output streams through


def test_failed_checks_fail_the_resource(calls):
    calls["verify_rc"] = 1
    with pytest.raises(ConfigureError, match="post-deploy checks failed"):
        ConfigureProvider().create(dict(PROPS))


def test_verify_switch(calls):
    ConfigureProvider().create({**PROPS, "verify": False})
    assert calls["verified"] == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, False),
        ({"digest": "b" * 64}, True),
        ({"verify": False}, True),
        ({"timeout": 99}, False),
        ({"servers": {"llm1": "server-2"}}, True),  # a replaced VM: same inventory, new machine
    ],
)
def test_diff_follows_the_digest(change, expected):
    diff = ConfigureProvider().diff("id", dict(PROPS), {**PROPS, **change})
    assert diff.changes is expected
    assert not diff.replaces


def test_update_runs_again(calls):
    ConfigureProvider().update("id", dict(PROPS), {**PROPS, "digest": "b" * 64})
    assert calls["converged"] == 1


def test_update_forgets_only_the_host_keys_of_replaced_vms_and_records_what_it_converged(calls, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    known.parent.mkdir()
    known.write_text("10.0.0.5 ssh-ed25519 AAAAold\n[10.0.0.6]:2222 ssh-ed25519 AAAAother\n")
    (tmp_path / "hosts.yml").write_text(
        "all:\n  hosts:\n    llm1: {ansible_host: 10.0.0.5}\n"
        "    llm2: {ansible_host: 10.0.0.6, ansible_port: 2222}\n"
    )
    olds = {**PROPS, "hosts": ["llm1", "llm2"], "servers": {"llm1": "a", "llm2": "b"}}
    ConfigureProvider().update("id", olds, {**olds, "servers": {"llm1": "a2", "llm2": "b"}})
    assert calls["converged"] == 1
    assert "10.0.0.5" not in known.read_text()
    assert "[10.0.0.6]:2222 ssh-ed25519 AAAAother" in known.read_text()
    # Rolling replacements act on hosts Configure has converged, as it converged them.
    assert rolling.configured(tmp_path) == {"llm1": "a2", "llm2": "b"}
    # The next update with the same servers forgets nothing (the record, not the state, says what was seen).
    known.write_text("10.0.0.5 ssh-ed25519 AAAAnew\n")
    ConfigureProvider().update("id", olds, {**olds, "servers": {"llm1": "a2", "llm2": "b"}})
    assert "AAAAnew" in known.read_text()


def test_a_failed_converge_records_nothing(calls, tmp_path):
    calls["converge_failure"] = "llm1: boom"
    with pytest.raises(ConfigureError):
        ConfigureProvider().create(dict(PROPS))
    assert rolling.configured(tmp_path) == {}


def test_digest_changes_with_inventory_roles_and_secrets(tmp_path, monkeypatch):
    base = configure.configuration_digest({"hosts.yml": "a"}, {"pw": "x"})
    assert base == configure.configuration_digest({"hosts.yml": "a"}, {"pw": "x"})
    assert base != configure.configuration_digest({"hosts.yml": "b"}, {"pw": "x"})
    assert base != configure.configuration_digest({"hosts.yml": "a"}, {"pw": "y"})
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles" / "x.yml").write_text("1")
    (tmp_path / "site.yml").write_text("- hosts: all\n")
    monkeypatch.setattr(configure, "REPO_ROOT", tmp_path)
    before = configure.configuration_digest({}, {})
    (tmp_path / "roles" / "x.yml").write_text("2")
    assert configure.configuration_digest({}, {}) != before


def test_wait_for_host_gives_up_naming_the_host(monkeypatch, tmp_path):
    # OpenSSH itself, through the stack's ssh_config, to a port where nothing listens.
    (tmp_path / "ssh_config").write_text("Host llm1\n  HostName 127.0.0.1\n  Port 9\n")
    monkeypatch.setattr(configure.time, "sleep", lambda s: None)
    with pytest.raises(ConfigureError, match=r"llm1: SSH not ready after 0s \(.*[Cc]onnection refused"):
        configure.wait_for_host(tmp_path, "llm1", 0.05)
