"""The chat UI's local image: Open WebUI from PyPI, started the way llmcloud runs it, in front of an engine.

The image, built from pinned PyPI packages (no registry is reachable), starts with the offline and privacy
switches, signs people in only by the trusted identity header (no password, no sign-up), makes the configured
e-mail its admin, lists the engine's models, streams a chat from the engine, and keeps its data in its data
directory across a restart. The engine is the TEST DOUBLE.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest
import requests
from helpers import free_port

from llmcloud.local import image, peers, system
from llmcloud.local.artifacts import engine_double
from llmcloud.local.stack import DOUBLE_MODEL, LABEL
from llmcloud.progress import Progress

pytestmark = pytest.mark.integration

NAME = "citest-chat-ui"
ADMIN = "alice@example.org"
HEADERS = {"email": "X-Forwarded-Email", "name": "X-Forwarded-User", "groups": "X-Forwarded-Groups"}


def _remove(client) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}={NAME}"}):
        container.remove(force=True)
    for volume in client.volumes.list(filters={"label": f"{LABEL}={NAME}"}):
        volume.remove(force=True)
    for network in client.networks.list(filters={"label": f"{LABEL}={NAME}"}):
        network.remove()


def _wait_healthy(url: str, timeout: float = 300) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                return time.monotonic() - began
        except requests.RequestException:
            pass
        time.sleep(2)
    raise AssertionError(f"Open WebUI did not answer {url}/health within {timeout:.0f} s")


@pytest.fixture(scope="module")
def chat_ui():
    """(base URL, container, seconds to healthy) of Open WebUI in front of the engine TEST DOUBLE."""
    client = system.docker_client()
    progress = Progress("chat UI image")
    cache = image.IMAGE_CACHE
    base = image.ensure(progress)
    double, _ = engine_double().ensure(client, progress, cache)
    ref, _ = peers.open_webui(client, progress, base, cache)
    _remove(client)
    labels = {LABEL: NAME}
    network = client.networks.create(f"llmcloud-{NAME}", labels=labels)
    data = client.volumes.create(f"llmcloud-{NAME}-data", labels=labels)
    try:
        client.containers.run(
            double,
            ["--model-id", DOUBLE_MODEL, "--hostname", "0.0.0.0", "--port", "80"],
            name=f"llmcloud-{NAME}-engine",
            network=network.name,
            labels=labels,
            detach=True,
        )
        port = free_port("127.0.0.1")
        container = client.containers.run(
            ref,
            name=f"llmcloud-{NAME}-ui",
            network=network.name,
            labels=labels,
            detach=True,
            ports={"8080/tcp": ("127.0.0.1", port)},
            volumes={data.name: {"bind": "/app/backend/data", "mode": "rw"}},
            environment={
                # People are who the edge says they are: no password, no sign-up form.
                "WEBUI_AUTH_TRUSTED_EMAIL_HEADER": HEADERS["email"],
                "WEBUI_AUTH_TRUSTED_NAME_HEADER": HEADERS["name"],
                "WEBUI_AUTH_TRUSTED_GROUPS_HEADER": HEADERS["groups"],
                "ENABLE_SIGNUP": "false",
                "ENABLE_LOGIN_FORM": "false",
                "DEFAULT_USER_ROLE": "user",
                "WEBUI_ADMIN_EMAIL": ADMIN,
                "WEBUI_ADMIN_NAME": "Alice",
                "WEBUI_ADMIN_PASSWORD": secrets.token_urlsafe(24),
                "WEBUI_SECRET_KEY": secrets.token_urlsafe(32),
                # The engines: OpenAI-compatible, nothing else.
                "ENABLE_OLLAMA_API": "false",
                "OPENAI_API_BASE_URL": f"http://llmcloud-{NAME}-engine:80/v1",
                "OPENAI_API_KEY": "unused",
                # Privacy and offline switches.
                "OFFLINE_MODE": "true",
                "HF_HUB_OFFLINE": "1",
                "ENABLE_WEB_SEARCH": "false",
                "ENABLE_DIRECT_CONNECTIONS": "false",
                "ENABLE_COMMUNITY_SHARING": "false",
                "ENABLE_MESSAGE_RATING": "false",
                "ENABLE_VERSION_UPDATE_CHECK": "false",
                "ANONYMIZED_TELEMETRY": "false",
                "DO_NOT_TRACK": "true",
                "SCARF_NO_ANALYTICS": "true",
                "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
                "RAG_RERANKING_MODEL_AUTO_UPDATE": "false",
            },
        )
        url = f"http://127.0.0.1:{port}"
        took = _wait_healthy(url)
        yield url, container, took
    finally:
        _remove(client)


def signin(url: str, email: str | None, name: str = "") -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if email:
        headers[HEADERS["email"]] = email
        headers[HEADERS["name"]] = name or email.split("@")[0]
    return requests.post(
        f"{url}/api/v1/auths/signin", headers=headers, json={"email": "", "password": ""}, timeout=30
    )


def test_starts_and_says_how_long_and_how_much_memory(chat_ui, record_property):
    _, container, took = chat_ui
    # Resident memory of its processes (docker top: RSS in KiB), a figure for the closing note and the README.
    top = container.top(ps_args="-o pid,rss,comm")
    rss_mib = sum(int(row[1]) for row in top["Processes"]) / 1024
    record_property("seconds_to_healthy", round(took))
    record_property("rss_mib", round(rss_mib))
    print(f"Open WebUI healthy after {took:.0f} s, {rss_mib:.0f} MiB resident")
    assert 0 < rss_mib < 2048


def test_the_configured_email_is_the_admin_and_others_are_users(chat_ui):
    url, _, _ = chat_ui
    bob = signin(url, "bob@example.org")
    assert bob.status_code == 200, bob.text
    assert bob.json()["role"] == "user"
    alice = signin(url, ADMIN, "Alice")
    assert alice.status_code == 200, alice.text
    assert alice.json()["role"] == "admin"


def test_no_identity_header_no_session(chat_ui):
    """Without the edge's header nobody signs in: not with a password, not by signing up."""
    url, _, _ = chat_ui
    assert signin(url, None).status_code in (400, 401, 403)
    signup = requests.post(
        f"{url}/api/v1/auths/signup",
        json={"name": "mallory", "email": "mallory@example.org", "password": "x" * 16},
        timeout=30,
    )
    assert signup.status_code in (400, 401, 403), signup.text


def test_lists_the_engines_models_and_streams_a_chat(chat_ui):
    url, _, _ = chat_ui
    token = signin(url, ADMIN, "Alice").json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    models = requests.get(f"{url}/api/models", headers=auth, timeout=60)
    assert models.status_code == 200, models.text
    assert DOUBLE_MODEL in [m["id"] for m in models.json()["data"]]
    reply = requests.post(
        f"{url}/api/chat/completions",
        headers=auth,
        json={"model": DOUBLE_MODEL, "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
        stream=True,
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    # Server-sent events, relayed as they come: "data:" lines (the space after the colon is optional).
    payloads = [line[len(b"data:") :].strip() for line in reply.iter_lines() if line.startswith(b"data:")]
    chunks = [json.loads(p) for p in payloads if p != b"[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert len(chunks) > 1 and text.strip(), chunks[:3]


def test_privacy_switches_are_in_force(chat_ui):
    url, _, _ = chat_ui
    token = signin(url, ADMIN, "Alice").json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    features = requests.get(f"{url}/api/config", headers=auth, timeout=30).json()["features"]
    assert features["enable_signup"] is False
    assert features.get("enable_web_search") is False
    assert features.get("enable_community_sharing") is False


def test_its_data_outlives_a_restart(chat_ui):
    url, container, _ = chat_ui
    before = signin(url, ADMIN, "Alice").json()["id"]
    assert container.exec_run(["test", "-s", "/app/backend/data/webui.db"]).exit_code == 0
    container.restart(timeout=30)
    _wait_healthy(url)
    assert signin(url, ADMIN, "Alice").json()["id"] == before
