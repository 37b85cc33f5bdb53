"""What usage accounting costs at the edge: the same edge with and without it, side by side in one run.

    .venv/bin/python bench/usage.py [--stack NAME] [--levels 1,64] [--repeat 3] [--lines 100000]

The load comes from inside the edge host (ApacheBench, keep-alive, as bench/edge.py), with an API key:
  plain       a chat completion, max_tokens 1, not streamed (the body filter reads the answer's end)
  streamed    the same, streamed with max_tokens 4 and no stream_options: with accounting the router reads
              the body and asks the engine for its usage, and the body filter withholds that chunk
each with accounting (nginx_usage_enabled: true, the default) and without (false), alternating per repeat so a
busy moment of the machine hits both. Figures: medians of --repeat runs. Then what accounting adds beside
nginx: the memory of nginx's workers with and without it, and one `llmcloud-usage ingest` of --lines log lines
(its time and peak memory: it runs every nginx_usage_interval and holds nothing in between), and the database
size per line. A 2-core machine that also runs the client: read the ratios, not the absolutes.

Without --stack it brings up its own stack ("bench-usage", single topology, own ports) and removes it after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from edge import EDGE, UNLIMITED, Host, edge_settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcloud import converge  # noqa: E402
from llmcloud.local.stack import DOUBLE_MODEL, LocalStack, load  # noqa: E402
from llmcloud.progress import Progress  # noqa: E402

PLAIN = {"model": DOUBLE_MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
STREAMED = {**PLAIN, "max_tokens": 4, "stream": True}
# The engine TEST DOUBLE streams a token every 5 ms: fewer streamed requests one at a time.
COUNT = {("streamed", 1): 400}
WORKERS_KB = "ps -C nginx -o rss=,args= | awk '/worker/ {s += $1} END {print s}'"


def ingest_cost(host: Host, lines: int) -> dict:
    """One ingest of ``lines`` usage lines into a scratch database: seconds, peak KiB, database bytes."""
    script = f"""
set -e
d=$(mktemp -d)
python3 - "$d" <<'EOF'
import sys, time
now = time.time()
with open(sys.argv[1] + "/usage.log", "w") as log:
    for i in range({lines}):
        log.write(f"{{now + i / 1000:.3f}} 200 key:bench{{i % 50}} m{{i % 3}} 12 34 -\\n")
EOF
cat > "$d/run.py" <<'EOF'
import importlib.machinery, importlib.util, pathlib, resource, sys, time
loader = importlib.machinery.SourceFileLoader("u", "/usr/local/sbin/llmcloud-usage")
u = importlib.util.module_from_spec(importlib.util.spec_from_loader("u", loader))
loader.exec_module(u)
d = pathlib.Path(sys.argv[1]); began = time.monotonic()
u.ingest(u.connect(d / "usage.db"), d / "usage.log")
print(time.monotonic() - began, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
EOF
echo "$(python3 "$d/run.py" "$d") $(stat -c %s $d/usage.db)"
rm -rf "$d"
"""
    took, peak, size = host.sh("bash", "-c", script).split()
    return {"seconds": float(took), "peak_kib": int(peak), "db_bytes": int(size)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", help="use this running local stack (single topology)")
    parser.add_argument("--levels", default="1,64")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path and level; medians are shown")
    parser.add_argument("--lines", type=int, default=100000, help="usage log lines for the ingest figure")
    args = parser.parse_args()
    os.environ["PATH"] = f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"
    progress = Progress("bench usage")
    own = args.stack is None
    stack = (
        LocalStack(name="bench-usage", ssh_port=42800, http_port=42880, https_port=42843, idp_port=42890)
        if own
        else load(args.stack, ROOT / "inventory")
    )
    if stack.topology != "single":
        sys.exit("bench/usage.py measures a single-topology stack (the engine and the edge on one host)")
    levels = [int(x) for x in args.levels.split(",")]
    try:
        if own:
            stack.up(progress)
            if not converge.converge(stack.inventory_dir, progress).ok:
                return 1
        key = {"Authorization": f"Bearer {stack.status()['api_key']}"}
        host = Host(stack)
        host.prepare(PLAIN, "/tmp/bench-plain.json")
        host.prepare(STREAMED, "/tmp/bench-streamed.json")
        runs: dict[tuple[str, str, int], list[dict]] = {}
        memory: dict[str, list[int]] = {"with": [], "without": []}
        try:
            for turn in range(args.repeat):
                for accounting in ("with", "without"):
                    progress.log(f"run {turn + 1}/{args.repeat}: {accounting} accounting")
                    edge_settings(stack, nginx_usage_enabled=accounting == "with", **UNLIMITED)
                    for kind in ("plain", "streamed"):
                        for c in levels:
                            body = f"/tmp/bench-{kind}.json"
                            result = host.ab(EDGE, key, c, body, COUNT.get((kind, c)))
                            runs.setdefault((kind, accounting, c), []).append(result)
                    memory[accounting].append(int(host.sh("sh", "-c", WORKERS_KB).strip() or 0))
        finally:
            edge_settings(stack)
        ingest = ingest_cost(host, args.lines)
    finally:
        if own:
            stack.down(progress)

    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    print(
        f"\n{'request':<9} {'conc':>4} | {'p50 without':>11} {'p50 with':>9} {'added':>7} |"
        f" {'req/s without':>13} {'req/s with':>10} {'share':>6} {'per run':>11} | errors"
    )
    for kind in ("plain", "streamed"):
        for c in levels:
            a, b = med[(kind, "without", c)], med[(kind, "with", c)]
            # Each run's share against the run without accounting next to it (the machine's noise shows here).
            pairs = zip(runs[(kind, "with", c)], runs[(kind, "without", c)], strict=True)
            shares = sorted(w["rps"] / o["rps"] for w, o in pairs)
            print(
                f"{kind:<9} {c:>4} | {a['p50']:9.2f}ms {b['p50']:7.2f}ms {b['p50'] - a['p50']:+6.2f} |"
                f" {a['rps']:13.0f} {b['rps']:10.0f} {b['rps'] / a['rps']:6.2f}"
                f" {shares[0]:5.2f}-{shares[-1]:<5.2f} | {a['errors']:.0f}/{b['errors']:.0f}"
            )
    without, with_ = statistics.median(memory["without"]), statistics.median(memory["with"])
    print(f"\nnginx workers' memory after the runs (median): without {without:.0f} KiB, with {with_:.0f} KiB")
    seconds, lines, size = ingest["seconds"], args.lines, ingest["db_bytes"]
    print(
        f"llmcloud-usage ingest of {lines} lines: {seconds:.2f} s ({seconds / lines * 1e6:.1f} us per line)"
    )
    print(f"  peak memory {ingest['peak_kib'] / 1024:.1f} MiB; database {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
