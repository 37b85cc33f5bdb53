"""Backups (role restic): scheduled, recent, restorable, and their secrets kept to root."""

from __future__ import annotations

import json
import time

import pytest

CONFIG = "/etc/llmcloud/backup/config.json"
STATUS = "/var/lib/llmcloud/backup/status.json"


@pytest.fixture
def backup(host, hostvars) -> dict:
    if not hostvars.get("restic_enabled"):
        pytest.skip("backups are off on this host (restic_enabled)")
    return json.loads(host.file(CONFIG).content_string)


def restic(host, *args: str):
    return host.run("/usr/local/sbin/llmcloud-restic restic " + " ".join(["%s"] * len(args)), *args)


def test_timers_enabled_and_waiting(host, backup):
    for timer in ("llmcloud-backup.timer", "llmcloud-backup-check.timer"):
        assert host.service(timer).is_enabled, timer
        assert host.service(timer).is_running, timer
    unit = host.run("systemctl show llmcloud-backup.timer -p Persistent --value").stdout.strip()
    assert unit == "yes"


def test_last_successful_backup_is_recent(host, backup):
    assert host.file(STATUS).exists, "no backup has succeeded on this host yet"
    status = json.loads(host.file(STATUS).content_string)
    age_hours = (time.time() - status["last_success_timestamp"]) / 3600
    assert age_hours < backup["max_age_hours"], (
        f"last successful backup is {age_hours:.1f} h old "
        f"(limit restic_max_age_hours={backup['max_age_hours']})"
    )
    if "last_failure_timestamp" in status:
        assert status["last_failure_timestamp"] <= status["last_success_timestamp"], (
            f"the last run of {status.get('last_failure_unit')} failed after the last success: "
            "see journalctl -u llmcloud-backup"
        )


def test_status_names_the_newest_snapshot_in_the_repository(host, backup):
    status = json.loads(host.file(STATUS).content_string)
    listed = restic(host, "snapshots", "--json", "--host", backup["host"], "--tag", backup["tag"])
    assert listed.rc == 0, listed.stderr
    snapshots = json.loads(listed.stdout)
    assert snapshots and snapshots[-1]["id"].startswith(status["snapshot_id"])


def test_repository_passes_restic_check(host, backup):
    checked = host.run("/usr/local/sbin/llmcloud-restic check")
    assert checked.rc == 0, checked.stderr


def latest_snapshot_paths(host, backup) -> set[str]:
    """Every path in this host's newest scheduled snapshot."""
    listed = restic(host, "ls", "--json", "latest", "--host", backup["host"], "--tag", backup["tag"])
    assert listed.rc == 0, listed.stderr
    return {json.loads(line).get("path") for line in listed.stdout.splitlines() if line.strip()}


def test_model_cache_left_out_and_state_kept(host, backup):
    paths = latest_snapshot_paths(host, backup)
    assert "/etc/llmcloud" in paths
    assert not any(p and p.startswith(e.rstrip("/") + "/") for p in paths for e in backup["excludes"]), (
        "an excluded path (such as the model cache) is in the snapshot"
    )


def test_credentials_root_only_and_out_of_units(host, backup, hostvars):
    secrets = host.file("/etc/llmcloud/backup/secrets.json")
    assert secrets.user == "root" and secrets.mode & 0o077 == 0
    assert "RESTIC_PASSWORD" not in host.file(CONFIG).content_string
    units = host.run("systemctl cat llmcloud-backup.service llmcloud-backup-check.service").stdout
    password = json.loads(secrets.content_string)["RESTIC_PASSWORD"]
    assert password not in units
    assert password not in host.run("journalctl -u llmcloud-backup.service --no-pager -o cat").stdout


def test_chat_ui_database_is_in_the_snapshot_as_a_consistent_copy(host, backup, hostvars):
    """The chat UI's SQLite database, copied by SQLite's online backup before restic reads anything."""
    if "edge" not in hostvars.get("group_names", []) or not hostvars.get("open_webui_enabled", True):
        pytest.skip("no chat UI on this host (open_webui_enabled)")
    data = hostvars.get("open_webui_data_dir", "/var/lib/llmcloud/open-webui")
    hooks = host.run("ls /etc/llmcloud/backup/pre.d").stdout.split()
    assert any(name.endswith("-open-webui") for name in hooks), f"no chat UI hook among {hooks}"
    assert f"{data}/llmcloud-backup/webui.db" in latest_snapshot_paths(host, backup), (
        "the latest snapshot holds no copy of the chat UI's database"
    )
    copy = host.file(f"{data}/llmcloud-backup/webui.db")
    assert copy.user == "root" and copy.mode & 0o077 == 0
    checked = host.run(
        "python3 -c %s %s",
        "import sqlite3, sys; print(sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)"
        ".execute('PRAGMA integrity_check').fetchone()[0])",
        f"{data}/llmcloud-backup/webui.db",
    )
    assert checked.stdout.strip() == "ok", checked.stderr
