"""The local cloud itself: every service up, every listener on 127.0.0.1, and a clear error when a port is
taken."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from llmcloud.local.system import port_taken
from testbed.controlplane import Cloud, CloudError

TESTBED = str(Path(sys.executable).parent / "llmcloud-testbed")
SERVICES = {
    "mariadb", "rabbitmq", "memcached", "keystone", "placement", "glance-api", "neutron-server", "cinder-api",
    "cinder-volume", "cinder-scheduler", "nova-api", "nova-conductor", "nova-scheduler", "nova-compute",
    "manila-api", "manila-share", "manila-scheduler", "swift-proxy", "swift-account", "swift-container",
    "swift-object",
}  # fmt: skip


def test_status_shows_every_service_running(cloud):
    out = subprocess.run(
        [TESTBED, "status", "--json", "--workdir", str(cloud.work)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["up"] is True
    running = {s["name"] for s in status["services"] if s["alive"]}
    assert running >= SERVICES


def test_every_listener_is_on_loopback(cloud):
    groups = {s.pid for s in cloud.services()}
    listeners = [
        c
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid and (c.pid in groups or _group_of(c.pid) in groups)
    ]
    assert len(listeners) >= 15
    # epmd (RabbitMQ's port mapper) also takes ::1, its loopback twin; nothing listens beyond loopback.
    assert all(ipaddress.ip_address(c.laddr.ip).is_loopback for c in listeners), [
        (c.pid, c.laddr) for c in listeners
    ]


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _squat_below_free_ports(below: int = 10) -> socket.socket:
    """A listening socket on a port whose `below` lower ports are free (other suites hold ephemeral ports)."""
    for _ in range(50):
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        if not any(port_taken(p) for p in range(port - below, port)):
            return squatter
        squatter.close()
    raise AssertionError("no port with free ports below it")


def test_a_taken_port_is_named_with_the_fix(cloud, tmp_path):
    # Keystone is base + 10: the ports below it are free, so keystone's is the first one found taken.
    with _squat_below_free_ports() as squatter:
        port = squatter.getsockname()[1]
        with pytest.raises(CloudError) as err:
            Cloud(tmp_path / "second").up(port_base=port - 10)
    message = str(err.value)
    assert f"port {port} (keystone) on 127.0.0.1 is taken by another program" in message
    assert "llmcloud-testbed up --port-base N" in message
