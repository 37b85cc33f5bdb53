"""Run site.yml with ansible-playbook, showing each task as it starts and each failure as it happens."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmcloud import REPO_ROOT, contract, hostkeys, inventory
from llmcloud.errors import UserError
from llmcloud.progress import Progress


def role_wiring(role: str, inventory_vars: dict) -> dict:
    """What site.yml passes ``role`` beyond the inventory, for the role applied alone (tests, benchmarks):
    the role's `vars:` in site.yml, the site variables they read (vars/site.yml), and the defaults they read
    of the play's other roles that the inventory does not set. Jinja stays Jinja: Ansible renders it there.
    """
    plays = yaml.safe_load((REPO_ROOT / "site.yml").read_text())
    play = next(p for p in plays if any(r.get("role") == role for r in p.get("roles", [])))
    wiring = next(r for r in play["roles"] if r.get("role") == role).get("vars", {})
    site = yaml.safe_load((REPO_ROOT / "vars" / "site.yml").read_text())
    others = {}
    for other in (r["role"] for r in play["roles"] if r["role"] != role):
        others.update(contract.role_defaults(other))
    read = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", " ".join(str(v) for v in wiring.values())))
    borrowed = {k: others[k] for k in read if k in others and k not in inventory_vars}
    return {**site, **borrowed, **wiring}


@dataclass
class ConvergeResult:
    status: str
    rc: int
    #: {host: count} per outcome, from Ansible's play recap.
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    changed_tasks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful"

    def first_failure(self) -> str:
        return self.failures[0] if self.failures else f"ansible-playbook {self.status}"

    def changed(self) -> dict[str, int]:
        return dict(self.stats.get("changed", {}))

    def total_changed(self) -> int:
        return sum(self.changed().values())


def venv_on_path() -> None:
    """Make the tools installed beside this interpreter (ansible-playbook, ...) callable."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def converge(
    inventory_dir: Path,
    progress: Progress,
    playbook: str = "site.yml",
    extravars: dict | None = None,
    limit: str | None = None,
) -> ConvergeResult:
    """ansible-playbook ``playbook`` on ``inventory_dir``; each play and task shown as it starts, each change
    and failure as it happens (the llmcloud_events callback, plugins/callback), Ansible's own output kept for
    when it stops before any task (its last lines are the failure then)."""
    inventory.require(inventory_dir)
    venv_on_path()
    # A provisioned stack's new VMs: keys recorded by OpenSSH first, then checked by Ansible (hostkeys.py).
    learned = hostkeys.learn(Path(inventory_dir), hostkeys.contacted(Path(inventory_dir), limit))
    if learned:
        progress.log(f"recorded the host keys of {', '.join(learned)} (first contact)")
    result = ConvergeResult(status="unknown", rc=-1)
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryDirectory(prefix="llmcloud-converge-") as work:
        argv = ["ansible-playbook", "-i", str(Path(inventory_dir).resolve()), str(REPO_ROOT / playbook)]
        if extravars:  # a file (0600 in a private directory), never the command line: values may be secrets
            extra = Path(work) / "extravars.json"
            extra.write_text(json.dumps(extravars))
            argv += ["-e", f"@{extra}"]
        if limit:
            argv += ["--limit", limit]
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
            "ANSIBLE_CALLBACK_PLUGINS": str(REPO_ROOT / "plugins" / "callback"),
            "ANSIBLE_CALLBACKS_ENABLED": "llmcloud_events",
            "LLMCLOUD_EVENTS_FD": str(write_fd),
        }
        with open(Path(work) / "output.log", "w+") as output:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=REPO_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,),
                )
            finally:
                os.close(write_fd)
            # Read beside the run; the recap ends the events (a process Ansible forked may keep the pipe).
            reader = threading.Thread(target=_read_events, args=(read_fd, result, progress), daemon=True)
            reader.start()
            result.rc = proc.wait()
            reader.join(timeout=10)
            result.status = "successful" if result.rc == 0 else "failed"
            if not result.ok and not result.failures:
                # No task failed: Ansible stopped before any (syntax, inventory). Its own words say why.
                output.seek(0)
                tail = [line for line in output.read().splitlines() if line.strip()][-6:]
                result.failures.append(" | ".join(tail) or f"ansible-playbook exited {result.rc}")
    return result


def _read_events(read_fd: int, result: ConvergeResult, progress: Progress) -> None:
    with os.fdopen(read_fd) as events:
        for line in events:
            event = json.loads(line)
            if _record(event, result, progress) == "stats":
                return


def _record(event: dict, result: ConvergeResult, progress: Progress) -> str:
    """One event of the llmcloud_events callback into ``result`` and onto the screen; its kind."""
    kind = event.get("event", "")
    if kind == "play":
        progress.log(f"PLAY {event.get('name', '')}")
    elif kind == "task":
        progress.log(f"  {event.get('name', '')}")
    elif kind == "changed":
        result.changed_tasks.append(f"{event['host']}: {event['task']}")
        progress.log(f"    changed: {event['host']}")
    elif kind == "failed":
        line = f"{event['host']}: {event['task']}: {event['message']}"
        result.failures.append(line)
        progress.log(f"    FAILED {line}")
    elif kind == "stats":
        result.stats = event.get("stats", {})
    return kind


def converge_or_fail(inventory_dir: Path, progress: Progress) -> ConvergeResult:
    with progress.step(f"converge {inventory_dir} (site.yml)"):
        result = converge(inventory_dir, progress)
        if not result.ok:
            raise UserError(
                f"converge failed: {result.first_failure()}",
                f"fix the cause above, then re-run `make converge INVENTORY={inventory_dir}`",
            )
    changed = result.changed()
    progress.log(f"changed per host: {changed or 'none'}")
    return result
