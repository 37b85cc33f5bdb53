"""The inventory contract: what provisioning hands to configuration.

Every stack, local containers or OpenStack VMs, produces ``inventory/<stack>/`` in one shape:

- ``hosts.yml``: groups ``llm`` (engine hosts) and ``edge`` (public entry); a host may be in both.
  Each host has ``ansible_host``/``ansible_port`` (how the controller reaches it) and
  ``private_ip`` (how the other hosts reach it).
- ``group_vars/all/00-llmcloud.yml``: SSH connection settings and the stack's settings for the roles.
- ``group_vars/all/01-secrets.yml`` (mode 0600, only when the stack has secrets): tokens and passwords.
- ``ssh_config``: the same connection settings for ``ssh -F`` and testinfra.

Roles never ask where a host came from; they read only these.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from llmcloud import REPO_ROOT

GROUPS = ("llm", "edge")
_HOSTNAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class InventoryHost:
    name: str
    groups: tuple[str, ...]
    ansible_host: str
    private_ip: str
    ansible_port: int = 22
    public_ip: str | None = None
    #: Overrides the inventory's jump host for this host (e.g. engine VMs reached through the edge).
    proxy_jump: str | None = None
    #: Host variables beyond the connection (e.g. a wider admin_cidrs).
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Inventory:
    stack: str
    hosts: list[InventoryHost]
    ssh_user: str = "deploy"
    ssh_private_key_file: str | None = None
    known_hosts_file: str | None = None
    #: "yes" when host keys are known in advance (local stack), "accept-new" for fresh cloud VMs.
    strict_host_key_checking: str = "accept-new"
    proxy_jump: str | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    #: Where ``ssh_config`` is written. With a jump host, every ssh reads it (``-F``): OpenSSH applies
    #: command-line options to the target only, never to the jump hosts it passes through.
    ssh_config_file: str | None = None

    def validate(self) -> None:
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"inventory for stack {self.stack!r}: duplicate host names in {names}")
        for host in self.hosts:
            if not _HOSTNAME.match(host.name):
                raise ValueError(f"inventory host name {host.name!r} must match {_HOSTNAME.pattern}")
            unknown = set(host.groups) - set(GROUPS)
            if unknown:
                raise ValueError(f"inventory host {host.name!r}: unknown groups {sorted(unknown)}")
            ipaddress.ip_address(host.private_ip)
        for group in GROUPS:
            if not self.group(group):
                raise ValueError(f"inventory for stack {self.stack!r} has no host in group {group!r}")
        if self.strict_host_key_checking not in ("yes", "accept-new"):
            raise ValueError("strict_host_key_checking must be 'yes' or 'accept-new'")

    def group(self, name: str) -> list[InventoryHost]:
        return [h for h in self.hosts if name in h.groups]

    def ssh_options(self, host: InventoryHost | None = None) -> list[str]:
        """OpenSSH ``-o`` options shared by Ansible, ssh_config and testinfra."""
        opts = [f"StrictHostKeyChecking={self.strict_host_key_checking}"]
        if self.ssh_private_key_file:
            opts.append("IdentitiesOnly=yes")
        if self.known_hosts_file:
            opts.append(f"UserKnownHostsFile={self.known_hosts_file}")
        jump = host.proxy_jump if host is not None and host.proxy_jump else self.proxy_jump
        if jump:
            opts.append(f"ProxyJump={jump}")
        return opts

    def uses_jump_hosts(self) -> bool:
        return bool(self.proxy_jump or any(h.proxy_jump for h in self.hosts))

    def ssh_common_args(self, host: InventoryHost | None = None) -> str:
        config = (
            [f"-F {shlex.quote(self.ssh_config_file)}"]
            if self.ssh_config_file and self.uses_jump_hosts()
            else []
        )
        return " ".join(config + [f"-o {shlex.quote(o)}" for o in self.ssh_options(host)])


def _to_yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=True, width=1 << 16)
    return text.removesuffix("...\n").rstrip("\n")  # a bare scalar ends with a document marker


def template_environment() -> jinja2.Environment:
    """Jinja2 over templates/: strict about undefined names, keeps trailing newlines."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(REPO_ROOT / "templates")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["to_yaml"] = _to_yaml
    return env


def render(inventory: Inventory) -> dict[str, str]:
    """Render the inventory files as {relative path: content}. Pure: no I/O besides templates."""
    inventory.validate()
    env = template_environment()
    ctx = {"inv": inventory, "groups": GROUPS}
    return {
        "hosts.yml": env.get_template("inventory/hosts.yml.j2").render(ctx),
        "group_vars/all/00-llmcloud.yml": env.get_template("inventory/group_vars_all.yml.j2").render(ctx),
        "ssh_config": env.get_template("inventory/ssh_config.j2").render(ctx),
    }


def write(inventory: Inventory, directory: Path, secrets: dict[str, str] | None = None) -> dict[str, str]:
    """Write the rendered inventory into ``directory``; returns {relative path: content} as rendered.

    ``secrets`` go to ``group_vars/all/01-secrets.yml``, created owner-only before a byte is written.
    """
    from llmcloud.keys import write_private

    rendered = render(inventory)
    for rel, content in rendered.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    if inventory.known_hosts_file:
        _ensure_known_hosts(Path(inventory.known_hosts_file))
    secrets_path = directory / "group_vars" / "all" / "01-secrets.yml"
    if secrets:
        header = "# Generated by llmcloud: secrets of this stack. Owner-only; never commit it.\n"
        write_private(secrets_path, (header + _to_yaml(secrets) + "\n").encode())
    elif secrets_path.exists():
        secrets_path.unlink()
    return rendered


def _ensure_known_hosts(path: Path) -> None:
    """The file ssh_config names exists, owner-only, in an owner-only folder: the first `ssh -F` (before any
    converge ran) adds the host key there, silently, instead of warning that it could not."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True)
    if not path.exists():
        path.touch(mode=0o600)


GENERATED = ("group_vars/all/00-llmcloud.yml", "group_vars/all/01-secrets.yml")


def user_settings(directory: Path) -> dict[str, str]:
    """The user's own files beside the generated ones (group_vars/, host_vars/): {relative path: content}."""
    out = {}
    for sub in ("group_vars", "host_vars"):
        for path in sorted((directory / sub).rglob("*")) if (directory / sub).is_dir() else []:
            rel = str(path.relative_to(directory))
            if path.is_file() and rel not in GENERATED:
                out[rel] = path.read_text(errors="replace")
    return out


def require(directory: Path) -> Path:
    """Return the inventory's hosts file, or fail with the fix when it is missing."""
    from llmcloud.errors import UserError

    hosts = directory / "hosts.yml"
    if not hosts.is_file():
        raise UserError(
            f"no inventory at {directory} (missing {hosts.name})",
            "run `make local` for local hosts, or `pulumi up` for an OpenStack stack, "
            "or pass INVENTORY=inventory/<stack>",
        )
    return hosts


@contextmanager
def forward(directory: Path, host: str, address: str, port: int, timeout: float = 30) -> Iterator[int]:
    """An SSH forward, made with the inventory's ``ssh_config``, from a free local port to ``address:port`` as
    ``host`` sees it (services that never listen on a public address). Yields the local port."""
    from llmcloud.errors import UserError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    ssh_config = directory / "ssh_config"
    proc = subprocess.Popen(
        [
            "ssh",
            *(["-F", str(ssh_config)] if ssh_config.is_file() else []),
            *("-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"),
            *("-L", f"127.0.0.1:{local}:{address}:{port}", host),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                why = (proc.stderr.read() or "").strip()[-300:]
                raise UserError(f"cannot reach {host} over SSH: {why}", f"check `ssh -F {ssh_config} {host}`")
            try:
                socket.create_connection(("127.0.0.1", local), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise UserError(
                        f"the SSH forward to {address}:{port} on {host} did not open within {timeout:.0f}s",
                        f"check `ssh -F {ssh_config} {host}`",
                    ) from None
                time.sleep(0.2)
        yield local
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
