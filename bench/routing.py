"""What routing by the "model" field costs: one model at the edge against several, side by side.

    .venv/bin/python bench/routing.py [--levels 1,16,64] [--repeat 3]

Brings up its own single-topology stack ("bench-routing") with a second model (one more engine test double,
`--extra-model llmcloud/embeddings-double`), and removes it after. The load comes from inside the host
(ApacheBench, keep-alive, as bench/edge.py), with an API key, a chat completion with max_tokens 1:
  direct              the main engine (test double) on 127.0.0.1:8080
  one model           the edge without routing (nginx_models: []): proxied straight to the engine pool
  routed, main model  several models: njs reads the body, picks pool 0 (the main engine), then proxies
  routed, 2nd model   the same, naming the second model (its own engine on 127.0.0.1:8081)
Rate limits are raised for the run and restored after. Medians of --repeat runs on a 2-core machine that also
runs the client: read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from edge import EDGE, UNLIMITED, Host, edge_settings, table

from llmcloud import converge
from llmcloud.local.stack import DOUBLE_MODEL, LocalStack
from llmcloud.progress import Progress

SECOND = "llmcloud/embeddings-double"
DIRECT = "http://127.0.0.1:8080/v1/chat/completions"


def body(model: str) -> dict:
    return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path and level; medians are shown")
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PATH"] = f"{root}/.venv/bin:{os.environ['PATH']}"
    levels = [int(x) for x in args.levels.split(",")]
    progress = Progress("bench routing")
    stack = LocalStack(
        name="bench-routing",
        ssh_port=42700,
        http_port=42780,
        https_port=42743,
        idp_port=42790,
        extra_models=(SECOND,),
    )
    try:
        stack.up(progress)
        result = converge.converge(stack.inventory_dir, progress)
        if not result.ok:
            print(result.failures)
            return 1
        key = {"Authorization": f"Bearer {stack.status()['api_key']}"}
        host = Host(stack)
        host.prepare(body(DOUBLE_MODEL), "/tmp/bench-main.json")
        host.prepare(body(SECOND), "/tmp/bench-second.json")
        paths: dict[str, dict[int, dict]] = {}

        def measure(name: str, url: str, headers: dict, payload: str) -> None:
            progress.log(f"{name}: concurrency {args.levels}, {args.repeat} runs each (medians)")
            paths[name] = {}
            for c in levels:
                runs = [host.ab(url, headers, c, payload) for _ in range(args.repeat)]
                paths[name][c] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

        try:
            edge_settings(stack, nginx_models=[], **UNLIMITED)
            measure("direct", DIRECT, {}, "/tmp/bench-main.json")
            measure("one model", EDGE, key, "/tmp/bench-main.json")
            edge_settings(stack, **UNLIMITED)
            measure("routed, main", EDGE, key, "/tmp/bench-main.json")
            measure("routed, 2nd", EDGE, key, "/tmp/bench-second.json")
        finally:
            edge_settings(stack)
        table(levels, paths, reference="one model")
    finally:
        stack.down(progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
