"""Run site.yml through ansible-runner, showing each task as it starts and each failure as it happens."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmcloud import REPO_ROOT, contract, inventory
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
        return self.failures[0] if self.failures else f"ansible-runner status {self.status}"

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
    import ansible_runner

    inventory.require(inventory_dir)
    venv_on_path()
    result = ConvergeResult(status="unknown", rc=-1)

    def on_event(event: dict) -> bool:
        kind = event.get("event")
        data = event.get("event_data", {})
        if kind == "playbook_on_play_start":
            progress.log(f"PLAY {data.get('play', '')}")
        elif kind == "playbook_on_task_start":
            progress.log(f"  {data.get('task', '')}")
        elif kind == "runner_on_ok" and data.get("res", {}).get("changed"):
            result.changed_tasks.append(f"{data.get('host')}: {data.get('task')}")
            progress.log(f"    changed: {data.get('host')}")
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            res = data.get("res", {})
            # no_log tasks arrive censored from Ansible, so this never prints a secret.
            message = str(_failure_message(res)).strip()
            # A loop fails as "One or more items failed": say which items and why.
            for item in res.get("results") or []:
                if isinstance(item, dict) and item.get("failed"):
                    label = item.get("_ansible_item_label", item.get("item", "?"))
                    message += f"; {label}: {str(_failure_message(item)).strip()}"
            line = f"{data.get('host')}: {data.get('task')}: {message}"
            result.failures.append(line)
            progress.log(f"    FAILED {line}")
        return True  # keep ansible-runner's own artifact record too

    private_dir = Path(tempfile.mkdtemp(prefix="llmcloud-runner-"))
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private_dir),
            project_dir=str(REPO_ROOT),
            playbook=str(REPO_ROOT / playbook),
            inventory=str(Path(inventory_dir).resolve()),
            envvars={"ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"), "PATH": os.environ["PATH"]},
            extravars=extravars or {},
            limit=limit,
            quiet=True,
            event_handler=on_event,
        )
        result.status, result.rc = runner.status, runner.rc
        if not result.ok and not result.failures:
            # No task failed: Ansible stopped before any (syntax, inventory). Its own words say why.
            tail = [line for line in runner.stdout.read().splitlines() if line.strip()][-6:]
            result.failures.append(" | ".join(tail) or f"ansible-runner status {runner.status}")
        result.stats = {k: v for k, v in (runner.stats or {}).items() if isinstance(v, dict)}
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)
    return result


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


def _failure_message(res: dict) -> str:
    return res.get("msg") or res.get("stderr") or res.get("reason") or "failed"
