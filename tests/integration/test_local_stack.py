"""The whole path on fresh local hosts, for both topologies: up → inventory → converge → verify.

Each topology gets its own stack name, ports and inventory directory, so a user's `make local`
stack is never touched, and everything is torn down afterwards, also on failure.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from helpers import (
    apply_edge_role,
    endpoint,
    llmcloud_usage,
    sse_events,
    usage_delta,
    usage_rows,
    usage_since,
)

from llmcloud import REPO_ROOT, converge, inventory, verify
from llmcloud.local import hosts, system
from llmcloud.local.login import browser_login, session
from llmcloud.local.login import id_token as idp_token
from llmcloud.local.stack import CLIENT_ID, DOUBLE_MODEL, LABEL, PEER_LABEL, LocalStack
from llmcloud.progress import Progress
from tests import tools
from tests.clients import asking, tally

pytestmark = pytest.mark.integration

EMBEDDINGS_MODEL = "llmcloud/embeddings-double"
TOPOLOGIES = {
    "single": {
        "topology": "single",
        "ssh_port": 31200,
        "http_port": 31280,
        "https_port": 31243,
        "idp_port": 31290,
    },
    "split": {
        "topology": "split",
        "engines": 2,
        "ssh_port": 31210,
        "http_port": 31281,
        "https_port": 31244,
        "idp_port": 31291,
        # Short-lived tokens, so a test can see one expire.
        "idp_token_max_age": 20,
        # A second model (an embeddings engine, as RAG tools want) on both engine hosts, routed by "model".
        "extra_models": (EMBEDDINGS_MODEL,),
        # The chat UI lives in the edge's nginx and its own container: the single stack covers it.
        "chat_ui": False,
    },
}


def selected_topologies() -> list[str]:
    """LLMCLOUD_TOPOLOGIES=single (or split, or both comma-separated) runs this module on those stacks only:
    `make integration` runs each topology in a process of its own, side by side."""
    names = [n.strip() for n in os.environ.get("LLMCLOUD_TOPOLOGIES", ",".join(TOPOLOGIES)).split(",")]
    unknown = [n for n in names if n not in TOPOLOGIES]
    if unknown or not names:
        raise pytest.UsageError(
            f"LLMCLOUD_TOPOLOGIES={os.environ.get('LLMCLOUD_TOPOLOGIES')!r}: {unknown} unknown; "
            f"name one or more of {sorted(TOPOLOGIES)}, comma-separated"
        )
    return sorted(names)


@pytest.fixture(scope="module", params=selected_topologies())
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
    # What a killed earlier run may have left under this stack's name (its hosts, its backups) goes first.
    stack.down(progress)
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
    result = converge.converge(stack.inventory_dir, Progress("repair"), limit=host)
    assert result.ok, result.failures
    assert result.changed().get(host), "converge did not notice the changed firewall"
    live = system.run_in(
        container, ["nft", "list", "chain", "inet", "llmcloud_filter", "input"]
    ).output.decode()
    assert "47813" not in live


def test_commands_run_in_a_host_return_their_whole_output_while_others_run(deployed):
    """The tests read hosts' state through `system.run_in`; Docker's own exec lost a short command's output
    now and then while other execs ran (an empty `readlink -f` failed CI)."""
    stack, _ = deployed
    if stack.topology != "single":
        pytest.skip("one topology is enough")
    host = system.docker_client().containers.get(stack.container_name(stack.hosts()[0][0]))
    assert system.run_in(host, ["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, b"out\nerr\n")
    assert system.run_in(host, ["id", "-un"], user="nobody") == (0, b"nobody\n")

    def read(i: int) -> bytes:
        return system.run_in(host, ["readlink", "-f", f"/etc/../etc/{i}"]).output

    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(read, range(96)))
    assert outputs == [f"/etc/{i}\n".encode() for i in range(96)]
    assert host.exec_run(["sh", "-c", "ls /tmp/.llmcloud-exec-*"]).exit_code != 0, "output files left behind"


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
    with inventory.forward(stack.inventory_dir, host, address, port, timeout=20) as local:
        yield f"http://127.0.0.1:{local}"


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
        assert model == DOUBLE_MODEL  # the model id the role passed to the engine
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
    hosts.wait_ready(container, name)
    with tunnel(stack, name, address) as url:
        wait_serving(url, 300)
    took = time.monotonic() - began
    if stack.chat_ui:  # the chat UI comes back with the host too (its container's restart policy)
        deadline = time.monotonic() + 300
        health = ["curl", "-sf", "--max-time", "5", "--unix-socket", SITE["__site_chat_ui_socket"]]
        health.append("http://localhost/health")
        while container.exec_run(health).exit_code != 0:
            assert time.monotonic() < deadline, "the chat UI did not come back after the host restart"
            time.sleep(2)
        record_property("chat_ui_recovery_after_host_restart_s", round(time.monotonic() - began, 2))
    record_property("engine_recovery_after_host_restart_s", round(took, 2))
    print(f"\n  host restart to engine serving: {took:.1f}s")
    live = system.run_in(
        container, ["nft", "list", "chain", "inet", "llmcloud_filter", "input"]
    ).output.decode()
    assert "policy drop;" in live, "the firewall did not come back after the restart"


def test_up_again_reuses_the_hosts(deployed):
    stack, _ = deployed
    client = system.docker_client()

    def ids():
        return sorted(
            c.id
            for c in client.containers.list(all=True, filters={"label": f"{LABEL}={stack.name}"})
            if PEER_LABEL not in c.labels
        )

    before = ids()
    assert len(before) == len(stack.hosts())
    stack.up(Progress("again"))
    assert ids() == before


#: The summary's lines that are commands, by their label.
SUMMARY_COMMANDS = ("ssh", "re-run", "backups", "watch", "API key", "try")


def summary_commands(text: str) -> dict[str, str]:
    """{label: command} from the summary; a command continues on lines indented past the labels."""
    commands: dict[str, str] = {}
    label = None
    for line in text.splitlines():
        head = re.match(r"^  ([A-Za-z -]+):\s+(.*)$", line)
        if head:
            label = head.group(1) if head.group(1) in SUMMARY_COMMANDS else None
            if label:
                commands[label] = head.group(2)
        elif label and line.startswith(" " * 13):
            commands[label] += "\n" + line
        else:
            label = None
    return commands


def test_every_command_of_the_summary_runs_as_printed(deployed):
    """What a new user does next: copy each command of the summary into a new shell (no venv on PATH)."""
    stack, _ = deployed
    if stack.topology != "single":
        pytest.skip("the commands are the same for every topology; the single stack runs them")
    shell = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home()), "LANG": "C.UTF-8"}
    printed = subprocess.run(
        [
            ".venv/bin/llmcloud",
            "local",
            "status",
            "--stack",
            stack.name,
            "--inventory-root",
            str(stack.inventory_root),
        ],
        cwd=REPO_ROOT,
        env=shell,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    commands = summary_commands(printed)
    assert set(commands) == set(SUMMARY_COMMANDS), printed
    outputs = {}
    for label, command in commands.items():
        run = subprocess.run(
            ["bash", "-c", command],
            cwd=REPO_ROOT,
            env=shell,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, (
            f"{label}: `{command}` failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
        )
        outputs[label] = run.stdout
    assert outputs["API key"].strip() == stack.secrets()["oauth2_proxy_api_keys"][0]["key"]
    reply = json.loads(outputs["try"])
    assert reply["choices"][0]["message"]["content"], reply


# ---- the edge: TLS, login, API keys --------------------------------------------------------------
def test_browser_login_reaches_the_engine_and_streams(deployed):
    stack, _ = deployed
    status = endpoint(stack)
    s, landing = browser_login(status, "alice")
    assert landing.status_code == 200 and landing.url == status["url"]
    if stack.chat_ui:  # the chat UI's page, for signed-in people only
        assert "<title>Open WebUI</title>" in landing.text, landing.text[:300]
    else:
        assert landing.headers["X-Signed-In-As"] in ("alice@example.org", "alice")
    reply = s.post(
        status["openai_base_url"] + "/chat/completions",
        json={
            "model": DOUBLE_MODEL,
            "stream": True,
            "max_tokens": 6,
            "messages": [{"role": "user", "content": "hi"}],
        },
        stream=True,
        timeout=30,
    )
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in reply.iter_lines() if line.startswith(b"data:")]
    assert (len(events) >= 6 and events[-1] == b"data:[DONE]") or len(events) >= 6


def test_a_user_outside_the_allowed_domain_is_refused(deployed):
    stack, _ = deployed
    status = endpoint(stack)
    s, refused = browser_login(status, "mallory")
    assert refused.status_code == 403
    assert s.get(status["openai_base_url"] + "/models", timeout=20).status_code == 401


def test_openai_client_with_an_api_key_streams_through_verified_tls(deployed):
    from openai import DefaultHttpxClient, OpenAI

    stack, _ = deployed
    status = endpoint(stack)
    with DefaultHttpxClient(verify=status["ca_bundle"], trust_env=False, timeout=30) as http:
        client = OpenAI(base_url=status["openai_base_url"], api_key=status["api_key"], http_client=http)
        model = client.models.list().data[0].id
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=7
        )
        chunks = list(
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=7, stream=True
            )
        )
    assert len(chunks) >= 7
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == chat.choices[0].message.content
    )


def test_tgi_client_and_embeddings_through_the_edge_with_an_api_key(deployed, monkeypatch):
    """TGI's own client posts to the base URL; RAG tools call /v1/embeddings. Both with TLS verified."""
    from openai import DefaultHttpxClient, OpenAI
    from text_generation import Client
    from text_generation.errors import UnknownError

    stack, _ = deployed
    status = endpoint(stack)
    # How `requests`, which the TGI client uses, trusts a CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", status["ca_bundle"])
    auth = {"Authorization": f"Bearer {status['api_key']}"}
    tgi = Client(status["url"], headers=auth, timeout=30)
    answer = tgi.generate("What is de.NBI?", max_new_tokens=7)
    assert answer.details.generated_tokens == 7
    streamed = [r.token.text for r in tgi.generate_stream("What is de.NBI?", max_new_tokens=7)]
    assert "".join(streamed) == answer.generated_text and len(streamed) == 7
    with pytest.raises(UnknownError, match="unauthorized"):  # no credentials: the edge's 401, not the engine
        Client(status["url"], timeout=30).generate("hi", max_new_tokens=1)

    s = session(status["ca_bundle"])
    refused = s.post(status["url"], json={"inputs": "hi"}, timeout=20)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    people = s.get(status["url"], allow_redirects=False, timeout=20)
    assert people.status_code == 302 and "/oauth2/start" in people.headers["Location"]  # GET / is for people

    with DefaultHttpxClient(verify=status["ca_bundle"], trust_env=False, timeout=30) as http:
        client = OpenAI(base_url=status["openai_base_url"], api_key=status["api_key"], http_client=http)
        vectors = client.embeddings.create(
            model=DOUBLE_MODEL, input=["de.NBI cloud", "de.NBI cloud", "Berlin"]
        ).data
    assert [v.index for v in vectors] == [0, 1, 2] and len(vectors[0].embedding) > 0
    assert vectors[0].embedding == vectors[1].embedding != vectors[2].embedding
    anonymous = s.post(status["openai_base_url"] + "/embeddings", json={"input": "x"}, timeout=20)
    assert anonymous.status_code == 401


def test_several_models_picked_by_the_model_field_with_the_openai_client(deployed):
    """llmcloud_extra_models: chat on one engine, embeddings on another, chosen by the request's "model"."""
    from openai import DefaultHttpxClient, NotFoundError, OpenAI

    stack, _ = deployed
    if not stack.extra_models:
        pytest.skip("this stack serves one model; the split stack serves two")
    status = endpoint(stack)
    hi = [{"role": "user", "content": "hi"}]
    with DefaultHttpxClient(verify=status["ca_bundle"], trust_env=False, timeout=30) as http:
        client = OpenAI(base_url=status["openai_base_url"], api_key=status["api_key"], http_client=http)
        assert [m.id for m in client.models.list().data] == [DOUBLE_MODEL, EMBEDDINGS_MODEL]
        # Each test double answers with its own model id: the answer shows which engine served it.
        assert (
            client.chat.completions.create(model=DOUBLE_MODEL, messages=hi, max_tokens=3).model
            == DOUBLE_MODEL
        )
        vectors = client.embeddings.create(model=EMBEDDINGS_MODEL, input=["de.NBI", "de.NBI", "Berlin"])
        assert vectors.model == EMBEDDINGS_MODEL and len(vectors.data) == 3
        assert vectors.data[0].embedding == vectors.data[1].embedding != vectors.data[2].embedding
        chunks = list(
            client.chat.completions.create(model=EMBEDDINGS_MODEL, messages=hi, max_tokens=6, stream=True)
        )
        assert len(chunks) >= 6 and {c.model for c in chunks} == {EMBEDDINGS_MODEL}  # streamed, routed
        with pytest.raises(NotFoundError) as unknown:
            client.chat.completions.create(model="no/such-model", messages=hi, max_tokens=1)
        assert "no/such-model" in str(unknown.value)
        assert DOUBLE_MODEL in str(unknown.value) and EMBEDDINGS_MODEL in str(unknown.value)

    s = session(status["ca_bundle"])
    url = status["openai_base_url"] + "/chat/completions"
    auth = {"Authorization": f"Bearer {status['api_key']}"}
    no_model = s.post(url, headers=auth, json={"messages": hi, "max_tokens": 2}, timeout=20)
    assert no_model.status_code == 200 and no_model.json()["model"] == DOUBLE_MODEL  # the main engine
    anonymous = s.post(url, json={"model": EMBEDDINGS_MODEL, "messages": hi, "max_tokens": 2}, timeout=20)
    assert anonymous.status_code == 401  # the login comes before any routing

    # Both engine hosts serve the second model: with its engine stopped on one, it is still served.
    host = system.docker_client().containers.get(stack.container_name("llm1"))
    engine = f"llm-engine-{stack_port(stack, EMBEDDINGS_MODEL)}"
    assert host.exec_run(["docker", "stop", engine]).exit_code == 0
    try:
        body = {"model": EMBEDDINGS_MODEL, "input": "x"}
        for _ in range(4):
            reply = s.post(status["openai_base_url"] + "/embeddings", headers=auth, json=body, timeout=20)
            assert reply.status_code == 200 and reply.json()["model"] == EMBEDDINGS_MODEL
    finally:
        assert host.exec_run(["docker", "start", engine]).exit_code == 0
        wait_healthy(host, engine)


def stack_port(stack: LocalStack, model: str) -> int:
    """The engine port of one of the stack's more models (llmcloud_extra_models in its inventory)."""
    main = yaml.safe_load((stack.inventory_dir / "group_vars" / "all" / "00-llmcloud.yml").read_text())
    return next(m["port"] for m in main["llmcloud_extra_models"] if m["model_id"] == model)


def wait_healthy(host, container: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = host.exec_run(["docker", "inspect", "-f", "{{.State.Health.Status}}", container]).output
        if state.strip() == b"healthy":
            return
        time.sleep(2)
    raise AssertionError(f"{container} not healthy after {timeout}s")


def test_bearer_jwts_right_audience_only_signed_only_unexpired_only(deployed):
    import base64

    stack, _ = deployed
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    models = status["openai_base_url"] + "/models"

    def call(token: str) -> int:
        return s.get(models, headers={"Authorization": f"Bearer {token}"}, timeout=20).status_code

    good = idp_token(status, CLIENT_ID)
    assert call(good) == 200
    assert call(idp_token(status, "some-other-app")) == 401  # wrong audience

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = json.loads(base64.urlsafe_b64decode(good.split(".")[1] + "=="))
    assert call(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.") == 401  # unsigned
    header, _, signature = good.split(".")
    assert call(f"{header}.{b64({**claims, 'aud': 'some-other-app'})}.{signature}") == 401  # tampered

    if stack.idp_token_max_age <= 60:
        time.sleep(max(0.0, claims["exp"] - time.time()) + 2)
        assert call(good) == 401  # expired


# What site.yml passes the edge's roles beyond the inventory (vars/site.yml); a role applied alone gets it.
SITE = yaml.safe_load((REPO_ROOT / "vars" / "site.yml").read_text())


def test_api_keys_are_added_and_revoked_by_rerunning_the_role(deployed):
    stack, _ = deployed
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    models = status["openai_base_url"] + "/models"
    old, new = status["api_key"], "llmc_" + uuid.uuid4().hex + uuid.uuid4().hex
    assert s.get(models, headers={"Authorization": f"Bearer {new}"}, timeout=20).status_code == 401
    apply_edge_role(stack, "oauth2_proxy", oauth2_proxy_api_keys=[{"name": "rotated", "key": new}])
    try:
        assert s.get(models, headers={"Authorization": f"Bearer {new}"}, timeout=20).status_code == 200
        assert (
            s.get(models, headers={"Authorization": f"Bearer {old}"}, timeout=20).status_code == 401
        )  # revoked
    finally:
        apply_edge_role(stack, "oauth2_proxy")
    assert s.get(models, headers={"Authorization": f"Bearer {old}"}, timeout=20).status_code == 200


def test_rate_limits_count_each_api_key_on_its_own_and_say_when_to_retry(deployed):
    """Two keys from one address have a budget each; a 429 says when to retry. Keys carry their own limit."""
    stack, _ = deployed
    if stack.topology != "single":
        pytest.skip("one topology is enough: the limits live in the edge's nginx")
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    models = status["openai_base_url"] + "/models"
    slow = {name: "llmc_" + uuid.uuid4().hex + uuid.uuid4().hex for name in ("slow-a", "slow-b")}
    keys = [{"name": "demo", "key": status["api_key"]}] + [
        {"name": name, "key": key, "rate_limit_rps": 1, "rate_limit_burst": 2} for name, key in slow.items()
    ]

    def call(key: str):
        return s.get(models, headers={"Authorization": f"Bearer {key}"}, timeout=20)

    apply_edge_role(stack, "oauth2_proxy", oauth2_proxy_api_keys=keys)
    apply_edge_role(stack, "nginx")
    try:
        first = [call(slow["slow-a"]) for _ in range(8)]
        codes = [r.status_code for r in first]
        assert codes[:3] == [200, 200, 200], codes  # 1 request per second and a burst of 2
        limited = [r for r in first if r.status_code == 429]
        assert limited, codes
        assert limited[0].headers["Retry-After"] == "1"
        assert limited[0].json()["error"] == "rate_limited"
        # The same address, another key: its own budget, untouched by the first key's.
        assert call(slow["slow-b"]).status_code == 200
        # The default (20/s, burst 200) for a key without a limit of its own; no credential: per address.
        assert [call(status["api_key"]).status_code for _ in range(10)] == [200] * 10
        assert s.get(models, timeout=20).status_code == 401
    finally:
        apply_edge_role(stack, "oauth2_proxy")
        apply_edge_role(stack, "nginx")
    assert call(status["api_key"]).status_code == 200
    assert call(slow["slow-a"]).status_code == 401  # revoked with the reload that the key change made


# Usage accounting --------------------------------------------------------------------------------
def test_usage_is_counted_for_whoever_asked_on_every_route_as_the_engine_reports_it(deployed):
    """API keys, a session, a bearer JWT and the chat UI's person, on the OpenAI routes (plain and
    streamed), TGI's routes and POST /: counted for that principal, exactly the engine's own counts; a stream
    that did not ask for its usage is asked by the edge and the client sees no usage chunk. Then the table and
    the CSV."""
    stack, _ = deployed
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    api, root = status["openai_base_url"], status["url"]
    name, key = f"usage-{stack.topology}", "llmc_" + uuid.uuid4().hex + uuid.uuid4().hex
    apply_edge_role(
        stack,
        "oauth2_proxy",
        oauth2_proxy_api_keys=[{"name": "demo", "key": status["api_key"]}, {"name": name, "key": key}],
    )
    try:
        before = usage_rows(stack)
        auth = {"Authorization": f"Bearer {key}"}
        chat = {
            "model": DOUBLE_MODEL,
            "messages": [{"role": "user", "content": "how many tokens are in this prompt"}],
            "max_tokens": 5,
        }
        mine = [0, 0, 0, 0]

        def add(prompt: int, completion: int) -> None:
            mine[0] += 1
            mine[2] += prompt
            mine[3] += completion

        plain = s.post(api + "/chat/completions", json=chat, headers=auth, timeout=30).json()["usage"]
        add(plain["prompt_tokens"], plain["completion_tokens"])
        # Streamed without asking for usage: the edge asks the engine, counts it, and withholds that chunk.
        streamed = s.post(api + "/chat/completions", json={**chat, "stream": True}, headers=auth, timeout=30)
        events = sse_events(streamed.text)
        assert events and all(e["choices"] for e in events), streamed.text[-500:]
        assert streamed.text.rstrip().endswith("data: [DONE]")
        add(plain["prompt_tokens"], plain["completion_tokens"])  # the same request: the same counts
        asked = {**chat, "stream": True, "stream_options": {"include_usage": True}}
        shown = sse_events(s.post(api + "/chat/completions", json=asked, headers=auth, timeout=30).text)
        assert shown[-1]["choices"] == [] and shown[-1]["usage"] == plain  # asked for: the client gets it
        add(plain["prompt_tokens"], plain["completion_tokens"])
        # The same key spelled with an escape ("\u0073tream") is the same key to the engine: asked and counted
        # too, and the client sees no usage chunk (an accounting the spelling of a key could dodge is none).
        spelled = json.dumps({**chat, "stream": True}).replace('"stream"', '"\\u0073tream"')
        typed = {**auth, "Content-Type": "application/json"}
        dodged = sse_events(s.post(api + "/chat/completions", data=spelled, headers=typed, timeout=30).text)
        assert dodged and all(e["choices"] for e in dodged), dodged[-2:]
        add(plain["prompt_tokens"], plain["completion_tokens"])
        # A body the edge cannot read in memory to count: 413 naming the setting, a failed request of the key.
        huge = {**chat, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
        refused = s.post(api + "/chat/completions", json=huge, headers=auth, timeout=60)
        assert refused.status_code == 413 and "nginx_route_max_body_size" in refused.json()["detail"]
        mine[0] += 1
        mine[1] += 1
        completion = {"model": DOUBLE_MODEL, "prompt": "one two three", "max_tokens": 4}
        used = s.post(api + "/completions", json=completion, headers=auth, timeout=30).json()["usage"]
        add(used["prompt_tokens"], used["completion_tokens"])
        tgi = {"inputs": "one two three four", "parameters": {"max_new_tokens": 3}}
        for url in (root + "generate", root):
            answer = s.post(url, json=tgi, headers=auth, timeout=30)
            assert answer.status_code == 200, answer.text
            add(int(answer.headers["x-prompt-tokens"]), int(answer.headers["x-generated-tokens"]))
        stream = sse_events(s.post(root + "generate_stream", json=tgi, headers=auth, timeout=30).text)
        add(stream[-1]["details"]["input_length"], stream[-1]["details"]["generated_tokens"])
        embed = {"model": DOUBLE_MODEL, "input": "de.NBI cloud"}
        vectors = s.post(api + "/embeddings", json=embed, headers=auth, timeout=30)
        add(vectors.json()["usage"]["prompt_tokens"], 0)

        # People: a session (the browser's cookie) and a bearer JWT, each their own principal.
        alice, _ = browser_login(status, "alice")
        assert alice.post(api + "/chat/completions", json=chat, timeout=30).status_code == 200
        jwt = {"Authorization": f"Bearer {idp_token(status, CLIENT_ID, 'bob')}"}
        assert s.post(api + "/chat/completions", json=chat, headers=jwt, timeout=30).status_code == 200
        one_chat = (1, 0, plain["prompt_tokens"], plain["completion_tokens"])
        expected = {
            f"key:{name}": tuple(mine),
            "person:alice@example.org": one_chat,
            "person:bob@example.org": one_chat,
        }
        assert usage_since(stack, before, expected) == expected
        if stack.chat_ui:  # the chat UI acting for alice: counted for her, whatever it adds to the prompt
            before = usage_rows(stack)
            signin = alice.post(root + "api/v1/auths/signin", json={"email": "", "password": ""}, timeout=60)
            token = {"Authorization": f"Bearer {signin.json()['token']}"}
            body = {"model": DOUBLE_MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
            assert alice.post(root + "api/chat/completions", headers=token, json=body, timeout=120).ok
            deadline = time.monotonic() + 60
            while (got := usage_delta(stack, before, "person:alice@example.org"))[0] < 1:
                assert time.monotonic() < deadline, "the chat UI's request was never counted for alice"
                time.sleep(2)
            requests, failed, prompt, completion = got
            assert requests == 1 and failed == 0 and prompt > 0 and completion > 0, got

        table = llmcloud_usage(stack)
        assert table.returncode == 0 and f"key:{name}" in table.stdout, table.stderr
        assert table.stdout.splitlines()[0].split()[:2] == ["principal", "requests"]
        import csv

        rows = list(csv.DictReader(llmcloud_usage(stack, "--csv", "--since", "1d").stdout.splitlines()))
        counted = {r["principal"]: r for r in rows}
        assert int(counted[f"key:{name}"]["requests"]) >= mine[0]
        assert abs(sum(float(r["share"]) for r in rows) - 1) < 0.01
        groups = usage_rows(stack, by="group")
        assert groups["llm-users"]["requests"] >= 2  # alice and bob are in llm-users (the login's groups)
    finally:
        apply_edge_role(stack, "oauth2_proxy")


def test_a_quota_refuses_its_principal_only_and_says_when_it_resets(deployed):
    """A key past its tokens per day gets 429 with Retry-After and a JSON body naming the quota, its limit and
    the reset; another key and a person go on; a quota setting that names no e-mail is refused by name."""
    stack, _ = deployed
    if stack.topology != "single":
        pytest.skip("one topology is enough: quotas live in the edge's nginx")
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    chats = status["openai_base_url"] + "/chat/completions"
    keys = {name: "llmc_" + uuid.uuid4().hex + uuid.uuid4().hex for name in ("quota-a", "quota-b")}
    chat = {"model": DOUBLE_MODEL, "messages": [{"role": "user", "content": "count me"}], "max_tokens": 3}

    def call(key: str):
        return s.post(chats, json=chat, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    apply_edge_role(
        stack,
        "oauth2_proxy",
        oauth2_proxy_api_keys=[{"name": "demo", "key": status["api_key"]}]
        + [{"name": n, "key": k} for n, k in keys.items()],
    )
    try:
        before = usage_rows(stack)
        first = call(keys["quota-a"]).json()["usage"]
        used = first["total_tokens"]
        counted = {"key:quota-a": (1, 0, first["prompt_tokens"], first["completion_tokens"])}
        assert usage_since(stack, before, counted) == counted
        apply_edge_role(stack, "nginx", nginx_usage_quotas={"keys": {"quota-a": {"tokens_per_day": used}}})
        deadline = time.monotonic() + 40
        while (refused := call(keys["quota-a"])).status_code != 429:
            assert time.monotonic() < deadline, "the key past its quota was never refused"
            time.sleep(2)
        body = refused.json()
        midnight = (int(time.time()) // 86400 + 1) * 86400
        assert body["error"] == "quota_exceeded" and body["quota"] == "tokens_per_day"
        assert body["limit"] == used and body["used"] >= used
        assert body["resets_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(midnight))
        assert abs(int(refused.headers["Retry-After"]) - (midnight - time.time())) < 60
        assert call(keys["quota-b"]).status_code == 200  # another key: untouched
        assert call(status["api_key"]).status_code == 200
        edge = next(name for name, groups in stack.hosts() if "edge" in groups)
        wrong = subprocess.run(
            [
                *("ansible", edge, "-i", str(stack.inventory_dir), "-m", "ansible.builtin.include_role"),
                *("-a", "name=nginx", "-e", json.dumps({"nginx_usage_quotas": {"people": {"alice": {}}}})),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert wrong.returncode != 0
        named = "nginx_usage_quotas.people.alice is not an e-mail address"
        assert named in wrong.stdout, wrong.stdout[-2000:]
    finally:
        apply_edge_role(stack, "oauth2_proxy")
        apply_edge_role(stack, "nginx")
    assert call(status["api_key"]).status_code == 200


def flood(send, burst: int, workers: int = 8, within: float = 120) -> tuple[list, float]:
    """send(i), `workers` at a time, until a budget of `burst` is spent and nginx refuses: at least
    burst + 1 answers and 50 refusals, or `within` seconds. The answers and the seconds they took.

    A fixed count spends a budget only where the machine is fast enough: a budget keeps filling for as long as
    the flood lasts, so a busy machine needs more requests for the same proof."""
    answers: list = []
    counter = itertools.count()
    done = threading.Event()
    began = time.monotonic()

    def worker() -> None:
        while not done.is_set():
            answer = send(next(counter))
            answers.append(answer)

    with ThreadPoolExecutor(workers) as pool:
        running = [pool.submit(worker) for _ in range(workers)]
        try:
            while time.monotonic() - began < within and not any(f.done() for f in running):
                refused = sum(1 for r in list(answers) if r.status_code == 429)
                if len(answers) > burst and refused >= 50:
                    break
                time.sleep(0.05)
        finally:
            done.set()
        for f in running:
            f.result()  # a worker's exception is the test's
    took = time.monotonic() - began
    rate = len(answers) / took
    print(f"\n  flood: {len(answers)} requests in {took:.1f}s ({rate:.0f}/s, {workers} at once)")
    return answers, took


def assert_budget(answers: list, took: float, rps: float, burst: int, what: str) -> int:
    """nginx lets burst + 1 requests through at once and rps more each second: the passed ones within ±10 %
    of that for the time the flood took; every refused one says when to retry. The number that passed."""
    passed = sum(1 for r in answers if r.status_code != 429)
    expected = burst + 1 + rps * took
    refused = [r for r in answers if r.status_code == 429]
    print(f"\n  {what}: {passed} of {len(answers)} passed in {took:.2f}s (budget {expected:.0f})")
    rate = len(answers) / took
    assert refused, f"{what}: never refused in {took:.0f}s ({rate:.1f} requests/s; it fills at {rps}/s)"
    assert 0.9 * expected <= passed <= 1.1 * expected, (what, passed, expected, took)
    assert all(r.headers.get("Retry-After") == "1" for r in refused), what
    return passed


def refill(rps: float, burst: int) -> None:
    """Wait until a drained budget is whole again (later tests come from the same address)."""
    time.sleep(burst / rps + 1)


def forged_jwt(issuer: str) -> str:
    """A token shaped like the identity provider's (its issuer, an unknown key id), signed by nobody."""
    import base64

    def part(value) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = {"alg": "RS256", "kid": uuid.uuid4().hex}
    claims = {"iss": issuer, "sub": "alice", "aud": CLIENT_ID, "exp": int(time.time()) + 600}
    return ".".join((part(header), part(claims), part(uuid.uuid4().bytes * 8)))


def forged_session() -> str:
    """A cookie shaped like oauth2-proxy's session (value|time|signature), made by nobody."""
    return f"{uuid.uuid4().hex * 4}|{int(time.time())}|{uuid.uuid4().hex}"


def test_no_credential_escapes_the_per_address_limit_whatever_it_carries(deployed):
    """Requests from one address with made-up bearer JWTs (the provider's issuer), made-up session
    cookies, wrong API keys or nothing: one budget, the address's. A valid key and a signed-in person from the
    same address keep their own (a whole institute behind one address is not one client)."""
    stack, _ = deployed
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    models = status["openai_base_url"] + "/models"
    issuer = status["login"]["provider"]
    alice, _ = browser_login(status, "alice")

    def send(i: int):
        headers = [
            {"Authorization": f"Bearer {forged_jwt(issuer)}"},
            {"Cookie": f"__Host-llmcloud={forged_session()}"},
            {"Authorization": f"Bearer llmc_{uuid.uuid4().hex}"},
            {},
        ][i % 4]
        return s.get(models, headers=headers, timeout=30)

    answers, took = flood(send, 200)
    assert {r.status_code for r in answers} <= {401, 429}
    assert_budget(answers, took, 20, 200, "no valid credential, one address")
    key = {"Authorization": f"Bearer {status['api_key']}"}
    assert s.get(models, headers=key, timeout=20).status_code == 200
    assert alice.get(models, timeout=20).status_code == 200
    refill(20, 200)


def test_a_person_has_one_budget_whatever_cookies_or_tokens_they_add(deployed):
    """alice adds a made-up second session cookie (and other cookies) to her requests and sends some with her
    bearer token instead: still one budget, hers; bob, signed in from the same address, keeps his own."""
    stack, _ = deployed
    if stack.topology != "single":
        pytest.skip("one topology is enough: the limits live in the edge's nginx")
    status = endpoint(stack)
    models = status["openai_base_url"] + "/models"
    alice, _ = browser_login(status, "alice")
    bob, _ = browser_login(status, "bob")
    token = idp_token(status, CLIENT_ID, "alice")

    # A Cookie header of its own replaces the session's jar in requests: hers goes in it explicitly.
    hers = "; ".join(f"{c.name}={c.value}" for c in alice.cookies if c.name.startswith("__Host-llmcloud"))
    assert hers, list(alice.cookies.keys())

    s = session(status["ca_bundle"])

    def send(i: int):
        if i % 3 == 2:
            return s.get(models, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        extra = f"{hers}; __Host-llmcloud_0={forged_session()}; x{i}={uuid.uuid4().hex}"
        return alice.get(models, headers={"Cookie": extra} if i % 3 else {}, timeout=30)

    answers, took = flood(send, 200)
    assert {r.status_code for r in answers} <= {200, 429}, {r.status_code for r in answers}
    assert_budget(answers, took, 20, 200, "alice with extra cookies and her bearer token")
    assert bob.get(models, timeout=20).status_code == 200
    refill(20, 200)


def test_sign_in_prometheus_and_chat_ui_have_limits_and_chats_count_for_the_person(deployed):
    """/oauth2/auth and /prometheus/ (per address), the chat UI's pages (per person) answer 429 past their
    budgets; a person's chats through the chat UI count against the budget of their own API requests, and
    another person's chats go on."""
    stack, _ = deployed
    if not stack.chat_ui:
        pytest.skip("the single stack has the chat UI and everything else of this test")
    status = endpoint(stack)
    own = status["url"].rstrip("/")
    s = session(status["ca_bundle"])
    for path, rps, burst in (("/oauth2/auth", 5, 60), ("/prometheus/", 20, 200)):
        answers, took = flood(lambda i, url=own + path: s.get(url, allow_redirects=False, timeout=30), burst)
        assert_budget(answers, took, rps, burst, path)
        refill(rps, burst)
    alice, _ = browser_login(status, "alice")
    answers, took = flood(lambda i: alice.get(own + "/manifest.json", timeout=30), 400)
    assert_budget(answers, took, 20, 400, "the chat UI's pages for alice")
    refill(20, 400)

    def chat(person) -> object:
        signin = person.post(own + "/api/v1/auths/signin", json={"email": "", "password": ""}, timeout=60)
        token = {"Authorization": f"Bearer {signin.json()['token']}"}
        body = {"model": DOUBLE_MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
        return person.post(own + "/api/chat/completions", headers=token, json=body, timeout=120)

    bob, _ = browser_login(status, "bob")
    assert chat(alice).status_code == 200
    # While alice's own API requests keep her budget drained, her chats through the chat UI are refused with
    # it; bob's chats at the same time are not.
    models = status["openai_base_url"] + "/models"
    done = threading.Event()
    refusals = []

    def drain(_: int) -> list[int]:
        codes = []
        while not done.is_set():
            codes.append(alice.get(models, timeout=30).status_code)
            if codes[-1] == 429:
                refusals.append(1)
        return codes

    with ThreadPoolExecutor(4) as background:
        draining = [background.submit(drain, i) for i in range(4)]
        try:
            deadline = time.monotonic() + 60
            while len(refusals) < 50:  # her burst is spent and she keeps asking
                assert time.monotonic() < deadline, "alice's own requests never reached her limit"
                time.sleep(0.1)
            hers = [chat(alice) for _ in range(3)]
            his = [chat(bob) for _ in range(3)]
        finally:
            done.set()
        drained = [code for future in draining for code in future.result()]
    assert drained.count(429) > drained.count(200), (drained.count(429), drained.count(200))
    refused = [r for r in hers if r.status_code == 429 or "429" in r.text]
    assert len(refused) >= 2, [(r.status_code, r.text[:200]) for r in hers]
    assert [r.status_code for r in his] == [200] * 3, [(r.status_code, r.text[:200]) for r in his]
    refill(20, 200)


def test_only_the_service_name_is_answered_and_the_sign_in_keeps_no_query(deployed):
    """Any other Host gets 421 (HTTPS) or 404 (HTTP) and is never written back; the redirect to HTTPS names
    the service; the sign-in comes back to the path without its query, which never reaches the provider."""
    stack, _ = deployed
    status = endpoint(stack)
    context = ssl.create_default_context(cafile=status["ca_bundle"])
    with (
        socket.create_connection(("127.0.0.1", stack.https_port), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        answer = tls.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 421") and "evil" not in answer, answer[:300]
    for request in (
        b"GET /x?y=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        b"GET http://evil.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET /x?y=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", stack.http_port), timeout=20) as plain:
            plain.sendall(request)
            answer = plain.recv(65536).decode(errors="replace")
        assert "evil" not in answer, (request, answer[:300])
        if b"Host: localhost" in request and b"evil" not in request:
            assert f"Location: https://localhost:{stack.https_port}/x?y=1" in answer, answer[:300]
        else:
            assert answer.startswith("HTTP/1.1 404"), answer[:300]
    s = session(status["ca_bundle"])
    secret = uuid.uuid4().hex
    path = "/c/some-chat" if stack.chat_ui else "/"
    own = status["url"].rstrip("/")
    first = s.get(own + f"{path}?q={secret}&lang=en", allow_redirects=False, timeout=20)
    assert first.status_code == 302 and first.headers["Location"] == f"/oauth2/start?rd={path}", first.headers
    # The query waits in a cookie of this host (10 minutes) and comes back after the sign-in...
    back = first.headers["Set-Cookie"]
    assert back.startswith(f"__Host-llmcloud_back={path}?q={secret}&lang=en;") and "HttpOnly" in back, back
    to_provider = s.get(own + first.headers["Location"], allow_redirects=False, timeout=20)
    assert to_provider.status_code == 302 and secret not in to_provider.headers["Location"]
    # ...which sends the person to the path with its query again.
    again = s.get(own + path, allow_redirects=False, timeout=20)
    assert again.status_code == 302, again.headers
    assert again.headers["Location"] == f"{path}?q={secret}&lang=en", again.headers
    odd = s.get(status["url"] + "a%20b?q=1", allow_redirects=False, timeout=20)
    if odd.status_code == 302:
        assert odd.headers["Location"] == "/oauth2/start?rd=/", odd.headers


def test_routed_requests_reach_the_engine_at_its_canonical_path_with_a_bounded_body(deployed):
    """With several models nginx reads the body to route it: the engine sees the normalised path, and a body
    over nginx_route_max_body_size gets a clear 413."""
    stack, _ = deployed
    if not stack.extra_models:
        pytest.skip("routing is on with several models (the split stack)")
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    auth = {"Authorization": f"Bearer {status['api_key']}"}
    body = {"model": DOUBLE_MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    for path in ("v1//chat/completions", "v1/./chat/completions", "v1/chat/%63ompletions"):
        r = s.post(status["url"] + path, headers=auth, json=body, timeout=60)
        assert r.status_code == 200 and r.json()["choices"], (path, r.status_code, r.text[:200])
    huge = {"model": DOUBLE_MODEL, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    r = s.post(status["openai_base_url"] + "/chat/completions", headers=auth, json=huge, timeout=60)
    assert r.status_code == 413 and "nginx_route_max_body_size" in r.json()["detail"], r.text[:300]


def test_engine_internals_unreachable_through_the_edge_even_with_a_key(deployed):
    stack, _ = deployed
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    auth = {"Authorization": f"Bearer {status['api_key']}"}
    for path in ("metrics", "info", "health", "v1/../metrics", "METRICS", "%2Fmetrics"):
        r = s.get(status["url"] + path, headers=auth, allow_redirects=False, timeout=20)
        if stack.chat_ui and r.status_code == 302:  # the chat UI's pages: a key is no session, so: sign in
            assert r.headers["Location"].startswith("/oauth2/start"), (path, r.headers["Location"])
        else:
            assert r.status_code == 404, path
    assert s.get(status["url"] + "healthz", timeout=20).status_code == 200


def test_spoofed_forwarded_uri_and_health_check_agents_get_no_one_in(deployed):
    """oauth2-proxy's advisories for setups like this one (nginx auth_request): a client's X-Forwarded-Uri
    naming a public route (GHSA-7x63-xv5r-3p2x) or a health checker's User-Agent (GHSA-5hvv-m4w4-gf6v) is no
    login, on a protected route nor on /oauth2/auth itself."""
    stack, _ = deployed
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    tricks = [
        {"X-Forwarded-Uri": uri}
        for uri in ("/ping", "/ready", "/oauth2/static/x.css", "/robots.txt", "/healthz", "/oauth2/callback")
    ]
    agents = ("GoogleHC/1.0", "kube-probe/1.29", "ELB-HealthChecker/2.0")
    tricks += [{"User-Agent": agent} for agent in agents]
    for headers in tricks:
        for path in ("v1/models", "oauth2/auth", "prometheus/"):
            r = s.get(status["url"] + path, headers=headers, allow_redirects=False, timeout=20)
            assert r.status_code in (302, 401, 403), (path, headers, r.status_code)
        r = s.post(
            status["url"] + "v1/chat/completions",
            headers=headers,
            json={"model": status["models"][0], "messages": [{"role": "user", "content": "Hi"}]},
            timeout=20,
        )
        assert r.status_code == 401, (headers, r.status_code)


def test_chat_ui_answers_no_other_origin_and_keeps_peoples_chats_from_the_admin(deployed):
    """A page of another origin on the same site (a sibling subdomain, another port) cannot read a signed-in
    person's chat UI with their cookies; its admin (alice) cannot export everyone's chats."""
    stack, _ = deployed
    if not stack.chat_ui:
        pytest.skip("this stack has no chat UI")
    status = endpoint(stack)
    own = status["url"].rstrip("/")
    person, _ = browser_login(status, "alice")
    handshake = own + "/ws/socket.io/?EIO=4&transport=polling"
    for origin in ("https://evil.localhost", f"https://other.localhost:{stack.https_port}", "null"):
        for method in ("GET", "OPTIONS"):
            headers = {"Origin": origin, "Access-Control-Request-Method": "GET"}
            r = person.request(method, own + "/api/v1/auths/", headers=headers, timeout=30)
            allowed = {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("access-control-")}
            assert not allowed, (origin, method, r.status_code, allowed)
        # Its WebSocket (Socket.IO) takes the session cookie too: a foreign page's connection is refused for
        # its origin (Open WebUI's Socket.IO speaks WebSocket only, so any polling request gets a 400; only a
        # refused origin is named in it).
        refused = person.get(handshake, headers={"Origin": origin}, timeout=30)
        assert refused.status_code == 400 and "not an accepted origin" in refused.text, (origin, refused.text)
    own_handshake = person.get(handshake, headers={"Origin": own}, timeout=30)
    assert "not an accepted origin" not in own_handshake.text
    signin = person.post(own + "/api/v1/auths/signin", json={"email": "", "password": ""}, timeout=60)
    assert signin.status_code == 200 and signin.json()["role"] == "admin", signin.text[:200]
    token = {"Authorization": f"Bearer {signin.json()['token']}"}
    export = person.get(own + "/api/v1/chats/all/db", headers=token, timeout=30)
    assert export.status_code in (401, 403), (export.status_code, export.text[:200])
    # What a signed-in person's requests reach (Open WebUI, oauth2-proxy): no log on the edge keeps the query.
    marker = "q" + uuid.uuid4().hex
    assert person.get(own + f"/api/v1/chats/?page=1&q={marker}", headers=token, timeout=30).status_code == 200
    edge = system.docker_client().containers.get(stack.container_name("llm1"))
    time.sleep(2)
    found = system.run_in(
        edge,
        ["sh", "-c", f"journalctl -o cat --since -10min | grep -c {marker}; grep -rlF {marker} /var/log"],
    )
    assert found.output.decode().split() == ["0"], found.output.decode()


def test_tls_meets_mozilla_intermediate(deployed):
    stack, _ = deployed
    sslyze = tools.executable("sslyze")  # a venv of its own: tests/tools/sslyze.txt
    scan = subprocess.run(
        [
            *(str(sslyze), f"localhost:{stack.https_port}", "--mozilla_config=intermediate"),
            *("--certinfo_ca_file", endpoint(stack)["ca_bundle"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert scan.returncode == 0, scan.stdout[-3000:]
    assert f"localhost:{stack.https_port}: OK - Compliant." in scan.stdout


def test_access_log_keeps_no_prompt_and_no_full_address(deployed):
    stack, _ = deployed
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    secret = f"my-private-prompt-{uuid.uuid4().hex}"
    reply = s.post(
        status["openai_base_url"] + f"/chat/completions?note={secret}",
        headers={"Authorization": f"Bearer {status['api_key']}"},
        json={"model": DOUBLE_MODEL, "messages": [{"role": "user", "content": secret}], "max_tokens": 2},
        timeout=20,
    )
    assert reply.status_code == 200
    edge = next(name for name, groups in stack.hosts() if "edge" in groups)
    container = system.docker_client().containers.get(stack.container_name(edge))
    log = system.run_in(container, ["sh", "-c", "cat /var/log/nginx/*.log"]).output.decode()
    assert "/v1/chat/completions" in log
    assert secret not in log
    client_ip = (
        system.run_in(container, ["sh", "-c", "ip route | awk '/default/ {print $3}'"])
        .output.decode()
        .strip()
    )
    assert client_ip and client_ip not in log  # the gateway is the client seen here; only its /24 is logged
    assert ".".join(client_ip.split(".")[:3]) + ".0" in log


def llmcloud_status(stack: LocalStack, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "llmcloud"), "status", "-i", str(stack.inventory_dir), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_llmcloud_status_shows_hosts_engines_traffic_certificate_and_backups(deployed):
    """`llmcloud status` reads the Prometheus over SSH; every host is scraped across the private network."""
    stack, _ = deployed
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    auth = {"Authorization": f"Bearer {status['api_key']}"}
    body = {"model": DOUBLE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    deadline, figures = time.monotonic() + 90, {}
    while time.monotonic() < deadline:
        for _ in range(3):
            reply = s.post(
                status["openai_base_url"] + "/chat/completions", headers=auth, json=body, timeout=20
            )
            assert reply.status_code == 200
        run = llmcloud_status(stack, "--json")
        assert run.returncode == 0, run.stderr
        figures = json.loads(run.stdout)
        if figures["requests_per_minute"] and figures["latency_p50_seconds"] is not None:
            break
        time.sleep(3)
    assert figures["requests_per_minute"] > 0 and figures["tokens_per_second"] > 0, figures
    assert 0 <= figures["latency_p50_seconds"] <= figures["latency_p95_seconds"] < 5
    # A number, not "unknown" (earlier tests restart the engine and the host: some 5xx may be in the window).
    assert figures["errors_per_minute"] >= 0
    assert {h["host"] for h in figures["hosts"]} == {name for name, _ in stack.hosts()}
    assert all(
        h["up"] and h["backup_age_hours"] is not None and not h["backup_failed"] for h in figures["hosts"]
    )
    engines = [name for name, groups in stack.hosts() if "llm" in groups]
    served = sorted((h, m) for h in engines for m in (DOUBLE_MODEL, *stack.extra_models))
    assert [(e["host"], e["model"]) for e in figures["engines"]] == served
    assert all(e["ready"] for e in figures["engines"])
    assert figures["healthz_ok"] is True and figures["gpu"] is False
    assert 300 < figures["certificate_days_left"] <= 366  # the internal CA's edge certificate, a year
    assert figures["cost_per_hour"] is None
    text = llmcloud_status(stack)
    assert text.returncode == 0 and "no GPU" in text.stdout and "ready" in text.stdout, text.stdout
    # Nobody answering: a clear message, no traceback.
    from helpers import free_port

    gone = llmcloud_status(
        stack, "--prometheus-url", f"http://127.0.0.1:{free_port('127.0.0.1')}/prometheus/"
    )
    assert gone.returncode == 2 and "does not answer" in gone.stderr and "Traceback" not in gone.stderr


def test_prometheus_ui_for_the_admins_only(deployed):
    stack, _ = deployed
    if stack.topology != "single":
        pytest.skip("one topology is enough: the route lives in the edge's nginx")
    status = endpoint(stack)
    query = status["url"] + "prometheus/api/v1/query?query=up"
    anonymous = session(status["ca_bundle"])
    forged = {
        "X-Forwarded-Email": "alice@example.org",
        "X-Auth-Request-Email": "alice@example.org",
        "X-Forwarded-User": "alice",
        "X-Auth-Request-User": "alice",
    }
    for headers in ({}, forged, {"Authorization": f"Bearer {status['api_key']}"}):
        r = anonymous.get(query, headers=headers, allow_redirects=False, timeout=20)
        assert r.status_code == 302 and "/oauth2/start" in r.headers["Location"], (
            headers.keys(),
            r.status_code,
        )
    # An encoded letter is decoded before the match: still behind the login.
    r = anonymous.get(status["url"] + "%70rometheus/graph", allow_redirects=False, timeout=20)
    assert r.status_code == 302
    alice, _ = browser_login(status, "alice")
    answer = alice.get(query, timeout=20)
    assert answer.status_code == 200 and answer.json()["status"] == "success"
    assert alice.get(status["url"] + "prometheus/graph", timeout=20).status_code == 200
    for path in ("Prometheus/graph", "prometheus-x/graph", "prometheus../graph"):
        r = alice.get(status["url"] + path, allow_redirects=False, timeout=20)
        if stack.chat_ui:  # other paths are the chat UI's pages, never Prometheus
            assert r.status_code == 200 and "<title>Open WebUI</title>" in r.text, path
        else:
            assert r.status_code == 404, path
    bare = alice.get(status["url"] + "prometheus", allow_redirects=False, timeout=20)
    # nginx's own redirect to the protected prefix.
    assert bare.status_code == 301 and bare.headers["Location"] == "/prometheus/"
    # Signed in but not an admin: 403.
    apply_edge_role(stack, "nginx", nginx_admin_emails=["someone-else@example.org"])
    try:
        refused = alice.get(query, allow_redirects=False, timeout=20)
        assert refused.status_code == 403 and "not one of the admins" in refused.text
    finally:
        apply_edge_role(stack, "nginx")
    assert alice.get(query, timeout=20).status_code == 200


def test_prometheus_in_a_real_browser_for_an_admin(deployed):
    """Chromium opens /prometheus/: the sign-in at the identity provider, then Prometheus's own page runs (no
    Content-Security-Policy errors) and shows a result. Screenshot: prometheus-single.png in the artifacts."""
    from browser import artifacts, chromium, csp_violations, sign_in_at_the_mock_provider, spki_pin, wait_for
    from selenium.webdriver.common.by import By

    stack, _ = deployed
    if stack.topology != "single":
        pytest.skip("one topology is enough: the route lives in the edge's nginx")
    status = endpoint(stack)
    driver = chromium(spki_pin("127.0.0.1", stack.https_port))
    shot = artifacts() / f"prometheus-{stack.topology}.png"
    try:
        driver.get(status["url"] + "prometheus/graph?g0.expr=up&g0.tab=1")
        sign_in_at_the_mock_provider(driver, "alice")
        try:
            # The page queries once when it loads: any series of `up` proves the query ran through the edge.
            wait_for(
                driver, 120, lambda d: "up{" in d.find_element(By.TAG_NAME, "body").text, "a series of up"
            )
        finally:
            driver.save_screenshot(str(shot))
            shot.with_suffix(".html").write_text(driver.page_source)
        # Debian's Prometheus serves its classic pages (prometheus/classic/graph).
        assert driver.current_url.startswith(status["url"] + "prometheus/"), driver.current_url
        assert not csp_violations(driver)
    finally:
        driver.quit()


CROSS_ORIGIN_PAGE = """<!doctype html><title>reading</title><pre id="outcome"></pre><script>
const outcome = {};
async function tryRead(name, path, init) {
  try {
    const r = await fetch("OWN" + path, Object.assign({credentials: "include"}, init || {}));
    outcome[name] = "read " + r.status + ": " + (await r.text()).slice(0, 80);
  } catch (e) { outcome[name] = "blocked"; }
}
(async () => {
  await tryRead("session", "/api/v1/auths/");
  await tryRead("chats", "/api/v1/chats/");
  await tryRead("models", "/api/models");
  await tryRead("preflighted", "/api/v1/chats/", {headers: {"Content-Type": "application/json"}});
  document.getElementById("outcome").textContent = JSON.stringify(outcome);
  document.title = "done";
})();
</script>"""


def test_chat_ui_in_a_real_browser(deployed):
    """Chromium opens the endpoint: alice signs in at the identity provider, lands in Open WebUI's chat (no
    second password), sends a prompt and sees the engine's streamed reply appear, and that chat's usage is
    counted for her; mallory is refused at the login. Screenshot: chat-ui-single.png in the artifacts."""
    from browser import artifacts, chromium, serve_page, sign_in_at_the_mock_provider, spki_pin, wait_for
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready

    stack, _ = deployed
    if not stack.chat_ui:
        pytest.skip("no chat UI on this stack (the single stack covers it)")
    status = endpoint(stack)
    pin = spki_pin("127.0.0.1", stack.https_port)
    # A page of another origin on the same site (another port of localhost), as a sibling service of the
    # institute would be: it tries to read the chat UI with the person's cookies.
    own = status["url"].rstrip("/")
    attacker, attacker_pin, attacker_server = serve_page(CROSS_ORIGIN_PAGE.replace("OWN", own))
    before = usage_rows(stack)
    driver = chromium(f"{pin},{attacker_pin}")
    shot = artifacts() / f"chat-ui-{stack.topology}.png"
    try:
        driver.get(status["url"])
        sign_in_at_the_mock_provider(driver, "alice")
        try:
            wait_for(
                driver, 180, ready.presence_of_element_located((By.ID, "chat-input")), "the chat's input"
            )
            # Open WebUI greets a first visit with its release notes: close them as a person would.
            for button in driver.find_elements(By.XPATH, '//button[contains(., "Okay, Let\'s Go!")]'):
                button.click()
            box = wait_for(
                driver, 60, ready.element_to_be_clickable((By.ID, "chat-input")), "a clickable input"
            )
            box.click()
            box.send_keys("Say hello to the summer school")
            box.send_keys(Keys.ENTER)
            # The engine TEST DOUBLE's reply appears as it streams in.
            wait_for(
                driver,
                120,
                lambda d: "this is the" in d.find_element(By.TAG_NAME, "body").text.lower(),
                "the reply",
            )
        finally:
            driver.save_screenshot(str(shot))
            shot.with_suffix(".html").write_text(driver.page_source)
        assert driver.current_url.startswith(status["url"]), driver.current_url
        assert "Say hello to the summer school" in driver.find_element(By.TAG_NAME, "body").text
        # Her chat (and whatever Open WebUI asks the engine beside it, such as a title) counts for her.
        deadline = time.monotonic() + 60
        while (used := usage_delta(stack, before, "person:alice@example.org"))[0] < 1:
            assert time.monotonic() < deadline, "alice's chat in the browser was never counted for her"
            time.sleep(2)
        assert used[1] == 0 and used[2] > 0 and used[3] > 0, used
        # Signed in, alice visits the other page: every read of the chat UI fails in her browser.
        driver.get(attacker)
        wait_for(driver, 60, lambda d: d.title.startswith("done"), "the other origin's page done")
        driver.save_screenshot(str(artifacts() / f"chat-ui-{stack.topology}-cross-origin.png"))
        outcome = json.loads(driver.find_element(By.ID, "outcome").text)
        assert outcome and all(v == "blocked" for v in outcome.values()), outcome
    finally:
        driver.quit()
        attacker_server.shutdown()
    refused = chromium(pin)
    try:
        refused.get(status["url"])
        sign_in_at_the_mock_provider(refused, "mallory")
        wait_for(
            refused, 60, lambda d: "403" in d.page_source or "Forbidden" in d.page_source, "mallory refused"
        )
        assert "Open WebUI" not in refused.title
        assert not refused.find_elements(By.ID, "chat-input")
    finally:
        refused.save_screenshot(str(artifacts() / f"chat-ui-{stack.topology}-mallory.png"))
        refused.quit()


RECEIVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open("/tmp/llmcloud-alerts.jsonl", "ab") as out:
            out.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", 9099), H).serve_forever()
"""


def test_alerts_fire_and_reach_a_webhook(deployed, record_property):
    """Engine down, all replicas down, a failed backup and a certificate that expires soon each reach the
    webhook (short `for:` durations here only)."""
    stack, _ = deployed
    if stack.topology != "single":
        pytest.skip("one topology is enough: the alerts are evaluated on the edge")
    edge = next(name for name, groups in stack.hosts() if "edge" in groups)
    host = system.docker_client().containers.get(stack.container_name(edge))

    def sh(command: str) -> str:
        result = system.run_in(host, ["sh", "-c", command])
        assert result.exit_code == 0, (command, result.output.decode()[-1000:])
        return result.output.decode()

    def received(name: str, since: float, timeout: float = 120) -> float:
        """Seconds from `since` until a firing `name` reached the receiver."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in sh("cat /tmp/llmcloud-alerts.jsonl 2>/dev/null || true").splitlines():
                message = json.loads(line)
                if any(
                    a["labels"]["alertname"] == name and a["status"] == "firing" for a in message["alerts"]
                ):
                    return time.monotonic() - since
            time.sleep(1)
        pytest.fail(f"{name} did not reach the webhook within {timeout}s")

    sh("rm -f /tmp/llmcloud-alerts.jsonl")
    host.exec_run(["python3", "-c", RECEIVER], detach=True)
    short = dict.fromkeys(("engine_down", "pool_down", "healthz", "backup", "certificate"), "5s")
    apply_edge_role(
        stack,
        "monitoring",
        monitoring_alert_webhooks=["http://127.0.0.1:9099/alerts"],
        monitoring_alert_for=short,
        monitoring_alert_group_wait="1s",
    )
    repo = f"/srv/backup/{edge}"
    cert = sh("readlink -f /etc/llmcloud/tls/fullchain.pem").strip()
    try:
        started = time.monotonic()
        sh("docker stop llm-engine")
        record_property("engine_stopped_to_webhook_s", round(received("LlmcloudEngineDown", started), 1))
        received("LlmcloudEnginePoolDown", started)
        sh("docker start llm-engine")

        started = time.monotonic()
        sh(f"mv {repo} {repo}.moved")
        assert host.exec_run(["systemctl", "start", "llmcloud-backup.service"]).exit_code != 0
        received("LlmcloudBackupFailed", started)
        sh(f"mv {repo}.moved {repo} && systemctl start llmcloud-backup.service")

        # A certificate from the same CA that expires in 5 days, served by nginx.
        started = time.monotonic()
        sh(f"cp {cert} /tmp/llmcloud-cert.keep")
        sh(
            "cd /etc/llmcloud/tls && openssl req -new -key privkey.pem -subj /CN=localhost "
            "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 "
            f"| openssl x509 -req -CA ca/ca.pem -CAkey ca/ca.key -days 5 -copy_extensions copy -out {cert} "
            "&& systemctl reload nginx"
        )
        received("LlmcloudCertificateExpiring", started)
    finally:
        host.exec_run(["sh", "-c", f"test -f /tmp/llmcloud-cert.keep && cp /tmp/llmcloud-cert.keep {cert}"])
        host.exec_run(["sh", "-c", f"test -d {repo}.moved && mv {repo}.moved {repo}"])
        host.exec_run(["sh", "-c", "systemctl reload nginx; docker start llm-engine"])
        host.exec_run(["pkill", "-f", "llmcloud-alerts.jsonl"])
        apply_edge_role(stack, "monitoring")
    status = endpoint(stack)
    s, deadline = session(status["ca_bundle"]), time.monotonic() + 120
    while s.get(status["url"] + "healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the engine did not come back"
        time.sleep(1)


def test_requests_survive_one_engine_replica_down(deployed):
    stack, _ = deployed
    if stack.engines < 2:
        pytest.skip("needs two engine replicas (split)")
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    auth = {"Authorization": f"Bearer {status['api_key']}"}
    host = system.docker_client().containers.get(stack.container_name("llm1"))
    assert host.exec_run(["docker", "stop", "llm-engine"]).exit_code == 0
    try:
        codes = [
            s.post(status["url"] + "generate", headers=auth, json={"inputs": "hi"}, timeout=30).status_code
            for _ in range(12)
        ]
        assert codes == [200] * 12
    finally:
        assert host.exec_run(["docker", "start", "llm-engine"]).exit_code == 0


def test_acme_http01_certificate_from_pebble_and_renewal(deployed, tmp_path):
    """certbot gets a real certificate over HTTP-01 from Pebble; renewals work and reload nginx."""
    from pebble import pebble

    stack, _ = deployed
    if stack.topology != "split":
        pytest.skip("one topology is enough; split has an edge of its own")
    name = "edge.llmcloud.test"
    client = system.docker_client()
    network = client.networks.get(stack.network_name)
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    edge = client.containers.get(stack.container_name("edge1"))
    edge_ip = yaml.safe_load((stack.inventory_dir / "hosts.yml").read_text())["all"]["hosts"]["edge1"][
        "private_ip"
    ]

    def served() -> x509.Certificate:
        pem = ssl.get_server_certificate(("127.0.0.1", stack.https_port), timeout=10)  # SNI-less: one server
        return x509.load_pem_x509_certificate(pem.encode())

    with pebble(tmp_path, gateway, {name: edge_ip}) as acme:
        settings = {
            "certbot_mode": "acme_http01",
            "certbot_domains": [name],
            "certbot_email": "ops@example.org",
            "certbot_acme_directory": acme["directory"],
            "certbot_acme_ca_bundle": acme["listener_ca"],
        }
        apply_edge_role(stack, "certbot", **settings)
        issued = served()
        assert issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value != "localhost"
        assert name in issued.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        # Full verification of the served chain against Pebble's root, for the name on the certificate.
        context = ssl.create_default_context(cafile=str(acme["issuer_root"]))
        with (
            socket.create_connection(("127.0.0.1", stack.https_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")

        env = ["env", "REQUESTS_CA_BUNDLE=/etc/llmcloud/tls/acme-server-ca.pem"]
        # --server: certbot's dry run would use Let's Encrypt's staging server otherwise.
        dry = edge.exec_run(
            [
                *env,
                "certbot",
                "renew",
                "--dry-run",
                "--no-random-sleep-on-renew",
                "--server",
                acme["directory"],
            ]
        )
        assert dry.exit_code == 0, dry.output.decode()[-2000:]
        forced = edge.exec_run([*env, "certbot", "renew", "--force-renewal", "--no-random-sleep-on-renew"])
        assert forced.exit_code == 0, forced.output.decode()[-2000:]
        deadline = time.monotonic() + 20
        while served().serial_number == issued.serial_number and time.monotonic() < deadline:
            time.sleep(0.5)
        assert served().serial_number != issued.serial_number, "nginx still serves the old certificate"
        journal = system.run_in(
            edge, ["journalctl", "-t", "llmcloud-certbot", "--no-pager", "-o", "cat"]
        ).output.decode()
        assert "reloaded nginx for the renewed certificate" in journal
        # The timer's own unit runs renewals with the same trust; nothing is due, so it succeeds quietly.
        assert edge.exec_run(["systemctl", "start", "certbot.service"]).exit_code == 0

        # A converge with the same settings changes nothing after the first (which also re-points the
        # monitoring's certificate probe at the system's CAs: the certificate is not from the internal CA).
        def converge_edge() -> subprocess.CompletedProcess:
            return subprocess.run(
                [
                    *("ansible-playbook", "-i", str(stack.inventory_dir), "site.yml", "-l", "edge1"),
                    *("-e", json.dumps(settings)),
                ],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=900,
            )

        first = converge_edge()
        assert first.returncode == 0, first.stdout[-3000:]
        again = converge_edge()
        assert again.returncode == 0, again.stdout[-3000:]
        assert re.search(r"edge1\s+:\s+ok=\d+\s+changed=0\s", again.stdout), again.stdout[-3000:]
        renewed = served()

    # Pebble is gone: a renewal fails loudly and the certificate in service stays.
    env = ["env", "REQUESTS_CA_BUNDLE=/etc/llmcloud/tls/acme-server-ca.pem"]
    failed = system.run_in(edge, [*env, "certbot", "renew", "--force-renewal", "--no-random-sleep-on-renew"])
    assert failed.exit_code != 0
    assert "failed" in failed.output.decode().lower()
    assert served().serial_number == renewed.serial_number
    # The stack as its inventory has it again (the self-signed certificate its clients trust), for the tests
    # after this one.
    back = subprocess.run(
        ["ansible-playbook", "-i", str(stack.inventory_dir), "site.yml", "-l", "edge1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert back.returncode == 0, back.stdout[-3000:]


def test_a_model_from_a_file_is_served_with_no_outbound_connection(deployed, tmp_path):
    """No hub: the model comes from an archive on the controller, checked, imported once, served offline;
    the converge runs with the host's outbound traffic blocked (nftables); bad sources fail naming the
    setting."""
    import hashlib
    import tarfile

    stack, _ = deployed
    if stack.topology != "single":
        pytest.skip("the single stack covers the import (the role is the same on every engine host)")
    host = system.docker_client().containers.get(stack.container_name("llm1"))

    def archive(name: str, files: dict[str, str]) -> tuple[str, str]:
        folder = tmp_path / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
        path = tmp_path / f"{name}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(folder, arcname=name)
        return str(path), hashlib.sha256(path.read_bytes()).hexdigest()

    model, digest = archive("tiny-model", {"config.json": '{"model_type": "llama"}', "tokenizer.json": "{}"})
    empty, empty_digest = archive("no-model", {"README.md": "weights elsewhere"})
    source = {"llm_engine_model_source": "controller", "llm_engine_model_path": model}

    def engine_role(settings: dict) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                *("ansible", "llm1", "-i", str(stack.inventory_dir), "-m", "ansible.builtin.include_role"),
                *("-a", "name=llm_engine", "-e", json.dumps(settings)),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def engine_args() -> list[str]:
        return json.loads(system.run_in(host, ["docker", "inspect", "llm-engine"]).output)[0]["Args"]

    refused = {
        "does not exist on the controller": {
            **source,
            "llm_engine_model_path": str(tmp_path / "gone.tar.gz"),
        },
        "llm_engine_model_sha256 does not match": {**source, "llm_engine_model_sha256": empty_digest},
        "holds no model": {**source, "llm_engine_model_path": empty, "llm_engine_model_sha256": empty_digest},
        "llm_engine_model_source must be": {"llm_engine_model_source": "s3"},
    }
    for message, settings in refused.items():
        run = engine_role(settings)
        assert run.returncode != 0 and message in run.stdout, run.stdout[-2000:]
        assert DOUBLE_MODEL in engine_args(), "a refused source changed the running engine"

    subnet = yaml.safe_load((stack.inventory_dir / "group_vars" / "all" / "00-llmcloud.yml").read_text())[
        "llmcloud_private_cidr"
    ]
    # Everything leaving the host, except to the stack's own network and the host's own containers (its Docker
    # bridges): dropped; new TCP connections counted
    # (apt's own timers, user _apt, are dropped without counting: they are not the converge's).
    egress = f"""table inet llmcloud_no_egress {{
        chain outbound {{
            type filter hook output priority 0; policy accept;
            oif "lo" accept
            ip daddr {subnet} accept
            oifname {{ "docker0", "br-*" }} accept
            ct state established,related accept
            meta skuid "_apt" drop
            tcp flags & (syn | ack) == syn counter drop comment "new_tcp"
            drop
        }}
        chain forwarded {{
            type filter hook forward priority 0; policy accept;
            ct state established,related accept
            ip daddr {subnet} accept
            oifname {{ "docker0", "br-*" }} accept
            tcp flags & (syn | ack) == syn counter drop comment "new_tcp"
        }}
    }}"""
    host.exec_run(["sh", "-c", f"printf '%s' '{egress}' > /tmp/no-egress.nft"])
    loaded = host.exec_run(["nft", "-f", "/tmp/no-egress.nft"])
    assert loaded.exit_code == 0, loaded.output.decode()

    def new_connections_dropped() -> int:
        listing = system.run_in(host, ["nft", "list", "table", "inet", "llmcloud_no_egress"]).output.decode()
        return sum(
            int(n) for n in re.findall(r"counter packets (\d+) bytes \d+ drop comment \"new_tcp\"", listing)
        )

    try:
        settings = {**source, "llm_engine_model_sha256": digest}
        result = converge.converge(stack.inventory_dir, Progress("no egress"), extravars=settings)
        assert result.ok, result.failures
        again = converge.converge(stack.inventory_dir, Progress("no egress again"), extravars=settings)
        assert again.ok and not again.total_changed(), again.changed()
        assert new_connections_dropped() == 0, "the converge tried to connect outside the stack"
        # The block and its counter work: a connection attempt to an outside address (TEST-NET-1; dropped on
        # the host, it never leaves) is counted.
        probe = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=2)"
        assert host.exec_run(["python3", "-c", probe]).exit_code != 0
        assert new_connections_dropped() >= 1
        args = engine_args()
        assert args[args.index("--model-id") + 1] == "/local-model" and "--served-model-name" in args
        env = json.loads(system.run_in(host, ["docker", "inspect", "llm-engine"]).output)[0]["Config"]["Env"]
        assert "HF_HUB_OFFLINE=1" in env
        status = endpoint(stack)
        reply = session(status["ca_bundle"]).post(
            status["openai_base_url"] + "/chat/completions",
            headers={"Authorization": f"Bearer {status['api_key']}"},
            json={"model": DOUBLE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
            timeout=20,
        )
        assert reply.status_code == 200 and reply.json()["model"] == DOUBLE_MODEL  # served as its name
    finally:
        host.exec_run(["nft", "delete", "table", "inet", "llmcloud_no_egress"])
        back = engine_role({})
        assert back.returncode == 0, back.stdout[-2000:]
    assert DOUBLE_MODEL in engine_args()


def playbook_under_load(
    stack: LocalStack, *args: str
) -> tuple[subprocess.CompletedProcess, float, float, list]:
    """ansible-playbook ``args`` while four clients (client_loop) keep asking: (its run, when it began, its
    seconds, every request's (start, ok, error))."""
    with asking(endpoint(stack), DOUBLE_MODEL) as results:
        began = time.monotonic()
        run = subprocess.run(
            ["ansible-playbook", "-i", str(stack.inventory_dir), *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        took = time.monotonic() - began
    return run, began, took, results


def test_an_engine_change_rolls_through_the_engine_hosts_without_a_failed_request(deployed, record_property):
    """Four clients (two streamed) keep asking while site.yml changes an engine setting: with two engine hosts
    they are restarted one at a time out of the edge's pools, and not one request fails; with one, requests
    fail only while its engine restarts (the play says so first)."""
    stack, _ = deployed
    tokens = 3000 + int(time.time()) % 1000  # a value no converge before this one used
    change = ("site.yml", "-e", f"llm_engine_max_total_tokens={tokens}")
    run, began, took, results = playbook_under_load(stack, *change)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "Engine changes that restart an engine" in run.stdout
    failed = [r for r in results if not r[1]]
    record_property("engine_change_converge_s", round(took, 1))
    record_property("engine_change_requests", len(results))
    record_property("engine_change_failed", len(failed))
    engines = [name for name, groups in stack.hosts() if "llm" in groups]
    host = engines[0]
    container = system.docker_client().containers.get(stack.container_name(host))
    args = system.run_in(
        container, ["docker", "inspect", "-f", "{{json .Args}}", "llm-engine"]
    ).output.decode()
    assert str(tokens) in args, args  # the change was made
    summary = f"{took:.1f}s, {tally(results)}"
    if len(engines) > 1:
        print(f"\n  engine setting change rolling over {len(engines)} engine hosts: {summary}")
        changed = re.findall(r"TASK \[([^\]]+)\][^\n]*\n(?:[^\n]*\n)*?changed: \[([^\]]+)\]", run.stdout)
        assert not failed, (failed[:3], changed)
    else:
        outage = (max(r[0] for r in failed) - min(r[0] for r in failed)) if failed else 0.0
        record_property("engine_change_outage_s", round(outage, 1))
        print(f"\n  engine setting change with one engine host: {summary}, within {outage:.1f}s")
        assert "is the only engine host" in run.stdout
        assert all(began <= r[0] <= began + took for r in failed), failed[:5]  # only while it restarted


def test_a_new_engine_image_rolls_through_the_engine_hosts_without_a_failed_request(
    deployed, record_property
):
    """A second version of the engine's image (the TEST DOUBLE with one more layer, a different image) on both
    engine hosts: site.yml with it replaces their engines one at a time out of the edge's pools while four
    clients keep asking, and not one request fails."""
    stack, _ = deployed
    engines = [name for name, groups in stack.hosts() if "llm" in groups and "edge" not in groups]
    if len(engines) < 2:
        pytest.skip("the split stack has two engine hosts behind its edge")
    client = system.docker_client()
    current = yaml.safe_load((stack.inventory_dir / "group_vars" / "all" / "00-llmcloud.yml").read_text())[
        "llm_engine_image"
    ]
    newer = f"{current}-v2"
    for name in engines:
        host = client.containers.get(stack.container_name(name))
        build = f"printf 'FROM {current}\\nLABEL org.llmcloud.test=v2\\n' | docker build -q -t {newer} -"
        made = host.exec_run(["sh", "-c", build])
        assert made.exit_code == 0, made.output.decode()[-1000:]
    run, _, took, results = playbook_under_load(stack, "site.yml", "-e", f"llm_engine_image={newer}")
    assert run.returncode == 0, run.stdout[-3000:]
    for name in engines:
        host = client.containers.get(stack.container_name(name))
        running = system.run_in(
            host, ["docker", "inspect", "-f", "{{.Config.Image}}", "llm-engine"]
        ).output.decode()
        assert running.strip() == newer, (name, running)
    failed = [r for r in results if not r[1]]
    record_property("engine_image_change_s", round(took, 1))
    record_property("engine_image_change_failed", len(failed))
    print(f"\n  engine image change rolling over {len(engines)} engine hosts: {took:.1f}s, {tally(results)}")
    assert not failed, failed[:5]


def test_engine_hosts_waiting_for_a_reboot_are_rebooted_one_at_a_time_without_a_failed_request(
    deployed, record_property
):
    """Upgrades left both engine hosts waiting for a reboot (the mark forced): reboot.yml reboots them one
    at a time, each out of the edge's pools, while four clients keep asking: not one request fails."""
    stack, _ = deployed
    engines = [name for name, groups in stack.hosts() if "llm" in groups and "edge" not in groups]
    if len(engines) < 2:
        pytest.skip("the split stack has two engine hosts behind its edge")
    client = system.docker_client()
    booted = {}
    for name in engines:
        host = client.containers.get(stack.container_name(name))
        assert host.exec_run(["touch", "/run/reboot-required"]).exit_code == 0
        booted[name] = system.run_in(host, ["ps", "-o", "lstart=", "-p", "1"]).output
    run, _, took, results = playbook_under_load(stack, "reboot.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    for name in engines:
        host = client.containers.get(stack.container_name(name))
        assert system.run_in(host, ["ps", "-o", "lstart=", "-p", "1"]).output != booted[name], (
            f"{name} not rebooted"
        )
        assert host.exec_run(["test", "-e", "/run/reboot-required"]).exit_code != 0
    # One batch per engine host: never two of them out at once.
    assert run.stdout.count("TASK [Reboot]") == len(engines), run.stdout[-3000:]
    failed = [r for r in results if not r[1]]
    record_property("reboot_engines_s", round(took, 1))
    record_property("reboot_engines_failed", len(failed))
    summary = f"{took:.1f}s, {tally(results)}"
    print(f"\n  {len(engines)} engine hosts rebooted one at a time: {summary}")
    assert not failed, failed[:5]
