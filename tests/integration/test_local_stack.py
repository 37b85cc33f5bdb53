"""The whole path on fresh local hosts, for both topologies: up → inventory → converge → verify.

Each topology gets its own stack name, ports and inventory directory, so a user's `make local`
stack is never touched, and everything is torn down afterwards, also on failure.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from llmcloud import REPO_ROOT, converge, verify
from llmcloud.local import system
from llmcloud.local.stack import LABEL, LocalStack
from llmcloud.progress import Progress

pytestmark = pytest.mark.integration

TOPOLOGIES = {
    "single": {"topology": "single", "ssh_port": 42200, "http_port": 42280, "https_port": 42243},
    "split": {"topology": "split", "engines": 2, "ssh_port": 42210, "http_port": 42281, "https_port": 42244},
}


@pytest.fixture(scope="module", params=sorted(TOPOLOGIES))
def deployed(request, tmp_path_factory):
    """A freshly started and converged stack: (stack, result of the first converge)."""
    name = request.param
    stack = LocalStack(
        name=f"citest-{name}", inventory_root=tmp_path_factory.mktemp(name), **TOPOLOGIES[name]
    )
    progress = Progress(f"citest {name}")
    client = system.docker_client()
    # Something make local did not create, with a look-alike name: `down` must leave it alone.
    sentinel = client.volumes.create(f"llmcloud-{stack.name}-keep-me")
    try:
        stack.up(progress)
        first = converge.converge(stack.inventory_dir, progress)
        yield stack, first
    finally:
        stack.down(progress)
        leftovers = client.containers.list(all=True, filters={"label": f"{LABEL}={stack.name}"})
        survived = [v.name for v in client.volumes.list() if v.name == sentinel.name]
        sentinel.remove(force=True)
        assert not leftovers, f"down left {leftovers}"
        assert survived, "down removed a volume it did not create"
        assert not stack.inventory_dir.exists()


def test_first_converge_succeeds(deployed):
    _, first = deployed
    assert first.ok, first.failures
    assert first.total_changed() > 0


def test_second_converge_with_plain_ansible_playbook_changes_nothing(deployed):
    stack, _ = deployed
    run = subprocess.run(
        ["ansible-playbook", "-i", str(stack.inventory_dir), "site.yml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    recap = re.findall(
        r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", run.stdout, re.M
    )
    assert {host for host, *_ in recap} == {name for name, _ in stack.hosts()}
    not_idempotent = {host: int(changed) for host, changed, _, _ in recap if int(changed)}
    assert not not_idempotent, f"second converge changed something: {not_idempotent}\n{run.stdout[-4000:]}"


def test_converge_restores_a_firewall_changed_by_hand(deployed):
    stack, _ = deployed
    host = stack.hosts()[-1][0]
    container = system.docker_client().containers.get(stack.container_name(host))
    hole = ["nft", "insert", "rule", "inet", "llmcloud_filter", "input", "tcp", "dport", "47813", "accept"]
    assert container.exec_run(hole).exit_code == 0
    result = converge.converge(stack.inventory_dir, Progress("repair"))
    assert result.ok, result.failures
    assert result.changed().get(host), "converge did not notice the changed firewall"
    live = container.exec_run(["nft", "list", "chain", "inet", "llmcloud_filter", "input"]).output.decode()
    assert "47813" not in live


def test_testinfra_suite_passes(deployed):
    stack, _ = deployed
    assert verify.verify(stack.inventory_dir) == 0


def test_up_again_reuses_the_hosts(deployed):
    stack, _ = deployed
    client = system.docker_client()

    def ids():
        return sorted(
            c.id for c in client.containers.list(all=True, filters={"label": f"{LABEL}={stack.name}"})
        )

    before = ids()
    assert len(before) == len(stack.hosts())
    stack.up(Progress("again"))
    assert ids() == before
