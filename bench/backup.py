"""Backup figures for a synthetic service state: first and incremental backup, bytes added, restore.

    .venv/bin/python bench/backup.py [--stack NAME] [--size-mb 200] [--changed-percent 1]

Writes SIZE MB of random files (1 MiB each) under the LoRA adapter directory of the engine host (it is backed
up; random data does not compress or dedup, like model weights), backs up through the systemd unit the timer
runs, rewrites CHANGED % of the files, backs up again, then restores the latest snapshot into a scratch
directory and compares every file (the restore drill). Times are wall times of each step on the host; bytes
added are restic's own `data_added` (after compression, where the repository format has it).

Without --stack it brings up its own stack ("bench-backup", single topology, own ports) and removes it after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcloud import converge  # noqa: E402
from llmcloud.local import system  # noqa: E402
from llmcloud.local.stack import LocalStack, load  # noqa: E402
from llmcloud.progress import Progress  # noqa: E402

STATE = "/srv/llmcloud/adapters/bench-state"


def run(container, script: str) -> str:
    code, out = system.run_in(container, ["bash", "-c", script])
    text = out.decode(errors="replace")
    if code != 0:
        raise SystemExit(f"failed ({code}): {script}\n{text[-2000:]}")
    return text


def timed(container, script: str) -> tuple[float, str]:
    began = time.monotonic()
    out = run(container, script)
    return time.monotonic() - began, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", help="use this running local stack")
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--changed-percent", type=float, default=1.0)
    args = parser.parse_args()
    progress = Progress("bench backup")
    own = args.stack is None
    stack = (
        LocalStack(name="bench-backup", ssh_port=42700, http_port=42780, https_port=42743, idp_port=42790)
        if own
        else load(args.stack, ROOT / "inventory")
    )
    try:
        if own:
            stack.up(progress)
            result = converge.converge(stack.inventory_dir, progress)
            if not result.ok:
                print(result.failures)
                return 1
        host = next(name for name, groups in stack.hosts() if "llm" in groups)
        container = system.docker_client().containers.get(stack.container_name(host))
        run(container, f"rm -rf {STATE} && mkdir -p {STATE}")
        run(
            container,
            f"for i in $(seq 1 {args.size_mb}); do head -c 1048576 /dev/urandom > {STATE}/f$i; done",
        )
        status = "cat /var/lib/llmcloud/backup/status.json"

        first, _ = timed(container, "systemctl start llmcloud-backup.service")
        first_status = json.loads(run(container, status))
        changed = max(1, round(args.size_mb * args.changed_percent / 100))
        run(container, f"for i in $(seq 1 {changed}); do head -c 1048576 /dev/urandom > {STATE}/f$i; done")
        second, _ = timed(container, "systemctl start llmcloud-backup.service")
        second_status = json.loads(run(container, status))
        restore, _ = timed(container, "llmcloud-restic drill")
        drill = json.loads(run(container, "cat /var/lib/llmcloud/backup/drill.json"))
        mb = 1024 * 1024
        print(
            f"\nsynthetic state: {args.size_mb} MiB in {args.size_mb} files, {changed} file(s) "
            f"({args.changed_percent:g} %) rewritten between the backups; host {host}, repository "
            f"{first_status['repository']}"
        )
        print(f"  first backup:        {first:6.1f} s   added {first_status['bytes_added'] / mb:8.1f} MiB")
        print(f"  incremental backup:  {second:6.1f} s   added {second_status['bytes_added'] / mb:8.1f} MiB")
        print(
            f"  restore (drill):     {restore:6.1f} s   {drill['files']} files, "
            f"{drill['bytes'] / mb:.1f} MiB, "
            f"restic restore alone {drill['restore_seconds']} s, identical: {drill['ok']}"
        )
        print("  (each backup includes retention: forget --prune; the drill includes sha256 of every file)")
        run(container, f"rm -rf {STATE}")
    finally:
        if own:
            stack.down(progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
