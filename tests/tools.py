"""Command-line tools of the suites that cannot share the product's venv: each in a venv of its own, built
from its pinned set ``tests/tools/<name>.txt`` and cached beside the test cloud's OpenStack venv
(testbed/venv.py: the same cache folder and lock), by a hash of that set: a changed set builds a new venv.

A tool whose dependencies would hold back the product's own (sslyze caps cryptography) lives here.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from testbed.venv import cache_lock, cache_root

SETS = Path(__file__).resolve().parent / "tools"


def executable(name: str) -> Path:
    """The path of tool `name`'s command in its venv, built first when there is none for its pinned set."""
    pinned = SETS / f"{name}.txt"
    venv = cache_root() / f"{name}-venv-{hashlib.sha256(pinned.read_bytes()).hexdigest()[:16]}"
    with cache_lock(f"{name}-venv"):  # the suites of both topologies run side by side
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            print(f"tests/tools: building {venv} from {pinned.name}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "--requirement", str(pinned)]
            subprocess.run(pip, check=True)
            subprocess.run([str(venv / "bin" / "pip"), "check"], check=True, capture_output=True)
            (venv / ".complete").touch()
    return venv / "bin" / name
