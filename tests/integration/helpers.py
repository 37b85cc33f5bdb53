"""Pieces the integration modules share: free ports, waiting for a listener, the local stack's endpoint, a
role applied to the edge alone, the usage `llmcloud usage` reports."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from llmcloud import REPO_ROOT
from llmcloud.local.stack import LocalStack


def free_port(address: str, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def wait_for_port(address: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{address}:{port} did not open within {timeout}s")


def endpoint(stack: LocalStack) -> dict:
    """What `llmcloud local status --json` prints for scripts and outside clients."""
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "llmcloud"),
            *("local", "status", "--json", "--stack", stack.name),
            *("--inventory-root", str(stack.inventory_root)),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    status = json.loads(out.stdout)
    assert status["url"] == f"https://localhost:{stack.https_port}/"
    assert Path(status["ca_bundle"]).is_file() and status["api_key"].startswith("llmc_")
    return status


def apply_edge_role(stack: LocalStack, role: str, **overrides) -> None:
    """One role on the edge, with site.yml's wiring and ``overrides`` as extra variables."""
    edge = next(name for name, groups in stack.hosts() if "edge" in groups)
    if role == "nginx":
        overrides = {**stack.nginx_site_vars(), **overrides}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as extra:
        json.dump(overrides, extra)
        extra.flush()
        run = subprocess.run(
            [
                "ansible",
                edge,
                "-i",
                str(stack.inventory_dir),
                "-m",
                "ansible.builtin.include_role",
                "-a",
                f"name={role}",
                "-e",
                f"@{extra.name}",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert run.returncode == 0, run.stdout[-3000:]


# Usage accounting: `llmcloud usage` as a user runs it.
USAGE_FIELDS = ("requests", "failed", "prompt_tokens", "completion_tokens")


def llmcloud_usage(stack: LocalStack, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "llmcloud"), "usage", "-i", str(stack.inventory_dir), *extra],
        capture_output=True,
        text=True,
        timeout=180,
    )


def usage_rows(stack: LocalStack, by: str = "principal") -> dict[str, dict]:
    run = llmcloud_usage(stack, "--json", "--by", by, "--since", "2d")
    assert run.returncode == 0, run.stderr[-2000:]
    return {row[by]: row for row in json.loads(run.stdout)}


def usage_delta(stack: LocalStack, before: dict, who: str) -> tuple[int, ...]:
    now = usage_rows(stack)
    return tuple(now.get(who, {}).get(f, 0) - before.get(who, {}).get(f, 0) for f in USAGE_FIELDS)


def usage_since(stack: LocalStack, before: dict, expected: dict, timeout: float = 60) -> dict:
    """What each principal of ``expected`` used since ``before``, once it is counted (the edge counts its
    usage log every few seconds) or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        got = {who: usage_delta(stack, before, who) for who in expected}
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(2)


def sse_events(text: str) -> list:
    """The JSON events of a server-sent event stream ([DONE] left out)."""
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    return [json.loads(d) for d in data if d != "[DONE]"]
