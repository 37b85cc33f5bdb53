"""Configure on `pulumi up`: wait for the VMs, run site.yml, run the testinfra checks.

A Pulumi dynamic resource whose only input that matters is a digest of the inventory, the role tree
and the vars: when any of them changes, the next `pulumi up` converges again. Clients are created in
create()/update(), never in __init__, because Pulumi pickles the provider.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from llmcloud import REPO_ROOT, hostkeys
from llmcloud.provision import rolling

CLOUD_INIT_MARKER = "/var/lib/llmcloud/cloud-init.done"
CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"


class ConfigureError(Exception):
    """Shown by Pulumi as the resource's failure: the cause in one line, no traceback needed."""


def _plain_errors_in_the_dynamic_host() -> None:
    """Report a ConfigureError as its message alone, not as a Python traceback.

    Pulumi's dynamic-provider host (`python -m pulumi.dynamic`, which imports this module when it unpickles
    the provider) turns every exception into `traceback.format_exc()`. The user needs the cause and the
    fix, so for our own errors its `traceback` is answered with the message; anything else keeps the full
    traceback. Outside that host, or if its layout changes, this does nothing.
    """
    host = sys.modules.get("__main__")
    spec = getattr(host, "__spec__", None)
    if getattr(spec, "name", None) != "pulumi.dynamic.__main__" or not hasattr(host, "traceback"):
        return

    class _Traceback:
        def __getattr__(self, name: str):
            return getattr(traceback, name)

        @staticmethod
        def format_exc(*args, **kwargs) -> str:
            error = sys.exc_info()[1]
            if isinstance(error, ConfigureError):
                return str(error)
            return traceback.format_exc(*args, **kwargs)

    host.traceback = _Traceback()


_plain_errors_in_the_dynamic_host()


def tree_digest(*paths: Path) -> str:
    """A digest of every file under ``paths`` (names and contents), in a stable order."""
    digest = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def configuration_digest(rendered: dict[str, str], secrets: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(rendered):
        digest.update(name.encode() + b"\0" + rendered[name].encode() + b"\0")
    for key in sorted(secrets):
        digest.update(key.encode() + b"\0" + hashlib.sha256(secrets[key].encode()).digest())
    digest.update(tree_digest(REPO_ROOT / "roles", REPO_ROOT / "site.yml").encode())
    return digest.hexdigest()


def wait_for_host(inventory_dir: Path, name: str, timeout: float) -> None:
    """Wait until SSH answers and cloud-init has finished, or fail naming the host, the cause and the log.

    Over OpenSSH with the stack's ssh_config, as every later connection: the first answer records the VM's
    host key in the stack's known_hosts (accept-new); a host presenting another key than the one recorded is
    refused, never waited for.
    """
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        left = max(10.0, deadline - time.monotonic())
        try:
            result = hostkeys.on_host(inventory_dir, name, "cloud-init status --wait --long", left)
        except subprocess.TimeoutExpired:
            last_error = "cloud-init still running"
            continue
        if result.returncode == 255:  # SSH itself: not up yet, or refused
            if hostkeys.key_refused(result.stderr):
                raise ConfigureError(str(hostkeys.learn_refusal(inventory_dir, name, result.stderr)))
            last_error = " ".join(result.stderr.split())[-300:] or "no answer"
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            continue
        if result.returncode not in (0, 2):  # 2: done with recoverable errors
            detail = " ".join(
                line.strip()
                for line in result.stdout.splitlines()
                if line.strip().startswith(("status", "("))
            )
            # Our user data's own messages start with "llmcloud:"; else the log's last lines.
            ours = hostkeys.on_host(
                inventory_dir, name, f"sudo -n grep -h '^llmcloud:' {CLOUD_INIT_LOG}", 60
            ).stdout
            tail = (
                ours.strip()
                or hostkeys.on_host(inventory_dir, name, f"sudo -n tail -n 4 {CLOUD_INIT_LOG}", 60).stdout
            )
            raise ConfigureError(
                f"{name}: cloud-init failed ({detail[-300:] or 'no detail'}); "
                f"{CLOUD_INIT_LOG} on the VM says: {' | '.join(tail.strip().splitlines()[-4:])[-600:]}"
            )
        if hostkeys.on_host(inventory_dir, name, f"test -f {CLOUD_INIT_MARKER}", 60).returncode != 0:
            raise ConfigureError(
                f"{name}: cloud-init finished without {CLOUD_INIT_MARKER}; see {CLOUD_INIT_LOG} on the VM"
            )
        return
    raise ConfigureError(f"{name}: SSH not ready after {timeout:.0f}s ({last_error})")


def converge_in_child(inventory_dir: Path) -> str | None:
    """`llmcloud converge` in a process of its own; returns the first failure, or None when it converged.

    Not in this process: Pulumi's dynamic-provider host runs gRPC threads, and ansible-runner forks (pexpect);
    a fork beside those threads made the playbook fail at random before its first task. The child's progress
    streams through to `pulumi up`'s output as it comes.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "llmcloud.cli", "converge", "-i", str(inventory_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    error = None
    assert child.stderr is not None
    for line in child.stderr:
        sys.stderr.write(line)
        sys.stderr.flush()
        if line.startswith("llmcloud: error: "):
            error = line.removeprefix("llmcloud: error: ").removeprefix("converge failed: ").strip()
    if child.wait() == 0:
        return None
    return error or f"`llmcloud converge` exited with {child.returncode}"


class ConfigureProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        self._run(props)
        return CreateResult(id_=f"configure-{props['digest'][:16]}", outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = any(olds.get(k) != news.get(k) for k in ("digest", "verify", "inventory_dir", "servers"))
        return DiffResult(changes=changed, replaces=[], stables=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        self._run(news, olds.get("servers"))
        return UpdateResult(outs=news)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo: the VMs it configured are deleted by their own resources."""

    @staticmethod
    def _run(props: dict[str, Any], previous: dict[str, str] | None = None) -> None:
        from llmcloud import verify
        from llmcloud.progress import Progress

        inventory_dir = Path(props["inventory_dir"])
        progress = Progress("configure")
        # A replaced VM keeps its address but is a new machine: its old host key goes, its new one is learned.
        hostkeys.forget_replaced(inventory_dir, props["servers"], previous)
        with progress.step("wait for SSH and cloud-init"):
            for name in props["hosts"]:
                wait_for_host(inventory_dir, name, float(props["timeout"]))
        with progress.step("converge site.yml"):
            failure = converge_in_child(inventory_dir)
            if failure is not None:
                raise ConfigureError(
                    f"site.yml failed: {failure} (re-run: ansible-playbook -i {inventory_dir} site.yml)"
                )
        if props.get("verify"):
            with progress.step("post-deploy checks (tests/infra)"):
                if verify.verify(inventory_dir) != 0:
                    raise ConfigureError(
                        f"post-deploy checks failed: run `make verify INVENTORY={inventory_dir}` for details"
                    )
        # From now on a replaced engine VM is rolled through the pools (rolling.py).
        rolling.record_configured(inventory_dir, props["servers"])


class Configure(Resource):
    """Runs Ansible and the checks against the stack's inventory whenever its digest changes."""

    digest: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(ConfigureProvider(), name, props, opts)
