"""Tasks run in threads of the controller (plugins/strategy/mitogen_linear.py) instead of a forked worker per
task and host: each host's task must behave as in its own worker, and a run must end as it ends with forked
workers (LLMCLOUD_TASK_THREADS=off). Real ansible-playbook runs: three hosts over Mitogen's local
connection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ansible.plugins.loader import PluginLoader

from llmcloud import REPO_ROOT

PLAYBOOK_BIN = Path(sys.executable).with_name("ansible-playbook")
COMMAND = [str(PLAYBOOK_BIN), "-i", "inventory.yml", "play.yml"]

# Each host has a Python of its own (a link to this one): Mitogen makes one local context per interpreter, and
# one context runs one call at a time, so hosts sharing one would take turns whatever the strategy does.
INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{ playbook_dir }}/python-{{ inventory_hostname }}"
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


def prepare(tmp_path: Path, play: str, threads: bool, extra_env: dict | None = None) -> dict[str, str]:
    """Write the play, its inventory and included file and the hosts' Pythons; return the environment."""
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "play.yml").write_text(play)
    (tmp_path / "included.yml").write_text(INCLUDED)
    for host in "abc":
        python = tmp_path / f"python-{host}"
        if not python.exists():
            python.symlink_to(os.path.realpath(sys.executable))
    return {
        **os.environ,
        "LLMCLOUD_TASK_THREADS": "on" if threads else "off",
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_STRATEGY_PLUGINS": str(REPO_ROOT / "plugins" / "strategy"),
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
        **(extra_env or {}),
    }


def playbook(tmp_path: Path, play: str, threads: bool, extra_env: dict | None = None):
    env = prepare(tmp_path, play, threads, extra_env)
    began = time.monotonic()
    run = subprocess.run(
        COMMAND,
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


INTERRUPTED = """
- hosts: all
  gather_facts: false
  tasks:
    - name: Runs until interrupted
      ansible.builtin.shell: "touch {{ playbook_dir }}/started-{{ inventory_hostname }} && sleep 30"
"""


def test_ctrl_c_stops_a_run_as_with_forked_workers(tmp_path):
    env = prepare(tmp_path, INTERRUPTED, threads=True)
    with subprocess.Popen(
        COMMAND,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as run:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("started-*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(tmp_path.glob("started-*"))) == 3  # every host's task runs at once, as with workers
        run.send_signal(signal.SIGINT)  # what Ctrl-C sends the controller
        began = time.monotonic()
        output, _ = run.communicate(timeout=30)
    assert run.returncode == 99, output[-3000:]  # ansible-playbook's "interrupted", not a crash
    assert "User interrupted execution" in output and "Traceback" not in output
    assert time.monotonic() - began < 15


def test_a_plugin_loaded_by_two_threads_at_once_is_whole_for_both(strategy, tmp_path, monkeypatch):
    """ansible-core shows a plugin's module in sys.modules while its code still runs: a second thread asking
    for it meanwhile must wait for the whole module (a task thread once got a connection plugin without its
    Connection class)."""
    monkeypatch.setattr(PluginLoader, "_load_module_source", PluginLoader._load_module_source)
    strategy.serialize_plugin_loads()
    slow = tmp_path / "slow_plugin.py"
    slow.write_text("import time\ntime.sleep(0.5)\nConnection = 'loaded'\n")
    name = "ansible.plugins.connection.llmcloud_test_slow"
    monkeypatch.delitem(sys.modules, name, raising=False)
    loader = PluginLoader("Connection", "ansible.plugins.connection", "connection_plugins", "connection")
    found = []

    def load():
        module = loader._load_module_source(python_module_name=name, path=str(slow))
        found.append(getattr(module, "Connection", None))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert found == ["loaded"] * 3
    del sys.modules[name]
