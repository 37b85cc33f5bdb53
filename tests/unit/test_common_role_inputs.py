"""Role common refuses bad input before its first change, naming the variable.

Each case runs the real role with ansible-playbook against localhost in check mode; validation fails
before any task that could change this machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from llmcloud import REPO_ROOT

# The role's own argument spec, then its validate.yml: exactly what main.yml does first, and nothing more.
PLAY = """
- hosts: localhost
  gather_facts: true
  tasks:
    - ansible.builtin.include_vars:
        file: "{{ roles_dir }}/common/defaults/main.yml"
    - ansible.builtin.validate_argument_spec:
        argument_spec: "{{ (lookup('file', roles_dir + '/common/meta/argument_specs.yml') | from_yaml)
          .argument_specs.main.options }}"
    - ansible.builtin.include_role:
        name: common
        tasks_from: validate
        defaults_from: main
"""


def run_role(tmp_path, extra: dict) -> subprocess.CompletedProcess:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY)
    variables = {
        "admin_cidrs": ["192.0.2.0/24"],
        "ansible_python_interpreter": sys.executable,
        "roles_dir": str(REPO_ROOT / "roles"),
        **extra,
    }
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            "localhost,",
            "-c",
            "local",
            "--check",
            str(playbook),
            "-e",
            json.dumps(variables),
        ],
        capture_output=True,
        text=True,
        env={
            "ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles"),
            "PATH": os.environ["PATH"],
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "HOME": str(tmp_path),
        },
        timeout=120,
    )


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"admin_cidrs": []}, "common_admin_cidrs (from admin_cidrs) is empty"),
        ({"admin_cidrs": ["10.0.0.300/24"]}, "common_admin_cidrs has entries that are not CIDR"),
        ({"admin_cidrs": ["10.0.0.1"]}, "not CIDR networks: ['10.0.0.1']"),
        ({"admin_cidrs": ["0.0.0.0/0"]}, "common_ssh_allow_world"),
        ({"admin_cidrs": ["::/0"]}, "opens SSH to everyone"),
        ({"common_ssh_allow_world": "maybe"}, "common_ssh_allow_world"),
        ({"common_ssh_port": 70000}, "common_ssh_port"),
        ({"common_firewall_rules": [{"port": "web", "sources": ["10.0.0.0/8"]}]}, "port"),
        ({"common_firewall_rules": [{"port": 80, "proto": "icmp", "sources": ["10.0.0.0/8"]}]}, "proto"),
        (
            {"common_firewall_rules": [{"port": 80, "sources": ["everyone"]}]},
            "common_firewall_rules[].sources",
        ),
        ({"common_unattended_upgrades_reboot_time": "25:00"}, "common_unattended_upgrades_reboot_time"),
        ({"common_journald_system_max_use": "lots"}, "common_journald_system_max_use must look like 500M"),
        ({"common_journald_max_retention": "forever"}, "common_journald_max_retention like 1month"),
    ],
)
def test_bad_input_fails_with_the_variable_named(tmp_path, variables, expected):
    result = run_role(tmp_path, variables)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output, output


def load_filters():
    spec = importlib.util.spec_from_file_location("cidr", REPO_ROOT / "roles/common/filter_plugins/cidr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cidr_filters():
    cidr = load_filters()
    assert cidr.invalid_cidrs(["10.0.0.0/8", "2001:db8::/32", "10.1.1.1", "x/24"]) == ["10.1.1.1", "x/24"]
    assert cidr.world_cidrs(["0.0.0.0/0", "10.0.0.0/8", "::/0"]) == ["0.0.0.0/0", "::/0"]
    assert cidr.cidrs_of_family(["10.0.0.1/8", "2001:db8::/32"], 4) == ["10.0.0.0/8"]
    assert cidr.cidrs_of_family(["10.0.0.1/8", "2001:db8::/32"], 6) == ["2001:db8::/32"]


def test_good_input_passes_validation(tmp_path):
    result = run_role(tmp_path, {"common_firewall_rules": [{"port": 8080, "sources": ["10.0.0.0/8"]}]})
    assert result.returncode == 0, result.stdout + result.stderr
