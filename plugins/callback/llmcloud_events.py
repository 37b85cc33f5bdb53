"""llmcloud converge's events: one JSON line per play, task, change and failure, then the recap.

Written to the file descriptor named by LLMCLOUD_EVENTS_FD (llmcloud/converge.py reads them as they come),
nothing without it. Ansible hands callbacks the results of no_log tasks censored, so no secret is written.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: llmcloud_events
type: notification
short_description: llmcloud converge's progress and result as JSON lines
description:
  - One JSON object per line on the file descriptor in LLMCLOUD_EVENTS_FD (play and task starts, changes,
    failures with the failed items of a loop, the recap per host), read by llmcloud converge.
"""


def failure_message(result: dict) -> str:
    """Why a task failed, with each failed item of a loop and its reason."""

    def why(res: dict) -> str:
        return str(res.get("msg") or res.get("stderr") or res.get("reason") or "failed").strip()

    message = why(result)
    for item in result.get("results") or []:
        if isinstance(item, dict) and item.get("failed"):
            message += f"; {item.get('_ansible_item_label', item.get('item', '?'))}: {why(item)}"
    return message


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "llmcloud_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        fd = os.environ.get("LLMCLOUD_EVENTS_FD")
        self._out = os.fdopen(int(fd), "w", buffering=1) if fd else None

    def _emit(self, **event) -> None:
        if self._out:
            self._out.write(json.dumps(event, default=str) + "\n")

    def v2_playbook_on_play_start(self, play):
        self._emit(event="play", name=play.get_name())

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._emit(event="task", name=task.get_name())

    def v2_playbook_on_handler_task_start(self, task):
        self._emit(event="task", name=task.get_name())

    def v2_runner_on_ok(self, result):
        if result.result.get("changed"):
            self._emit(event="changed", host=result.host.get_name(), task=result.task.get_name())

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if not ignore_errors:
            name = result.task.get_name()
            self._emit(
                event="failed", host=result.host.get_name(), task=name, message=failure_message(result.result)
            )

    def v2_runner_on_unreachable(self, result):
        name = result.task.get_name()
        self._emit(
            event="failed", host=result.host.get_name(), task=name, message=failure_message(result.result)
        )

    def v2_playbook_on_stats(self, stats):
        recap: dict[str, dict[str, int]] = {}
        for host in sorted(stats.processed):
            counts = stats.summarize(host)
            for outcome, key in (
                ("ok", "ok"),
                ("changed", "changed"),
                ("failures", "failures"),
                ("dark", "unreachable"),
                ("skipped", "skipped"),
            ):
                recap.setdefault(outcome, {})[host] = counts.get(key, 0)
        self._emit(event="stats", stats=recap)
        if self._out:
            self._out.close()
            self._out = None
