"""Engine VMs replaced one at a time: the pool member's steps as Pulumi's engine calls them, and the program's
chain under mocks. The real replacement, clients asking through the edge: tests/provision/test_boot_berlin.py.
"""

from __future__ import annotations

import pytest

from llmcloud import converge, hostkeys
from llmcloud.converge import ConvergeResult
from llmcloud.provision import configure, nodes, program, rolling
from llmcloud.provision.configure import ConfigureError
from llmcloud.provision.rolling import PoolMemberProvider
from tests.unit.test_provision import SPLIT, deploy


@pytest.fixture
def steps(monkeypatch, tmp_path):
    """What the member did, in order: waits, playbooks (with their limit and extra vars), forgotten keys."""

    class Steps(list):
        """The steps, and the playbooks that fail (a test adds them)."""

        def __init__(self):
            super().__init__()
            self.failing: set[str] = set()

    done = Steps()
    failing = done.failing

    def fake_converge(inventory_dir, progress, playbook="site.yml", extravars=None, limit=None):
        done.append(("converge", playbook, limit, extravars))
        ok = playbook not in failing
        return ConvergeResult(
            "successful" if ok else "failed", 0 if ok else 2, failures=[] if ok else ["x: y"]
        )

    monkeypatch.setattr(converge, "converge", fake_converge)
    monkeypatch.setattr(configure, "wait_for_host", lambda _inv, name, timeout: done.append(("wait", name)))
    monkeypatch.setattr(
        hostkeys, "forget_replaced", lambda _inv, servers, *a: done.append(("forget", servers)) or []
    )
    return done


def props(tmp_path, **changes):
    return {
        "host": "llm2",
        "server": "s2-new",
        "edges": {"edge1": "e1"},
        "inventory_dir": str(tmp_path),
        "timeout": 30,
        **changes,
    }


def test_a_replaced_vm_of_a_configured_stack_is_converged_alone_then_put_back(steps, tmp_path):
    rolling.record_configured(tmp_path, {"edge1": "e1", "llm1": "s1", "llm2": "s2"})
    PoolMemberProvider().delete("id", props(tmp_path, server="s2"))
    PoolMemberProvider().create(props(tmp_path))
    assert steps == [
        ("converge", "pool.yml", "llm2", {"llmcloud_pool": "out"}),
        ("forget", {"llm2": "s2-new"}),
        ("wait", "llm2"),
        ("converge", "site.yml", "llm2", None),
        ("converge", "pool.yml", "llm2", {"llmcloud_pool": "in"}),
    ]


def test_a_new_stack_or_replica_is_left_to_configure(steps, tmp_path):
    PoolMemberProvider().create(props(tmp_path))  # nothing converged yet
    rolling.record_configured(tmp_path, {"edge1": "e1", "llm1": "s1"})
    PoolMemberProvider().create(props(tmp_path))  # llm2 is a new replica
    PoolMemberProvider().delete("id", props(tmp_path))
    assert steps == []


def test_with_the_edge_replaced_too_there_is_no_pool_to_leave_or_join(steps, tmp_path):
    rolling.record_configured(tmp_path, {"edge1": "e1-old", "llm2": "s2"})
    PoolMemberProvider().delete("id", props(tmp_path, server="s2"))
    PoolMemberProvider().create(props(tmp_path))
    assert steps == []


def test_a_failed_converge_stops_the_roll_naming_the_host_and_the_command(steps, tmp_path):
    rolling.record_configured(tmp_path, {"edge1": "e1", "llm2": "s2"})
    steps.failing.add("site.yml")
    with pytest.raises(ConfigureError) as err:
        PoolMemberProvider().create(props(tmp_path))
    assert "llm2: x: y" in str(err.value)
    assert f"ansible-playbook -i {tmp_path} site.yml --limit llm2" in str(err.value)
    assert ("converge", "pool.yml", "llm2", {"llmcloud_pool": "in"}) not in steps


def test_a_failed_drain_does_not_keep_the_vm(steps, tmp_path, capfd):
    rolling.record_configured(tmp_path, {"edge1": "e1", "llm2": "s2"})
    steps.failing.add("pool.yml")
    PoolMemberProvider().delete("id", props(tmp_path, server="s2"))
    assert "WARNING: could not take llm2 out of the pools" in capfd.readouterr().err


def test_another_server_is_another_member_left_before_the_vm_goes():
    diff = PoolMemberProvider().diff("id", props("/i", server="s2"), props("/i"))
    assert diff.replaces == ["server"] and diff.delete_before_replace
    assert not PoolMemberProvider().diff("id", props("/i"), props("/i")).changes


def test_the_program_chains_the_engine_vms_behind_the_edge_and_each_other(tmp_path, monkeypatch):
    """Split with 3 engine VMs: llm1 after the edge, llm2 after llm1's member, llm3 after llm2's; each member
    replaced with its own VM; Configure after every member."""
    afters, members = {}, {}
    real_node, real_member = nodes.Node.__init__, rolling.PoolMember.__init__

    def node_init(self, name, **kwargs):
        afters[name.rsplit("-", 1)[1]] = kwargs.get("after") or []
        real_node(self, name, **kwargs)

    def member_init(self, name, props, opts=None):
        members[props["host"]] = (self, opts)
        real_member(self, name, props, opts)

    monkeypatch.setattr(nodes.Node, "__init__", node_init)
    monkeypatch.setattr(rolling.PoolMember, "__init__", member_init)
    instances = {}
    real_configure = program._configure

    def configure_spy(cfg, prefix, inventory_dir, digest, servers, server_ids, members_):
        instances.update({n: node.instance for n, node in servers.items()})
        instances["members"] = members_
        real_configure(cfg, prefix, inventory_dir, digest, servers, server_ids, members_)

    monkeypatch.setattr(program, "_configure", configure_spy)
    deploy(tmp_path, **{**SPLIT, "replicas": 3})
    assert sorted(members) == ["llm1", "llm2", "llm3"]
    assert afters["edge1"] == [] and afters["llm1"] == [instances["edge1"]]
    assert afters["llm2"] == [members["llm1"][0]] and afters["llm3"] == [members["llm2"][0]]
    for host, (_, opts) in members.items():
        assert opts.replace_with == [instances[host]]
    assert instances["members"] == [members[h][0] for h in ("llm1", "llm2", "llm3")]


@pytest.mark.parametrize("changes", [{}, {**SPLIT, "replicas": 1}, {**SPLIT, "configure": False}])
def test_no_members_where_nothing_rolls(tmp_path, changes):
    mocks, _, _ = deploy(tmp_path, **changes)
    names = [r.name for r in mocks.of_type("pulumi-python:dynamic:Resource")]
    assert not [n for n in names if n.endswith("-pool")]


def test_no_playbook_is_named_like_a_task_file():
    """Ansible resolves a relative `include_tasks` in tasks/ against the playbook's folder too: a playbook at
    the root named like a file of tasks/ was included in its place (the pool playbook, once engine-pool.yml,
    broke site.yml's and reboot.yml's drains)."""
    from llmcloud import REPO_ROOT

    playbooks = {p.name for p in REPO_ROOT.glob("*.yml")}
    assert (REPO_ROOT / rolling.POOL_PLAYBOOK).is_file()
    assert not playbooks & {p.name for p in (REPO_ROOT / "tasks").glob("*.yml")}
