"""Pieces the integration modules share: free ports, waiting for a listener, the local stack's endpoint."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
