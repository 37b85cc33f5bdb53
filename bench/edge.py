"""What the edge costs per request: the engine directly and each way through the edge, side by side.

    .venv/bin/python bench/edge.py [--stack NAME] [--levels 1,16,64,256]

The load comes from inside the edge host (ApacheBench, installed there for the run: a C client with keep-alive
connections, so neither this machine's Python nor Docker's port forwarding is what gets measured). Every path
gets the same requests: a chat completion with max_tokens 1, not streamed, so the edge's own cost is not
hidden behind token generation.
  direct          the engine (the test double) on 127.0.0.1:8080 of its host
  edge no auth    https://127.0.0.1/ : TLS, nginx and the proxy, login switched off
  edge key        the same with an API key, checked inside nginx (njs)
  edge session    a signed-in person's session cookie (oauth2-proxy asked per request)
  edge JWT        a bearer ID token from the identity provider (oauth2-proxy asked per request)
  edge key (svc)  an API key checked by the llmcloud-authz service (nginx_authorizer: service: the way before
                  njs, and still the way on Ubuntu 22.04)
Requests per level: 40 x concurrency, at least 2000, at most 20000. Rate limits are raised for the run and
restored afterwards. Each figure is the median of --repeat runs (3) on a 2-core machine that also runs the
client: read ratios, not absolutes.

Without --stack it brings up its own stack ("bench-edge", single topology, own ports) and removes it after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcloud import converge  # noqa: E402
from llmcloud.local import system  # noqa: E402
from llmcloud.local.login import browser_login, id_token  # noqa: E402
from llmcloud.local.stack import CLIENT_ID, DOUBLE_MODEL, LocalStack, load  # noqa: E402
from llmcloud.progress import Progress  # noqa: E402

BODY = {"model": DOUBLE_MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
DIRECT = "http://127.0.0.1:8080/v1/chat/completions"
EDGE = "https://127.0.0.1/v1/chat/completions"
UNLIMITED = {
    "nginx_rate_limit_rps": 1000000,
    "nginx_rate_limit_burst": 1000000,
    "nginx_rate_limit_anonymous_rps": 1000000,
    "nginx_rate_limit_anonymous_burst": 1000000,
    "nginx_chat_ui_rate_limit_rps": 1000000,
    "nginx_chat_ui_rate_limit_burst": 1000000,
}


class Host:
    """The edge host's container: the load generator runs there."""

    def __init__(self, stack: LocalStack):
        self.container = system.docker_client().containers.get(stack.container_name("llm1"))

    def sh(self, *argv: str) -> str:
        code, out = system.run_in(self.container, list(argv))
        text = out.decode(errors="replace")
        if code != 0:
            raise RuntimeError(f"{' '.join(argv[:3])}… failed ({code}): {text[-2000:]}")
        return text

    def prepare(self, body: dict = BODY, path: str = "/tmp/bench-body.json") -> None:
        self.sh("sh", "-c", "command -v ab >/dev/null || apt-get install -y -qq apache2-utils >/dev/null")
        self.sh("sh", "-c", f"printf '%s' '{json.dumps(body)}' > {path}")

    def ab(
        self,
        url: str,
        headers: dict[str, str],
        concurrency: int,
        body: str = "/tmp/bench-body.json",
        n: int | None = None,
    ) -> dict:
        n = n or min(20000, max(2000, 40 * concurrency))
        argv = ["ab", "-k", "-l", "-q", "-n", str(n), "-c", str(concurrency), "-s", "60"]
        argv += ["-p", body, "-T", "application/json", "-e", "/tmp/bench.csv"]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        out = self.sh(*argv, url)
        percent = dict(line.split(",") for line in self.sh("cat", "/tmp/bench.csv").splitlines()[1:] if line)
        field = lambda label: next(  # noqa: E731
            line.split(":", 1)[1].split()[0] for line in out.splitlines() if line.startswith(label)
        )
        return {
            "p50": float(percent["50"]),
            "p99": float(percent["99"]),
            "rps": float(field("Requests per second")),
            "errors": int(field("Failed requests")) + int(_non2xx(out)),
            "n": n,
        }


def _non2xx(out: str) -> int:
    lines = [line for line in out.splitlines() if line.startswith("Non-2xx responses")]
    return int(lines[0].split(":", 1)[1]) if lines else 0


def edge_settings(stack: LocalStack, **overrides) -> None:
    """The nginx role on the edge with these settings (none: the inventory's own)."""
    overrides = {**stack.nginx_site_vars(), **overrides}
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


def table(levels: list[int], paths: dict[str, dict[int, dict]], reference: str = "direct") -> None:
    """Each path at each concurrency: latency and throughput, and what it adds over the reference path."""
    ref = paths[reference]
    print(
        f"\n{'path':<15} {'conc':>4} {'n':>6} | {'p50 ms':>7} {'p99 ms':>7} |"
        f" {'added p50':>9} {'added p99':>9} | {'req/s':>8} {'x ' + reference:>14} | errors"
    )
    for name, results in paths.items():
        for c in levels:
            r, d = results[c], ref[c]
            print(
                f"{name:<15} {c:>4} {r['n']:>6.0f} | {r['p50']:7.2f} {r['p99']:7.2f} |"
                f" {r['p50'] - d['p50']:9.2f} {r['p99'] - d['p99']:9.2f} |"
                f" {r['rps']:8.0f} {r['rps'] / d['rps']:14.2f} | {r['errors']:.0f}"
            )


def report(levels: list[int], paths: dict[str, dict[int, dict]]) -> None:
    table(levels, paths)
    noauth = paths["edge no auth"]
    print("\nThroughput as a share of the edge without auth:")
    for name in ("edge key", "edge session", "edge JWT", "edge key (svc)"):
        shares = ", ".join(f"c={c}: {paths[name][c]['rps'] / noauth[c]['rps']:.2f}" for c in levels)
        print(f"  {name:<15} {shares}")
    print("p50 added over the edge without auth at concurrency 1:")
    for name in ("edge key", "edge session", "edge JWT", "edge key (svc)"):
        print(f"  {name:<15} {paths[name][levels[0]]['p50'] - noauth[levels[0]]['p50']:+.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", help="use this running local stack (single topology)")
    parser.add_argument("--levels", default="1,16,64,256")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path and level; medians are shown")
    args = parser.parse_args()
    os.environ["PATH"] = f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"
    progress = Progress("bench edge")
    own = args.stack is None
    stack = (
        LocalStack(name="bench-edge", ssh_port=42600, http_port=42680, https_port=42643, idp_port=42690)
        if own
        else load(args.stack, ROOT / "inventory")
    )
    if stack.topology != "single":
        sys.exit("bench/edge.py measures a single-topology stack (the engine and the edge on one host)")
    try:
        if own:
            stack.up(progress)
            result = converge.converge(stack.inventory_dir, progress)
            if not result.ok:
                print(result.failures)
                return 1
        status = stack.status()
        levels = [int(x) for x in args.levels.split(",")]
        bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
        signed_in, _ = browser_login(status, "alice")
        session = [c for c in signed_in.cookies if c.name.startswith("__Host-llmcloud")]
        cookie = "; ".join(f"{c.name}={c.value}" for c in session)
        token = id_token(status, CLIENT_ID)
        host = Host(stack)
        host.prepare()
        paths: dict[str, dict[int, dict]] = {}

        def measure(name: str, url: str, headers: dict) -> None:
            progress.log(f"{name}: concurrency {args.levels}, {args.repeat} runs each (medians)")
            paths[name] = {}
            for c in levels:
                runs = [host.ab(url, headers, c) for _ in range(args.repeat)]
                paths[name][c] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

        edge_settings(stack, **UNLIMITED)
        try:
            measure("direct", DIRECT, {})
            measure("edge key", EDGE, bearer(status["api_key"]))
            measure("edge session", EDGE, {"Cookie": cookie})
            measure("edge JWT", EDGE, bearer(token))
            edge_settings(stack, nginx_authorizer="service", **UNLIMITED)
            measure("edge key (svc)", EDGE, bearer(status["api_key"]))
            edge_settings(stack, nginx_auth_enabled=False, **UNLIMITED)
            measure("edge no auth", EDGE, {})
        finally:
            edge_settings(stack)
        report(levels, paths)
    finally:
        if own:
            stack.down(progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
