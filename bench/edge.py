"""What the edge costs per request: the engine directly and each way through the edge, side by side.

    .venv/bin/python bench/edge.py [--stack NAME] [--levels 1,16,64,256]

Paths, all from this machine with keep-alive connections and the same requests (a chat completion of
max_tokens 1, not streamed, so the edge's own cost is not hidden behind token generation):
  direct          an SSH forward to the engine (the test double) on its host
  edge no auth    https://localhost:<port>/ with TLS, nginx and the proxy, login switched off
  edge key        the same with an API key, checked inside nginx (njs)
  edge session    a signed-in person's session cookie (oauth2-proxy asked per request)
  edge JWT        a bearer ID token from the identity provider (oauth2-proxy asked per request)
  edge key (svc)  an API key checked by the llmcloud-authz service (nginx_authorizer: service; the way
                  before njs, and still the way on Ubuntu 22.04)
For each concurrency level every path gets the same number of requests (4 x level, at least 32, at most 512),
bounded by 120 s per level and path. Rate limits are raised for the run and restored afterwards.

Without --stack it brings up its own stack ("bench-edge", single topology, own ports) and removes it after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcloud import converge  # noqa: E402
from llmcloud.local.login import browser_login, id_token  # noqa: E402
from llmcloud.local.stack import CLIENT_ID, LocalStack, load  # noqa: E402
from llmcloud.progress import Progress  # noqa: E402

BODY = {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one(client, url: str, headers: dict) -> float | str:
    began = time.perf_counter()
    try:
        response = await client.post(url, json=BODY, headers=headers)
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        return time.perf_counter() - began
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
    ok = [r for r in results if isinstance(r, float)]
    errors: dict[str, int] = {}
    for r in results:
        if isinstance(r, str):
            errors[r] = errors.get(r, 0) + 1
    return {"latency": ok, "errors": errors, "rps": len(ok) / wall}


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


def edge_settings(stack: LocalStack, **overrides) -> None:
    """The nginx role on the edge with these settings (none: the inventory's own)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as extra:
        json.dump(overrides, extra)
        extra.flush()
        subprocess.run(
            [
                *("ansible", "edge", "-i", str(stack.inventory_dir)),
                *("-m", "ansible.builtin.include_role", "-a", "name=nginx", "-e", f"@{extra.name}"),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )


UNLIMITED = {
    "nginx_rate_limit_rps": 100000,
    "nginx_rate_limit_burst": 100000,
    "nginx_rate_limit_anonymous_rps": 100000,
    "nginx_rate_limit_anonymous_burst": 100000,
}


def run_levels(levels: list[int], url: str, headers: dict, verify) -> dict[int, dict]:
    return {c: asyncio.run(level(url, headers, verify, c, min(512, max(32, 4 * c)))) for c in levels}


def report(levels: list[int], paths: dict[str, dict[int, dict]]) -> None:
    ms = lambda v: v * 1000  # noqa: E731
    direct = paths["direct"]
    print(
        f"\n{'path':<15} {'conc':>4} | {'p50 ms':>7} {'p99 ms':>7} | {'added p50':>9} {'added p99':>9} |"
        f" {'req/s':>7} {'x direct':>8} | errors"
    )
    for name, results in paths.items():
        for c in levels:
            r, d = results[c], direct[c]
            print(
                f"{name:<15} {c:>4} | {ms(pct(r['latency'], 0.5)):7.2f} {ms(pct(r['latency'], 0.99)):7.2f} |"
                f" {ms(pct(r['latency'], 0.5) - pct(d['latency'], 0.5)):9.2f}"
                f" {ms(pct(r['latency'], 0.99) - pct(d['latency'], 0.99)):9.2f} |"
                f" {r['rps']:7.1f} {r['rps'] / d['rps']:8.2f} |"
                f" {sum(r['errors'].values())} {r['errors'] or ''}"
            )
    noauth, key = paths["edge no auth"], paths["edge key"]
    print("\nAPI key through the edge as a share of the edge without auth (throughput):")
    print("  " + ", ".join(f"c={c}: {key[c]['rps'] / noauth[c]['rps']:.2f}" for c in levels))


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
        levels = [int(x) for x in args.levels.split(",")]
        url, ca = status["openai_base_url"] + "/chat/completions", status["ca_bundle"]
        bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
        signed_in, _ = browser_login(status, "alice")
        cookie = "; ".join(f"{c.name}={c.value}" for c in signed_in.cookies if c.name.startswith("_llmcloud"))
        token = id_token(status, CLIENT_ID)
        paths: dict[str, dict[int, dict]] = {}
        edge_settings(stack, **UNLIMITED)
        proc, direct_url = tunnel(stack)
        try:
            progress.log("direct, and through the edge with an API key, a session, a JWT (njs)")
            paths["direct"] = run_levels(levels, direct_url, {}, False)
            paths["edge key"] = run_levels(levels, url, bearer(status["api_key"]), ca)
            paths["edge session"] = run_levels(levels, url, {"Cookie": cookie}, ca)
            paths["edge JWT"] = run_levels(levels, url, bearer(token), ca)
            progress.log("an API key through the llmcloud-authz service")
            edge_settings(stack, nginx_authorizer="service", **UNLIMITED)
            paths["edge key (svc)"] = run_levels(levels, url, bearer(status["api_key"]), ca)
            progress.log("the edge without auth")
            edge_settings(stack, nginx_auth_enabled=False, **UNLIMITED)
            paths["edge no auth"] = run_levels(levels, url, {}, ca)
        finally:
            proc.terminate()
            edge_settings(stack)
        report(levels, paths)
    finally:
        if own:
            stack.down(progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
