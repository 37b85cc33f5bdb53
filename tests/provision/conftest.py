"""The provisioning path for real: the local OpenStack cloud (testbed/controlplane.py) and the Pulumi
engine built from Go (testbed/pulumi_engine.py), driving the same program() as `pulumi up`.

The cloud starts once per session on its own ports (LLMCLOUD_TEST_CLOUD_PORT_BASE, default 27300), so a
developer's `llmcloud-testbed up` on the default ports is left alone. Marker: openstack (`make provision`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import openstack
import pytest

from llmcloud.keys import ensure_ed25519
from testbed.automation import CloudStack
from testbed.controlplane import Cloud
from testbed.pulumi_engine import Engine, ensure_engine

RESTIC_PASSWORD = "test-restic-password"


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.openstack)


@pytest.fixture(scope="session")
def engine() -> Engine:
    return ensure_engine()


@pytest.fixture(scope="session")
def cloud(tmp_path_factory) -> Iterator[Cloud]:
    given = os.environ.get("LLMCLOUD_TEST_CLOUD_DIR")  # a running cloud to reuse while developing
    local = Cloud(Path(given) if given else tmp_path_factory.mktemp("cloud"))
    reuse = bool(given) and local.is_up()
    if not reuse:
        local.up(port_base=int(os.environ.get("LLMCLOUD_TEST_CLOUD_PORT_BASE", "27300")))
    local.start_hypervisor()  # `make test` starts the cloud early, without it
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(local.clouds_yaml)
    yield local
    if not reuse:
        local.down()


@pytest.fixture(scope="session")
def admin(cloud) -> openstack.connection.Connection:
    """The cloud's operator: reads back what the project's user made, through the OpenStack API."""
    return openstack.connect(cloud="llmcloud-local-admin")


@pytest.fixture(scope="session")
def project(admin):
    return admin.identity.find_project("my-project")


@pytest.fixture(scope="session")
def ssh_private_key(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    ensure_ed25519(path, "tests@llmcloud")
    return path


@pytest.fixture(scope="session")
def ssh_public_key(ssh_private_key) -> str:
    return ensure_ed25519(ssh_private_key, "tests@llmcloud")


@pytest.fixture(scope="session")
def make_stack(cloud, engine, ssh_public_key, tmp_path_factory) -> Callable[..., CloudStack]:
    """A stack of stacks/Pulumi.<source>.yaml on the local cloud, with configure off unless given."""
    inventory_root = tmp_path_factory.mktemp("inventory")

    def make(
        name: str, source: str, overrides: dict | None = None, secrets: dict | None = None
    ) -> CloudStack:
        stack = CloudStack.provisioning_only(
            name,
            ssh_public_key=ssh_public_key,
            overrides=overrides,
            secrets_=secrets,
            cloud=cloud,
            engine=engine,
            source=source,
            inventory_root=inventory_root,
        )
        stack.reset()  # only a reused cloud (LLMCLOUD_TEST_CLOUD_DIR) can hold an interrupted run's leftovers
        return stack

    return make
