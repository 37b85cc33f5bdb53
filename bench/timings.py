"""Print the walking skeleton's wall times: cold and warm `make local`, a no-op converge, `make test`.

    .venv/bin/python bench/timings.py [--cold] [--with-test]

--cold removes the cached base image first, so the first `make local` includes debootstrap.
--with-test also times `make test` (about 6 minutes). Uses its own stack ("bench") and ports, so a
running `make local` stack is left alone. Figures are single runs on this machine: read them as
orders of magnitude, not as a benchmark to gate on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK = ["STACK=bench", "LOCAL_ARGS=--ssh-port 2260 --http-port 8094 --https-port 8454"]


def timed(label: str, *make_args: str) -> tuple[str, float]:
    print(f"… {label}", file=sys.stderr, flush=True)
    began = time.monotonic()
    run = subprocess.run(
        ["make", "--no-print-directory", *make_args], cwd=ROOT, capture_output=True, text=True
    )
    took = time.monotonic() - began
    if run.returncode != 0:
        sys.exit(f"{label} failed (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return label, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", action="store_true", help="remove the cached base image first")
    parser.add_argument("--with-test", action="store_true", help="also time `make test`")
    args = parser.parse_args()

    subprocess.run(["make", "--no-print-directory", "down", *STACK], cwd=ROOT, capture_output=True)
    if args.cold:
        subprocess.run([".venv/bin/llmcloud", "local", "down", "--stack", "bench", "--purge-image"], cwd=ROOT)
    rows = [
        timed(
            "make local (" + ("cold: debootstrap + hosts" if args.cold else "image cached") + ")",
            "local",
            *STACK,
        ),
        timed("make local again (hosts up: re-converge)", "local", *STACK),
        timed("make converge (no-op)", "converge", *STACK),
        timed("make verify", "verify", *STACK),
    ]
    subprocess.run(["make", "--no-print-directory", "down", *STACK], cwd=ROOT, capture_output=True)
    rows.append(timed("make local (image cached, fresh hosts)", "local", *STACK))
    subprocess.run(["make", "--no-print-directory", "down", *STACK], cwd=ROOT, capture_output=True)
    if args.with_test:
        rows.append(timed("make test", "test"))
    print(f"\n{'step':<48} {'wall time':>10}")
    for label, took in rows:
        print(f"{label:<48} {took:>9.1f}s")


if __name__ == "__main__":
    main()
