"""Test-suite wide settings: the venv's tools (ansible-playbook, ansible-inventory) are on PATH."""

from llmcloud.converge import venv_on_path

venv_on_path()
