"""Host keys of a provisioned stack, against a real OpenSSH server on 127.0.0.1: learned on first contact,
refused when another key answers at the same address (as an attacker in the middle would), forgotten only
for a replaced server."""

from __future__ import annotations

import getpass
import io
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from llmcloud import converge, hostkeys, inventory
from llmcloud.errors import UserError
from llmcloud.local import system
from llmcloud.progress import Progress
from llmcloud.provision import configure
from tests.packages import SSH_SERVER
from tests.unit.test_converge import touch_playbook


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


class Sshd:
    """Debian's sshd on 127.0.0.1, for the user running the tests, with a host key of the test's choice."""

    def __init__(self, work: Path, port: int, authorized: Path):
        self.work, self.port, self.authorized = work, port, authorized
        self.proc: subprocess.Popen | None = None

    def start(self, host_key: Path) -> None:
        config = self.work / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {self.authorized}\nStrictModes no\nPidFile none\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation directory
        self.proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("sshd did not listen")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def stack(tmp_path):
    """A provisioned-style inventory (accept-new, the stack's own known_hosts) whose one host is the sshd."""
    system.ensure_packages(SSH_SERVER)
    client = keygen(tmp_path / "deploy_key")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(Path(f"{client}.pub").read_text())
    sshd = Sshd(tmp_path, free_port(), authorized)
    inv_dir = tmp_path / "inventory"
    inv = inventory.Inventory(
        stack="keys",
        hosts=[
            inventory.InventoryHost("llm1", ("llm", "edge"), "127.0.0.1", "127.0.0.1", ansible_port=sshd.port)
        ],
        ssh_user=getpass.getuser(),
        ssh_private_key_file=str(client),
        ssh_config_file=str(inv_dir / "ssh_config"),
        known_hosts_file=str(inv_dir / "ssh" / "known_hosts"),
        strict_host_key_checking="accept-new",
    )
    inventory.write(inv, inv_dir)
    yield sshd, inv_dir, tmp_path
    sshd.stop()


def recorded(inv_dir: Path) -> str:
    return (inv_dir / "ssh" / "known_hosts").read_text()


def test_first_contact_records_the_key_then_another_key_is_refused(stack):
    sshd, inv_dir, work = stack
    first, impostor = keygen(work / "host_a"), keygen(work / "host_b")
    sshd.start(first)
    assert hostkeys.learns_keys(inv_dir)
    assert hostkeys.learn(inv_dir) == ["llm1"]
    assert Path(f"{first}.pub").read_text().split()[1] in recorded(inv_dir)
    assert hostkeys.learn(inv_dir) == []  # known: not asked again

    # Another machine answers at the same address: every way llmcloud connects refuses it.
    sshd.stop()
    sshd.start(impostor)
    ssh = subprocess.run(hostkeys.ssh_argv(inv_dir, "llm1", "true"), capture_output=True, text=True)
    assert ssh.returncode == 255 and "IDENTIFICATION HAS CHANGED" in ssh.stderr
    with pytest.raises(
        configure.ConfigureError, match=r"(?s)llm1 .* presented another host key .* ssh-keygen -R"
    ):
        configure.wait_for_host(inv_dir, "llm1", 20)
    assert Path(f"{impostor}.pub").read_text().split()[1] not in recorded(inv_dir)


def test_a_replaced_server_is_forgotten_and_learned_again_and_only_it(stack):
    sshd, inv_dir, work = stack
    first, second = keygen(work / "host_a"), keygen(work / "host_b")
    sshd.start(first)
    assert hostkeys.forget_replaced(inv_dir, {"llm1": "server-1"}) == []  # first seen: nothing to forget
    hostkeys.learn(inv_dir)
    assert hostkeys.forget_replaced(inv_dir, {"llm1": "server-1"}) == []  # the same server: its key stays
    assert Path(f"{first}.pub").read_text().split()[1] in recorded(inv_dir)

    sshd.stop()
    sshd.start(second)  # the cloud replaced the VM: same address, new machine
    assert hostkeys.forget_replaced(inv_dir, {"llm1": "server-2"}) == ["llm1"]
    assert hostkeys.learn(inv_dir) == ["llm1"]
    assert Path(f"{second}.pub").read_text().split()[1] in recorded(inv_dir)
    assert Path(f"{first}.pub").read_text().split()[1] not in recorded(inv_dir)


def test_an_unreachable_host_is_named_with_the_command_to_try(stack):
    _, inv_dir, _ = stack  # nothing listens
    with pytest.raises(UserError) as err:
        hostkeys.learn(inv_dir, timeout=5)
    assert "llm1: cannot connect to record its host key" in str(err.value)
    assert f"ssh -F {inv_dir / 'ssh_config'} llm1" in str(err.value.fix)


def test_a_local_stack_pins_its_keys_and_learns_nothing(tmp_path):
    (tmp_path / "ssh_config").write_text("Host llm1\n  StrictHostKeyChecking yes\n")
    assert not hostkeys.learns_keys(tmp_path)
    assert hostkeys.learn(tmp_path) == []


def test_a_limited_run_reaches_its_hosts_and_the_edges(tmp_path):
    (tmp_path / "hosts.yml").write_text(
        "all:\n  hosts:\n    edge1: {ansible_host: 10.0.0.1}\n    llm1: {ansible_host: 10.0.0.2}\n"
        "    llm2: {ansible_host: 10.0.0.3}\n"
        "  children:\n    edge:\n      hosts:\n        edge1: {}\n    llm:\n      hosts:\n        llm1: {}\n"
        "        llm2: {}\n"
    )
    assert hostkeys.contacted(tmp_path, None) is None
    assert hostkeys.contacted(tmp_path, "llm2") == ["llm2", "edge1"]
    assert hostkeys.contacted(tmp_path, "llm*") is None  # a pattern: every host


def test_converge_records_a_new_key_then_ansible_checks_it(stack):
    """`llmcloud converge` on a provisioned stack: OpenSSH records the key, then Ansible (over Mitogen, host
    key checking on) runs; with another key answering, Ansible refuses to run anything there."""
    sshd, inv_dir, work = stack
    sshd.start(keygen(work / "host_a"))
    playbook, marker = touch_playbook(work)
    out = io.StringIO()
    result = converge.converge(inv_dir, Progress("test", out=out), playbook=str(playbook))
    assert result.ok, result.failures
    assert marker.exists() and "recorded the host keys of llm1" in out.getvalue()

    marker.unlink()
    sshd.stop()
    sshd.start(keygen(work / "host_b"))
    result = converge.converge(inv_dir, Progress("test", out=io.StringIO()), playbook=str(playbook))
    assert not result.ok and not marker.exists()
    assert "host key" in result.first_failure().lower(), result.failures
