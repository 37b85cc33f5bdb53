"""Run the testinfra suite in tests/infra against an inventory, exactly as users do after a deploy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llmcloud import REPO_ROOT, inventory
from llmcloud.converge import venv_on_path


def command(inventory_dir: Path, extra: list[str] | None = None) -> list[str]:
    hosts = inventory.require(inventory_dir)
    return [
        sys.executable,
        "-m",
        "pytest",
        str(REPO_ROOT / "tests" / "infra"),
        "--hosts=ansible://all",
        f"--ansible-inventory={hosts.parent.resolve()}",
        "-p",
        "no:cacheprovider",
        "-q",
        *(extra or []),
    ]


def verify(inventory_dir: Path, extra: list[str] | None = None) -> int:
    venv_on_path()
    # testinfra shares Ansible's SSH master connections (ansible.cfg: control_path) only where their directory
    # exists, and over Mitogen Ansible never makes it: without it every check opens a new SSH connection.
    (Path.home() / ".ansible" / "cp").mkdir(mode=0o700, parents=True, exist_ok=True)
    return subprocess.run(command(inventory_dir, extra), cwd=REPO_ROOT).returncode
