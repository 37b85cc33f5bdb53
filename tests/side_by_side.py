"""Run make targets side by side, each chain of them one after the other, and say how each went.

    python -m tests.side_by_side integration-single integration-split,real-engine provision

Every argument is a chain: targets joined by commas run one after the other, the chain stops at the first
that fails. The chains run at the same time; each target's output goes to .cache/<target>.log. A line is
printed when a target starts and ends, and every few minutes the ones still running; at the end the tail of
every log (pytest's summary, or the failure). The exit status is 0 only when every target of every chain
passed: a target that never ran because one before it failed counts as failed.

The suites mostly wait on SSH, apt and containers: side by side they share this machine's cores.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".cache"
HEARTBEAT_S = 300
BEGAN = time.monotonic()
LOCK = threading.Lock()


def say(text: str) -> None:
    with LOCK:
        print(f"[{time.monotonic() - BEGAN:6.0f}s] {text}", flush=True)


def run_chain(targets: list[str], results: dict[str, int | None], running: set[str]) -> None:
    for target in targets:
        log = LOGS / f"{target}.log"
        running.add(target)
        say(f"▶ make {target} (output: {log.relative_to(ROOT)})")
        started = time.monotonic()
        with log.open("w") as out:
            code = subprocess.call(
                ["make", "--no-print-directory", target], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        results[target] = code
        running.discard(target)
        verdict = "passed" if code == 0 else f"FAILED (exit {code})"
        say(f"{verdict}: make {target} in {(time.monotonic() - started) / 60:.1f} min")
        if code != 0:
            return


def main(argv: list[str]) -> int:
    chains = [[t for t in arg.split(",") if t] for arg in argv]
    if not chains or not all(chains):
        print("usage: python -m tests.side_by_side TARGET[,TARGET...] ...", file=sys.stderr)
        return 2
    LOGS.mkdir(exist_ok=True)
    results: dict[str, int | None] = {t: None for chain in chains for t in chain}
    running: set[str] = set()
    threads = [threading.Thread(target=run_chain, args=(c, results, running), daemon=True) for c in chains]
    for thread in threads:
        thread.start()
    next_beat = time.monotonic() + HEARTBEAT_S
    while any(t.is_alive() for t in threads):
        time.sleep(2)
        if time.monotonic() >= next_beat and running:
            next_beat += HEARTBEAT_S
            say(f"still running: {', '.join(sorted(running))}")
    for target, code in results.items():
        log = LOGS / f"{target}.log"
        if code is None:
            print(f"== make {target}: not run (a target before it in its chain failed)")
            continue
        print(f"== make {target} (exit {code}), the end of {log.relative_to(ROOT)}:")
        lines = log.read_text(errors="replace").splitlines()
        print("\n".join(lines[-(80 if code else 25) :]))
    failed = [t for t, code in results.items() if code != 0]
    summary = f"side by side: {len(results) - len(failed)} of {len(results)} passed"
    summary += f" in {(time.monotonic() - BEGAN) / 60:.1f} min"
    print(summary + (f"; failed or not run: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
