"""The test-bed provider speaks the pinned pulumi_openstack SDK's language: same tokens, same property names.

Its names come from the built binary (`pulumi-resource-openstack --llmcloud-names`, the bridge's own naming
over the Terraform schema). A mismatch shows here, named, instead of as a puzzling program failure later.
"""

from __future__ import annotations

import importlib
import inspect

import pulumi
import pytest

from testbed.pulumi_engine import provider_names
from tests.unit.test_provision import JUMP, SPLIT, Mocks, deploy


def sdk_names(cls) -> set[str]:
    return {
        prop.fget._pulumi_name
        for prop in vars(cls).values()
        if isinstance(prop, property) and hasattr(prop.fget, "_pulumi_name")
    }


def sdk_module(token: str):
    module = token.split(":")[1].split("/")[0]
    return importlib.import_module(f"pulumi_openstack.{module}")


class Recording(Mocks):
    """The unit tests' cloud mocks, also recording every function the program calls."""

    def __init__(self):
        super().__init__()
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def call(self, args):
        self.calls.append(args)
        return super().call(args)


@pytest.fixture(scope="module")
def names(engine) -> dict:
    return provider_names(engine)


@pytest.fixture(scope="module")
def used(tmp_path_factory, monkeypatch_module) -> tuple[list, list]:
    """Every resource and call of the program, over the topologies and ways in it supports."""
    recorders = []
    monkeypatch_module.setattr("tests.unit.test_provision.Mocks", Recording)
    cases = [
        {},
        SPLIT,
        {**SPLIT, **JUMP},
        {"backup": {"target": "manila", "shareNetwork": "sn", "shareType": "default"}, "resticPassword": "p"},
        {"backup": {"target": "swift"}, "resticPassword": "p"},
        {"keypairName": "mine", "sshPublicKey": None},
        {
            "engineNode": {
                "flavor": "gpu",
                "image": "Ubuntu-24.04",
                "imagePattern": None,
                "bootVolumeSize": 50,
            }
        },
    ]
    for i, case in enumerate(cases):
        mocks, _, _ = deploy(tmp_path_factory.mktemp(f"case{i}"), **case)
        recorders.append(mocks)
    return [r for m in recorders for r in m.resources], [c for m in recorders for c in m.calls]


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def test_every_token_the_program_uses_is_served(names, used):
    resources, calls = used
    openstack_types = {r.typ for r in resources if r.typ.startswith("openstack:")}
    assert openstack_types <= set(names["resources"]), openstack_types - set(names["resources"])
    tokens = {c.token for c in calls}
    assert tokens <= set(names["functions"]), tokens - set(names["functions"])
    # Every resource type the program can declare is exercised by the cases above.
    assert len(openstack_types) == 15 and len(tokens) == 4


def test_every_property_the_program_sets_is_known_to_the_provider(names, used):
    resources, calls = used
    for r in resources:
        if not r.typ.startswith("openstack:"):
            continue
        known = names["resources"][r.typ]["properties"]
        unknown = set(r.inputs) - set(known)
        assert not unknown, f"{r.typ}: the provider has no {sorted(unknown)}"
        for key, value in r.inputs.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                nested = known[key].get("nested", {})
                for item in value:
                    assert set(item) <= set(nested), (
                        f"{r.typ}.{key}: the provider has no {set(item) - set(nested)}"
                    )
    for c in calls:
        known = names["functions"][c.token]["properties"]
        assert set(c.args) <= set(known), f"{c.token}: the provider has no {set(c.args) - set(known)}"


def test_provider_names_equal_the_sdk_names(names):
    for token, entry in names["resources"].items():
        cls = getattr(sdk_module(token), token.rsplit(":", 1)[1])
        assert sdk_names(cls) == set(entry["properties"]), token
        module = sdk_module(token)
        arg_types = {
            name: sdk_names(member)
            for name, member in inspect.getmembers(module, inspect.isclass)
            if name.startswith(cls.__name__) and name.endswith("Args") and name != f"{cls.__name__}Args"
        }
        for prop in entry["properties"].values():
            if prop.get("nested"):
                assert set(prop["nested"]) in arg_types.values(), (
                    f"{token}.{prop['name']}: no SDK type has its names"
                )
    for token, entry in names["functions"].items():
        function = token.rsplit(":", 1)[1]
        result = getattr(sdk_module(token), function[0].upper() + function[1:] + "Result")
        assert sdk_names(result) - {"id"} <= set(entry["properties"]) | {"id"}, token
        assert set(entry["properties"]) <= sdk_names(result), token
