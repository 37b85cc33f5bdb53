"""Fixtures shared by the unit tests."""

from __future__ import annotations

import importlib.util

import pytest

from llmcloud import REPO_ROOT


@pytest.fixture(scope="module")
def strategy():
    """The strategy plugin (plugins/strategy/mitogen_linear.py) as a module of its own."""
    spec = importlib.util.spec_from_file_location(
        "llmcloud_mitogen_linear", REPO_ROOT / "plugins" / "strategy" / "mitogen_linear.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
