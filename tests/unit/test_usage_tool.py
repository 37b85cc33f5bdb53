"""llmcloud-usage (WIP, issue 24): every whole line counted once, across restarts and log rotation."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os

from llmcloud import REPO_ROOT

_loader = importlib.machinery.SourceFileLoader(
    "llmcloud_usage", str(REPO_ROOT / "roles/nginx/files/llmcloud-usage")
)
_spec = importlib.util.spec_from_loader("llmcloud_usage", _loader)
tool = importlib.util.module_from_spec(_spec)
_loader.exec_module(tool)

DAY = 1796258517  # 2026-12-02 UTC
LINES = [
    f"{DAY}.1 200 key:demo m/a 3 5\n",
    f"{DAY}.2 200 person:alice@example.org m/a 5 4\n",
    f"{DAY}.3 200 key:demo m/a 2 3\n",
    f"{DAY}.4 401 - - - -\n",  # nobody the edge let in
    f"{DAY}.5 502 key:demo m/a - -\n",  # failed: counted as a failed request, no tokens
]


def totals(db, by="principal"):
    return {
        r[by]: (r["requests"], r["failed"], r["prompt_tokens"], r["completion_tokens"])
        for r in tool.report(db, by=by)
    }


def test_lines_are_counted_once_across_runs_and_a_half_written_line_waits(tmp_path):
    log, db = tmp_path / "usage.log", tool.connect(tmp_path / "usage.db")
    log.write_text("".join(LINES[:2]) + LINES[2][:10])  # the third line still being written
    tool.ingest(db, log)
    tool.ingest(db, log)  # nothing new: nothing counted twice
    assert totals(db) == {"key:demo": (1, 0, 3, 5), "person:alice@example.org": (1, 0, 5, 4)}
    log.write_text("".join(LINES))
    tool.ingest(tool.connect(tmp_path / "usage.db"), log)  # a new process, the same database
    db = tool.connect(tmp_path / "usage.db")
    assert totals(db) == {"key:demo": (3, 1, 5, 8), "person:alice@example.org": (1, 0, 5, 4)}
    assert [r["share"] for r in tool.report(db)] == [0.5909, 0.4091]


def test_the_rest_of_a_rotated_log_is_read_before_the_new_one(tmp_path):
    log, db = tmp_path / "usage.log", tool.connect(tmp_path / "usage.db")
    log.write_text(LINES[0])
    tool.ingest(db, log)
    with open(log, "a") as f:
        f.write(LINES[1])  # written after the last run, before the rotation
    os.rename(log, tmp_path / "usage.log.1")
    log.write_text(LINES[2])
    tool.ingest(db, log)
    assert totals(db) == {"key:demo": (2, 0, 5, 8), "person:alice@example.org": (1, 0, 5, 4)}
    assert totals(db, by="model") == {"m/a": (3, 0, 10, 12)}
