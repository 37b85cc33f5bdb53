"""The whole path on fresh local hosts, for both topologies: up → inventory → converge → verify.

Each topology gets its own stack name, ports and inventory directory, so a user's `make local`
stack is never touched, and everything is torn down afterwards, also on failure.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from contextlib import contextmanager

import pytest
import yaml

from llmcloud import REPO_ROOT, converge, verify
from llmcloud.local import system
from llmcloud.local.stack import LABEL, LocalStack
from llmcloud.progress import Progress

pytestmark = pytest.mark.integration

TOPOLOGIES = {
    "single": {"topology": "single", "ssh_port": 42200, "http_port": 42280, "https_port": 42243, "idp_port": 42290},
    "split": {"topology": "split", "engines": 2, "ssh_port": 42210, "http_port": 42281, "https_port": 42244, "idp_port": 42291},
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


def engine_host(stack: LocalStack) -> tuple[str, str]:
    """(inventory name, address the engine listens on) of the first engine host."""
    hosts = yaml.safe_load((stack.inventory_dir / "hosts.yml").read_text())["all"]
    name = sorted(hosts["children"]["llm"]["hosts"])[0]
    is_edge = name in hosts["children"]["edge"]["hosts"]
    return name, "127.0.0.1" if is_edge else hosts["hosts"][name]["private_ip"]


@contextmanager
def tunnel(stack: LocalStack, host: str, address: str, port: int = 8080):
    """An SSH forward from this machine to the engine, which never listens on a public address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            "ssh",
            "-F",
            str(stack.inventory_dir / "ssh_config"),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{local}:{address}:{port}",
            host,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", local), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.2)
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_serving(base_url: str, timeout: float) -> float:
    """Seconds until /health answers 200 and a generation succeeds; fails after ``timeout``."""
    import requests

    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            if requests.get(f"{base_url}/health", timeout=2).status_code == 200:
                requests.post(f"{base_url}/generate", json={"inputs": "ping"}, timeout=5).raise_for_status()
                return time.monotonic() - began
        except requests.RequestException:
            pass
        time.sleep(0.25)
    pytest.fail(f"engine not serving within {timeout}s")


def test_real_clients_generate_and_stream(deployed):
    from openai import OpenAI
    from text_generation import Client

    stack, _ = deployed
    with tunnel(stack, *engine_host(stack)) as url:
        tgi = Client(url, timeout=30)
        answer = tgi.generate("What is de.NBI?", max_new_tokens=7)
        assert answer.details.generated_tokens == 7
        streamed = [r.token.text for r in tgi.generate_stream("What is de.NBI?", max_new_tokens=7)]
        assert len(streamed) == 7
        assert "".join(streamed) == answer.generated_text  # the same tokens, one by one

        client = OpenAI(base_url=f"{url}/v1", api_key="unused")
        model = client.models.list().data[0].id
        assert model == "llmcloud/engine-test-double"  # the model id the role passed to the engine
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        chunks = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text == chat.choices[0].message.content and text
        completion = client.completions.create(model=model, prompt="hi", max_tokens=3)
        assert completion.choices[0].text


def test_engine_back_after_its_process_is_killed(deployed, record_property):
    stack, _ = deployed
    name, address = engine_host(stack)
    container = system.docker_client().containers.get(stack.container_name(name))
    with tunnel(stack, name, address) as url:
        wait_serving(url, 30)
        crash = 'kill -9 "$(docker inspect -f "{{.State.Pid}}" llm-engine)"'
        assert container.exec_run(["sh", "-c", crash]).exit_code == 0
        took = wait_serving(url, 120)
    record_property("engine_recovery_after_kill_s", round(took, 2))
    print(f"\n  engine serving again {took:.1f}s after its process was killed")


def test_everything_back_after_a_host_restart_without_converge(deployed, record_property):
    stack, _ = deployed
    if stack.topology != "single":
        pytest.skip("restarting one host is enough; the single topology has the whole path on it")
    name, address = engine_host(stack)
    container = system.docker_client().containers.get(stack.container_name(name))
    began = time.monotonic()
    container.restart(timeout=30)
    stack._wait_ready(container, name)
    with tunnel(stack, name, address) as url:
        wait_serving(url, 300)
    took = time.monotonic() - began
    record_property("engine_recovery_after_host_restart_s", round(took, 2))
    print(f"\n  host restart to engine serving: {took:.1f}s")
    live = container.exec_run(["nft", "list", "chain", "inet", "llmcloud_filter", "input"]).output.decode()
    assert "policy drop;" in live, "the firewall did not come back after the restart"


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
