"""llmcloud converge: what it reports of Ansible's events (ansible-runner replaced by a replay)."""

from __future__ import annotations

import io
import sys
import types

from llmcloud import converge
from llmcloud.progress import Progress


def replay(monkeypatch, events: list[dict]) -> None:
    def run(**kwargs):
        for event in events:
            kwargs["event_handler"](event)
        return types.SimpleNamespace(status="failed", rc=2, stats={}, stdout=io.StringIO(""))

    monkeypatch.setitem(sys.modules, "ansible_runner", types.SimpleNamespace(run=run))


def test_a_failed_loop_names_the_items_and_their_errors(tmp_path, monkeypatch):
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    failed_loop = {
        "event": "runner_on_failed",
        "event_data": {
            "host": "edge1",
            "task": "Write the nginx configuration",
            "res": {
                "msg": "One or more items failed",
                "results": [
                    {"changed": False, "_ansible_item_label": "/etc/nginx/conf.d/llmcloud-http.conf"},
                    {
                        "failed": True,
                        "msg": "AnsibleUndefinedVariable: 'nginx_x' is undefined",
                        "_ansible_item_label": "/etc/nginx/sites-available/llmcloud.conf",
                    },
                ],
            },
        },
    }
    replay(monkeypatch, [failed_loop])
    result = converge.converge(tmp_path, Progress("test", out=io.StringIO()))
    assert not result.ok
    assert result.failures == [
        "edge1: Write the nginx configuration: One or more items failed; "
        "/etc/nginx/sites-available/llmcloud.conf: AnsibleUndefinedVariable: 'nginx_x' is undefined"
    ]
