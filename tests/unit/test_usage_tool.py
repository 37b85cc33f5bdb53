"""llmcloud-usage on the edge: every whole line counted once (restarts, rotation), groups, quotas, metrics."""

from __future__ import annotations

import datetime as dt
import importlib.machinery
import importlib.util
import json
import os
import sqlite3

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
    changes = db.total_changes
    tool.ingest(db, log)  # nothing new: nothing counted twice, and the database is not written
    assert db.total_changes == changes
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


TODAY = dt.date(2026, 12, 2)
NOON = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC).timestamp()


def _day(offset: int) -> float:
    return NOON + offset * 86400


def _ingest(tmp_path, lines):
    log, db = tmp_path / "usage.log", tool.connect(tmp_path / "usage.db")
    log.write_text("".join(lines))
    tool.ingest(db, log)
    return db


def test_groups_come_from_the_login_and_from_chats_sent_through_the_chat_ui(tmp_path):
    db = _ingest(
        tmp_path,
        [
            # A session: the groups oauth2-proxy names.
            f"{NOON} 200 person:Alice@Example.org m 3 5 llm-users,lab%20a\n",
            f"{NOON} seen person:carol@example.org students\n",  # a chat sent through the chat UI
            # The chat UI's request: no groups known on the engines' listener.
            f"{NOON + 1} 200 person:carol@example.org m 4 4 -\n",
            f"{NOON + 2} 200 key:ci m 1 1 -\n",
        ],
    )
    assert tool.groups_of(db) == {
        "person:alice@example.org": ["lab a", "llm-users"],
        "person:carol@example.org": ["students"],
    }
    by_group = {r["group"]: r["prompt_tokens"] + r["completion_tokens"] for r in tool.report(db, by="group")}
    assert by_group == {"llm-users": 8, "lab a": 8, "students": 8, "-": 2}


QUOTAS = {
    "default": {"tokens_per_day": 100, "tokens_per_30_days": 1000},
    "groups": {"students": {"tokens_per_day": 20}, "staff": {"tokens_per_day": None}},
    "people": {"bob@example.org": {"tokens_per_day": 500}},
    "keys": {"ci": {"requests_per_day": 2}},
    "exempt": ["key:monitor"],
}


def test_each_limit_comes_from_the_most_specific_entry_that_sets_it():
    assert tool.limits(QUOTAS, "person:x@example.org", []) == {
        "tokens_per_day": 100,
        "tokens_per_30_days": 1000,
        "requests_per_day": None,
    }
    assert tool.limits(QUOTAS, "person:x@example.org", ["students"])["tokens_per_day"] == 20
    # In two groups: the more generous, and null (no limit) is the most generous of all.
    assert tool.limits(QUOTAS, "person:x@example.org", ["students", "staff"])["tokens_per_day"] is None
    assert tool.limits(QUOTAS, "person:bob@example.org", ["students"])["tokens_per_day"] == 500
    assert tool.limits(QUOTAS, "key:ci", [])["requests_per_day"] == 2
    assert tool.limits(QUOTAS, "key:ci", [])["tokens_per_30_days"] == 1000  # the default's, not set for ci
    assert tool.limits({}, "key:ci", []) == dict.fromkeys(tool.METRICS_OF)


def test_over_quota_names_the_quota_its_limit_and_when_it_resets(tmp_path):
    db = _ingest(
        tmp_path,
        [
            f"{_day(0)} 200 person:alice@example.org m 60 50 -\n",  # 110 today: past the default 100 per day
            f"{_day(0)} 200 person:bob@example.org m 60 50 -\n",  # 110 of his own 500: fine
            f"{_day(0)} 200 key:ci m 1 1 -\n",
            f"{_day(0)} 502 key:ci m - -\n",  # a failed request counts as a request
            f"{_day(-3)} 200 person:dave@example.org m 900 50 -\n",  # 950 three days ago
            f"{_day(-1)} 200 person:dave@example.org m 40 20 -\n",  # + 60 yesterday: 1010 in 30 days
            f"{_day(0)} 200 key:monitor m 5000 5000 -\n",  # exempt
        ],
    )
    over = tool.over_quota(tool.standing(db, QUOTAS, TODAY))
    assert sorted(over) == ["key:ci", "person:alice@example.org", "person:dave@example.org"]
    tomorrow = int(dt.datetime(2026, 12, 3, tzinfo=dt.UTC).timestamp())
    alice = json.loads(over["person:alice@example.org"]["body"])
    assert alice["quota"] == "tokens_per_day" and alice["limit"] == 100 and alice["used"] == 110
    assert (
        alice["resets_at"] == "2026-12-03T00:00:00Z"
        and over["person:alice@example.org"]["resets"] == tomorrow
    )
    assert json.loads(over["key:ci"]["body"])["quota"] == "requests_per_day"
    dave = json.loads(over["person:dave@example.org"]["body"])
    # The 30-day window [d-29, d] drops the day 3 days ago (11-29) on 12-29: 1010 - 950 = 60 < 1000.
    assert dave["quota"] == "tokens_per_30_days" and dave["used"] == 1010
    assert dave["resets_at"] == "2026-12-29T00:00:00Z"


def test_ingest_writes_the_over_quota_list_and_metrics_and_forgets_past_the_retention(tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "LOG", tmp_path / "usage.log")
    monkeypatch.setattr(tool, "QUOTAS", tmp_path / "quotas.json")
    monkeypatch.setattr(tool, "OVER", tmp_path / "gate" / "over-quota.json")
    monkeypatch.setattr(tool, "METRICS", tmp_path / "textfile" / "llmcloud_usage.prom")
    reloads = tmp_path / "reloads"
    monkeypatch.setattr(tool, "RELOAD_NGINX", ("sh", "-c", f"echo reload >> {reloads}"))
    (tmp_path / "textfile").mkdir()
    (tmp_path / "quotas.json").write_text(json.dumps({**QUOTAS, "retention_days": 10, "alert_fraction": 0.5}))
    tool.LOG.write_text(
        f"{_day(-20)} 200 person:old@example.org m 7 7 -\n{_day(0)} 200 person:alice@example.org m 60 50 -\n"
    )
    db = tool.connect(tmp_path / "usage.db")
    tool.run_ingest(db, now=NOON)
    assert list(json.loads(tool.OVER.read_text())) == ["person:alice@example.org"]
    assert oct(tool.OVER.stat().st_mode & 0o777) == "0o600"
    # nginx loads the list with its configuration: reloaded when it changed, and only then.
    assert reloads.read_text().count("reload") == 1
    tool.run_ingest(db, now=NOON)
    assert reloads.read_text().count("reload") == 1
    assert [r["principal"] for r in tool.report(db)] == ["person:alice@example.org"]  # 20 days old: gone
    text = tool.METRICS.read_text()
    assert (
        'llmcloud_usage_tokens_today{principal="person:alice@example.org",model="m",kind="prompt"} 60' in text
    )
    assert (
        'llmcloud_usage_quota_used_ratio{principal="person:alice@example.org",quota="tokens_per_day"} 1.1'
        in text
    )
    assert "llmcloud_usage_quota_alert_ratio 0.5" in text
    # A quota raised: the next run lets her in again.
    (tmp_path / "quotas.json").write_text(
        json.dumps({"people": {"alice@example.org": {"tokens_per_day": 1000}}})
    )
    tool.run_ingest(db, now=NOON + 1)
    assert json.loads(tool.OVER.read_text()) == {}
    assert reloads.read_text().count("reload") == 2


def test_the_backup_copy_is_a_whole_database(tmp_path):
    db = _ingest(tmp_path, LINES)
    tool.backup(db, tmp_path / "backup" / "usage.db")
    copy = sqlite3.connect(tmp_path / "backup" / "usage.db")
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert totals(copy) == totals(db)


def test_pseudonyms_are_the_edges_keyed_hash_quotas_find_them_and_reveal_maps_them_back(tmp_path):
    import hashlib
    import hmac

    key = b"k" * 43
    mark = "person:~" + hmac.new(key, b"alice@example.org", hashlib.sha256).hexdigest()[:16]
    assert tool.person(" Alice@Example.org ", key) == mark  # what llmcloud-auth.js computes
    assert tool.person("Alice@Example.org") == "person:alice@example.org"
    quotas = {"people": {"alice@example.org": {"tokens_per_day": 7}}, "exempt": ["bob@example.org"]}
    assert tool.limits(quotas, mark, [], key)["tokens_per_day"] == 7
    assert tool.exempt(quotas, tool.person("bob@example.org", key), key)
    db = _ingest(tmp_path, [f"{NOON} 200 {mark} m 5 5 -\n"])
    assert list(tool.over_quota(tool.standing(db, quotas, TODAY, key))) == [mark]
    rows = tool.reveal(tool.report(db), "principal", ["alice@example.org", "carol@example.org"], key)
    assert rows[0]["principal"] == "person:alice@example.org"
    (tmp_path / "key").write_bytes(key + b"\n")
    assert tool.pseudonym_key({"pseudonymous": True}, tmp_path / "key") == key
    assert tool.pseudonym_key({}, tmp_path / "key") is None
