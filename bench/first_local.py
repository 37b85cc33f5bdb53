"""Print what a first `make local` costs from nothing, for two commits side by side on this machine.

    .venv/bin/python bench/first_local.py [--before REF] [--after REF]

Each commit is checked out into a fresh worktree (no venv, no image cache) and, before it runs, every cache a
first `make local` would fill is removed: the stack's Docker images and Docker's build cache, Go's module and
build caches, pip's cache. Packages installed with apt (Docker, debootstrap) stay: both runs find them. Then
`make local` runs on its own stack and ports and is torn down. Prints the wall time of each run and the
steps each printed (its own progress summary), side by side. About 10 to 15 minutes a run: run it on a quiet
machine, and read single runs as what they are.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK = ["STACK=bench-first", "LOCAL_ARGS=--ssh-port 2280 --http-port 8096 --https-port 8456 --idp-port 9496"]
#: The images a local stack builds (their repositories), removed before each run.
REPOSITORIES = (
    "llmcloud/debian12-systemd",
    "llmcloud/debian12-cloud",
    "llmcloud/engine-double",
    "llmcloud/oauth2-proxy",
    "llmcloud/oidc-mock",
    "llmcloud/open-webui",
)


def sh(*cmd: str, cwd: Path = ROOT, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=check)


def go() -> str:
    return shutil.which("go") or "/usr/local/go/bin/go"


def remove_caches() -> None:
    # Images built on the base image first: Docker keeps a parent while it has children.
    for repository in reversed(REPOSITORIES):
        ids = sh("docker", "images", "-q", repository).stdout.split()
        if ids:
            sh("docker", "rmi", "-f", *sorted(set(ids)), check=True)
    sh("docker", "builder", "prune", "-af")
    sh(go(), "clean", "-modcache")
    sh(go(), "clean", "-cache")
    shutil.rmtree(Path.home() / ".cache" / "pip", ignore_errors=True)


def first_local(ref: str, parent: Path) -> tuple[float, dict[str, float], str]:
    """(wall time, {step: seconds} of its progress summary, the tail of its output) of `make local` at ref."""
    tree = parent / ref.replace("/", "_")
    sh("git", "worktree", "add", "--detach", str(tree), ref, check=True)
    try:
        remove_caches()
        print(f"… make local at {ref} (from nothing)", file=sys.stderr, flush=True)
        began = time.monotonic()
        run = subprocess.run(
            ["make", "--no-print-directory", "local", *STACK], cwd=tree, capture_output=True, text=True
        )
        took = time.monotonic() - began
        sh("make", "--no-print-directory", "down", *STACK, cwd=tree)
        output = run.stdout + run.stderr
        if run.returncode != 0:
            sys.exit(f"make local at {ref} failed (exit {run.returncode}):\n{output[-4000:]}")
        steps = {m.group(2): float(m.group(1)) for m in re.finditer(r"^ +(\d+\.\d)s  (.+)$", output, re.M)}
        up = re.search(r"^local up \(.*\): done in (\d+\.\d)s$", output, re.M)
        if up:  # what make did first: the venv (and, where make builds it beside the venv, the base image)
            steps = {
                "before `llmcloud local up`: the venv (and the base image)": took - float(up.group(1)),
                **steps,
            }
        return took, steps, output
    finally:
        sh("git", "worktree", "remove", "--force", str(tree))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="HEAD~1", help="the commit to compare with (default HEAD~1)")
    parser.add_argument("--after", default="HEAD", help="the commit measured (default HEAD)")
    args = parser.parse_args()
    load = Path("/proc/loadavg").read_text().split()[0]
    with tempfile.TemporaryDirectory(prefix="llmcloud-bench-first-") as parent:
        # The change first: if it fails, that is known before the baseline's quarter of an hour.
        after = first_local(args.after, Path(parent))
        runs = {args.before: first_local(args.before, Path(parent)), args.after: after}
    print(f"\nmake local from nothing (load average before: {load}; apt packages already installed)")
    print(f"{'':<60} {args.before:>12} {args.after:>12}")
    print(f"{'wall time':<60} {runs[args.before][0]:>11.1f}s {runs[args.after][0]:>11.1f}s")
    steps = list(dict.fromkeys([*runs[args.before][1], *runs[args.after][1]]))
    for step in steps:
        cells = [f"{runs[ref][1][step]:>11.1f}s" if step in runs[ref][1] else f"{'-':>12}" for ref in runs]
        print(f"  {step[:58]:<58} {cells[0]} {cells[1]}")


if __name__ == "__main__":
    main()
