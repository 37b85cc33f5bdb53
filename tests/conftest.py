"""Test-suite wide settings: the venv's tools (ansible-playbook, ansible-inventory) are on PATH."""

from llmcloud.converge import venv_on_path

venv_on_path()


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/unit/golden/ from the code")
