"""The OpenStack services' own venv: pinned (requirements-openstack.txt), built once, cached by a hash of
its pins and of the glue package, so a change to either builds a new one and an unchanged tree reuses it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmcloud.errors import UserError
from llmcloud.progress import Progress

HERE = Path(__file__).resolve().parent
PINS = HERE / "requirements-openstack.txt"
GLUE = HERE / "glue"


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmcloud"


#: Bump when the way the venv is built changes, so cached venvs built the old way are not reused.
RECIPE = "2: pip --no-compile, then compileall"


def pins_digest() -> str:
    digest = hashlib.sha256(RECIPE.encode() + b"\0" + PINS.read_bytes())
    for path in sorted(p for p in GLUE.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        if ".egg-info" in str(path) or "/build/" in str(path):
            continue
        digest.update(str(path.relative_to(GLUE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """One builder at a time per cached thing (`make test` prepares in the background while tests run)."""
    path = cache_root() / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def services_venv(progress: Progress) -> Path:
    with cache_lock("openstack-venv"):
        return _services_venv(progress)


def _services_venv(progress: Progress) -> Path:
    venv = cache_root() / f"openstack-venv-{pins_digest()}"
    if (venv / ".complete").exists():
        progress.log(f"cached: {venv}")
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    progress.log(f"creating {venv} (one to two minutes; 830 MB)")
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-compile",
        "--disable-pip-version-check",
    ]
    steps = [
        ([sys.executable, "-m", "venv", str(venv)], "creating the venv"),
        ([*pip, "--requirement", str(PINS)], f"pip install -r {PINS.name}"),
        # A copy of the glue, so the build leaves nothing in the repository.
        ([*pip, "--no-deps", str(_glue_copy(venv))], "installing the glue (llmcloud-cloud-glue)"),
        # Byte-compiled once, here (often in the background), not at every start of every service: with
        # PYTHONDONTWRITEBYTECODE set, as on CI machines, imports never cache it, and each of the ~20
        # processes would compile OpenStack anew (4 minutes to start instead of 1).
        (
            [str(venv / "bin" / "python"), "-m", "compileall", "-q", "-j", "0", str(venv / "lib")],
            "compileall",
        ),
    ]
    for argv, what in steps:
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0 and what == "compileall":
            # A few packages ship files that are not Python 3 (templates, test data): left uncompiled.
            progress.log(f"compileall: {len(result.stdout.splitlines())} lines of complaints, ignored")
        elif result.returncode != 0:
            tail = "\n    ".join((result.stderr or result.stdout).strip().splitlines()[-6:])
            raise UserError(f"{what} failed for the local cloud's venv", f"the error:\n    {tail}")
    (venv / ".complete").write_text(pins_digest() + "\n")
    return venv


def _glue_copy(venv: Path) -> Path:
    target = venv / "src" / "glue"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(GLUE, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    return target
