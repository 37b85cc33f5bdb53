"""llmcloud converge: what it reports of Ansible's events, from the llmcloud_events callback it reads."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import types
from pathlib import Path

from llmcloud import REPO_ROOT, converge
from llmcloud.progress import Progress

PLUGIN = REPO_ROOT / "plugins" / "callback" / "llmcloud_events.py"


def plugin():
    spec = importlib.util.spec_from_file_location("llmcloud_events", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result_of(host: str, task: str, res: dict):
    named = lambda name: types.SimpleNamespace(get_name=lambda: name)  # noqa: E731
    return types.SimpleNamespace(host=named(host), task=named(task), result=res)


FAILED_LOOP = {
    "msg": "One or more items failed",
    "results": [
        {"changed": False, "_ansible_item_label": "/etc/nginx/conf.d/llmcloud-http.conf"},
        {
            "failed": True,
            "msg": "AnsibleUndefinedVariable: 'nginx_x' is undefined",
            "_ansible_item_label": "/etc/nginx/sites-available/llmcloud.conf",
        },
    ],
}


def test_the_callback_writes_a_line_per_event_and_a_failed_loop_names_its_items(monkeypatch):
    read_fd, write_fd = os.pipe()
    monkeypatch.setenv("LLMCLOUD_EVENTS_FD", str(write_fd))
    callback = plugin().CallbackModule()
    callback.v2_runner_on_ok(result_of("edge1", "Write the site", {"changed": True}))
    callback.v2_runner_on_ok(result_of("edge1", "Read the site", {"changed": False}))
    callback.v2_runner_on_failed(result_of("edge1", "Ignored", {"msg": "x"}), ignore_errors=True)
    callback.v2_runner_on_failed(result_of("edge1", "Write the nginx configuration", FAILED_LOOP))
    summary = {"ok": 3, "changed": 1, "failures": 1, "unreachable": 0, "skipped": 2}
    callback.v2_playbook_on_stats(types.SimpleNamespace(processed={"edge1": 1}, summarize=lambda h: summary))
    with os.fdopen(read_fd) as events:
        lines = [json.loads(line) for line in events]
    assert [e["event"] for e in lines] == ["changed", "failed", "stats"]
    assert lines[1]["message"] == (
        "One or more items failed; "
        "/etc/nginx/sites-available/llmcloud.conf: AnsibleUndefinedVariable: 'nginx_x' is undefined"
    )
    assert lines[2]["stats"]["changed"] == {"edge1": 1} and lines[2]["stats"]["dark"] == {"edge1": 0}


def test_without_its_descriptor_the_callback_writes_nothing(monkeypatch):
    monkeypatch.delenv("LLMCLOUD_EVENTS_FD", raising=False)
    callback = plugin().CallbackModule()
    callback.v2_runner_on_failed(result_of("edge1", "Write", {"msg": "x"}))  # no error, nowhere to write


def test_converge_reports_changes_failures_and_the_recap_as_they_come():
    out = io.StringIO()
    result = converge.ConvergeResult(status="unknown", rc=-1)
    events = [
        {"event": "play", "name": "Engines"},
        {"event": "task", "name": "Run the engine"},
        {"event": "changed", "host": "llm1", "task": "Run the engine"},
        {"event": "failed", "host": "llm2", "task": "Run the engine", "message": "no such image"},
        {"event": "stats", "stats": {"changed": {"llm1": 1, "llm2": 0}}},
    ]
    kinds = [converge._record(e, result, Progress("test", out=out)) for e in events]
    assert kinds[-1] == "stats"
    assert result.changed_tasks == ["llm1: Run the engine"]
    assert result.failures == ["llm2: Run the engine: no such image"]
    assert result.total_changed() == 1
    assert "FAILED llm2: Run the engine: no such image" in out.getvalue()


def test_ansible_stopping_before_any_task_is_told_in_its_own_words(tmp_path):
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    playbook = tmp_path / "broken.yml"
    playbook.write_text("- hosts: all\n  tasks: [{name: x, not_a_module: {}}]\n")
    result = converge.converge(tmp_path, Progress("test", out=io.StringIO()), playbook=str(playbook))
    assert not result.ok
    assert "not_a_module" in result.first_failure(), result.failures


def touch_playbook(folder: Path) -> tuple[Path, Path]:
    """A playbook whose one task, "Touch a file", touches a file on every host: (the playbook, the file)."""
    playbook, marker = folder / "touch.yml", folder / "marker"
    playbook.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - name: Touch a file\n      ansible.builtin.file: {{path: {marker}, state: touch}}\n"
    )
    return playbook, marker


def test_a_playbook_that_changes_something_is_reported_through_the_callback(tmp_path):
    local = f"{{ansible_connection: local, ansible_python_interpreter: {sys.executable}}}"
    (tmp_path / "hosts.yml").write_text(f"all:\n  hosts:\n    localhost: {local}\n")
    playbook, marker = touch_playbook(tmp_path)
    out = io.StringIO()
    result = converge.converge(tmp_path, Progress("test", out=out), playbook=str(playbook))
    assert result.ok, result.failures
    assert result.changed_tasks == ["localhost: Touch a file"] and marker.exists()
    assert result.changed() == {"localhost": 1}
    assert "  Touch a file" in out.getvalue()
