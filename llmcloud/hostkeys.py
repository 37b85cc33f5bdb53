"""Host keys of a provisioned stack: learned once by OpenSSH, checked on every later connection.

A cloud VM makes its SSH host keys at its first boot, so its inventory cannot know them in advance (a local
stack's does: it makes them). The inventory's ssh_config says `StrictHostKeyChecking accept-new` with the
stack's own known_hosts (inventory/<stack>/ssh/known_hosts): the first connection records the key, every later
one must present it, and a changed key is refused. Ansible's Mitogen knows only "enforce" and "ignore", so
every connection llmcloud makes (the wait for a new VM, `llmcloud converge`) goes through OpenSSH with that
ssh_config first; Ansible then runs with host key checking on and finds every key known.

A replaced VM keeps its address but is a new machine with new keys: its old key is forgotten, by server id,
exactly when provisioning sees the new server (``forget_replaced``), never for a mere address.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
from pathlib import Path

import yaml

from llmcloud.errors import UserError

KNOWN_HOSTS = Path("ssh") / "known_hosts"
#: Which server (by its cloud id) each host's recorded key belongs to.
SERVERS = Path("ssh") / "servers.json"


def ssh_argv(inventory_dir: Path, host: str, *command: str, connect_timeout: int = 15) -> list[str]:
    """`ssh -F inventory/<stack>/ssh_config <host> <command>`, as a person would run it, never asking."""
    return [
        "ssh",
        "-F",
        str(Path(inventory_dir) / "ssh_config"),
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={connect_timeout}",
        host,
        *command,
    ]


def on_host(
    inventory_dir: Path, host: str, command: str, timeout: float, connect_timeout: int = 15
) -> subprocess.CompletedProcess:
    """``command`` on ``host`` through OpenSSH and the stack's ssh_config (first contact: records its key)."""
    return subprocess.run(
        ssh_argv(inventory_dir, host, command, connect_timeout=connect_timeout),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=timeout,
    )


def key_refused(stderr: str) -> bool:
    """Whether OpenSSH refused the host for its key (another one than recorded), by what it printed."""
    return "IDENTIFICATION HAS CHANGED" in stderr or "Host key verification failed" in stderr


def learns_keys(inventory_dir: Path) -> bool:
    """True for an inventory that learns keys on first use (provisioned), False where they are pinned."""
    config = Path(inventory_dir) / "ssh_config"
    return config.is_file() and "StrictHostKeyChecking accept-new" in config.read_text()


def _inventory(inventory_dir: Path) -> dict:
    return yaml.safe_load((Path(inventory_dir) / "hosts.yml").read_text())["all"]


def _hosts(inventory_dir: Path) -> dict[str, tuple[str, int]]:
    hosts = _inventory(inventory_dir)["hosts"] or {}
    return {name: (h["ansible_host"], int(h.get("ansible_port", 22))) for name, h in hosts.items()}


def contacted(inventory_dir: Path, limit: str | None) -> list[str] | None:
    """The hosts a run with Ansible's ``limit`` (host names, comma-separated) may reach: those, and the edges
    (plays delegate to them); every host (None) without a limit or for any other pattern."""
    if not limit:
        return None
    everyone = _inventory(inventory_dir)
    names = [n.strip() for n in limit.split(",") if n.strip()]
    if not set(names) <= set(everyone["hosts"] or {}):
        return None
    edges = list((everyone.get("children", {}).get("edge") or {}).get("hosts") or {})
    return names + [e for e in edges if e not in names]


def known_name(address: str, port: int) -> str:
    """How known_hosts names a host: `address`, or `[address]:port` on another port than 22."""
    return address if port == 22 else f"[{address}]:{port}"


def is_known(inventory_dir: Path, address: str, port: int) -> bool:
    known = Path(inventory_dir) / KNOWN_HOSTS
    if not known.is_file():
        return False
    found = subprocess.run(
        ["ssh-keygen", "-F", known_name(address, port), "-f", str(known)], capture_output=True, check=False
    )
    return found.returncode == 0 and bool(found.stdout.strip())


def learn(inventory_dir: Path, names: list[str] | None = None, timeout: int = 30) -> list[str]:
    """Connect once with OpenSSH to each host (of ``names``, default all) whose key the stack does not know
    yet, which records it (accept-new); returns the hosts learned. A host whose key changed is refused by
    OpenSSH: the error names it and the fix."""
    inventory_dir = Path(inventory_dir)
    if not learns_keys(inventory_dir):
        return []
    hosts = _hosts(inventory_dir)
    learned = []
    for name in names if names is not None else list(hosts):
        address, port = hosts[name]
        if is_known(inventory_dir, address, port):
            continue
        done = on_host(inventory_dir, name, "true", timeout * 4, connect_timeout=timeout)
        if done.returncode != 0:
            raise learn_refusal(inventory_dir, name, done.stderr)
        learned.append(name)
    return learned


def learn_refusal(inventory_dir: Path, name: str, stderr: str) -> UserError:
    """Why OpenSSH (its ``stderr``) did not connect to ``name``, and the fix."""
    address, port = _hosts(inventory_dir)[name]
    said = " | ".join(line.strip() for line in stderr.splitlines() if line.strip() and "@@@" not in line)
    known = inventory_dir / KNOWN_HOSTS
    if key_refused(stderr):
        return UserError(
            f"{name} ({known_name(address, port)}) presented another host key than the one in {known}",
            "if you replaced or rebuilt this VM yourself, forget its old key: "
            f"ssh-keygen -R '{known_name(address, port)}' -f {known}; otherwise do not connect: "
            "someone may be in the middle",
        )
    return UserError(
        f"{name}: cannot connect to record its host key ({said[-400:] or 'no answer'})",
        f"check that it is up and reachable: ssh -F {inventory_dir / 'ssh_config'} {name}",
    )


def forget_replaced(
    inventory_dir: Path, servers: dict[str, str], previous: dict[str, str] | None = None
) -> list[str]:
    """Forget the recorded key of every host whose server id (``servers``: {host: id}) is not the one its key
    was recorded for; record the ids. Returns the hosts forgotten. A host seen for the first time is recorded
    without forgetting anything (its key is learned on first use). ``previous``: the ids as provisioning last
    saw them, for an inventory that has no record yet."""
    inventory_dir = Path(inventory_dir)
    record = inventory_dir / SERVERS
    record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Provisioning and a pool member may see the same new server at once: one at a time.
    with open(record.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = json.loads(record.read_text()) if record.is_file() else dict(previous or {})
        known = inventory_dir / KNOWN_HOSTS
        replaced = [n for n, server in servers.items() if before.get(n) not in (None, server)]
        inventoried = known.is_file() and (inventory_dir / "hosts.yml").is_file()
        hosts = _hosts(inventory_dir) if replaced and inventoried else {}
        forgotten = []
        for name in replaced:
            if name in hosts:
                # ssh-keygen also finds hashed entries (HashKnownHosts).
                subprocess.run(
                    ["ssh-keygen", "-R", known_name(*hosts[name]), "-f", str(known)],
                    capture_output=True,
                    check=False,
                )
                forgotten.append(name)
        if {**before, **servers} != before or not record.is_file():
            fresh = record.with_suffix(".new")
            fresh.write_text(json.dumps({**before, **servers}, indent=1, sort_keys=True) + "\n")
            fresh.replace(record)
    return forgotten
