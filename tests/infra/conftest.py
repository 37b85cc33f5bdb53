"""Shared pieces of the post-deploy checks.

Run them against any deployment:

    pytest tests/infra --hosts=ansible://all --ansible-inventory=inventory/<stack>

Each check reads the inventory (groups, private_ip, admin_cidrs), never how the host was made.
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner


@pytest.fixture(scope="session")
def inventory_path(pytestconfig) -> str:
    path = pytestconfig.getoption("ansible_inventory")
    if not path:
        pytest.skip("these checks need --ansible-inventory=inventory/<stack>")
    return path


@pytest.fixture(scope="session")
def runner(inventory_path) -> AnsibleRunner:
    return AnsibleRunner(inventory_path)


@pytest.fixture
def hostvars(host, runner) -> dict:
    return runner.get_variables(host.backend.get_hostname())


def in_group(hostvars: dict, group: str) -> bool:
    return group in hostvars.get("group_names", [])


class Peer:
    """Somewhere to connect from: another inventory host, or this controller."""

    def __init__(self, name: str, address: str | None, remote=None):
        self.name, self.address, self.remote = name, address, remote

    def can_connect(self, ip: str, port: int, timeout: float = 2.0) -> bool:
        if self.remote is None:
            try:
                with socket.create_connection((ip, port), timeout=timeout):
                    return True
            except OSError:
                return False
        code = (
            "import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(({ip!r}, {port}), timeout={timeout}).close()\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        return self.remote.run("python3 -c %s", code).rc == 0


@pytest.fixture
def peers(host, runner, hostvars) -> list[Peer]:
    """Other inventory hosts (reaching this host's private_ip), else the controller itself."""
    me = host.backend.get_hostname()
    found = [
        Peer(
            name,
            runner.get_variables(name).get("private_ip"),
            testinfra.get_host(f"ansible://{name}", ansible_inventory=runner.inventory_file),
        )
        for name in runner.get_hosts("all")
        if name != me
    ]
    return found or [Peer("controller", None)]


def reachable_from(peers: list[Peer], ip: str, port: int) -> dict[str, bool]:
    """{peer name: whether it can open ip:port}, asked of all peers at once (a drop costs a timeout)."""
    with ThreadPoolExecutor(max_workers=max(1, len(peers))) as pool:
        answers = pool.map(lambda peer: peer.can_connect(ip, port), peers)
        return dict(zip((p.name for p in peers), answers, strict=True))


def private_reachable_from_controller(ip: str) -> bool:
    """The controller can reach a private address only on a local stack (or from inside the cloud)."""
    return Peer("controller", None).can_connect(ip, 22, timeout=3)


@contextmanager
def listener(host, port: int):
    """A throw-away TCP listener on the target, so a closed port means the firewall, not an idle port."""
    unit = f"llmcloud-probe-{uuid.uuid4().hex[:8]}"
    code = (
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET6);s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"s.bind(('::',{port}));s.listen(8)\n"
        "while True:\n"
        "    c,_=s.accept();c.close()\n"
    )
    host.run_expect([0], "systemd-run --unit=%s --property=RuntimeMaxSec=120 python3 -c %s", unit, code)
    try:
        # Prove the listener is up from the host itself before judging from outside.
        probe = f"import socket;socket.create_connection(('127.0.0.1',{port}),timeout=3).close()"
        for _ in range(20):
            if host.run("python3 -c %s", probe).rc == 0:
                break
            host.run("sleep 0.2")
        else:
            pytest.fail(f"probe listener on port {port} did not come up on {host.backend.get_hostname()}")
        yield
    finally:
        host.run("systemctl stop %s", unit)


def address_in(address: str, cidrs: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(c, strict=False) for c in cidrs)
