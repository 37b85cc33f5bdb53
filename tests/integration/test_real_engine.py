"""A REAL engine on the local stack: Ollama built from its Go module, serving a tiny random model from a file.

The other integration modules use the engine TEST DOUBLE (fast, deterministic). This one runs the llm_engine
role's Ollama path for real: the image delivered through the preload path, the model imported without a hub
(``llm_engine_model_source: controller``, a .gguf made on this machine) and created through Ollama's API, the
container's health check, and the edge in front. The model's text is nonsense; its tokenizer (Llama 3.2's),
batching, streaming and API are the engine's own.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import endpoint, free_port, wait_for_port

from llmcloud import REPO_ROOT, converge, verify
from llmcloud.local import engine_ollama, system
from llmcloud.local.stack import LABEL, LocalStack
from llmcloud.progress import Progress

pytestmark = pytest.mark.integration

MODEL = engine_ollama.MODEL_NAME
# A second model beside Ollama (an engine TEST DOUBLE): the edge routes by the request's "model" field.
SECOND = "llmcloud/second-double"
USAGE = ("requests", "failed", "prompt_tokens", "completion_tokens")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A single-topology stack whose engine is Ollama: (stack, result of the first converge)."""
    stack = LocalStack(
        name="citest-ollama",
        topology="single",
        engine="ollama",
        ssh_port=31230,
        http_port=31282,
        https_port=31245,
        idp_port=31292,
        # A person's chat in the chat UI (Chromium), counted on the real engine as Ollama reported it.
        chat_ui=True,
        extra_models=(SECOND,),
        inventory_root=tmp_path_factory.mktemp("ollama"),
    )
    progress = Progress("citest ollama")
    stack.down(progress)
    try:
        stack.up(progress)
        first = converge.converge(stack.inventory_dir, progress)
        yield stack, first
    finally:
        stack.down(progress)
        leftovers = system.docker_client().containers.list(
            all=True, filters={"label": f"{LABEL}={stack.name}"}
        )
        assert not leftovers, f"down left {leftovers}"


def sh(stack: LocalStack, command: str) -> str:
    container = system.docker_client().containers.get(stack.container_name("llm1"))
    code, out = system.run_in(container, ["sh", "-c", command])
    assert code == 0, out.decode(errors="replace")[-2000:]
    return out.decode()


def openai_client(status: dict):
    from openai import DefaultHttpxClient, OpenAI

    http = DefaultHttpxClient(
        verify=ssl.create_default_context(cafile=status["ca_bundle"]), trust_env=False, timeout=60
    )
    return OpenAI(base_url=status["openai_base_url"], api_key=status["api_key"], http_client=http)


def test_first_converge_creates_the_model_from_the_file(deployed):
    stack, first = deployed
    assert first.ok, first.failures
    # The model came from the .gguf on this machine, through the role's import, not from a registry.
    listed = sh(stack, "docker exec llm-engine ollama list")
    assert re.search(rf"^{re.escape(MODEL)}:latest\s", listed, re.M), listed
    inspect = json.loads(sh(stack, "docker inspect llm-engine"))[0]
    assert inspect["Config"]["Image"].startswith(engine_ollama.REPOSITORY + ":")
    assert inspect["State"]["Health"]["Status"] == "healthy"
    mounts = {m["Destination"]: m for m in inspect["Mounts"]}
    assert mounts["/local-model"]["RW"] is False
    assert mounts["/root/.ollama"]["Source"] == "/srv/llmcloud/models"  # the model store on the data path


def test_second_converge_changes_nothing(deployed):
    stack, _ = deployed
    run = subprocess.run(
        ["ansible-playbook", "-i", str(stack.inventory_dir), "site.yml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    # Creating the model reports a change: none means Ollama was found to have it already.
    assert re.search(r"^llm1\s+:\s+ok=\d+\s+changed=0\s", run.stdout, re.M), run.stdout[-4000:]


def test_testinfra_suite_passes(deployed):
    stack, _ = deployed
    assert verify.verify(stack.inventory_dir) == 0


def test_the_openai_client_streams_real_tokens_through_the_edge(deployed):
    stack, _ = deployed
    status = endpoint(stack)
    assert status["models"][0] == MODEL
    client = openai_client(status)
    # Ollama lists its model with its tag; that name is routed to it as well as the untagged one.
    listed = sorted(m.id for m in client.models.list().data)
    assert listed == sorted([f"{MODEL}:latest", SECOND]), listed
    tagged = client.chat.completions.create(
        model=f"{MODEL}:latest", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert tagged.usage.completion_tokens == 2
    second = client.chat.completions.create(
        model=SECOND, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert second.model == SECOND
    ask = {"model": MODEL, "temperature": 0, "seed": 7, "max_tokens": 12}
    short = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], **ask)
    longer = client.chat.completions.create(
        messages=[{"role": "user", "content": "What does the de.NBI cloud offer to researchers in Germany?"}],
        **ask,
    )
    # A real tokenizer counts the prompt (template included) and the generated tokens.
    assert short.usage.completion_tokens == 12 and short.choices[0].finish_reason == "length"
    assert longer.usage.prompt_tokens > short.usage.prompt_tokens + 8
    began = time.monotonic()
    stream = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], stream=True, **ask)
    chunks, first_at = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first_at = first_at or time.monotonic() - began
            chunks.append(chunk.choices[0].delta.content)
    # Greedy decoding: the streamed pieces are the same answer, token by token, as they were made.
    assert "".join(chunks) == short.choices[0].message.content
    assert len(chunks) >= 6 and first_at is not None
    print(f"\n  first token through the edge after {first_at * 1000:.0f} ms; {len(chunks)} chunks")


def test_without_credentials_the_engine_is_not_reached(deployed):
    import requests

    stack, _ = deployed
    status = endpoint(stack)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    reply = requests.post(
        status["openai_base_url"] + "/chat/completions", json=body, verify=status["ca_bundle"]
    )
    assert reply.status_code == 401
    # Ollama's own API (pull, create, delete) is never exposed by the edge, even with a key: those paths are
    # the chat UI's pages, and a key is no session (to the sign-in), or nothing at all.
    auth = {"Authorization": f"Bearer {status['api_key']}"}
    for path in ("api/delete", "api/pull", "api/create"):
        reply = requests.post(
            status["url"] + path,
            headers=auth,
            json={"model": MODEL},
            verify=status["ca_bundle"],
            allow_redirects=False,
        )
        if stack.chat_ui and reply.status_code == 302:
            assert reply.headers["Location"].startswith("/oauth2/start"), (path, reply.headers["Location"])
        else:
            assert reply.status_code in (401, 403, 404), (path, reply.status_code)
    assert MODEL in sh(stack, "docker exec llm-engine ollama list")


def test_the_model_survives_an_engine_restart(deployed):
    stack, _ = deployed
    sh(stack, 'kill -9 "$(docker inspect -f "{{.State.Pid}}" llm-engine)"')
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = json.loads(sh(stack, "docker inspect llm-engine"))[0]["State"]
        if state["Running"] and state.get("Health", {}).get("Status") == "healthy":
            break
        time.sleep(2)
    else:
        pytest.fail("the engine did not come back healthy within 120 s")
    client = openai_client(endpoint(stack))
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.usage.completion_tokens == 3


def test_a_model_from_object_storage_by_a_presigned_url(deployed):
    """llm_engine_model_source url: an S3 presigned URL (moto's S3 server on the stack's network), downloaded
    once by the host, checked, created in Ollama under a new name; its signature never shows in the output."""
    import boto3

    stack, _ = deployed
    settings = yaml.safe_load((stack.inventory_dir / "group_vars" / "all" / "00-llmcloud.yml").read_text())
    model_file, digest = Path(settings["llm_engine_model_path"]), settings["llm_engine_model_sha256"]
    network = system.docker_client().networks.get(stack.network_name)
    address = network.attrs["IPAM"]["Config"][0]["Gateway"]
    port = free_port(address)
    server = subprocess.Popen(
        ["moto_server", "-H", address, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(address, port)
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://{address}:{port}",
            region_name="us-east-1",
            aws_access_key_id="llmcloud-test",
            aws_secret_access_key="llmcloud-test-secret",
        )
        s3.create_bucket(Bucket="models")
        s3.upload_file(str(model_file), "models", "tiny/model.gguf")
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": "models", "Key": "tiny/model.gguf"}, ExpiresIn=900
        )
        signature = re.search(r"Signature=([^&]+)", url).group(1)
        source = {
            "llm_engine_model_source": "url",
            "llm_engine_model_url": url,
            "llm_engine_model_id": "llmcloud/tiny-from-s3",
        }
        wrong = engine_role(stack, {**source, "llm_engine_model_sha256": "0" * 64})
        assert wrong.returncode != 0 and "llm_engine_model_sha256 is the expected checksum" in wrong.stdout
        assert signature not in wrong.stdout + wrong.stderr
        run = engine_role(stack, {**source, "llm_engine_model_sha256": digest})
        assert run.returncode == 0, run.stdout[-3000:]
        assert signature not in run.stdout + run.stderr
        assert re.search(
            r"^llmcloud/tiny-from-s3:latest\s", sh(stack, "docker exec llm-engine ollama list"), re.M
        )
        # Asked on the host: only the engine role ran, so the edge's router does not know the new name.
        body = {
            "model": "llmcloud/tiny-from-s3",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
        }
        code = (
            "import json, sys, urllib.request as u; "
            "r = u.Request('http://127.0.0.1:8080/v1/chat/completions', sys.argv[1].encode(), "
            "{'Content-Type': 'application/json'}); print(json.load(u.urlopen(r, timeout=60))['usage'])"
        )
        container = system.docker_client().containers.get(stack.container_name("llm1"))
        answered = system.run_in(container, ["python3", "-c", code, json.dumps(body)])
        assert answered.exit_code == 0, answered.output.decode()[-1000:]
        assert "'completion_tokens': 3" in answered.output.decode()
    finally:
        server.terminate()
        server.wait(timeout=10)
        back = engine_role(stack, {})
        assert back.returncode == 0, back.stdout[-2000:]


def engine_role(stack: LocalStack, settings: dict) -> subprocess.CompletedProcess:
    """Role llm_engine alone on the host, with these settings on top of the inventory's.

    Run again once when Ansible lost the host (exit 4, UNREACHABLE): CI saw Mitogen's connection to the
    container drop once mid-copy while four other suites loaded the machine, and a person re-runs then too.
    A role that fails (exit 2) is never run again."""
    command = [
        *("ansible", "llm1", "-i", str(stack.inventory_dir), "-m", "ansible.builtin.include_role"),
        *("-a", "name=llm_engine", "-e", json.dumps(settings)),
    ]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if run.returncode == 4 and "UNREACHABLE!" in run.stdout:
        print("the host was unreachable, once; run again:", run.stdout[-1500:])
        run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    return run


def test_a_chat_in_the_chat_ui_counts_for_its_person_exactly_as_the_engine_reported_it(deployed):
    """Chromium: alice signs in and chats with the real engine through Open WebUI, which sends it no tools
    (this model has none: with Open WebUI's own default the chat failed, "does not support tools") and asks
    for its usage, kept with the answer (role open_webui's model capabilities). With its title, tag and
    follow-up requests off (alice is its admin) the chat is one engine request: the edge counted exactly that
    request for her, with exactly the tokens Ollama reported. Screenshot in the artifacts."""
    import urllib.parse

    from browser import artifacts, chromium, sign_in_at_the_mock_provider, spki_pin, wait_for
    from helpers import usage_delta, usage_rows
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready

    from llmcloud.local.login import browser_login

    stack, _ = deployed
    status = endpoint(stack)
    root = status["url"]
    alice, _ = browser_login(status, "alice")
    signin = alice.post(root + "api/v1/auths/signin", json={"email": "", "password": ""}, timeout=60).json()
    assert signin["role"] == "admin", signin["role"]  # the UI's configured admin (the edge's first admin)
    token = {"Authorization": f"Bearer {signin['token']}"}
    config = alice.get(root + "api/v1/tasks/config", headers=token, timeout=30).json()
    config.update({k: False for k in config if k.startswith("ENABLE_") and k.endswith("_GENERATION")})
    assert alice.post(root + "api/v1/tasks/config/update", headers=token, json=config, timeout=30).ok
    listed = alice.get(root + "api/models", headers=token, timeout=60).json()["data"]
    model = next(m["id"] for m in listed if m["id"].startswith(MODEL))
    # The role's capabilities for every model: no tools sent (this model has none), the usage asked for.
    capabilities = next(m for m in listed if m["id"] == model)["info"]["meta"]["capabilities"]
    assert capabilities["builtin_tools"] is False and capabilities["usage"] is True, capabilities
    # A random model never stops by itself: its answers in the chat UI end after 24 tokens (a model setting
    # of its admin), so the chat ends in seconds on 2 cores.
    short = {"id": model, "name": model, "meta": {}, "params": {"max_tokens": 24}}
    made = alice.post(root + "api/v1/models/create", headers=token, json=short, timeout=30)
    assert made.ok, made.text[:300]
    before = usage_rows(stack)
    driver = chromium(spki_pin("127.0.0.1", stack.https_port))
    shot = artifacts() / "chat-ui-real-engine.png"
    prompt = "Count the tokens of this chat"
    try:
        driver.get(root)
        sign_in_at_the_mock_provider(driver, "alice")
        wait_for(driver, 180, ready.presence_of_element_located((By.ID, "chat-input")), "the chat's input")
        driver.get(root + "?models=" + urllib.parse.quote(model))
        wait_for(driver, 180, ready.presence_of_element_located((By.ID, "chat-input")), "the chat's input")
        for button in driver.find_elements(By.XPATH, '//button[contains(., "Okay, Let\'s Go!")]'):
            button.click()
        box = wait_for(driver, 60, ready.element_to_be_clickable((By.ID, "chat-input")), "a clickable input")
        box.click()
        box.send_keys(prompt)
        box.send_keys(Keys.ENTER)
        deadline = time.monotonic() + 180
        kept = None
        while kept is None:
            assert time.monotonic() < deadline, "the chat UI kept no answer with its usage"
            time.sleep(3)
            for chat in alice.get(root + "api/v1/chats/", headers=token, timeout=30).json():
                full = alice.get(root + f"api/v1/chats/{chat['id']}", headers=token, timeout=30).json()
                messages = full["chat"].get("history", {}).get("messages", {}).values()
                if not any(m.get("content") == prompt for m in messages):
                    continue
                answers = [m for m in messages if m.get("role") == "assistant" and m.get("done")]
                kept = next((m["usage"] for m in answers if m.get("usage")), None)
    finally:
        driver.save_screenshot(str(shot))
        driver.quit()
    deadline = time.monotonic() + 60
    while (counted := usage_delta(stack, before, "person:alice@example.org"))[0] < 1:
        assert time.monotonic() < deadline, "alice's chat was never counted for her"
        time.sleep(2)
    assert counted == (1, 0, kept["prompt_tokens"], kept["completion_tokens"]), (counted, kept)
    assert kept["prompt_tokens"] > 0 and kept["completion_tokens"] > 0, kept


def test_usage_and_a_quota_on_the_real_engine_survive_reload_restart_and_restore(deployed):
    """Two keys and two people (a session, a bearer JWT), plain and streamed: `llmcloud usage` shows exactly
    the engine's own counts; a quota of N tokens a day refuses its key past N with the reset time while the
    others go on; the counts survive an nginx reload, a host restart and a restore from the backup."""
    import uuid

    from helpers import apply_edge_role, sse_events, usage_rows, usage_since

    from llmcloud.local import hosts
    from llmcloud.local.login import browser_login, session
    from llmcloud.local.login import id_token as idp_token
    from llmcloud.local.stack import CLIENT_ID

    stack, _ = deployed
    status = endpoint(stack)
    s = session(status["ca_bundle"])
    chats = status["openai_base_url"] + "/chat/completions"
    keys = {name: "llmc_" + uuid.uuid4().hex + uuid.uuid4().hex for name in ("usage-a", "usage-b")}
    apply_edge_role(
        stack,
        "oauth2_proxy",
        oauth2_proxy_api_keys=[{"name": "demo", "key": status["api_key"]}]
        + [{"name": n, "key": k} for n, k in keys.items()],
    )
    alice, _ = browser_login(status, "alice")
    callers = {
        "key:usage-a": (s, {"Authorization": f"Bearer {keys['usage-a']}"}),
        "key:usage-b": (s, {"Authorization": f"Bearer {keys['usage-b']}"}),
        "person:alice@example.org": (alice, {}),
        "person:bob@example.org": (s, {"Authorization": f"Bearer {idp_token(status, CLIENT_ID, 'bob')}"}),
    }
    ask = {"model": MODEL, "temperature": 0, "seed": 7, "max_tokens": 6}
    before = usage_rows(stack)
    expected = {}
    for number, (who, (client, headers)) in enumerate(callers.items()):
        messages = [{"role": "user", "content": "Tell me about the de.NBI cloud " + "please " * number}]
        plain = client.post(chats, json={**ask, "messages": messages}, headers=headers, timeout=120).json()
        # Streamed without asking for usage: the edge asks Ollama for it; the client gets no usage chunk.
        streamed = client.post(
            chats, json={**ask, "messages": messages, "stream": True}, headers=headers, timeout=120
        )
        events = sse_events(streamed.text)
        assert all(e["choices"] and e.get("usage") is None for e in events), events[-1]
        assert events[-1]["choices"][0]["finish_reason"] == "length"  # so it made max_tokens tokens
        usage = plain["usage"]
        expected[who] = (2, 0, 2 * usage["prompt_tokens"], usage["completion_tokens"] + ask["max_tokens"])
    # Asked for by the client: it sees Ollama's own usage, and the same is counted.
    asked = {**ask, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    asked["stream_options"] = {"include_usage": True}
    client, headers = callers["key:usage-a"]
    shown = sse_events(client.post(chats, json=asked, headers=headers, timeout=120).text)[-1]["usage"]
    r, f, p, c = expected["key:usage-a"]
    expected["key:usage-a"] = (r + 1, f, p + shown["prompt_tokens"], c + shown["completion_tokens"])
    assert usage_since(stack, before, expected) == expected

    sh(stack, "systemctl reload nginx")
    assert usage_since(stack, before, expected, timeout=5) == expected
    container = system.docker_client().containers.get(stack.container_name("llm1"))
    container.restart(timeout=30)
    hosts.wait_ready(container, "llm1")
    assert usage_since(stack, before, expected, timeout=5) == expected

    # A quota of what key usage-b has used today: refused with the reset time; the others go on.
    used_b = usage_rows(stack)["key:usage-b"]
    tokens_b = used_b["prompt_tokens"] + used_b["completion_tokens"]
    apply_edge_role(stack, "nginx", nginx_usage_quotas={"keys": {"usage-b": {"tokens_per_day": tokens_b}}})
    try:
        hi = {**ask, "messages": [{"role": "user", "content": "hi"}]}
        deadline = time.monotonic() + 60
        while (
            refused := s.post(chats, json=hi, headers=callers["key:usage-b"][1], timeout=120)
        ).status_code != 429:
            assert time.monotonic() < deadline, f"usage-b was never refused: {refused.status_code}"
            time.sleep(2)
        assert refused.json()["quota"] == "tokens_per_day" and refused.json()["limit"] == tokens_b
        assert 0 < int(refused.headers["Retry-After"]) <= 86400
        for who in ("key:usage-a", "person:alice@example.org"):
            client, headers = callers[who]
            assert client.post(chats, json=hi, headers=headers, timeout=120).status_code == 200, who
    finally:
        apply_edge_role(stack, "nginx")

    # Backed up, lost, restored: the counts come back from the backup's consistent copy.
    counted = usage_rows(stack)
    sh(stack, "systemctl start llmcloud-backup.service")
    sh(stack, "systemctl stop llmcloud-usage.timer && rm /var/lib/llmcloud/usage/usage.db")
    restore = subprocess.run(
        ["ansible-playbook", "-i", str(stack.inventory_dir), "restore.yml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert restore.returncode == 0, restore.stdout[-3000:]
    back = {who: tuple(counted[who][f] for f in USAGE) for who in callers}
    assert usage_since(stack, {}, back, timeout=60) == back
