"""Backups that restore, on fresh local hosts with real backends: the shared backup volume (a local path,
as a mounted Manila share would be), S3 (moto's server on the stack's network) and SFTP to a second host.

One `split` stack (edge1, llm1), torn down afterwards also on failure. The tests run in file order: each
leaves llm1 configured with the inventory's own backup settings again.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from helpers import endpoint, free_port, wait_for_port

from llmcloud import REPO_ROOT, converge, verify
from llmcloud.keys import ensure_ed25519
from llmcloud.local import system
from llmcloud.local.stack import LocalStack
from llmcloud.progress import Progress

pytestmark = pytest.mark.integration

SOURCE = "llm1"
ADAPTER = "/srv/llmcloud/adapters/demo/adapter_model.safetensors"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = LocalStack(
        name="citest-backup",
        topology="split",
        inventory_root=tmp_path_factory.mktemp("backup"),
        ssh_port=31300,
        http_port=31380,
        https_port=31343,
        idp_port=31390,
        # The chat UI's data (users, chats) is in the edge's backups: the restore test brings it back.
    )
    progress = Progress("citest backup")
    stack.down(progress)  # what a killed earlier run may have left under this stack's name
    try:
        stack.up(progress)
        # State a user cares about: a LoRA adapter (random bytes, so nothing dedups it away).
        sh(stack, SOURCE, f"mkdir -p {Path(ADAPTER).parent} && head -c 2000000 /dev/urandom > {ADAPTER}")
        result = converge.converge(stack.inventory_dir, progress)
        assert result.ok, result.failures
        yield stack
    finally:
        stack.down(progress)


def sh(stack: LocalStack, host: str, script: str, check: bool = True) -> tuple[int, str]:
    container = system.docker_client().containers.get(stack.container_name(host))
    code, out = system.run_in(container, ["bash", "-c", script])
    text = out.decode(errors="replace")
    if check:
        assert code == 0, f"{host}: {script}\n{text}"
    return code, text


def playbook(stack: LocalStack, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-playbook", "-i", str(stack.inventory_dir), name, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def apply_restic(stack: LocalStack, host: str, **overrides) -> subprocess.CompletedProcess:
    """The restic role on one host, with settings overridden the way a user's inventory would."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as extra:
        json.dump(overrides, extra)
        extra.flush()
        return subprocess.run(
            [
                *("ansible", host, "-i", str(stack.inventory_dir)),
                *("-m", "ansible.builtin.include_role", "-a", "name=restic", "-e", f"@{extra.name}"),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )


@contextmanager
def backend(stack: LocalStack, host: str, **overrides):
    """Point a host's backups elsewhere for a test, and back to the inventory's settings afterwards."""
    applied = apply_restic(stack, host, **overrides)
    try:
        assert applied.returncode == 0, applied.stdout[-3000:]
        yield
    finally:
        restored = apply_restic(stack, host)
        assert restored.returncode == 0, restored.stdout[-3000:]


def snapshots(stack: LocalStack, host: str, tag: str = "llmcloud") -> list[dict]:
    _, out = sh(stack, host, f"llmcloud-restic restic snapshots --json --host {host} --tag {tag}")
    return json.loads(out)


def status(stack: LocalStack, host: str) -> dict:
    return json.loads(sh(stack, host, "cat /var/lib/llmcloud/backup/status.json")[1])


def run_backup(stack: LocalStack, host: str) -> tuple[int, str]:
    return sh(stack, host, "systemctl start llmcloud-backup.service", check=False)


def checksums(stack: LocalStack, host: str) -> dict[str, str]:
    _, out = sh(
        stack,
        host,
        "find /etc/llmcloud /srv/llmcloud/adapters -type f -print0 2>/dev/null | sort -z"
        " | xargs -0 sha256sum",
    )
    return {path: digest for digest, path in (line.split(maxsplit=1) for line in out.splitlines())}


def private_ip(stack: LocalStack, host: str) -> str:
    """From the inventory, as any role would see it (an engine host also has Docker's own bridge)."""
    hosts = yaml.safe_load((stack.inventory_dir / "hosts.yml").read_text())["all"]["hosts"]
    return hosts[host]["private_ip"]


def gateway(stack: LocalStack) -> str:
    network = system.docker_client().networks.get(stack.network_name)
    return network.attrs["IPAM"]["Config"][0]["Gateway"]


# ---- the tests ---------------------------------------------------------------------------------
def test_every_host_backed_up_at_first_converge_and_checks_pass(stack):
    for host in ("edge1", SOURCE):
        assert status(stack, host)["snapshot_id"]
    # The same checks users run after a deploy, backups included.
    assert verify.verify(stack.inventory_dir) == 0


def test_manual_backup_makes_a_snapshot_and_retention_prunes(stack):
    before = status(stack, SOURCE)["snapshot_id"]
    run = playbook(stack, "backup.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    after = status(stack, SOURCE)
    assert after["snapshot_id"] != before
    assert f"snapshot {after['snapshot_id'][:8]}" in run.stdout
    # keep-daily 7 (and weekly, monthly): several backups on one day leave the newest of that day.
    kept = snapshots(stack, SOURCE)
    assert [s["short_id"] for s in kept] == [after["snapshot_id"][:8]]


def test_drill_passes_then_catches_a_changed_file(stack):
    run = playbook(stack, "backup-drill.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "restore drill passed" in run.stdout
    drill = json.loads(sh(stack, SOURCE, "cat /var/lib/llmcloud/backup/drill.json")[1])
    assert drill["ok"] and drill["files"] >= 3 and drill["bytes"] >= 2_000_000

    # One byte inverted: always a change (writing a fixed byte into random data left the file as it was
    # once in 256 runs). The snapshot the drill just took is named: a backup started meanwhile is not it.
    flip = (
        f"f = open('{ADAPTER}', 'r+b'); f.seek(1000); b = f.read(1); f.seek(1000); "
        "f.write(bytes([b[0] ^ 0xFF]))"
    )
    sh(stack, SOURCE, f'cp {ADAPTER} /root/adapter.keep && python3 -c "{flip}"')
    try:
        snapshot = f"drill_snapshot={drill['snapshot_id']}"
        run = playbook(stack, "backup-drill.yml", "-e", snapshot, "-l", SOURCE)
        assert run.returncode != 0
        assert f"DIFFERENT {ADAPTER}: content differs" in run.stdout
        assert "restore drill FAILED" in run.stdout
    finally:
        sh(stack, SOURCE, f"mv /root/adapter.keep {ADAPTER}")


def test_wrong_password_fails_clearly_and_changes_nothing(stack):
    kept = snapshots(stack, SOURCE)
    config_before = sh(stack, SOURCE, "sha256sum /etc/llmcloud/backup/secrets.json")[1]
    wrong = apply_restic(stack, SOURCE, restic_password="not-the-password-4711")
    assert wrong.returncode != 0
    assert "does not open with this password" in wrong.stdout
    assert "restic_password" in wrong.stdout
    assert "not-the-password-4711" not in wrong.stdout + wrong.stderr
    # The timers keep the settings that work, and the repository is untouched.
    assert sh(stack, SOURCE, "sha256sum /etc/llmcloud/backup/secrets.json")[1] == config_before
    assert run_backup(stack, SOURCE)[0] == 0
    assert len(snapshots(stack, SOURCE)) == len(kept)
    assert apply_restic(stack, SOURCE).returncode == 0


def test_s3_backend(stack):
    import boto3

    address = gateway(stack)
    port = free_port(address)
    server = subprocess.Popen(
        ["moto_server", "-H", address, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://{address}:{port}"
    keys = {"AWS_ACCESS_KEY_ID": "llmcloud-test", "AWS_SECRET_ACCESS_KEY": "llmcloud-test-secret"}
    try:
        wait_for_port(address, port)
        with backend(
            stack,
            SOURCE,
            restic_repository=f"s3:{endpoint}/llmcloud-backups/{SOURCE}",
            restic_backend_env={**keys, "AWS_DEFAULT_REGION": "us-east-1"},
        ):
            assert run_backup(stack, SOURCE)[0] == 0
            snap = status(stack, SOURCE)["snapshot_id"]
            # Seen from the S3 side, not through restic: the snapshot object is in the bucket.
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
            )
            listed = s3.list_objects_v2(Bucket="llmcloud-backups", Prefix=f"{SOURCE}/snapshots/")
            assert [o["Key"] for o in listed.get("Contents", []) if snap in o["Key"]]
            run = playbook(stack, "backup-drill.yml", "-e", "drill_snapshot=latest", "-l", SOURCE)
            assert run.returncode == 0, run.stdout[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextmanager
def webhook(address: str):
    """An HTTP receiver for the failure webhook, on the stack's network."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((address, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


def test_sftp_to_a_second_host_and_an_unreachable_backend(stack, tmp_path):
    """llm1 backs up to edge1 over SFTP; with edge1's sshd stopped the run fails visibly, then recovers."""
    key = tmp_path / "restic_ed25519"
    public = ensure_ed25519(key, "restic@llm1")
    source_ip, server_ip = private_ip(stack, SOURCE), private_ip(stack, "edge1")
    sh(
        stack,
        "edge1",
        "id restic >/dev/null 2>&1 || useradd --create-home --shell /bin/sh restic; "
        "install -d -o restic -g restic -m 0700 /home/restic/.ssh; "
        f"echo '{public}' > /home/restic/.ssh/authorized_keys; "
        "chown restic: /home/restic/.ssh/authorized_keys; "
        # The test opens SSH from llm1 on its peer; the firewall allows only admin networks otherwise.
        f"nft insert rule inet llmcloud_filter input ip saddr {source_ip} tcp dport 22 accept",
    )
    host_key = sh(stack, "edge1", "cat /etc/ssh/ssh_host_ed25519_key.pub")[1].split()[:2]
    try:
        sftp_round(stack, key, server_ip, host_key)
    finally:
        # Back to the configured firewall: the hole above was for this test only.
        sh(stack, "edge1", "systemctl reload llmcloud-firewall.service")


def sftp_round(stack: LocalStack, key: Path, server_ip: str, host_key: list[str]) -> None:
    with (
        webhook(gateway(stack)) as (hook_url, calls),
        backend(
            stack,
            SOURCE,
            restic_repository=f"sftp:restic@{server_ip}:/home/restic/{SOURCE}",
            restic_sftp_private_key=key.read_text(),
            restic_sftp_known_hosts=[f"{server_ip} {' '.join(host_key)}"],
            restic_failure_webhook=hook_url,
        ),
    ):
        assert sh(stack, "edge1", f"test -f /home/restic/{SOURCE}/config", check=False)[0] == 0
        assert run_backup(stack, SOURCE)[0] == 0
        good = status(stack, SOURCE)["snapshot_id"]

        sh(stack, "edge1", "systemctl stop ssh.service")
        try:
            code, _ = run_backup(stack, SOURCE)
            assert code != 0
            assert (
                sh(stack, SOURCE, "systemctl is-failed llmcloud-backup.service", check=False)[1].strip()
                == "failed"
            )
            # OnFailure= starts the recording unit right after the failure: wait for it.
            deadline = time.monotonic() + 20
            while "last_failure_unit" not in status(stack, SOURCE) and time.monotonic() < deadline:
                time.sleep(0.3)
            failed = status(stack, SOURCE)
            assert failed["last_failure_unit"] == "llmcloud-backup.service"
            assert failed["snapshot_id"] == good  # the last good snapshot is still the one reported
            journal = sh(stack, SOURCE, "journalctl -u llmcloud-backup.service -o cat --no-pager | tail -20")[
                1
            ]
            assert "llmcloud-restic backup: restic failed against sftp:" in journal
            deadline = time.monotonic() + 20
            while not calls and time.monotonic() < deadline:
                time.sleep(0.2)
            assert calls and calls[0]["host"] == SOURCE and calls[0]["unit"] == "llmcloud-backup.service"
        finally:
            sh(stack, "edge1", "systemctl start ssh.service")
        assert run_backup(stack, SOURCE)[0] == 0
        assert status(stack, SOURCE)["snapshot_id"] != good
        # The failed run left the repository sound.
        assert sh(stack, SOURCE, "llmcloud-restic check", check=False)[0] == 0


def test_full_disk_fails_visibly_and_keeps_earlier_snapshots(stack):
    sh(stack, SOURCE, "mkdir -p /srv/small && mount -t tmpfs -o size=12m tmpfs /srv/small")
    try:
        # restic 0.14 (Debian 12) usually stops at once with "no space left on device", but was seen here to
        # hang after it instead; the role's timeout (2 minutes for this test) turns that into a failure too.
        with backend(
            stack,
            SOURCE,
            restic_repository="/srv/small/repo",
            restic_paths_extra=["/srv/bulk"],
            restic_backup_timeout_minutes=2,
        ):
            assert run_backup(stack, SOURCE)[0] == 0
            first = status(stack, SOURCE)["snapshot_id"]
            sh(stack, SOURCE, "mkdir -p /srv/bulk && head -c 20000000 /dev/urandom > /srv/bulk/blob")
            code, _ = run_backup(stack, SOURCE)
            assert code != 0
            journal = sh(stack, SOURCE, "journalctl -u llmcloud-backup.service -o cat --no-pager | tail -20")[
                1
            ]
            assert "no space left on device" in journal.lower() or (
                "did not finish within 120 s (restic_backup_timeout_minutes)" in journal
            ), journal
            sh(stack, SOURCE, "rm -rf /srv/bulk")
            # No data loss: the earlier snapshot still restores byte for byte.
            code, out = sh(stack, SOURCE, f"llmcloud-restic drill --snapshot {first}", check=False)
            assert code == 0, out
    finally:
        sh(stack, SOURCE, "rm -rf /srv/bulk; umount /srv/small", check=False)


def served_certificate(stack: LocalStack) -> bytes:
    """The edge certificate as served on the published HTTPS port (DER)."""
    import ssl

    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", stack.https_port), timeout=10))


def chat_ui_call(stack: LocalStack, method: str, path: str, body: dict | None = None):
    """One call to the chat UI's API as alice: signed in at the identity provider, then at the UI through the
    edge (which tells it who she is)."""
    from llmcloud.local.login import browser_login

    status = endpoint(stack)
    session, _ = browser_login(status, "alice")
    signin = {"email": "", "password": ""}
    token = session.post(status["url"] + "api/v1/auths/signin", json=signin, timeout=60)
    assert token.status_code == 200, token.text
    reply = session.request(
        method,
        status["url"] + path,
        json=body,
        headers={"Authorization": f"Bearer {token.json()['token']}"},
        timeout=60,
    )
    assert reply.status_code == 200, (path, reply.status_code, reply.text[:300])
    return reply.json()


def new_chat(stack: LocalStack, title: str) -> str:
    """A chat of alice's in the chat UI; its id."""
    return chat_ui_call(stack, "POST", "api/v1/chats/new", {"chat": {"title": title, "messages": []}})["id"]


def test_restore_in_place_puts_back_the_snapshot_on_running_hosts(stack):
    """`make restore` on hosts that still run: the state of the snapshot comes back (its links too, which
    restic 0.14 could not replace), and the chat UI's database is the consistent copy taken with the snapshot:
    a chat made after the backup is gone, one made before is there."""
    kept = f"kept {time.time_ns()}"
    kept_id = new_chat(stack, kept)
    run = playbook(stack, "backup.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    later = f"after the backup {time.time_ns()}"
    later_id = new_chat(stack, later)

    run = playbook(stack, "restore.yml")
    assert run.returncode == 0, run.stdout[-4000:]
    assert len(re.findall(r"restored [0-9a-f]{8}", run.stdout)) == 2
    assert "Copy the restored database into place" in run.stdout
    ids = {c["id"] for c in chat_ui_call(stack, "GET", "api/v1/chats/")}
    assert kept_id in ids, "the chat from before the backup is missing after the restore"
    assert later_id not in ids, "the chat UI still has a chat made after the restored backup"
    assert verify.verify(stack.inventory_dir) == 0


def test_restore_onto_fresh_hosts(stack):
    """Lost VMs: new, empty llm1 and edge1 come up, restore.yml brings back their state, and the service comes
    back with the same certificate and keys: identical files, the same served certificate, a valid API key."""
    import requests

    # A person's chat in the chat UI (Open WebUI, signed in through the edge): it must come back too.
    chat_title = f"restore me {time.time_ns()}"
    chat_id = new_chat(stack, chat_title)
    run = playbook(stack, "backup.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    before = {host: checksums(stack, host) for host in (SOURCE, "edge1")}
    assert ADAPTER in before[SOURCE] and "/etc/llmcloud/engine/hf_token" in before[SOURCE]
    assert "/etc/llmcloud/tls/ca/ca.key" in before["edge1"]
    certificate = served_certificate(stack)

    client = system.docker_client()
    for host in (SOURCE, "edge1"):
        client.containers.get(stack.container_name(host)).remove(force=True)
        client.volumes.get(f"llmcloud-{stack.name}-{host}-docker").remove(force=True)
    stack.up(Progress("fresh hosts"))
    assert sh(stack, SOURCE, f"test -e {ADAPTER}", check=False)[0] != 0, "the new host is not fresh"
    assert sh(stack, "edge1", "test -e /etc/llmcloud/tls", check=False)[0] != 0, "the new edge is not fresh"

    began = time.monotonic()
    run = playbook(stack, "restore.yml")
    took = time.monotonic() - began
    assert run.returncode == 0, run.stdout[-4000:]
    assert len(re.findall(r"restored [0-9a-f]{8}", run.stdout)) == 2
    print(f"restore.yml onto two fresh hosts, converge included: {took:.1f}s")
    for host in (SOURCE, "edge1"):
        after = checksums(stack, host)
        missing_or_changed = {p for p in before[host] if before[host][p] != after.get(p)}
        assert not missing_or_changed, f"{host}: {sorted(missing_or_changed)}"
    assert served_certificate(stack) == certificate, "the edge serves a new certificate, not the restored one"
    chats = chat_ui_call(stack, "GET", "api/v1/chats/")
    assert [c["title"] for c in chats if c["id"] == chat_id] == [chat_title], "the chat UI lost alice's chat"

    status = endpoint(stack)
    reply = requests.get(
        status["openai_base_url"] + "/models",
        headers={"Authorization": f"Bearer {status['api_key']}"},
        verify=status["ca_bundle"],
        timeout=20,
    )
    assert reply.status_code == 200
    assert verify.verify(stack.inventory_dir) == 0
