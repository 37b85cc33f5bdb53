"""What the edge costs: one client against the engine directly and through the full edge, side by side.

    .venv/bin/python bench/edge.py [--stack NAME] [--levels 1,16,64,256]

Direct: an SSH forward to the engine (the test double) on its host. Edge: https://localhost:<port>/ with TLS
(verified against the stack's CA), nginx, the authorizer (API key) and the proxy to the same engine. Each
request is a streamed chat completion of 16 tokens; latency runs to the last byte, TTFT to the first token.
For each concurrency level both paths get the same number of requests (4 x level, at least 32, at most 512),
bounded by 120 s per level and path. The edge's per-client rate limit is raised for the run (it would answer
429 to a single benchmarking client) and restored afterwards.

Without --stack it brings up its own stack ("bench-edge", single topology, own ports) and removes it after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcloud import converge  # noqa: E402
from llmcloud.local.stack import LocalStack, load  # noqa: E402
from llmcloud.progress import Progress  # noqa: E402

BODY = {"model": "x", "stream": True, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one(client, url: str, headers: dict) -> tuple[float, float] | str:
    began = time.perf_counter()
    first = None
    try:
        async with client.stream("POST", url, json=BODY, headers=headers) as response:
            if response.status_code != 200:
                return f"HTTP {response.status_code}"
            async for line in response.aiter_lines():
                if first is None and line.startswith("data:{"):
                    first = time.perf_counter() - began
        return time.perf_counter() - began, first if first is not None else float("nan")
    except Exception as err:  # a benchmark counts every kind of failure
        return type(err).__name__


async def level(url: str, headers: dict, verify, concurrency: int, count: int) -> dict:
    from openai import DefaultAsyncHttpxClient  # the HTTP client the openai package ships (httpx2)

    async with DefaultAsyncHttpxClient(verify=verify, trust_env=False, timeout=60) as client:
        gate = asyncio.Semaphore(concurrency)

        async def gated():
            async with gate:
                return await one(client, url, headers)

        began = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(gated() for _ in range(count))), timeout=120)
        wall = time.perf_counter() - began
    ok = [r for r in results if isinstance(r, tuple)]
    errors: dict[str, int] = {}
    for r in results:
        if isinstance(r, str):
            errors[r] = errors.get(r, 0) + 1
    return {
        "latency": [r[0] for r in ok],
        "ttft": [r[1] for r in ok],
        "errors": errors,
        "rps": len(ok) / wall,
    }


def tunnel(stack: LocalStack) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            "ssh",
            "-F",
            str(stack.inventory_dir / "ssh_config"),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{port}:127.0.0.1:8080",
            "node1",
        ],
        stdin=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}/v1/chat/completions"


def rate_limit(stack: LocalStack, rps: int | None) -> None:
    overrides = {"nginx_rate_limit_rps": rps, "nginx_rate_limit_burst": 100000} if rps else {}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as extra:
        json.dump(overrides, extra)
        extra.flush()
        subprocess.run(
            [
                "ansible",
                "edge",
                "-i",
                str(stack.inventory_dir),
                "-m",
                "ansible.builtin.include_role",
                "-a",
                "name=nginx",
                "-e",
                f"@{extra.name}",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", help="use this running local stack (single topology)")
    parser.add_argument("--levels", default="1,16,64,256")
    args = parser.parse_args()
    os.environ["PATH"] = f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"
    progress = Progress("bench edge")
    own = args.stack is None
    stack = (
        LocalStack(name="bench-edge", ssh_port=42600, http_port=42680, https_port=42643, idp_port=42690)
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
        status = stack.status()
        edge_url = status["openai_base_url"] + "/chat/completions"
        edge_headers = {"Authorization": f"Bearer {status['api_key']}"}
        rate_limit(stack, 100000)
        proc, direct_url = tunnel(stack)
        try:
            print(
                f"\n{'conc':>5} {'n':>4} | {'direct p50/p99 ms':>18} {'edge p50/p99 ms':>16} "
                f"{'added p50/p99':>14} |"
                f" {'TTFT added p50/p99':>19} | errors direct/edge"
            )
            for c in (int(x) for x in args.levels.split(",")):
                n = min(512, max(32, 4 * c))
                d = asyncio.run(level(direct_url, {}, False, c, n))
                e = asyncio.run(level(edge_url, edge_headers, status["ca_bundle"], c, n))
                ms = lambda v: v * 1000  # noqa: E731
                print(
                    f"{c:>5} {n:>4} | {ms(pct(d['latency'], 0.5)):8.1f}/{ms(pct(d['latency'], 0.99)):<8.1f}"
                    f" {ms(pct(e['latency'], 0.5)):7.1f}/{ms(pct(e['latency'], 0.99)):<8.1f}"
                    f" {ms(pct(e['latency'], 0.5) - pct(d['latency'], 0.5)):6.1f}/"
                    f"{ms(pct(e['latency'], 0.99) - pct(d['latency'], 0.99)):<7.1f} |"
                    f" {ms(pct(e['ttft'], 0.5) - pct(d['ttft'], 0.5)):9.1f}/"
                    f"{ms(pct(e['ttft'], 0.99) - pct(d['ttft'], 0.99)):<9.1f} |"
                    f" {sum(d['errors'].values())}/{sum(e['errors'].values())}"
                    f" {d['errors'] or ''}{e['errors'] or ''}"
                )
            print(
                f"  (engine double: 5 ms per token; direct median TTFT "
                f"{statistics.median(d['ttft']) * 1000:.1f} ms at the last level)"
            )
        finally:
            proc.terminate()
            rate_limit(stack, None)
    finally:
        if own:
            stack.down(progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
