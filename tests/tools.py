"""Command-line tools of the suites that cannot share the product's venv: each in a venv of its own,
``.cache/tools/<name>``, from its pinned set ``tests/tools/<name>.txt``.

Made on first use, under a lock (the suites of both topologies run side by side), and made again when its set
changed. A tool whose dependencies would hold back the product's own (sslyze caps cryptography) lives here.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from llmcloud import REPO_ROOT

SETS = Path(__file__).resolve().parent / "tools"


def executable(name: str) -> Path:
    """The path of tool `name`'s command in its venv, made (or made again) first when needed."""
    pinned = SETS / f"{name}.txt"
    home = REPO_ROOT / ".cache" / "tools"
    venv = home / name
    command = venv / "bin" / name
    stamp = venv / ".installed"
    want = hashlib.sha256(pinned.read_bytes()).hexdigest()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == want and command.exists():
            return command
        shutil.rmtree(venv, ignore_errors=True)
        print(f"tests/tools: making {venv} from {pinned.relative_to(REPO_ROOT)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install = [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "--requirement", str(pinned)]
        subprocess.run(install, check=True)
        subprocess.run([str(venv / "bin" / "pip"), "check"], check=True, capture_output=True)
        stamp.write_text(want)
    return command
