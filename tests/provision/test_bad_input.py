"""Bad input through the real engine: each mistake fails with a message naming the setting (or the cause) and
the fix, and nothing is created, so the next `pulumi up` after the fix starts clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pulumi.automation import CommandError

from testbed.automation import Lines
from tests.provision.readback import stack_resources

PREFIX = "llm-bad"
SOURCE = yaml.safe_load(Path("stacks/Pulumi.example.yaml").read_text())["config"]


@pytest.fixture(scope="module")
def stack(make_stack):
    stack = make_stack("bad", "example")
    yield stack
    stack.remove()


def fails(stack, operation: str = "preview", config: dict | None = None) -> str:
    """Run the operation with ``config`` set, expect it to fail, put the settings back; return the output."""
    out = Lines()
    current = stack.stack.get_all_config()
    restore = {key: current[key].value for key in config or {} if key in current}
    stack.set_config(config or {})
    try:
        with pytest.raises(CommandError):
            getattr(stack, operation)(on_output=out)
    finally:
        stack.set_config(restore)
        stack.remove_config(*(set(config or {}) - set(restore)))
    assert "Traceback" not in out.text
    return out.text


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "llmcloud:engineNode",
            {**SOURCE["llmcloud:engineNode"], "flavor": "gpu.huge"},
            "llmcloud:engineNode.flavor: no flavor 'gpu.huge' in this project; fix: one of",
        ),
        (
            "llmcloud:engineNode",
            {**SOURCE["llmcloud:engineNode"], "imagePattern": r"^Rocky-9\..*$"},
            r"llmcloud:engineNode.imagePattern: '^Rocky-9\\..*$' matches none of the",
        ),
        (
            "llmcloud:network",
            {**SOURCE["llmcloud:network"], "externalNetwork": "internet"},
            "llmcloud:network.externalNetwork: no network 'internet' in this project; "
            "fix: one of the external networks dmz-int, public",
        ),
        (
            "llmcloud:reach",
            {"floatingIpPool": "my-project-network-2"},
            "llmcloud:reach.floatingIpPool: 'my-project-network-2' is not an external network",
        ),
    ],
    ids=["flavor", "image-pattern", "external-network", "pool-not-external"],
)
def test_setting_the_cloud_does_not_have(stack, admin, project, key, value, expected):
    text = fails(stack, config={key: value})
    assert expected in text
    assert "nothing was created" in text


def test_quota_exhausted_fails_before_anything_is_made(stack, admin, project):
    admin.set_compute_quotas(project.id, instances=1)
    try:
        text = fails(stack, "up", config={"llmcloud:topology": "split", "llmcloud:replicas": "2"})
    finally:
        admin.set_compute_quotas(project.id, instances=20)
    assert "quota: this run adds 3 instances, the project uses 0 of 1" in text
    assert "fix: ask the cloud's operators for more quota" in text
    assert stack_resources(admin, project.id, PREFIX).names() == {}


def test_wrong_credentials_name_the_cloud_entry(stack, cloud, admin, project):
    clouds = json.loads(cloud.clouds_yaml.read_text())
    entry = json.loads(json.dumps(clouds["clouds"]["llmcloud-local"]))
    entry["auth"]["application_credential_secret"] = "not-the-secret"
    clouds["clouds"]["llmcloud-local-revoked"] = entry
    cloud.clouds_yaml.write_text(json.dumps(clouds, indent=2))
    text = fails(stack, config={"openstack:cloud": "llmcloud-local-revoked"})
    assert "openstack:cloud (llmcloud-local-revoked): the cloud refused the credentials (HTTP 401)" in text
    assert "fix: check the application credential in clouds.yaml" in text
    assert "not-the-secret" not in text


def test_unknown_cloud_entry(stack):
    text = fails(stack, config={"openstack:cloud": "no-such-cloud"})
    assert "openstack:cloud: Cloud no-such-cloud was not found" in text
    assert "fix: download clouds.yaml from Horizon" in text


def test_unknown_keypair(stack, ssh_public_key):
    stack.remove_config("llmcloud:sshPublicKey")
    try:
        text = fails(stack, config={"llmcloud:keypairName": "nobodys-key"})
    finally:
        stack.set_config({"llmcloud:sshPublicKey": ssh_public_key})
    assert "llmcloud:keypairName: no keypair 'nobodys-key'; fix: `openstack keypair list`" in text
