"""Edge hosts (group edge): nginx, the certificate, the login in front of every engine route, and the logs.

Requests go from the edge host to itself (127.0.0.1, with the server name as SNI and Host). The certificate is
checked in test_certificate_names_the_host_and_is_not_expiring; the route checks look at status codes.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import in_group

# Where site.yml puts the chat UI's socket and its key for the engines (vars/site.yml, the one home of both).
SITE = yaml.safe_load((Path(__file__).parents[2] / "vars" / "site.yml").read_text())


@pytest.fixture
def edge(host, hostvars) -> dict:
    if not in_group(hostvars, "edge"):
        pytest.skip("not an edge host")
    name = hostvars.get("llmcloud_domain") or host.backend.get_hostname()
    mode = hostvars.get("certbot_mode", "acme_http01")
    return {"name": name, "tls": mode != "external", "mode": mode}


def request(
    host,
    edge,
    path: str,
    method: str = "GET",
    headers: dict | None = None,
    port: int | None = None,
    source: str | None = None,
    name: str | None = None,
):
    """(status, response headers as text) of one request from the edge host to itself (from the loopback
    address `source`, asking for the server `name`)."""
    scheme, port = ("https", port or 443) if edge["tls"] else ("http", port or 80)
    if port == 80:
        scheme = "http"
    name = name or edge["name"]
    args = ["curl", "-sk", "-o", "/dev/null", "-D", "-", "-X", method, "--path-as-is", "--max-time", "20"]
    args += ["--resolve", f"{name}:{port}:127.0.0.1"]
    if source:
        args += ["--interface", source]
    for key, value in (headers or {}).items():
        args += ["-H", f"{key}: {value}"]
    if method == "POST":
        args += ["-H", "Content-Type: application/json", "--data", '{"inputs": "hi", "messages": []}']
    args.append(f"{scheme}://{name}:{port}{path}")
    out = host.run(" ".join(["%s"] * len(args)), *args).stdout
    status = int(out.split()[1]) if out.startswith("HTTP/") else 0
    return status, out


def test_nginx_running_with_a_valid_config(host, edge):
    assert host.service("nginx").is_running and host.service("nginx").is_enabled
    assert host.run("nginx -t").rc == 0


def test_certificate_names_the_host_and_is_not_expiring(host, edge):
    if not edge["tls"]:
        pytest.skip("TLS ends at the load balancer in front (external)")
    pem = host.run(
        "echo | openssl s_client -connect 127.0.0.1:443 -servername %s 2>/dev/null | openssl x509",
        edge["name"],
    ).stdout
    assert "BEGIN CERTIFICATE" in pem
    text = host.run("echo %s | openssl x509 -noout -text", pem).stdout
    assert f"DNS:{edge['name']}" in text
    # At least 14 days left: a renewal that keeps failing shows here long before users see it.
    assert host.run("echo %s | openssl x509 -noout -checkend 1209600", pem).rc == 0
    assert "Issuer: CN = " in text and "placeholder" not in text.lower()


def test_renewal_scheduled_and_not_failing(host, edge):
    if edge["mode"] not in ("acme_http01", "acme_dns01"):
        pytest.skip("no ACME certificate on this host")
    assert host.service("certbot.timer").is_enabled and host.service("certbot.timer").is_running
    assert host.run("systemctl is-failed certbot.service").stdout.strip() != "failed"
    assert host.file("/etc/letsencrypt/renewal-hooks/deploy/50-llmcloud-reload-nginx").mode == 0o755


def test_http_redirects_to_https_and_serves_acme(host, edge):
    if not edge["tls"]:
        pytest.skip("plain HTTP behind the load balancer")
    status, headers = request(host, edge, "/v1/models", port=80)
    assert status == 301 and "location: https://" in headers.lower()
    assert f"location: https://{edge['name']}".lower() in headers.lower(), headers
    assert (
        request(host, edge, "/.well-known/acme-challenge/none", port=80)[0] == 404
    )  # served, not redirected


def test_healthz_public_and_security_headers(host, edge):
    status, headers = request(host, edge, "/healthz")
    assert status == 200
    status, headers = request(host, edge, "/v1/models")
    lower = headers.lower()
    if edge["tls"]:
        assert "strict-transport-security: max-age=" in lower
    assert "x-content-type-options: nosniff" in lower
    assert "server: nginx\r" in lower or "server: nginx\n" in lower  # no version


def test_only_the_service_name_is_answered_and_never_written_back(host, edge):
    """Another Host (or none): 421 on HTTPS, 404 on HTTP, and the name asked for appears nowhere."""
    for port in (None, 80):
        status, headers = request(host, edge, "/v1/models", port=port, name="evil.invalid")
        assert status in (404, 421) and "evil.invalid" not in headers, (port, headers)
    # /healthz, public anyway, for a load balancer's health check by address.
    assert request(host, edge, "/healthz", name="evil.invalid")[0] == 200


def test_api_without_credentials_is_401_and_browser_is_redirected(host, edge):
    status, headers = request(host, edge, "/v1/chat/completions", method="POST")
    assert status == 401 and "location:" not in headers.lower()
    status, headers = request(host, edge, "/")
    assert status == 302 and "location: /oauth2/start" in headers.lower()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-User": "alice"},
        {"X-Auth-Request-User": "alice", "X-Auth-Request-Email": "alice@example.org"},
        {"X-Forwarded-Email": "alice@example.org", "X-Forwarded-For": "127.0.0.1"},
        {"Authorization": "Bearer llmc_not-a-key-not-a-key-not-a-key"},
        {"Authorization": "Bearer not.a.jwt"},
    ],
)
def test_forged_identity_gets_no_access(host, edge, headers):
    assert request(host, edge, "/v1/models", headers=headers)[0] == 401


@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/info",
        "/health",
        "//metrics",
        "/v1/../metrics",
        "/v1/..%2Fmetrics",
        "/oauth2/../metrics",
        "/METRICS",
        "/V1/models",
        "/v1//models/../../metrics",
        "/generate%2F..%2Fmetrics",
        "/docs",
    ],
)
def test_engine_internals_and_path_tricks_never_reach_the_engine(host, edge, path):
    status, head = request(host, edge, path)
    if status == 302:  # with the chat UI, other paths are its pages: behind the sign-in, never the engine's
        assert "location: /oauth2/start" in head.lower(), head
    else:
        assert status in (400, 401, 404), f"{path} answered {status}"


@pytest.fixture
def chat_ui(hostvars, edge) -> str:
    """Open WebUI's socket, where the chat UI is on (role open_webui)."""
    if not hostvars.get("open_webui_enabled", True) or not hostvars.get("nginx_auth_enabled", True):
        pytest.skip("no chat UI on this edge (open_webui_enabled: false)")
    return SITE["__site_chat_ui_socket"]


def test_chat_ui_runs_on_its_socket_only_with_its_data_kept_private(host, chat_ui):
    assert host.docker("open-webui").is_running
    folder = host.file(str(Path(chat_ui).parent))
    assert folder.user == "root" and folder.group == "www-data" and folder.mode == 0o750
    assert host.file(chat_ui).is_socket
    health = "curl -s -o /dev/null -w '%%{http_code}' --max-time 10 --unix-socket %s http://localhost/health"
    assert host.run(health, chat_ui).stdout == "200"
    # Any other user of the host (here: nobody) cannot reach it, so cannot claim to be someone.
    assert host.run("runuser -u nobody -- " + health, chat_ui).stdout != "200"
    # Nothing of it on a TCP port (the upstream image's 8080, the old loopback 8090).
    pid = host.run("docker inspect -f '{{.State.Pid}}' open-webui").stdout.strip()
    ports = host.run("ss -Hltnp").stdout
    assert f"pid={pid}," not in ports, ports
    data = host.file("/var/lib/llmcloud/open-webui")
    assert data.is_directory and data.user == "root" and data.mode == 0o700
    assert host.file("/var/lib/llmcloud/open-webui/webui.db").exists
    inspect = host.run("docker inspect open-webui").stdout
    assert "OFFLINE_MODE=true" in inspect and "ANONYMIZED_TELEMETRY=false" in inspect


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Forwarded-Email": "alice@example.org", "X-Forwarded-User": "alice"},
        {"X-Auth-Request-Email": "alice@example.org"},
        {"Cookie": "_llmcloud=forged"},
        {"Cookie": "__Host-llmcloud=" + "Zm9yZ2Vk" * 8 + "|1700000000|" + "c2lnbmF0dXJl" * 4},
    ],
)
def test_chat_ui_only_after_the_sign_in_whatever_a_client_claims(host, edge, chat_ui, headers):
    for path in ("/", "/api/v1/auths/", "/api/models"):
        status, head = request(host, edge, path, headers=headers)
        assert status == 302 and "location: /oauth2/start" in head.lower(), (path, head)


def test_chat_ui_reaches_the_engines_on_loopback_only_with_its_key(host, hostvars, chat_ui):
    port = int(hostvars.get("nginx_chat_ui_engine_port", 8089))
    sockets = [s for s in host.socket.get_listening_sockets() if s.endswith(f":{port}")]
    assert sockets and all(s.startswith("tcp://127.0.0.1:") for s in sockets), sockets
    url = f"http://127.0.0.1:{port}"
    code = "curl -s -o /dev/null -w '%%{http_code}' --max-time 20 -H %s %s"
    # Any process on the host without the chat UI's key: 401, whoever it claims to act for.
    assert host.run(code, "X-OpenWebUI-User-Email: alice@example.org", url + "/v1/models").stdout == "401"
    key_file = host.file(SITE["__site_chat_ui_engine_key_file"])
    assert key_file.user == "root" and key_file.mode == 0o600
    auth = "Authorization: Bearer " + key_file.content_string.strip()
    models = host.run("curl -s --max-time 20 -H %s %s", auth, url + "/v1/models")
    assert models.rc == 0 and '"data"' in models.stdout, models.stdout
    assert host.run(code, auth, url + "/metrics").stdout == "404"
    assert host.file("/etc/nginx/llmcloud/chat-ui-key.conf").mode == 0o600


def test_login_and_key_store_kept_secret(host, edge):
    config = host.file("/etc/llmcloud/oauth2-proxy/oauth2-proxy.cfg")
    assert config.mode == 0o400 and config.user != "root"
    keys = host.file("/var/lib/llmcloud/api-keys/api-keys.json")
    assert keys.user == "root" and keys.group == "llmcloud-authz" and keys.mode == 0o640
    stored = json.loads(keys.content_string)
    assert all(set(k) == {"name", "sha256"} and len(k["sha256"]) == 64 for k in stored)
    assert "llmc_" not in keys.content_string
    inspect = host.run("docker inspect oauth2-proxy").stdout
    assert "client_secret" not in inspect and "cookie_secret" not in inspect
    assert host.service("llmcloud-authz").is_running


def test_access_log_has_no_query_strings_or_full_addresses(host, edge):
    marker = uuid.uuid4().hex
    request(host, edge, f"/v1/models?prompt={marker}")
    log = host.run("tail -n 50 /var/log/nginx/llmcloud-access.log").stdout
    assert "/v1/models" in log
    assert marker not in log
    assert "127.0.0.1" not in log and "127.0.0.0" in log


def test_no_log_on_the_edge_keeps_a_full_client_address_or_a_query(host, edge):
    """Requests from a marker address (one of the loopback /8) with a marker query, to every part of the edge
    (API, sign-in, chat UI, a wrong key, a forged session, Prometheus): no log on the host holds either in
    full (nginx's, the journal with oauth2-proxy's and Open WebUI's container logs, Docker's, /var/log).

    Both markers are made on the host, inside one script, so no command line (sudo logs them) carries them."""
    port = 443 if edge["tls"] else 80
    base = f"{'https' if edge['tls'] else 'http'}://{edge['name']}:{port}"
    forged = "__Host-llmcloud=" + "Zm9yZ2Vk" * 8 + "|1700000000|" + "c2lnbmF0dXJl" * 4
    script = f"""
set -u
source=127.$((RANDOM % 254 + 1)).$((RANDOM % 254 + 1)).$((RANDOM % 253 + 2))
marker=q$(cat /proc/sys/kernel/random/uuid | tr -d -)
resolve={edge["name"]}:{port}:127.0.0.1
ask() {{ curl -sk -o /dev/null --max-time 20 --interface "$source" --resolve "$resolve" "$@"; }}
ask "{base}/v1/models?prompt=$marker"
ask -H "Authorization: Bearer llmc_$marker" "{base}/v1/models?prompt=$marker"
ask -H "Authorization: Bearer a.b.c" "{base}/v1/models?prompt=$marker"
ask -H "Cookie: {forged}" "{base}/?q=$marker"
ask -H "Cookie: {forged}" "{base}/api/v1/chats/?q=$marker"
ask "{base}/oauth2/start?rd=/%3Fq%3D$marker"
ask -H "Cookie: {forged}" "{base}/oauth2/auth?q=$marker"
ask "{base}/prometheus/?q=$marker"
sleep 2
for needle in "$source" "$marker"; do
  grep -rlaF -- "$needle" /var/log /var/lib/docker/containers 2>/dev/null | sed 's/^/FOUND /'
  journalctl --no-pager -q -o cat --since -10min 2>/dev/null | grep -qaF -- "$needle" && echo "FOUND journal"
done
echo checked
"""
    out = host.run("bash -c %s", script).stdout
    assert out.strip().endswith("checked"), out
    assert "FOUND" not in out, out
