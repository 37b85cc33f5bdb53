"""Tasks run in threads of the controller (plugins/strategy/mitogen_linear.py) instead of a forked worker per
task and host: each host's task must behave as in its own worker, and a run must end as it ends with forked
workers (LLMCLOUD_TASK_THREADS=off). Real ansible-playbook runs: three hosts over Mitogen's local
connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmcloud import REPO_ROOT

PLAYBOOK_BIN = Path(sys.executable).with_name("ansible-playbook")

INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  hosts:
    a: {tolerant: true, size: 1}
    b: {tolerant: false, size: 2}
    c: {tolerant: true, size: 3}
"""

# Attributes templated per host (ignore_errors, when, loop, a block's vars), registered results, another
# host's facts, an included file, block/rescue, a handler.
PLAY = """
- hosts: all
  gather_facts: false
  handlers:
    - name: Note the change
      ansible.builtin.set_fact:
        noted: "{{ inventory_hostname }}"
  tasks:
    - name: Fails everywhere, ignored where the host is tolerant
      ansible.builtin.command: "false"
      ignore_errors: "{{ tolerant }}"
      changed_when: false
    - name: A fact of each host's own
      ansible.builtin.set_fact:
        double: "{{ size * 2 }}"
    - name: Echo the items this host's size lets through
      ansible.builtin.command: "echo {{ item }}"
      loop: "{{ range(1, 5) | list }}"
      when: item <= size
      register: echoed
      changed_when: item == size
      notify: Note the change
    - name: Read the other hosts' facts
      ansible.builtin.set_fact:
        others: "{{ ansible_play_hosts | difference([inventory_hostname])
                    | map('extract', hostvars, 'double') | list }}"
    - name: Included per host
      ansible.builtin.include_tasks: included.yml
      when: size > 1
    - block:
        - name: A label from the block's vars
          ansible.builtin.set_fact:
            labelled: "{{ label }}"
        - name: Fails on c only
          ansible.builtin.assert:
            that: size < 3
      rescue:
        - name: Rescued
          ansible.builtin.set_fact:
            rescued: true
      vars:
        label: "{{ inventory_hostname }}-{{ size }}"
    - name: Everything this host saw
      ansible.builtin.debug:
        msg: "{{ [double, others, echoed.results | map(attribute='stdout', default='-') | list, labelled] }}"
"""

INCLUDED = """
- name: Inside the include
  ansible.builtin.set_fact:
    included: "{{ inventory_hostname }}"
"""

VOLATILE = {"start", "end", "delta", "duration", "id"}


def playbook(tmp_path: Path, play: str, threads: bool, extra_env: dict | None = None):
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "play.yml").write_text(play)
    (tmp_path / "included.yml").write_text(INCLUDED)
    env = {
        **os.environ,
        "LLMCLOUD_TASK_THREADS": "on" if threads else "off",
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_STRATEGY_PLUGINS": str(REPO_ROOT / "plugins" / "strategy"),
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
        **(extra_env or {}),
    }
    began = time.monotonic()
    run = subprocess.run(
        [str(PLAYBOOK_BIN), "-i", "inventory.yml", "play.yml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return run, time.monotonic() - began


def stable(value):
    """The json callback's output without what differs from run to run (times, ids)."""
    if isinstance(value, dict):
        return {key: stable(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [stable(item) for item in value]
    return value


def test_a_run_ends_as_with_forked_workers(tmp_path):
    outcomes = []
    for threads in (False, True):
        run, _ = playbook(tmp_path, PLAY, threads, {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"})
        assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]  # b's failure is not ignored
        outcomes.append(stable(json.loads(run.stdout)))
    forked, threaded = outcomes
    assert threaded["stats"] == forked["stats"]
    assert threaded == forked
    # The per-host attributes were each host's own: a and c ignored the failure, b stopped there.
    assert threaded["stats"]["b"]["failures"] == 1 and threaded["stats"]["b"]["ok"] == 0
    assert threaded["stats"]["a"]["ignored"] == threaded["stats"]["c"]["ignored"] == 1
    assert threaded["stats"]["c"]["rescued"] == 1
    tasks = threaded["plays"][0]["tasks"]
    handled = {host for task in tasks if task["task"]["name"] == "Note the change" for host in task["hosts"]}
    assert handled == {"a", "c"}  # the handler ran where its notifier changed something
    seen = {
        host: result["msg"]
        for task in tasks
        if task["task"]["name"] == "Everything this host saw"
        for host, result in task["hosts"].items()
    }
    assert seen == {"a": [2, [6], ["1", "-", "-", "-"], "a-1"], "c": [6, [2], ["1", "2", "3", "-"], "c-3"]}


PIDS = """
- hosts: a
  gather_facts: false
  tasks:
    - ansible.builtin.set_fact:
        first: "{{ lookup('ansible.builtin.pipe', 'echo $PPID') }}"
    - ansible.builtin.set_fact:
        second: "{{ lookup('ansible.builtin.pipe', 'echo $PPID') }}"
    - ansible.builtin.debug:
        msg: "pids {{ first }} {{ second }}"
"""


@pytest.mark.parametrize("threads", [True, False])
def test_tasks_run_in_the_controller_unless_told_not_to(tmp_path, threads):
    run, _ = playbook(tmp_path, PIDS, threads)
    assert run.returncode == 0, run.stdout[-3000:]
    first, second = (
        next(line for line in run.stdout.splitlines() if "pids " in line).split("pids ")[1].split()
    )
    # The lookup's shell is a child of the process that ran the task: the controller itself for both tasks,
    # or a worker forked for each.
    assert (first == second) is threads


TIME_LIMIT = """
- hosts: a
  gather_facts: false
  tasks:
    - name: Longer than its limit
      ansible.builtin.command: sleep 30
      timeout: 1
"""


def test_a_task_keeps_its_time_limit(tmp_path):
    run, took = playbook(tmp_path, TIME_LIMIT, threads=True)
    assert run.returncode == 2
    assert "Timed out after 1 second" in run.stdout, run.stdout[-3000:]
    assert took < 25
